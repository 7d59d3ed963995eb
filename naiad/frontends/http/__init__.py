"""The KServe V2 HTTP/REST front end with Triton's extensions."""
