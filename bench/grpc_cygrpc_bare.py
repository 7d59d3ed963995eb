"""A bare unary gRPC server for KServe V2 `inference.GRPCInferenceService` straight on grpcio's Cython core
bindings (`grpc._cython.cygrpc`), without grpc.aio's or grpc's sync server's per-call machinery: research into
the lowest server CPU per unary call that Python on grpcio can reach. It answers the RPCs perf_analyzer needs with
the same results as `../shared/peers/grpc_bare.py` (ModelInfer: add_sub's arithmetic, `add_sub_grpc.bare_infer`).

    .venv/bin/python bench/grpc_cygrpc_bare.py PORT [--pollers N] [--outstanding N] [--registered] ...

Written against grpcio 1.85.3. `cygrpc` is grpcio's private API: nothing here is promised across versions.

How a call goes (three completion-queue events per unary call, each handled inline by the polling thread):

  1. request_call completes (REQUEST event: a new call with its method and metadata): ask for the next call
     right away (so that `--outstanding` calls stay requested), look the handler up by method, start a batch
     of one ReceiveMessageOperation tagged (handler, call);
  2. that batch completes: take the request bytes, run the handler (parse, compute, serialize), start ONE batch
     with send-initial-metadata + send-message + send-status + receive-close, tagged DONE;
  3. DONE completes: nothing to do; dropping the event drops the last reference to the call.

`cq.poll()` releases the GIL while it waits, so with `--pollers N` N threads can wait on the same queue; only
one of them runs Python at a time.
"""

from __future__ import annotations

import argparse
import gc
import os
import signal
import sys
import threading
from collections.abc import Callable
from typing import Any

from add_sub_grpc import CONFIG, METADATA, bare_infer
from grpc._cython import cygrpc
from tritonclient.grpc import service_pb2 as pb

SERVICE = "/inference.GRPCInferenceService/"

# ---- handlers: request bytes -> response bytes ------------------------------------------------------------


def _constant(message: Any) -> Callable[[bytes], bytes]:
    """A handler whose answer never changes: serialized once."""
    data = message.SerializeToString()
    return lambda request: data


_parse_infer = pb.ModelInferRequest.FromString


def _model_infer(request: bytes) -> bytes:
    response: bytes = bare_infer(_parse_infer(request)).SerializeToString()
    return response


HANDLERS: dict[bytes, Callable[[bytes], bytes]] = {
    (SERVICE + name).encode(): handler
    for name, handler in {
        "ServerLive": _constant(pb.ServerLiveResponse(live=True)),
        "ServerReady": _constant(pb.ServerReadyResponse(ready=True)),
        "ModelReady": _constant(pb.ModelReadyResponse(ready=True)),
        "ServerMetadata": _constant(pb.ServerMetadataResponse(name="x", version="1", extensions=[])),
        "ModelMetadata": _constant(METADATA),
        "ModelConfig": _constant(pb.ModelConfigResponse(config=CONFIG)),
        "ModelStatistics": _constant(pb.ModelStatisticsResponse()),
        "ModelInfer": _model_infer,
    }.items()
}

# ---- operations -------------------------------------------------------------------------------------------

_OK = cygrpc.StatusCode.ok
_RecvMessage = cygrpc.ReceiveMessageOperation
_SendMessage = cygrpc.SendMessageOperation
_SendInitial = cygrpc.SendInitialMetadataOperation
_SendStatus = cygrpc.SendStatusFromServerOperation
_RecvClose = cygrpc.ReceiveCloseOnServerOperation

# Operation objects are one-shot in general: start_server_batch calls op.c() (fill a C grpc_op from the Python
# fields, allocating C metadata and a details slice) and the completion calls op.un_c() (free them). With empty
# metadata nothing is allocated, and the empty details slice is inline (unref is a no-op; core copies the
# status at batch start), so these two carry no per-batch state and ONE instance of each can sit in every
# concurrent batch. That holds for grpcio 1.85's operation.pyx.pxi; `--fresh-ops` builds new ones per call.
SHARED_INITIAL = _SendInitial((), 0)
SHARED_OK_STATUS = _SendStatus((), _OK, b"", 0)


class _Sentinel:
    __slots__ = ("name",)

    def __init__(self, name: str) -> None:
        self.name = name

    def __repr__(self) -> str:
        return self.name


REQUEST = _Sentinel("REQUEST")  # tag of request_call (unregistered methods)
DONE = _Sentinel("DONE")  # tag of the final batch: nothing to do when it completes
SHUTDOWN = _Sentinel("SHUTDOWN")  # tag of server.shutdown


class BareServer:
    def __init__(self, port: int, options: argparse.Namespace) -> None:
        self.options = options
        self.cq = cygrpc.CompletionQueue()
        # Channel args: none by default, as grpc.aio passes for a plain server (`--arg KEY=INT` adds some); no xds.
        self.server = cygrpc.Server(tuple(options.arg), False)
        self.server.register_completion_queue(self.cq)
        if options.registered:
            # Registered methods: core matches the path itself and hands us calls per method; the tag of each
            # request is the method name, so no call_details lookup is needed.
            for method in HANDLERS:
                self.server.register_method(method.decode())
        if self.server.add_http2_port(f"127.0.0.1:{port}".encode()) == 0:
            raise SystemExit(f"cannot listen on 127.0.0.1:{port}")
        self.stopping = False
        self.calls = 0  # finished calls, read by tests and the benchmark

    # -- requesting calls

    def start(self) -> None:
        self.server.start()
        n = self.options.outstanding
        if self.options.registered:
            for method in HANDLERS:
                for _ in range(n):
                    self.server.request_registered_call(self.cq, self.cq, method.decode(), method.decode())
            n = 4  # a few requests for unregistered methods, to answer UNIMPLEMENTED
        for _ in range(n):
            self.server.request_call(self.cq, self.cq, REQUEST)

    # -- the loop

    def poll_loop(self) -> None:
        """Handles events until the server has shut down. Runs in one or more threads."""
        poll = self.cq.poll
        server = self.server
        cq = self.cq
        by_name = {method.decode(): handler for method, handler in HANDLERS.items()}
        fresh = self.options.fresh_ops
        recv_close = not self.options.no_recv_close
        handlers = HANDLERS
        while True:
            event = poll()
            tag = event.tag
            if tag is DONE:
                # 3. final batch done (success False: the client went away first; nothing to clean up).
                self.calls += 1
                continue
            if tag.__class__ is tuple:
                # 2. the request message arrived (or not: cancelled, deadline passed, no message).
                handler, call = tag
                request = event.batch_operations[0].message() if event.success else None
                if request is None:
                    if event.success:  # client half-closed without a message: not a unary call
                        _finish_error(call, cygrpc.StatusCode.internal, b"expected one request message")
                    continue
                try:
                    response = handler(request)
                except Exception as exc:  # any handler error becomes this call's status
                    _finish_error(call, cygrpc.StatusCode.unknown, f"{type(exc).__name__}: {exc}".encode())
                    continue
                if fresh:
                    ops = [_SendInitial((), 0), _SendMessage(response, 0), _SendStatus((), _OK, b"", 0)]
                else:
                    ops = [SHARED_INITIAL, _SendMessage(response, 0), SHARED_OK_STATUS]
                if recv_close:
                    ops.append(_RecvClose(0))
                call.start_server_batch(ops, DONE)
                continue
            if tag is SHUTDOWN:
                # Every call has finished: shut the queue down; each poller returns at its queue_shutdown.
                cq.shutdown()
                continue
            if event.completion_type != cygrpc.CompletionType.operation_complete:
                if event.completion_type == cygrpc.CompletionType.queue_shutdown:
                    return
                continue  # queue_timeout (poll with deadline; not used here)
            # 1. a new call. After server.shutdown the outstanding requests complete with success False.
            if not event.success:
                continue
            # Ask for the next call first, so that `--outstanding` requests stay pending in core. (ValueError:
            # another thread has begun the shutdown since `stopping` was read.)
            try:
                if tag is REQUEST:
                    if not self.stopping:
                        server.request_call(cq, cq, REQUEST)
                elif not self.stopping:
                    server.request_registered_call(cq, cq, tag, tag)
            except ValueError:
                pass
            # REQUEST: any method, looked up by its path; otherwise a registered method, and the tag is its path.
            handler = handlers.get(event.call_details.method) if tag is REQUEST else by_name[tag]
            call = event.call
            if handler is None:
                _finish_error(call, cygrpc.StatusCode.unimplemented, b"unknown method")
                continue
            call.start_server_batch((_RecvMessage(0),), (handler, call))

    def stop(self, grace: float = 1.0) -> None:
        """Stops accepting calls, lets those in flight finish for `grace` s, then cancels the rest."""
        self.stopping = True
        self.server.shutdown(self.cq, SHUTDOWN)
        timer = threading.Timer(grace, self.server.cancel_all_calls)
        timer.daemon = True
        timer.start()


def _finish_error(call: Any, code: Any, details: bytes) -> None:
    """Ends a call with a non-OK status and no message (trailers-only)."""
    call.start_server_batch(
        (_SendInitial((), 0), _SendStatus((), code, details, 0), _RecvClose(0)),
        DONE,
    )


def _channel_arg(text: str) -> tuple[str, int]:
    key, _, value = text.partition("=")
    return key, int(value)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("port", type=int)
    parser.add_argument("--pollers", type=int, default=1, help="threads polling the completion queue")
    parser.add_argument("--outstanding", type=int, default=64, help="calls requested ahead (per method)")
    parser.add_argument("--registered", action="store_true", help="register the methods with core")
    parser.add_argument("--fresh-ops", action="store_true", help="new operation objects per call")
    parser.add_argument("--no-recv-close", action="store_true", help="leave ReceiveCloseOnServer out")
    parser.add_argument("--no-gc", action="store_true", help="gc.freeze() and gc.disable() after start-up")
    parser.add_argument("--arg", action="append", default=[], type=_channel_arg, help="core channel arg KEY=INT")
    parser.add_argument("--count-file", help="write the number of finished calls here on SIGUSR1 and exit")
    options = parser.parse_args()

    server = BareServer(options.port, options)
    server.start()
    if options.no_gc:
        # The loop makes no reference cycles of its own; the collector only runs because of allocation counts.
        gc.freeze()
        gc.disable()
    threads = [threading.Thread(target=server.poll_loop, daemon=True) for _ in range(options.pollers - 1)]
    for thread in threads:
        thread.start()

    def dump_count(*_: Any) -> None:
        if options.count_file:
            with open(options.count_file, "w") as f:
                f.write(f"{server.calls}\n")

    def on_signal(signum: int, _frame: Any) -> None:
        # Runs in the main thread, inside cq.poll's periodic signal check (every 200 ms) when it polls.
        if not server.stopping:
            server.stop()

    signal.signal(signal.SIGUSR1, dump_count)
    signal.signal(signal.SIGTERM, on_signal)
    signal.signal(signal.SIGINT, on_signal)
    print(f"grpc_cygrpc_bare listening on 127.0.0.1:{options.port} (pid {os.getpid()})", file=sys.stderr, flush=True)
    server.poll_loop()  # returns once the server and then the queue have shut down
    for thread in threads:
        thread.join(timeout=2)
    server.server.destroy()


if __name__ == "__main__":
    main()
