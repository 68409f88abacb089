"""Calling tools registered on the host, through the host's ``HostToolService``.

The host runs a gRPC server on loopback and tells each worker about it with
two environment variables:

* ``SNAKEPIT_HOST_BRIDGE``: its address, ``127.0.0.1:<port>`` or ``unix:/path``.
* ``SNAKEPIT_HOST_SECRET``: a per-run secret, sent with every call as the
  ``x-snakepit-secret`` metadata entry. The host refuses calls without it.

A worker creates one :class:`HostBridge` and hands it to every
:class:`~snakepit_bridge.adapter.ToolContext`; tools call
``ctx.call_host(...)`` (sync, from the tool thread pool) or
``await ctx.acall_host(...)`` (from async tools).
"""

from __future__ import annotations

import asyncio
import json
import os
import threading
from collections.abc import Mapping, Sequence
from typing import Any, TypeAlias

import grpc
from grpc import aio

from .generated import snakepit_bridge_pb2 as pb
from .generated import snakepit_bridge_pb2_grpc as pb_grpc

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "ENV_HOST_BRIDGE",
    "ENV_HOST_SECRET",
    "HOST_TOOLS_UNAVAILABLE",
    "SECRET_METADATA_KEY",
    "HostBridge",
    "HostToolError",
    "HostToolsUnavailable",
]

ENV_HOST_BRIDGE = "SNAKEPIT_HOST_BRIDGE"
ENV_HOST_SECRET = "SNAKEPIT_HOST_SECRET"
SECRET_METADATA_KEY = "x-snakepit-secret"

DEFAULT_TIMEOUT_S = 60.0
DEFAULT_MAX_MESSAGE_BYTES = 64 * 1024 * 1024

HOST_TOOLS_UNAVAILABLE = "host tools are not available: the host bridge is not configured"

Kind = pb.ToolError.Kind
Stub: TypeAlias = pb_grpc.HostToolServiceStub

# HostToolError.kind for the ToolError kinds that are not plain exceptions.
_ERROR_KINDS = {
    Kind.TOOL_NOT_FOUND: "not_found",
    Kind.INVALID_ARGUMENTS: "invalid_arguments",
}


# --------------------------------------------------------------------------- #
# Errors
# --------------------------------------------------------------------------- #


class HostToolsUnavailable(RuntimeError):
    """Host tools cannot be called: no bridge is configured, or the host is unreachable."""


class HostToolError(Exception):
    """A host tool failed, or the host refused the call.

    ``type`` and ``message`` are the host's error type and message; ``str()``
    is ``"<type>: <message>"`` so both survive when this exception leaves a
    Python tool and reaches the host as a PythonError.

    ``kind`` is one of:

    * ``"not_found"``: no host tool of that name (``available_tools`` lists
      the ones there are, and so does the message);
    * ``"invalid_arguments"``: the host rejected the arguments;
    * ``"exception"``: the host tool raised/threw;
    * ``"unauthenticated"``: the host refused the secret;
    * ``"rpc_error"``: any other gRPC failure; ``type`` is the status name,
      e.g. ``"DEADLINE_EXCEEDED"``.
    """

    def __init__(
        self,
        type: str,
        message: str,
        kind: str = "exception",
        *,
        traceback: str = "",
        available_tools: Sequence[str] = (),
    ) -> None:
        super().__init__(f"{type}: {message}" if type else message)
        self.type = type
        self.message = message
        self.kind = kind
        self.traceback = traceback
        self.available_tools = tuple(available_tools)

    def __reduce__(self) -> Any:
        # The default reduce would re-create the exception from str(self) alone.
        return (
            type(self),
            (self.type, self.message, self.kind),
            {"traceback": self.traceback, "available_tools": self.available_tools},
        )


def _tool_error(name: str, error: pb.ToolError) -> HostToolError:
    """The HostToolError for a ToolError the host sent back."""
    kind = _ERROR_KINDS.get(error.kind, "exception")
    message = error.message or f"host tool {name!r} failed"
    if kind == "not_found" and error.available_tools:
        message += f" (available host tools: {', '.join(error.available_tools)})"
    return HostToolError(
        error.type,
        message,
        kind,
        traceback=error.traceback,
        available_tools=error.available_tools,
    )


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
    return HostToolError(code.name, details or str(exc), "rpc_error")


# --------------------------------------------------------------------------- #
# Encoding
# --------------------------------------------------------------------------- #


def _encode_args(name: str, args: Mapping[str, Any] | None) -> bytes:
    """JSON-encode a host tool's arguments, refusing what JSON cannot carry."""
    if args is None:
        return b"{}"
    if not isinstance(args, Mapping):
        raise TypeError(f"arguments of host tool {name!r} must be a mapping, not {type(args).__name__}")
    try:
        return json.dumps(dict(args), allow_nan=False).encode("utf-8")
    except (TypeError, ValueError, RecursionError) as exc:
        raise TypeError(f"arguments of host tool {name!r} are not JSON-serialisable: {exc}") from exc


def _decode_result(name: str, response: pb.CallHostToolResponse) -> Any:
    """The decoded result of a CallHostTool reply, or raise its error."""
    if response.WhichOneof("outcome") == "error":
        raise _tool_error(name, response.error)
    if not response.result_json:
        return None  # the host sent no outcome: the tool returned nothing
    return json.loads(response.result_json)


def _decode_default(default_json: bytes) -> Any:
    if not default_json:
        return None
    try:
        return json.loads(default_json)
    except ValueError:
        return None


def _describe(response: pb.ListHostToolsResponse) -> list[dict[str, Any]]:
    """Host tool specs as plain dicts."""
    return [
        {
            "name": spec.name,
            "description": spec.description,
            "parameters": [
                {
                    "name": p.name,
                    "type": p.type,
                    "required": p.required,
                    "default": _decode_default(p.default_json),
                }
                for p in spec.parameters
            ],
        }
        for spec in response.tools
    ]


# --------------------------------------------------------------------------- #
# The bridge
# --------------------------------------------------------------------------- #


class HostBridge:
    """A client of the host's ``HostToolService``; one per worker.

    Channels are created on first use: a sync channel shared by all threads
    (for tools running in the thread pool), and one ``grpc.aio`` channel per
    event loop (an aio channel is bound to the loop it was created on).

    Without an address every call raises :class:`HostToolsUnavailable`.
    """

    def __init__(
        self,
        address: str | None,
        secret: str | None = None,
        *,
        worker_id: str = "",
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> None:
        self.address = address or None
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
        self._sync: tuple[grpc.Channel, Stub] | None = None
        self._aio: dict[asyncio.AbstractEventLoop, tuple[aio.Channel, Stub]] = {}

    @classmethod
    def from_env(
        cls,
        *,
        worker_id: str = "",
        environ: Mapping[str, str] | None = None,
        max_message_bytes: int = DEFAULT_MAX_MESSAGE_BYTES,
    ) -> HostBridge:
        """The bridge described by ``SNAKEPIT_HOST_BRIDGE`` and ``SNAKEPIT_HOST_SECRET``."""
        env = os.environ if environ is None else environ
        return cls(
            env.get(ENV_HOST_BRIDGE) or None,
            env.get(ENV_HOST_SECRET) or None,
            worker_id=worker_id,
            max_message_bytes=max_message_bytes,
        )

    @property
    def configured(self) -> bool:
        """Whether the host told this worker where its bridge is."""
        return self.address is not None

    def __repr__(self) -> str:
        # Never show the secret.
        return f"HostBridge(address={self.address!r}, worker_id={self.worker_id!r})"

    # -- calls ------------------------------------------------------------- #

    def call(
        self,
        name: str,
        args: Mapping[str, Any] | None = None,
        session_id: str | None = None,
        attachments: Mapping[str, bytes] | None = None,
        *,
        worker_id: str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT_S,
    ) -> Any:
        """Call host tool ``name`` and return its decoded JSON result.

        Blocks the calling thread; from async code use :meth:`acall`, since
        blocking the event loop also stalls the worker's own RPCs.
        ``timeout`` is in seconds (``None``: no deadline).
        """
        request = self._request(name, args, session_id, attachments, worker_id)
        try:
            response = self._sync_stub().CallHostTool(request, metadata=self._metadata, timeout=timeout)
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
        """Async form of :meth:`call`."""
        request = self._request(name, args, session_id, attachments, worker_id)
        try:
            response = await self._aio_stub().CallHostTool(request, metadata=self._metadata, timeout=timeout)
        except grpc.RpcError as exc:
            raise _rpc_failure(exc) from None
        return _decode_result(name, response)

    def list_tools(self, *, timeout: float | None = DEFAULT_TIMEOUT_S) -> list[dict[str, Any]]:
        """The host's tools: ``[{name, description, parameters: [{name, type, required, default}]}]``."""
        self._require_address()
        try:
            response = self._sync_stub().ListHostTools(
                pb.ListHostToolsRequest(), metadata=self._metadata, timeout=timeout
            )
        except grpc.RpcError as exc:
            raise _rpc_failure(exc) from None
        return _describe(response)

    async def alist_tools(self, *, timeout: float | None = DEFAULT_TIMEOUT_S) -> list[dict[str, Any]]:
        """Async form of :meth:`list_tools`."""
        self._require_address()
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
        # Encoding comes first so that bad arguments are a TypeError whether
        # or not a host is there to receive them.
        args_json = _encode_args(name, args)
        self._require_address()
        return pb.CallHostToolRequest(
            tool=name,
            args_json=args_json,
            attachments=dict(attachments or {}),
            session_id=session_id or "",
            worker_id=self.worker_id if worker_id is None else worker_id,
        )

    # -- channels ---------------------------------------------------------- #

    def _require_address(self) -> str:
        if self.address is None:
            raise HostToolsUnavailable(HOST_TOOLS_UNAVAILABLE)
        return self.address

    def _sync_stub(self) -> Stub:
        with self._lock:
            if self._sync is None:
                channel = grpc.insecure_channel(self._require_address(), options=self._options)
                self._sync = (channel, Stub(channel))
            return self._sync[1]

    def _aio_stub(self) -> Stub:
        loop = asyncio.get_running_loop()
        with self._lock:
            # Channels of loops that have since closed can never be used again.
            for stale in [other for other in self._aio if other.is_closed()]:
                del self._aio[stale]
            if loop not in self._aio:
                channel = aio.insecure_channel(self._require_address(), options=self._options)
                self._aio[loop] = (channel, Stub(channel))
            return self._aio[loop][1]

    def close(self) -> None:
        """Close the sync channel and forget the aio ones (see :meth:`aclose`)."""
        with self._lock:
            sync, self._sync = self._sync, None
            self._aio.clear()
        if sync is not None:
            sync[0].close()

    async def aclose(self) -> None:
        """Close the running loop's aio channel, then everything :meth:`close` closes."""
        with self._lock:
            entry = self._aio.pop(asyncio.get_running_loop(), None)
        if entry is not None:
            await entry[0].close()
        self.close()
