"""The gRPC front end: the KServe V2 `inference.GRPCInferenceService` and the standard health service."""
