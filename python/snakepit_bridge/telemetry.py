"""Spans and log records of a call, sent back to the host with its outcome.

The host sends the W3C trace context of its span with each call. While the tool runs, this
module knows the call it belongs to (a context variable), so that:

* ``ctx.span(name, **attributes)`` records a span whose parent is the enclosing one (the
  tool's own span at the top), with real start and end times, attributes, status and the
  exception that ended it; the host emits it through its tracer, so Python needs no exporter;
* ``logging`` records made inside the call travel to the host as structured records (level,
  logger, message, exception text in one piece, the span they were made in) instead of stderr
  lines, rate-limited per worker: a tool that logs in a tight loop loses records, counted,
  never the channel or the host's memory;
* when ``opentelemetry-api`` is importable, the tool also runs in an OpenTelemetry context whose
  current span is the host's span of the call, so spans of the user's own OpenTelemetry set-up
  (exported by their SDK) nest under it in the same trace.

Standard library only: OpenTelemetry is imported lazily and only if present.
"""

from __future__ import annotations

import contextvars
import importlib
import logging
import random
import threading
import time
from collections.abc import Callable
from types import TracebackType
from typing import Any

from .errors import CallCancelled, user_traceback

# Log records per second a worker forwards to its host, and how many it may send at once.
LOG_RATE = 200.0
LOG_BURST = 400
# Spans one call may record; more are dropped and counted (a span per loop iteration).
MAX_SPANS_PER_CALL = 1000
# Characters of one forwarded log message (with its exception text).
MAX_MESSAGE_CHARS = 16_384

Item = dict[str, Any]


def parse_traceparent(value: str) -> tuple[str, str, bool] | None:
    """``(trace_id, span_id, sampled)`` of a W3C ``traceparent``, or None when malformed."""
    parts = value.split("-")
    if len(parts) < 4 or len(parts[0]) != 2 or len(parts[1]) != 32 or len(parts[2]) != 16 or len(parts[3]) != 2:
        return None
    try:
        int(parts[1], 16)
        int(parts[2], 16)
        flags = int(parts[3], 16)
    except ValueError:
        return None
    if parts[1] == "0" * 32 or parts[2] == "0" * 16:
        return None
    return parts[1], parts[2], bool(flags & 1)


def _now_us() -> int:
    return time.time_ns() // 1000


def _span_id() -> str:
    # Unique within the call is what matters: the host gives each span an id of its own.
    return f"{_random.getrandbits(64) or 1:016x}"


def _attribute(value: Any) -> Any:
    """An attribute value the host can carry: str, bool, int, float, or a list of those."""
    if isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, (list, tuple)) and all(isinstance(v, (str, bool, int, float)) for v in value):
        return list(value)
    return repr(value)


class LogLimiter:
    """A token bucket shared by the worker's calls: ``rate`` records a second, ``burst`` at once."""

    def __init__(self, rate: float = LOG_RATE, burst: int = LOG_BURST) -> None:
        self._rate = rate
        self._burst = float(burst)
        self._tokens = float(burst)
        self._last = time.monotonic()
        self._lock = threading.Lock()

    def allow(self) -> bool:
        with self._lock:
            now = time.monotonic()
            self._tokens = min(self._burst, self._tokens + (now - self._last) * self._rate)
            self._last = now
            if self._tokens >= 1:
                self._tokens -= 1
                return True
            return False


LIMITER = LogLimiter()
_random = random.Random()


class CallTelemetry:
    """What one call sends back: its spans (when traced) and its log records.

    ``send`` delivers items at once (the local channel: a frame each, so that a crash loses
    nothing already recorded); without it they wait for the call's next result or chunk.
    """

    __slots__ = (
        "_dropped_logs",
        "_dropped_spans",
        "_lock",
        "_pending",
        "_send",
        "_spans",
        "parent_id",
        "root",
        "sampled",
        "tool",
        "trace_id",
    )

    def __init__(self, tool: str, traceparent: str = "", send: Callable[[list[Item]], None] | None = None) -> None:
        parsed = parse_traceparent(traceparent) if traceparent else None
        self.tool = tool
        self.trace_id, self.parent_id, self.sampled = parsed if parsed else ("", "", False)
        self._send = send
        self._pending: list[Item] = []
        self._lock = threading.Lock()
        self._spans = 0
        self._dropped_logs = 0
        self._dropped_spans = 0
        self.root: Span | None = None

    @property
    def traced(self) -> bool:
        return self.sampled

    # -- recording ---------------------------------------------------------- #

    def _add(self, item: Item, eager: bool) -> None:
        with self._lock:
            self._pending.append(item)
            if not eager or self._send is None:
                return
            # What waited (the tool span's start) goes first: the host sees items in order.
            items, self._pending = self._pending, []
        self._send(items)

    def start_tool_span(self) -> None:
        """Opens the span of the tool itself (traced calls only); it ends with the call's outcome."""
        if self.sampled:
            self.root = Span(self, f"python {self.tool}", self.parent_id, {"snakepit.tool": self.tool}, root=True)

    def end_tool_span(self, error: tuple[str, str, str] | None = None, cancelled: bool = False) -> None:
        root, self.root = self.root, None
        if root is None:
            return
        if error is not None:
            root.fail(*error)
        if cancelled:
            root.set_attribute("snakepit.cancelled", True)
        root.end()

    def span_started(self, item: Item, root: bool) -> bool:
        """Records a span's start; False when the call has recorded too many (it is dropped)."""
        if not root:
            with self._lock:
                if self._spans >= MAX_SPANS_PER_CALL:
                    self._dropped_spans += 1
                    return False
                self._spans += 1
        # The tool's own span rides on the outcome's frame; the others go at once, so that a
        # crash loses none the tool already made.
        self._add(item, eager=not root)
        return True

    def span_ended(self, item: Item, root: bool) -> None:
        self._add(item, eager=not root)

    def log(self, record: logging.LogRecord, message: str, span_id: str) -> None:
        if not LIMITER.allow():
            # Counted, and reported once with the call's outcome (a report per drop would be a flood too).
            with self._lock:
                self._dropped_logs += 1
            return
        item: Item = {
            "k": "log",
            "l": record.levelno,
            "g": record.name,
            "m": message[:MAX_MESSAGE_CHARS],
            "t": int(record.created * 1_000_000),
        }
        if span_id:
            item["s"] = span_id
        self._add(item, eager=True)

    def drain(self) -> list[Item] | None:
        """The items not sent yet, with the counts of what was dropped; None when there are none."""
        with self._lock:
            items, self._pending = self._pending, []
            if self._dropped_logs or self._dropped_spans:
                items.append({"k": "dropped", "logs": self._dropped_logs, "spans": self._dropped_spans})
                self._dropped_logs = self._dropped_spans = 0
        return items or None

    # -- the tool's context --------------------------------------------------- #

    def current_span_id(self) -> str:
        active = _current.get()
        if active is not None and active[0] is self:
            return active[1]
        return self.root.span_id if self.root is not None else ""

    def active(self) -> _Active:
        """Runs the tool's code as part of this call (logs, spans, the OTel context): ``with``."""
        return _Active(self)


class _Active:
    """The context manager of :meth:`CallTelemetry.active` (a class: cheaper than a generator)."""

    __slots__ = ("_otel", "_tel", "_token")

    def __init__(self, tel: CallTelemetry) -> None:
        self._tel = tel

    def __enter__(self) -> None:
        tel = self._tel
        span_id = tel.root.span_id if tel.root is not None else tel.parent_id
        self._token = _current.set((tel, span_id))
        # The host's span, not one of ours: the host emits our spans under ids of its own, while
        # spans the user's OpenTelemetry SDK exports itself must name a parent the trace has.
        self._otel = _otel_attach(tel.trace_id, tel.parent_id) if tel.sampled else None

    def __exit__(self, *exc: object) -> None:
        if self._otel is not None:
            _otel_detach(self._otel)
        _current.reset(self._token)


# The call (and span) the running code belongs to: set in the tool's thread or task.
_current: contextvars.ContextVar[tuple[CallTelemetry, str] | None] = contextvars.ContextVar(
    "snakepit_call", default=None
)


class Span:
    """A span of a tool, recorded in Python and emitted by the host. Use as ``with`` or ``async with``."""

    __slots__ = (
        "_attributes",
        "_ended",
        "_error",
        "_events",
        "_root",
        "_tel",
        "_token",
        "name",
        "parent_id",
        "recorded",
        "span_id",
    )

    def __init__(
        self, tel: CallTelemetry, name: str, parent_id: str, attributes: dict[str, Any], root: bool = False
    ) -> None:
        self._tel = tel
        self.name = name
        self.span_id = _span_id()
        self.parent_id = parent_id
        # Attributes set after the start travel with the end.
        self._attributes: dict[str, Any] = {}
        self._events: list[Item] = []
        self._error: tuple[str, str, str] | None = None
        self._ended = False
        self._root = root
        self._token: contextvars.Token[tuple[CallTelemetry, str] | None] | None = None
        start: Item = {"k": "start", "s": self.span_id, "p": parent_id, "n": name, "t": _now_us()}
        if attributes:
            start["a"] = {k: _attribute(v) for k, v in attributes.items()}
        self.recorded = tel.span_started(start, root)

    def set_attribute(self, key: str, value: Any) -> None:
        self._attributes[key] = _attribute(value)

    def add_event(self, name: str, **attributes: Any) -> None:
        self._events.append({"n": name, "t": _now_us(), "a": {k: _attribute(v) for k, v in attributes.items()}})

    def fail(self, type_: str, message: str, traceback: str = "") -> None:
        """Marks the span as failed (status error, with the exception)."""
        self._error = (type_, message, traceback)

    def end(self) -> None:
        if self._ended:
            return
        self._ended = True
        if not self.recorded:
            return
        item: Item = {"k": "end", "s": self.span_id, "t": _now_us()}
        if self._attributes:
            item["a"] = self._attributes
        if self._events:
            item["ev"] = self._events
        if self._error is not None:
            item["x"] = {"type": self._error[0], "message": self._error[1], "traceback": self._error[2]}
        self._tel.span_ended(item, self._root)

    # -- as a context manager ------------------------------------------------ #

    def __enter__(self) -> Span:
        self._token = _current.set((self._tel, self.span_id))
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self._token is not None:
            _current.reset(self._token)
            self._token = None
        if exc is not None:
            if isinstance(exc, CallCancelled) or type(exc).__name__ == "CancelledError":
                self.set_attribute("snakepit.cancelled", True)
            else:
                self.fail(type(exc).__name__, str(exc), user_traceback(exc))
        self.end()

    async def __aenter__(self) -> Span:
        return self.__enter__()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.__exit__(exc_type, exc, tb)


class NoSpan:
    """What ``ctx.span`` gives when the call is not traced: records nothing, costs nothing."""

    __slots__ = ()
    span_id = ""

    def set_attribute(self, key: str, value: Any) -> None:
        pass

    def add_event(self, name: str, **attributes: Any) -> None:
        pass

    def fail(self, type_: str, message: str, traceback: str = "") -> None:
        pass

    def __enter__(self) -> NoSpan:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    async def __aenter__(self) -> NoSpan:
        return self

    async def __aexit__(self, *exc: object) -> None:
        pass


NO_SPAN = NoSpan()


def span(tel: CallTelemetry | None, name: str, attributes: dict[str, Any]) -> Span | NoSpan:
    """A new span under the current one of ``tel``'s call (a no-op one when it is not traced)."""
    if tel is None or not tel.sampled:
        return NO_SPAN
    return Span(tel, name, tel.current_span_id(), attributes)


# --------------------------------------------------------------------------- #
# logging
# --------------------------------------------------------------------------- #


_FORMATTER = logging.Formatter()


class CallLogHandler(logging.Handler):
    """Sends records made inside a call to the host, with the span they were made in."""

    def emit(self, record: logging.LogRecord) -> None:
        active = _current.get()
        if active is None:
            return
        tel, span_id = active
        try:
            message = record.getMessage()
            if record.exc_info:
                message = f"{message}\n{_FORMATTER.formatException(record.exc_info)}"
            elif record.exc_text:
                message = f"{message}\n{record.exc_text}"
            tel.log(record, message, span_id if tel.sampled else "")
        except Exception:  # a record that cannot be formatted must not fail the tool
            self.handleError(record)


def outside_call(record: logging.LogRecord) -> bool:
    """A filter for the stderr handler: records made inside a call go to the host instead."""
    return _current.get() is None


# --------------------------------------------------------------------------- #
# OpenTelemetry (optional)
# --------------------------------------------------------------------------- #

_otel: Any = None  # (context module, trace module) once imported; False when not importable


def _otel_modules() -> Any:
    global _otel
    if _otel is None:
        try:
            # Imported by name: the worker needs no OpenTelemetry, and its checkers need no stubs.
            _otel = (importlib.import_module("opentelemetry.context"), importlib.import_module("opentelemetry.trace"))
        except ImportError:
            _otel = False
    return _otel


def _otel_attach(trace_id: str, span_id: str) -> Any:
    """Makes ``span_id`` the current OpenTelemetry span (a remote parent); a token for detach."""
    modules = _otel_modules()
    if not modules or not trace_id or not span_id:
        return None
    otel_context, otel_trace = modules
    parent = otel_trace.NonRecordingSpan(
        otel_trace.SpanContext(
            trace_id=int(trace_id, 16),
            span_id=int(span_id, 16),
            is_remote=True,
            trace_flags=otel_trace.TraceFlags(otel_trace.TraceFlags.SAMPLED),
        )
    )
    return otel_context.attach(otel_trace.set_span_in_context(parent))


def _otel_detach(token: Any) -> None:
    modules = _otel_modules()
    if modules:
        modules[0].detach(token)
