"""The gRPC transport: the bridge service over grpc.aio, behind a per-worker token.

Every RPC must carry the worker's token as the ``x-snakepit-token`` metadata entry;
anything else is refused with ``UNAUTHENTICATED`` before it reaches a tool. The token
comes from the bootstrap line on stdin (never the command line or the environment).
The server listens on a loopback port, or on a unix socket the host places in a
directory of mode 0700 (the socket itself is made 0600).
"""

from __future__ import annotations

import asyncio
import hmac
import itertools
import json
import logging
import os
import sys
import threading
from collections.abc import Awaitable, Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import grpc
from grpc import aio

from . import errors
from .dispatch import Dispatcher
from .errors import ToolFailure
from .generated import snakepit_bridge_pb2 as pb
from .generated import snakepit_bridge_pb2_grpc as pb_grpc
from .values import BadValue, ValueEncoder, decode_tagged

log = logging.getLogger("snakepit_bridge")

TOKEN_METADATA_KEY = "x-snakepit-token"
# One chunk at a time from the generator, as each is handed to gRPC: a process that dies after
# yielding has sent what it yielded. gRPC's own flow control and read-ahead buffer beyond it.
STREAM_WINDOW = 1

_KINDS = {
    errors.PYTHON_EXCEPTION: pb.ToolError.PYTHON_EXCEPTION,
    errors.TOOL_NOT_FOUND: pb.ToolError.TOOL_NOT_FOUND,
    errors.INVALID_ARGUMENTS: pb.ToolError.INVALID_ARGUMENTS,
    errors.UNSERIALIZABLE_RESULT: pb.ToolError.UNSERIALIZABLE_RESULT,
}


def _tool_error(failure: ToolFailure) -> pb.ToolError:
    return pb.ToolError(
        kind=_KINDS.get(failure.kind, pb.ToolError.PYTHON_EXCEPTION),
        type=failure.type,
        message=failure.message,
        traceback=failure.traceback,
        available_tools=failure.available_tools,
        path=failure.path,
    )


def _encode(tool: str, value: Any, max_bytes: int) -> tuple[bytes, list[Any], bool]:
    encoder = ValueEncoder(max_bytes)
    data = encoder.dumps(value)
    size = len(data) + sum(memoryview(b).nbytes for b in encoder.blobs)
    if size > max_bytes:
        raise ToolFailure(
            errors.UNSERIALIZABLE_RESULT,
            "ResultTooLarge",
            f"the result of tool {tool!r} is {size} bytes, over the limit of {max_bytes} bytes (maxMessageBytes)",
        )
    return data, [bytes(b) for b in encoder.blobs], encoder.tagged


def _encoded_or_failure(tool: str, value: Any, max_bytes: int) -> tuple[bytes, list[Any], bool] | ToolFailure:
    try:
        return _encode(tool, value, max_bytes)
    except ToolFailure as failure:
        return failure
    except (TypeError, ValueError, RecursionError) as exc:
        return errors.unsendable(tool, exc, value, max_bytes)


class _QueueSink:
    """Outcomes as items of an asyncio queue on the server's loop, from any thread."""

    def __init__(self, loop: asyncio.AbstractEventLoop, tool: str, max_bytes: int) -> None:
        self.queue: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
        self._loop = loop
        self._tool = tool
        self._max = max_bytes

    def _put(self, item: tuple[str, Any]) -> None:
        if self._loop.is_closed():
            return
        self._loop.call_soon_threadsafe(self.queue.put_nowait, item)

    def result(self, value: Any) -> None:
        encoded = _encoded_or_failure(self._tool, value, self._max)
        self._put(("failure", encoded) if isinstance(encoded, ToolFailure) else ("result", encoded))

    def chunk(self, value: Any) -> bool:
        encoded = _encoded_or_failure(self._tool, value, self._max)
        if isinstance(encoded, ToolFailure):
            self._put(("failure", encoded))
            return False
        self._put(("chunk", encoded))
        return True

    def failure(self, failure: ToolFailure) -> None:
        self._put(("failure", failure))

    def end(self) -> None:
        self._put(("end", None))

    def cancelled(self) -> None:
        self._put(("cancelled", None))


class _TokenCheck(aio.ServerInterceptor):
    """Refuses every RPC that does not carry the worker's token."""

    def __init__(self, token: str) -> None:
        self._token = token.encode()

        async def refuse(request: Any, context: aio.ServicerContext) -> Any:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong worker token")

        self._refuse_unary = grpc.unary_unary_rpc_method_handler(refuse)

        async def refuse_stream(request: Any, context: aio.ServicerContext) -> None:
            await context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong worker token")

        self._refuse_stream = grpc.unary_stream_rpc_method_handler(refuse_stream)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        for key, value in details.invocation_metadata or ():
            if key == TOKEN_METADATA_KEY:
                given = value.encode() if isinstance(value, str) else bytes(value)
                if hmac.compare_digest(given, self._token):
                    return await continuation(details)
        if details.method.endswith("ExecuteStreamingTool"):
            return self._refuse_stream
        return self._refuse_unary


class BridgeServicer(pb_grpc.BridgeServiceServicer):
    """The BridgeService over a dispatcher."""

    def __init__(
        self,
        dispatcher: Dispatcher,
        *,
        executor: ThreadPoolExecutor,
        request_stop: Callable[[float], None],
        max_message_bytes: int,
    ) -> None:
        self._dispatcher = dispatcher
        self._executor = executor
        self._request_stop = request_stop
        self._max = max_message_bytes
        self._ids = itertools.count(1)
        self._busy = 0
        self._busy_lock = threading.Lock()
        dispatcher.set_blocked_probe(self._blocked)

    def _blocked(self) -> str | None:
        threads = self._executor._max_workers
        with self._busy_lock:
            busy = self._busy
        return f"all {threads} tool threads are busy and calls are waiting" if busy > threads else None

    # -- facts ---------------------------------------------------------------- #

    async def Ping(self, request: pb.PingRequest, context: aio.ServicerContext) -> pb.PingResponse:
        return pb.PingResponse(
            message="pong",
            pid=os.getpid(),
            worker_id=self._dispatcher.worker_id,
            python_version=sys.version.split()[0],
            adapter=self._dispatcher.adapter_name,
        )

    async def Health(self, request: pb.HealthRequest, context: aio.ServicerContext) -> pb.HealthResponse:
        health = self._dispatcher.health()
        return pb.HealthResponse(
            ok=health["ok"],
            pid=health["pid"],
            rss_bytes=health["rss_bytes"],
            active_calls=health["active_calls"],
            uptime_ms=health["uptime_ms"],
            detail=health["detail"],
            running=[
                pb.RunningCall(tool=r["tool"], ms=r["ms"], cancelled_ms=r.get("cancelled_ms", 0))
                for r in health["running"]
            ],
        )

    async def DescribeTools(
        self, request: pb.DescribeToolsRequest, context: aio.ServicerContext
    ) -> pb.DescribeToolsResponse:
        return pb.DescribeToolsResponse(
            adapter=self._dispatcher.adapter_name,
            tools=[
                pb.ToolSpec(
                    name=spec["name"],
                    description=spec["description"],
                    streaming=spec["streaming"],
                    parameters=[
                        pb.ToolParameter(
                            name=p["name"],
                            type=p["type"],
                            required=p["required"],
                            default_json=p["default_json"].encode(),
                        )
                        for p in spec["parameters"]
                    ],
                    types_json=json.dumps(spec["types"]),
                )
                for spec in self._dispatcher.describe()
            ],
        )

    async def InitializeSession(
        self, request: pb.InitializeSessionRequest, context: aio.ServicerContext
    ) -> pb.InitializeSessionResponse:
        return pb.InitializeSessionResponse()

    async def CleanupSession(
        self, request: pb.CleanupSessionRequest, context: aio.ServicerContext
    ) -> pb.CleanupSessionResponse:
        return pb.CleanupSessionResponse(existed=self._dispatcher.cleanup_session(request.session_id))

    async def Stop(self, request: pb.StopRequest, context: aio.ServicerContext) -> pb.StopResponse:
        grace = max(request.grace_ms, 0) / 1000
        log.info("Stop requested (grace %.3fs)", grace)
        # Shut down only once this reply is on its way, so the caller gets it.
        context.add_done_callback(lambda _ctx: self._request_stop(grace))
        return pb.StopResponse()

    async def WaitSettled(self, request: pb.WaitSettledRequest, context: aio.ServicerContext) -> pb.WaitSettledResponse:
        deadline = asyncio.get_running_loop().time() + max(request.timeout_ms, 0) / 1000
        while self._dispatcher.is_running(request.request_id):
            if asyncio.get_running_loop().time() >= deadline:
                return pb.WaitSettledResponse(settled=False)
            await asyncio.sleep(0.02)
        return pb.WaitSettledResponse(settled=True)

    # -- tools ---------------------------------------------------------------- #

    def _start(self, request: pb.ExecuteToolRequest, stream: bool) -> tuple[str, _QueueSink]:
        call_id = request.request_id or f"grpc-{next(self._ids)}"
        sink = _QueueSink(asyncio.get_running_loop(), request.tool, self._max)
        try:
            args = _decode_args(request)
            call, info, kwargs = self._dispatcher.prepare(
                call_id,
                request.tool,
                args,
                session=request.session_id,
                stream=stream,
                window=STREAM_WINDOW,
                attachments=dict(request.attachments),
                session_moved=request.session_moved,
            )
        except ToolFailure as failure:
            sink.failure(failure)
            return call_id, sink
        if info.is_async:
            self._dispatcher.run(call, info, kwargs, sink)
        else:
            with self._busy_lock:
                self._busy += 1

            def run() -> None:
                try:
                    self._dispatcher.run(call, info, kwargs, sink)
                finally:
                    with self._busy_lock:
                        self._busy -= 1

            self._executor.submit(run)
        return call_id, sink

    async def ExecuteTool(self, request: pb.ExecuteToolRequest, context: aio.ServicerContext) -> pb.ExecuteToolResponse:
        call_id, sink = self._start(request, stream=False)
        answered = False
        try:
            kind, payload = await sink.queue.get()
            answered = True
        finally:
            # Cancelled by the client (or failing any other way): the tool must hear of it.
            if not answered:
                self._dispatcher.cancel(call_id)
        if kind == "result":
            data, blobs, tagged = payload
            return pb.ExecuteToolResponse(result_json=data, blobs=blobs, tagged=tagged)
        if kind == "failure":
            return pb.ExecuteToolResponse(error=_tool_error(payload))
        return pb.ExecuteToolResponse(
            error=pb.ToolError(
                kind=pb.ToolError.PYTHON_EXCEPTION, type="CallCancelled", message="the call was cancelled"
            )
        )

    async def ExecuteStreamingTool(self, request: pb.ExecuteToolRequest, context: aio.ServicerContext) -> None:
        # A coroutine using context.write (not an async generator), so that a client cancel
        # ends it right here and the cancel reaches the tool at once.
        call_id, sink = self._start(request, stream=True)
        finished = False
        try:
            while True:
                kind, payload = await sink.queue.get()
                if kind in ("chunk", "result"):
                    data, blobs, tagged = payload
                    finished = kind == "result"
                    await context.write(pb.ToolChunk(data_json=data, blobs=blobs, tagged=tagged))
                    if finished:
                        return
                    self._dispatcher.grant(call_id, 1)
                elif kind == "failure":
                    finished = True
                    await context.write(pb.ToolChunk(error=_tool_error(payload)))
                    return
                else:
                    finished = True
                    return
        finally:
            # A client cancel surfaces as CancelledError, or as a failed write: either way the
            # generator must be closed.
            if not finished:
                self._dispatcher.cancel(call_id)


def _decode_args(request: pb.ExecuteToolRequest) -> Any:
    import json

    try:
        args = json.loads(request.args_json) if request.args_json else {}
    except (ValueError, UnicodeDecodeError, RecursionError) as exc:
        raise errors.from_exception(errors.INVALID_ARGUMENTS, exc, f"args_json is not valid JSON: {exc}") from exc
    if request.tagged:
        try:
            args = decode_tagged(args, list(request.blobs))
        except BadValue as exc:
            raise ToolFailure(errors.INVALID_ARGUMENTS, "ValueError", str(exc), path=exc.path) from exc
    return args


async def serve(
    dispatcher: Dispatcher,
    *,
    token: str,
    host: str,
    port: int,
    unix_socket: str,
    max_message_bytes: int,
    executor: ThreadPoolExecutor,
    announce: Callable[[dict[str, Any]], None],
    stop_grace: asyncio.Future[float],
    request_stop: Callable[[float], None],
) -> int:
    """Serves until asked to stop; returns the exit code."""
    from .cli import EXIT_BIND_FAILURE, EXIT_OK

    server = aio.server(
        interceptors=[_TokenCheck(token)],
        options=[
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            # Never share a port with another process.
            ("grpc.so_reuseport", 0),
        ],
    )
    servicer = BridgeServicer(
        dispatcher, executor=executor, request_stop=request_stop, max_message_bytes=max_message_bytes
    )
    pb_grpc.add_BridgeServiceServicer_to_server(servicer, server)
    if unix_socket:
        address = f"unix:{unix_socket}"
    else:
        address = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
    previous_umask = os.umask(0o177)  # the unix socket is created 0600
    try:
        bound = server.add_insecure_port(address)
    except RuntimeError as exc:
        log.error("could not bind %s: %s", address, exc)
        bound = 0
    finally:
        os.umask(previous_umask)
    if not bound:
        return EXIT_BIND_FAILURE
    if unix_socket:
        os.chmod(unix_socket, 0o600)
    await server.start()
    bound_host = f"[{host}]" if ":" in host else host
    announce({"port": 0, "address": address} if unix_socket else {"port": bound, "address": f"{bound_host}:{bound}"})
    log.info("serving %s on %s (%d tools)", dispatcher.adapter_name, address, len(dispatcher.tools))
    grace = await stop_grace
    await server.stop(grace)
    return EXIT_OK
