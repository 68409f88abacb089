"""Adapters and tools: the Python side of what a Snakepit worker serves.

An adapter is a subclass of :class:`BaseAdapter`; its tools are the methods
decorated with :func:`tool`. The server discovers them once, at startup, and
describes them to the host from their signatures and docstrings.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, TypeVar, overload

from .errors import CallCancelled
from .host_bridge import (
    DEFAULT_TIMEOUT_S,
    HOST_TOOLS_UNAVAILABLE,
    HostBridge,
    HostToolError,
    HostToolsUnavailable,
)

__all__ = [
    "HOST_TOOLS_UNAVAILABLE",
    "BaseAdapter",
    "CallCancelled",
    "HostBridge",
    "HostToolError",
    "HostToolsUnavailable",
    "ToolContext",
    "ToolInfo",
    "ToolParameterInfo",
    "ToolResult",
    "tool",
]

F = TypeVar("F", bound=Callable[..., Any])

# The name of the optional keyword parameter through which a tool receives
# its ToolContext. It is never described to the host nor bound from JSON args.
CONTEXT_PARAMETER = "ctx"

# Attribute that @tool sets on a function to mark it as a tool.
_TOOL_MARKER = "__snakepit_tool__"

# --------------------------------------------------------------------------- #
# The @tool decorator
# --------------------------------------------------------------------------- #


class _ToolMarker:
    # A plain class, not a dataclass: a frozen @dataclass costs ~0.4 ms of worker
    # startup, and this private marker needs none of what it generates.
    __slots__ = ("description", "name")

    def __init__(self, name: str | None, description: str | None) -> None:
        self.name = name
        self.description = description


@overload
def tool(func: F) -> F: ...


@overload
def tool(*, name: str | None = None, description: str | None = None) -> Callable[[F], F]: ...


def tool(
    func: F | None = None,
    *,
    name: str | None = None,
    description: str | None = None,
) -> F | Callable[[F], F]:
    """Mark an adapter method as a tool.

    Usable bare (``@tool``) or with options (``@tool(name="x", description="...")``).
    The function itself is returned unchanged apart from the marker attribute,
    so it stays callable as an ordinary method.
    """

    def mark(f: F) -> F:
        setattr(f, _TOOL_MARKER, _ToolMarker(name=name, description=description))
        return f

    if func is not None:
        return mark(func)
    return mark


# --------------------------------------------------------------------------- #
# Tool metadata
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class ToolParameterInfo:
    """One parameter of a tool, as described to the host."""

    name: str
    type: str
    required: bool
    # JSON text of the default; "" when required or not JSON-serialisable.
    default_json: str


@dataclass(frozen=True)
class ToolInfo:
    """A tool bound to an adapter instance, ready to be called."""

    name: str
    description: str
    parameters: tuple[ToolParameterInfo, ...]
    streaming: bool
    is_async: bool
    accepts_ctx: bool
    # The signature used to bind JSON arguments (without ``self`` and ``ctx``).
    signature: inspect.Signature
    func: Callable[..., Any]
    # What check_arguments needs, precomputed: binding through the signature costs more
    # than the rest of a small call.
    keyword_names: frozenset[str] = frozenset()
    required_names: frozenset[str] = frozenset()
    var_keyword: bool = False
    simple: bool = False

    def check_arguments(self, args: Mapping[str, Any]) -> str | None:
        """Why ``args`` (keyword arguments) do not fit the tool, or None when they do."""
        if not self.simple:
            try:
                self.signature.bind(**args)
            except TypeError as exc:
                return str(exc)
            return None
        for name in self.required_names:
            if name not in args:
                return f"missing a required argument: {name!r}"
        if not self.var_keyword:
            for name in args:
                if name not in self.keyword_names:
                    return f"got an unexpected keyword argument {name!r}"
        return None


def _annotation_text(annotation: Any) -> str:
    """The annotation as written in Python, or "" when there is none."""
    if annotation is inspect.Parameter.empty:
        return ""
    if isinstance(annotation, str):
        # Postponed annotations (``from __future__ import annotations``) are
        # already the source text.
        return annotation
    return inspect.formatannotation(annotation)


def _default_json(default: Any) -> str:
    try:
        return json.dumps(default, allow_nan=False)
    except (TypeError, ValueError):
        # A default the host cannot represent: it is still optional, but we
        # cannot tell the host its value.
        return ""


def _first_paragraph(doc: str | None) -> str:
    if not doc:
        return ""
    paragraph = doc.strip().split("\n\n", 1)[0]
    return " ".join(paragraph.split())


def _build_tool_info(method: Callable[..., Any], func: Callable[..., Any], marker: _ToolMarker) -> ToolInfo:
    """Describe ``method`` (a bound method) whose underlying function is ``func``."""
    full_signature = inspect.signature(method)
    accepts_ctx = CONTEXT_PARAMETER in full_signature.parameters
    bindable = [p for p in full_signature.parameters.values() if p.name != CONTEXT_PARAMETER]
    signature = full_signature.replace(parameters=bindable)

    parameters = tuple(
        ToolParameterInfo(
            name=p.name,
            type=_annotation_text(p.annotation),
            required=p.default is inspect.Parameter.empty,
            default_json="" if p.default is inspect.Parameter.empty else _default_json(p.default),
        )
        for p in bindable
        # *args / **kwargs have no single name the host could pass.
        if p.kind not in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD)
    )

    kinds = {p.kind for p in bindable}
    simple = kinds <= {
        inspect.Parameter.POSITIONAL_OR_KEYWORD,
        inspect.Parameter.KEYWORD_ONLY,
        inspect.Parameter.VAR_KEYWORD,
    }
    keyword_names = frozenset(p.name for p in bindable if p.kind != inspect.Parameter.VAR_KEYWORD)
    required_names = frozenset(
        p.name for p in bindable if p.default is inspect.Parameter.empty and p.kind != inspect.Parameter.VAR_KEYWORD
    )
    streaming = inspect.isgeneratorfunction(func) or inspect.isasyncgenfunction(func)
    is_async = inspect.iscoroutinefunction(func) or inspect.isasyncgenfunction(func)
    description = marker.description if marker.description is not None else _first_paragraph(inspect.getdoc(func))
    return ToolInfo(
        name=marker.name or func.__name__,
        description=description,
        parameters=parameters,
        streaming=streaming,
        is_async=is_async,
        accepts_ctx=accepts_ctx,
        signature=signature,
        func=method,
        keyword_names=keyword_names,
        required_names=required_names,
        var_keyword=inspect.Parameter.VAR_KEYWORD in kinds,
        simple=simple,
    )


# --------------------------------------------------------------------------- #
# Context and results
# --------------------------------------------------------------------------- #


class CancelFlag:
    """Whether the host cancelled a call: set once, read often, never waited on."""

    __slots__ = ("_set",)

    def __init__(self) -> None:
        self._set = False

    def set(self) -> None:
        self._set = True

    def is_set(self) -> bool:
        return self._set


@dataclass
class ToolContext:
    """What a tool knows about the call it serves.

    A tool receives it by declaring a keyword parameter named ``ctx``.
    """

    session_id: str = ""
    worker_id: str = ""
    run_id: str = ""
    # Per-session state kept in this worker. For calls without a session id it
    # is a fresh dict that lives only for the call.
    session: dict[str, Any] = field(default_factory=dict)
    # Raw binary values sent beside the JSON arguments (``CallOptions.attachments``).
    attachments: dict[str, bytes] = field(default_factory=dict)
    # The worker's one bridge to the host's tools. A context made outside a
    # worker (e.g. in a unit test) has none: calls raise HostToolsUnavailable.
    host_bridge: HostBridge = field(default_factory=HostBridge, repr=False)
    # Set when the host cancels the call (timeout, interruption, stream ended early).
    cancel_event: CancelFlag = field(default_factory=lambda: CancelFlag(), repr=False)
    # True when this call of the session is served away from the worker that holds its state
    # (``hint`` affinity while the home worker is busy, or after it died, or moved to another
    # host): ``session`` may be empty or stale here.
    session_moved: bool = False

    @property
    def cancelled(self) -> bool:
        """True once the host has cancelled this call: a long tool should stop soon.

        Sync tools are also interrupted with :class:`CallCancelled` at their next
        Python instruction, and async tools with ``asyncio.CancelledError``; this
        flag lets a tool stop cleanly (and is all there is for code blocked in C).
        """
        return self.cancel_event.is_set()

    def check_cancelled(self) -> None:
        """Raise :class:`CallCancelled` if the host has cancelled this call."""
        if self.cancel_event.is_set():
            raise CallCancelled()

    def call_host(
        self,
        name: str,
        args: Mapping[str, Any] | None = None,
        *,
        attachments: Mapping[str, bytes] | None = None,
        timeout: float | None = DEFAULT_TIMEOUT_S,
    ) -> Any:
        """Call a tool registered on the host and return its result.

        Raises :class:`HostToolError` when the host tool fails and
        :class:`HostToolsUnavailable` when there is no host bridge.
        Blocking: from async tools use :meth:`acall_host`.
        """
        return self.host_bridge.call(
            name,
            args,
            self.session_id,
            attachments,
            worker_id=self.worker_id,
            timeout=timeout,
            cancelled=self.cancel_event,
        )

    async def acall_host(
        self,
        name: str,
        args: Mapping[str, Any] | None = None,
        *,
        attachments: Mapping[str, bytes] | None = None,
        timeout: float | None = DEFAULT_TIMEOUT_S,
    ) -> Any:
        """Async form of :meth:`call_host`."""
        return await self.host_bridge.acall(
            name, args, self.session_id, attachments, worker_id=self.worker_id, timeout=timeout
        )

    def list_host_tools(self) -> list[dict[str, Any]]:
        """The host's tools: ``[{name, description, parameters: [...]}]``."""
        return self.host_bridge.list_tools()

    async def alist_host_tools(self) -> list[dict[str, Any]]:
        """Async form of :meth:`list_host_tools`."""
        return await self.host_bridge.alist_tools()


@dataclass
class ToolResult:
    """A tool result with binary attachments.

    Return (or yield) one of these instead of a plain value to send raw bytes
    beside the JSON-encoded ``value``; bytes are never JSON-encoded.
    """

    value: Any = None
    attachments: dict[str, bytes] = field(default_factory=dict)


# --------------------------------------------------------------------------- #
# BaseAdapter
# --------------------------------------------------------------------------- #


class BaseAdapter:
    """Base class for adapters.

    Subclasses define tools with :func:`tool`, and may define the hooks
    ``on_start`` (called before the worker reports readiness; raising aborts
    startup) and ``on_stop`` (called on graceful shutdown). Both hooks may be
    plain or ``async`` methods.
    """

    # Check every call's arguments against the tools' annotations (as the pool option
    # ``validateArguments: true`` does for every adapter): InvalidArguments before the tool runs.
    validate_arguments: bool = False

    def on_start(self) -> Any:
        """Called once before the worker reports readiness."""
        return None

    def on_stop(self) -> Any:
        """Called once on graceful shutdown."""
        return None

    @classmethod
    def adapter_name(cls) -> str:
        """The name under which the host sees this adapter: ``module:Class``."""
        return f"{cls.__module__}:{cls.__qualname__}"

    def tools(self) -> dict[str, ToolInfo]:
        """The adapter's tools by name, discovered from decorated methods."""
        found: dict[str, ToolInfo] = {}
        seen_attributes: set[str] = set()
        # Walk the MRO from the most derived class so overrides win.
        for klass in type(self).__mro__:
            for attribute, value in vars(klass).items():
                if attribute in seen_attributes:
                    continue
                seen_attributes.add(attribute)
                func = value.__func__ if isinstance(value, (staticmethod, classmethod)) else value
                marker = getattr(func, _TOOL_MARKER, None)
                if not isinstance(marker, _ToolMarker):
                    continue
                info = _build_tool_info(getattr(self, attribute), func, marker)
                if info.name in found:
                    raise ValueError(f"{type(self).__qualname__} defines two tools named {info.name!r}")
                found[info.name] = info
        return found
