"""The messages between the server process and a front-end process, by kind; every message is a tuple
`(kind, freed, ...)` as between the server and an instance process (`naiad.processes.messages`), whose SEGMENT,
DROP and FREE frames carry the shared memory here too."""

from __future__ import annotations

# server -> front end
START = 60  # (START, freed, ServerSettings, log settings): serve with these
RESULT = 61  # (RESULT, freed, call, block, (True, response) | (False, error, refused))
HTTP_REPLY = 62  # (HTTP_REPLY, freed, call, status, body, content type, headers)
GRPC_MESSAGE = 63  # (GRPC_MESSAGE, freed, call, message): one response message of a forwarded call
GRPC_END = 64  # (GRPC_END, freed, call, status code, status message): the forwarded call is over
LOG_SETTINGS = 65  # (LOG_SETTINGS, freed, log settings): the logging API changed them
STOP_ACCEPTING = 66  # (STOP_ACCEPTING, freed, grace seconds): shutdown has begun
CLOSE = 67  # (CLOSE, freed): close the connections (HTTP after 1 s, gRPC after 5 s at most) and exit
# front end -> server
LISTENING = 80  # (LISTENING, freed, error): serving on the ports passed, or why not ("" when serving)
INFER = 81  # (INFER, freed, call, model, version, block, request)
HTTP = 82  # (HTTP, freed, call, method, path, headers, body, body size, keep-alive): any request but inference
GRPC = 83  # (GRPC, freed, call, path, message, metadata): any unary or server-streaming call but inference
GRPC_CANCEL = 84  # (GRPC_CANCEL, freed, call): the client is gone, or its deadline passed
LOG = 85  # (LOG, freed, logger, level, text)
