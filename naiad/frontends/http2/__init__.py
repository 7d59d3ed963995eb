"""HTTP/2 for the gRPC front end (RFC 9113): frames, header blocks, connections and streams, knowing nothing of gRPC."""
