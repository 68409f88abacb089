"""What a failed call reports to the host: a kind, the exception's type and message, a traceback.

Transport-neutral: the local channel sends these as JSON, the gRPC transport as ``ToolError``.
"""

from __future__ import annotations

import concurrent.futures
import os
import traceback
from dataclasses import dataclass, field
from typing import Any

# The kinds of failure the host tells apart (the same names as the proto's ToolError.Kind).
PYTHON_EXCEPTION = "python_exception"
TOOL_NOT_FOUND = "tool_not_found"
INVALID_ARGUMENTS = "invalid_arguments"
UNSERIALIZABLE_RESULT = "unserializable_result"


class CallCancelled(BaseException):
    """Raised inside a tool whose call the host cancelled (timeout, interruption, stream ended).

    A ``BaseException``, like :class:`asyncio.CancelledError`, so that a tool's
    ``except Exception`` does not swallow it and keep working for nobody.
    """


@dataclass
class ToolFailure(Exception):
    """A failure to report instead of a result."""

    kind: str
    type: str
    message: str
    traceback: str = ""
    available_tools: list[str] = field(default_factory=list)
    # Where in the arguments the problem is (invalid arguments), e.g. "args.items[2]".
    path: str = ""

    def __post_init__(self) -> None:
        super().__init__(self.message)

    def to_json(self) -> dict[str, Any]:
        data: dict[str, Any] = {"kind": self.kind, "type": self.type, "message": self.message}
        if self.traceback:
            data["traceback"] = self.traceback
        if self.available_tools:
            data["available"] = self.available_tools
        if self.path:
            data["path"] = self.path
        return data


_HERE = os.path.dirname(os.path.abspath(__file__))
# Frames from these files lead up to the tool and tell its author nothing. The showcase adapter,
# which lives beside them, is a tool like any other.
_RUNTIME_FILES = (
    *(
        os.path.join(_HERE, f"{module}.py")
        for module in ("adapter", "channel", "cli", "dispatch", "errors", "frames", "grpc_server", "values")
    ),
    os.path.dirname(os.path.abspath(concurrent.futures.__file__)),
    # asyncio by path: importing it here would cost every worker's start (see dispatch.py).
    os.path.join(os.path.dirname(os.path.abspath(os.__file__)), "asyncio"),
)


def user_traceback(exc: BaseException) -> str:
    """The traceback without the leading frames of this runtime and the thread pool.

    The caller wants to see their tool's frames; when every frame is ours, keep them all.
    """
    tb = exc.__traceback__
    while tb is not None and os.path.abspath(tb.tb_frame.f_code.co_filename).startswith(_RUNTIME_FILES):
        tb = tb.tb_next
    return "".join(traceback.format_exception(type(exc), exc, tb or exc.__traceback__))


def unsendable(tool: str, exc: BaseException, value: Any, limit: int | None) -> ToolFailure:
    """A result that cannot be sent: the exception, and where in the value the problem is."""
    from .values import TooLarge, locate

    found = locate(value, "result", limit)
    where = f" at {found.path}" if found is not None and found.path != "result" else ""
    failure = from_exception(
        UNSERIALIZABLE_RESULT,
        exc,
        f"the result of tool {tool!r} cannot be sent to the host{where}: {found if found is not None else exc}",
    )
    if isinstance(exc, TooLarge):
        failure.type = "ResultTooLarge"
    failure.path = found.path if found is not None else ""
    return failure


def from_exception(kind: str, exc: BaseException, message: str | None = None) -> ToolFailure:
    return ToolFailure(
        kind=kind,
        type=type(exc).__name__,
        message=str(exc) if message is None else message,
        traceback=user_traceback(exc),
    )
