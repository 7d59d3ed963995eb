"""Front-end processes: HTTP and gRPC served from several processes sharing the ports, every request submitted to
the one server process that holds the models; the messages between them, each side's end, and the supervisor."""
