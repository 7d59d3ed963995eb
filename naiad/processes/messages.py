"""The messages between the server and an instance process, by kind (standard library only: an instance process
reports with them that its environment lacks what the rest needs).

Every message is a tuple `(kind, freed, ...)`: `freed` gives back the blocks of the receiver's arena that the sender
no longer reads, so frees ride on the traffic that flows anyway. A new segment is announced by a SEGMENT frame that
carries its descriptor, sent before the first message that uses it."""

from __future__ import annotations

from naiad.domain.errors import ErrorCode, ServerError

# server -> instance
INIT = 1  # (INIT, freed, backend name, InstanceContext fields, settings): load the instance
EXECUTE = 2  # (EXECUTE, freed, batch, block, requests)
AUTO_COMPLETE = 3  # (AUTO_COMPLETE, freed, backend name, raw config, model folder, version folder, max batch)
FINALIZE = 4  # (FINALIZE, freed): unload, then exit (the server sees the exit)
BLS_DONE = 5  # (BLS_DONE, freed, call, block, response | error)
CALL_DONE = 6  # (CALL_DONE, freed, call, value | error)
# instance -> server
HELLO = 20  # (HELLO, freed, pid, python version)
READY = 21  # (READY, freed)
FAILED = 22  # (FAILED, freed, error)
COMPLETED = 23  # (COMPLETED, freed, config)
RESULTS = 24  # (RESULTS, freed, batch, block, results)
BLS = 25  # (BLS, freed, call, model, version, block, request)
CALL = 26  # (CALL, freed, call, operation, arguments): load_model, unload_model, is_model_ready
LOG = 27  # (LOG, freed, logger, level, text)
# either way
SEGMENT = 40  # (SEGMENT, freed, segment, size), its descriptor passed with the frame
DROP = 41  # (DROP, freed, segments): the writer released these segments
FREE = 42  # (FREE, freed): blocks given back, when no other message is due

Error = tuple[str, str]  # an ErrorCode name and the message


def error_of(exc: ServerError) -> Error:
    """A `ServerError` as plain values."""
    return exc.code.name, str(exc.message)


def server_error(error: Error) -> ServerError:
    """The `ServerError` plain values describe."""
    code, message = error
    return ServerError(ErrorCode[code], message)
