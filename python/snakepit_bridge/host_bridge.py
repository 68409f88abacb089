"""Calling tools registered on the host.

A worker creates one :class:`HostBridge` and hands it to every
:class:`~snakepit_bridge.adapter.ToolContext`; tools call ``ctx.call_host(...)``
(sync, from a tool thread) or ``await ctx.acall_host(...)`` (from async tools).
Over the local channel the calls travel on the worker's own channel; over gRPC,
to the host's bridge server with a per-run secret. This base class is the bridge
of a worker whose host offers no tools: every call raises
:class:`HostToolsUnavailable`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

__all__ = [
    "DEFAULT_TIMEOUT_S",
    "HOST_TOOLS_UNAVAILABLE",
    "HostBridge",
    "HostToolError",
    "HostToolsUnavailable",
]

DEFAULT_TIMEOUT_S = 60.0

HOST_TOOLS_UNAVAILABLE = "host tools are not available: the host bridge is not configured"

# HostToolError.kind for the failure kinds that are not plain exceptions.
ERROR_KINDS = {"tool_not_found": "not_found", "invalid_arguments": "invalid_arguments"}


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
    * ``"timeout"``: no answer within the call's timeout (the host tool is cancelled);
    * ``"unauthenticated"``: the host refused the secret (gRPC transport);
    * ``"rpc_error"``: any other transport failure; ``type`` names it.
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


def tool_error(
    name: str, kind: str, type: str, message: str, traceback: str, available: Sequence[str]
) -> HostToolError:
    """The HostToolError for a failure the host sent back."""
    mapped = ERROR_KINDS.get(kind, "exception")
    message = message or f"host tool {name!r} failed"
    if mapped == "not_found" and available:
        message += f" (available host tools: {', '.join(available)})"
    return HostToolError(type, message, mapped, traceback=traceback, available_tools=available)


def check_args(name: str, args: Mapping[str, Any] | None) -> dict[str, Any]:
    """The arguments as a dict, or a TypeError naming the host tool."""
    if args is None:
        return {}
    if not isinstance(args, Mapping):
        raise TypeError(f"arguments of host tool {name!r} must be a mapping, not {type(args).__name__}")
    return dict(args)


class HostBridge:
    """The bridge of a worker whose host offers no tools; subclasses carry real calls."""

    worker_id: str = ""

    @property
    def configured(self) -> bool:
        """Whether this worker can reach host tools."""
        return False

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
        """Calls host tool ``name`` and returns its result. Blocking: async code uses :meth:`acall`."""
        check_args(name, args)
        raise HostToolsUnavailable(HOST_TOOLS_UNAVAILABLE)

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
        check_args(name, args)
        raise HostToolsUnavailable(HOST_TOOLS_UNAVAILABLE)

    def list_tools(self, *, timeout: float | None = DEFAULT_TIMEOUT_S) -> list[dict[str, Any]]:
        """The host's tools: ``[{name, description, parameters: [{name, type, required, default}]}]``."""
        raise HostToolsUnavailable(HOST_TOOLS_UNAVAILABLE)

    async def alist_tools(self, *, timeout: float | None = DEFAULT_TIMEOUT_S) -> list[dict[str, Any]]:
        """Async form of :meth:`list_tools`."""
        raise HostToolsUnavailable(HOST_TOOLS_UNAVAILABLE)

    def close(self) -> None:
        """Releases what the bridge holds."""

    async def aclose(self) -> None:
        """Async form of :meth:`close`."""
        self.close()
