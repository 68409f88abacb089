"""Host tools over gRPC: a client of the host's ``HostToolService`` (gRPC transport only).

The host serves its tools on loopback and requires a per-run secret, sent with every call
as the ``x-snakepit-secret`` metadata entry. The worker learns the address and the secret
from its bootstrap line on stdin, never from its environment, so a process a tool starts
cannot read them.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Mapping
from typing import Any

import grpc
from grpc import aio

from .dispatch import shielded
from .errors import CallCancelled
from .generated import snakepit_bridge_pb2 as pb
from .generated import snakepit_bridge_pb2_grpc as pb_grpc
from .host_bridge import DEFAULT_TIMEOUT_S, HostBridge, HostToolError, HostToolsUnavailable, check_args, tool_error
from .values import ValueEncoder, decode_tagged

# How long a waiting host call sleeps between looks at its call's cancel flag.
_CANCEL_POLL_S = 0.05

SECRET_METADATA_KEY = "x-snakepit-secret"
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024

Stub = pb_grpc.HostToolServiceStub
# The generated stub is untyped (protoc's output carries no hints).
StubType = Any
_KIND_NAMES = {
    pb.ToolError.TOOL_NOT_FOUND: "tool_not_found",
    pb.ToolError.INVALID_ARGUMENTS: "invalid_arguments",
}


def _rpc_failure(exc: grpc.RpcError) -> Exception:
    """The exception to raise for a failed gRPC call to the host."""
    # Errors from real calls (sync or aio) carry code() and details(); the
    # RpcError base class itself does not declare them.
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = (exc.details() if hasattr(exc, "details") else "") or ""
    if code == grpc.StatusCode.UNAUTHENTICATED:
        return HostToolError("Unauthenticated", details or "the host refused the call", "unauthenticated")
    if code == grpc.StatusCode.UNAVAILABLE:
        return HostToolsUnavailable(f"host bridge unreachable: {details}")
    if code == grpc.StatusCode.DEADLINE_EXCEEDED:
        return HostToolError("DeadlineExceeded", details or "the host did not answer in time", "timeout")
    return HostToolError(code.name, details or str(exc), "rpc_error")


def _encode_args(name: str, args: Mapping[str, Any] | None) -> tuple[bytes, list[bytes], bool]:
    """JSON of the arguments with their binary values as blobs, or a TypeError naming the host tool."""
    encoder = ValueEncoder()
    try:
        data = encoder.dumps(check_args(name, args))
    except (ValueError, RecursionError) as exc:
        raise TypeError(f"arguments of host tool {name!r} cannot be sent: {exc}") from exc
    except TypeError as exc:
        if "mapping" in str(exc):
            raise
        raise TypeError(f"arguments of host tool {name!r} cannot be sent: {exc}") from exc
    return data, [bytes(b) for b in encoder.blobs], encoder.tagged


def _decode_result(name: str, response: Any) -> Any:
    if response.WhichOneof("outcome") == "error":
        error = response.error
        raise tool_error(
            name,
            _KIND_NAMES.get(error.kind, "python_exception"),
            error.type,
            error.message,
            error.traceback,
            list(error.available_tools),
        )
    if not response.result_json:
        return None  # the host sent no outcome: the tool returned nothing
    value = json.loads(response.result_json)
    return decode_tagged(value, list(response.blobs), "result") if response.tagged else value


def _decode_default(default_json: bytes) -> Any:
    if not default_json:
        return None
    try:
        return json.loads(default_json)
    except ValueError:
        return None


def _describe(response: pb.ListHostToolsResponse) -> list[dict[str, Any]]:
    return [
        {
            "name": spec.name,
            "description": spec.description,
            "parameters": [
                {"name": p.name, "type": p.type, "required": p.required, "default": _decode_default(p.default_json)}
                for p in spec.parameters
            ],
        }
        for spec in response.tools
    ]


class GrpcHostBridge(HostBridge):
    """A client of the host's ``HostToolService``; one per worker.

    Channels are created on first use: a sync channel shared by all threads, and one
    ``grpc.aio`` channel per event loop (an aio channel is bound to its loop).
    """

    def __init__(
        self,
        address: str,
        secret: str | None = None,
        *,
        worker_id: str = "",
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self.address = address
        self.worker_id = worker_id
        self._metadata: tuple[tuple[str, str], ...] = ((SECRET_METADATA_KEY, secret),) if secret else ()
        self._options = [
            ("grpc.max_send_message_length", max_message_bytes),
            ("grpc.max_receive_message_length", max_message_bytes),
            # The host is always on loopback: an http_proxy in the environment
            # must not reroute (or break) calls to it.
            ("grpc.enable_http_proxy", 0),
        ]
        self._lock = threading.Lock()
        self._sync: tuple[grpc.Channel, StubType] | None = None
        self._aio: dict[asyncio.AbstractEventLoop, tuple[aio.Channel, StubType]] = {}

    @property
    def configured(self) -> bool:
        return True

    def __repr__(self) -> str:
        # Never show the secret.
        return f"GrpcHostBridge(address={self.address!r}, worker_id={self.worker_id!r})"

    def call(
        self,
        name: str,
        args: Mapping[str, Any] | None = None,
        session_id: str | None = None,
        attachments: Mapping[str, bytes] | None = None,
        *,
        worker_id: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT_S,
        cancelled: Any = None,
    ) -> Any:
        request = self._request(name, args, session_id, attachments, worker_id)
        # Shielded, and waited for in slices: a cancel of the calling tool cancels the RPC.
        with shielded():
            future = self._sync_stub().CallHostTool.future(request, metadata=self._metadata, timeout=timeout)
            try:
                while True:
                    try:
                        response = future.result(timeout=_CANCEL_POLL_S)
                        break
                    except grpc.FutureTimeoutError:
                        if cancelled is not None and cancelled.is_set():
                            future.cancel()
                            raise CallCancelled() from None
            except grpc.RpcError as exc:
                raise _rpc_failure(exc) from None
        return _decode_result(name, response)

    async def acall(
        self,
        name: str,
        args: Mapping[str, Any] | None = None,
        session_id: str | None = None,
        attachments: Mapping[str, bytes] | None = None,
        *,
        worker_id: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT_S,
    ) -> Any:
        request = self._request(name, args, session_id, attachments, worker_id)
        try:
            response = await self._aio_stub().CallHostTool(request, metadata=self._metadata, timeout=timeout)
        except grpc.RpcError as exc:
            raise _rpc_failure(exc) from None
        return _decode_result(name, response)

    def list_tools(self, *, timeout: float | None = DEFAULT_TIMEOUT_S) -> list[dict[str, Any]]:
        try:
            response = self._sync_stub().ListHostTools(
                pb.ListHostToolsRequest(), metadata=self._metadata, timeout=timeout
            )
        except grpc.RpcError as exc:
            raise _rpc_failure(exc) from None
        return _describe(response)

    async def alist_tools(self, *, timeout: float | None = DEFAULT_TIMEOUT_S) -> list[dict[str, Any]]:
        try:
            response = await self._aio_stub().ListHostTools(
                pb.ListHostToolsRequest(), metadata=self._metadata, timeout=timeout
            )
        except grpc.RpcError as exc:
            raise _rpc_failure(exc) from None
        return _describe(response)

    def _request(
        self,
        name: str,
        args: Mapping[str, Any] | None,
        session_id: str | None,
        attachments: Mapping[str, bytes] | None,
        worker_id: str | None,
    ) -> pb.CallHostToolRequest:
        args_json, blobs, tagged = _encode_args(name, args)
        return pb.CallHostToolRequest(
            tool=name,
            args_json=args_json,
            blobs=blobs,
            tagged=tagged,
            attachments=dict(attachments or {}),
            session_id=session_id or "",
            worker_id=self.worker_id if worker_id is None else worker_id,
        )

    def _sync_stub(self) -> StubType:
        with self._lock:
            if self._sync is None:
                channel = grpc.insecure_channel(self.address, options=self._options)
                self._sync = (channel, Stub(channel))
            return self._sync[1]

    def _aio_stub(self) -> StubType:
        loop = asyncio.get_running_loop()
        with self._lock:
            # Channels of loops that have since closed can never be used again.
            for stale in [other for other in self._aio if other.is_closed()]:
                del self._aio[stale]
            if loop not in self._aio:
                channel = aio.insecure_channel(self.address, options=self._options)
                self._aio[loop] = (channel, Stub(channel))
            return self._aio[loop][1]

    def close(self) -> None:
        with self._lock:
            sync, self._sync = self._sync, None
            self._aio.clear()
        if sync is not None:
            sync[0].close()

    async def aclose(self) -> None:
        with self._lock:
            entry = self._aio.pop(asyncio.get_running_loop(), None)
        if entry is not None:
            await entry[0].close()
        self.close()
