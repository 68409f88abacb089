"""Running tool calls, whatever the transport: binding, cancellation, streams, sessions, health.

A transport decodes a request, asks the :class:`Dispatcher` to :meth:`~Dispatcher.prepare`
it, and runs it with :meth:`~Dispatcher.run`, giving a :class:`Sink` for the outcome. Sync
tools run in the thread that calls ``run`` (the transport chooses which); async tools run on
the dispatcher's event loop. Cancellation is cooperative first (``ctx.cancelled``) and then
as strong as CPython allows: a :class:`CallCancelled` raised in the tool's thread at its
next Python instruction, or ``Task.cancel()`` for async tools. A tool blocked in C code
(``time.sleep``, a native library) cannot be stopped from inside the process: the host
retires the worker when a cancelled call is still running after its grace period, which
:meth:`Dispatcher.health` lets it see.
"""

from __future__ import annotations

import ctypes
import inspect
import logging
import os
import signal
import sys
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, Protocol

from . import errors, typeinfo
from .adapter import BaseAdapter, CancelFlag, ToolContext, ToolInfo, ToolResult
from .errors import CallCancelled, ToolFailure
from .host_bridge import HostBridge
from .telemetry import CallTelemetry, Item

# asyncio is imported where a coroutine or a loop needs it, not here: it (with ssl) is the
# largest import of a worker that serves only sync tools, and every worker start pays for it.
if TYPE_CHECKING:
    import asyncio

log = logging.getLogger("snakepit_bridge")


class Sink(Protocol):
    """Where one call's outcome goes. Called from any thread, exactly one terminal method once."""

    def result(self, value: Any) -> None: ...
    def failure(self, failure: ToolFailure) -> None: ...
    def chunk(self, value: Any) -> bool:
        """Sends one chunk; False when it could not be sent (the sink then reported the failure)."""
        ...

    def end(self) -> None: ...
    def cancelled(self) -> None: ...


class Credit:
    """How many more chunks a stream may send: granted by the consumer, spent by the producer."""

    def __init__(self, initial: int) -> None:
        self._available = initial
        self._cond = threading.Condition(threading.Lock())
        self._closed = False
        self._waiter: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None

    def grant(self, n: int) -> None:
        with self._cond:
            self._available += n
            self._cond.notify_all()
            waiter = self._waiter
        if waiter is not None:
            waiter[0].call_soon_threadsafe(waiter[1].set)

    def close(self) -> None:
        """Wakes a producer waiting for credit (the call was cancelled)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()
            waiter = self._waiter
        if waiter is not None:
            waiter[0].call_soon_threadsafe(waiter[1].set)

    def take(self) -> bool:
        """Blocks for one unit of credit; False when closed first."""
        with self._cond:
            while self._available <= 0 and not self._closed:
                self._cond.wait()
            if self._closed:
                return False
            self._available -= 1
            return True

    async def atake(self) -> bool:
        """Async form of :meth:`take`, for generators running on the event loop."""
        import asyncio

        loop = asyncio.get_running_loop()
        while True:
            with self._cond:
                if self._closed:
                    return False
                if self._available > 0:
                    self._available -= 1
                    return True
                event = asyncio.Event()
                self._waiter = (loop, event)
            await event.wait()


class Call:
    """A call the dispatcher is running."""

    __slots__ = (
        "_lock",
        "_loop",
        "_task",
        "_thread",
        "cancel_requested",
        "cancelled_at",
        "credit",
        "id",
        "session",
        "started",
        "telemetry",
        "tool",
    )

    def __init__(
        self, call_id: object, tool: str, session: str, credit: Credit | None, telemetry: CallTelemetry
    ) -> None:
        self.id = call_id
        self.telemetry = telemetry
        self.tool = tool
        self.session = session
        self.started = time.monotonic()
        self.cancel_requested = CancelFlag()
        self.cancelled_at: float | None = None
        self.credit = credit
        self._lock = threading.Lock()
        self._thread: int | None = None
        self._task: asyncio.Task[Any] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    # -- the tool's side ---------------------------------------------------- #

    def arm(self) -> None:
        """From here until :meth:`disarm`, a cancel raises CallCancelled in this thread."""
        global _main_call
        with self._lock:
            self._thread = threading.get_ident()
            if self._thread == _MAIN_THREAD:
                _main_call = self
            _current.call = self
            pending = self.cancel_requested.is_set()
        if pending:
            raise CallCancelled()

    def disarm(self) -> None:
        global _main_call
        with self._lock:
            thread, self._thread = self._thread, None
            _current.call = None
            if thread == _MAIN_THREAD:
                _main_call = None
            elif thread is not None and self.cancel_requested.is_set():
                # A cancel that landed after the tool's last instruction must not fire later.
                _set_async_exc(thread, None)

    def attach_task(self, task: asyncio.Task[Any], loop: asyncio.AbstractEventLoop) -> None:
        with self._lock:
            self._task, self._loop = task, loop
            pending = self.cancel_requested.is_set()
        if pending:
            task.cancel()

    # -- the transport's side ----------------------------------------------- #

    def cancel(self) -> None:
        with self._lock:
            if self.cancel_requested.is_set():
                return
            self.cancel_requested.set()
            self.cancelled_at = time.monotonic()
            if self._thread is not None and self._thread == _MAIN_THREAD and _INTERRUPT is not None:
                signal.pthread_kill(self._thread, _INTERRUPT)
            elif self._thread is not None:
                _set_async_exc(self._thread, CallCancelled)
            task, loop = self._task, self._loop
        if task is not None and loop is not None:
            loop.call_soon_threadsafe(task.cancel)
        if self.credit is not None:
            self.credit.close()


_current = threading.local()


@contextmanager
def shielded() -> Iterator[None]:
    """Runs runtime code inside a tool's call without being interrupted by a cancel.

    A frame half-written when CallCancelled struck would corrupt the channel, so the runtime's
    own work inside a tool (a host call's frames, its waits) runs shielded and looks at the
    cancel flag itself; a cancel that arrived meanwhile is raised when the shield ends.
    """
    call: Call | None = getattr(_current, "call", None)
    if call is None:
        yield
        return
    call.disarm()
    try:
        yield
    finally:
        call.arm()


def _set_async_exc(thread: int, exc: type[BaseException] | None) -> None:
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread), ctypes.py_object(exc) if exc else None)


# A tool running on the main thread can be interrupted even inside a blocking call: a signal
# makes the call return EINTR, CPython runs the handler (PEP 475), and the handler raises.
# That covers time.sleep, socket and pipe reads, select, subprocess waits: whatever retries on
# EINTR. Other threads only get CallCancelled at their next Python instruction.
_MAIN_THREAD = threading.main_thread().ident
# Set by install_interrupt: until its handler is in place, the signal's default would kill us.
_INTERRUPT: int | None = None
_main_call: Call | None = None


def _on_interrupt(_signum: int, _frame: object) -> None:
    call = _main_call
    if call is not None and call.cancel_requested.is_set():
        raise CallCancelled()


def install_interrupt() -> bool:
    """Lets cancellation interrupt blocking calls of tools on the main thread (call from it)."""
    global _INTERRUPT
    rtmin = getattr(signal, "SIGRTMIN", None)
    signum = rtmin + 3 if rtmin is not None else getattr(signal, "SIGUSR2", None)
    if signum is None or threading.current_thread() is not threading.main_thread():
        return False
    signal.signal(signum, _on_interrupt)
    _INTERRUPT = signum
    return True


class LoopThread:
    """The event loop async tools run on: the transport's own, or one in a thread of its own."""

    def __init__(self, loop: asyncio.AbstractEventLoop | None = None) -> None:
        self._loop = loop
        self._lock = threading.Lock()

    @property
    def loop(self) -> asyncio.AbstractEventLoop:
        with self._lock:
            if self._loop is None:
                import asyncio

                loop = asyncio.new_event_loop()
                started = threading.Event()

                def run() -> None:
                    asyncio.set_event_loop(loop)
                    loop.call_soon(started.set)
                    loop.run_forever()

                threading.Thread(target=run, name="snakepit-async-tools", daemon=True).start()
                started.wait()
                self._loop = loop
            return self._loop

    def submit(self, coro: Any) -> Future[Any]:
        import asyncio

        return asyncio.run_coroutine_threadsafe(coro, self.loop)

    def run(self, coro: Any, timeout: float | None = None) -> Any:
        """Runs ``coro`` on the loop from another thread and returns its result."""
        return self.submit(coro).result(timeout)


def _rss_bytes() -> int:
    """Resident set size of this process in bytes (0 when unknown)."""
    try:
        with open("/proc/self/statm", "rb") as f:
            resident_pages = int(f.read().split()[1])
        return resident_pages * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource

        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        # ru_maxrss is the peak, in KiB on Linux and bytes on macOS.
        return int(peak if sys.platform == "darwin" else peak * 1024)
    except (ImportError, OSError):
        return 0


class Dispatcher:
    """One adapter's tools, its sessions and the calls running on them."""

    def __init__(
        self,
        adapter: BaseAdapter,
        *,
        worker_id: str,
        run_id: str,
        host_bridge: HostBridge,
        loop: LoopThread,
        validate_arguments: bool = False,
    ) -> None:
        self.adapter = adapter
        self.validate_arguments = validate_arguments or bool(getattr(adapter, "validate_arguments", False))
        # Each tool's annotations as types (typeinfo.py), worked out on first need.
        self._types: dict[str, dict[str, Any]] = {}
        self.adapter_name = type(adapter).adapter_name()
        self.tools = adapter.tools()
        self.worker_id = worker_id
        self.run_id = run_id
        self.host_bridge = host_bridge
        self.loop = loop
        self._sessions: dict[str, dict[str, Any]] = {}
        self._calls: dict[object, Call] = {}
        self._calls_lock = threading.Lock()
        self._started = time.monotonic()
        self._blocked: Callable[[], str | None] = lambda: None
        self._idle = threading.Condition(threading.Lock())
        self._idle_waiters = 0

    def set_blocked_probe(self, probe: Callable[[], str | None]) -> None:
        """The transport's answer to "can a new call start now?": None, or why not."""
        self._blocked = probe

    # -- facts -------------------------------------------------------------- #

    def describe(self) -> list[dict[str, Any]]:
        return [
            {
                "name": info.name,
                "description": info.description,
                "streaming": info.streaming,
                "parameters": [
                    {"name": p.name, "type": p.type, "required": p.required, "default_json": p.default_json}
                    for p in info.parameters
                ],
                "types": typeinfo.public(self.types(info)),
            }
            for info in sorted(self.tools.values(), key=lambda i: i.name)
        ]

    def types(self, info: ToolInfo) -> dict[str, Any]:
        """The tool's annotations as types: ``{"params": {name: type}, "returns": type}``."""
        found = self._types.get(info.name)
        if found is None:
            found = typeinfo.tool_types(info.func, [p.name for p in info.parameters], info.streaming)
            self._types[info.name] = found
        return found

    def _validate(self, info: ToolInfo, args: dict[str, Any]) -> dict[str, Any]:
        params = self.types(info)["params"]
        checked = dict(args)
        for name, value in args.items():
            t = params.get(name)
            if t is None:
                continue
            try:
                checked[name] = typeinfo.check(t, value, f"args.{name}")
            except typeinfo.Mismatch as exc:
                raise ToolFailure(
                    errors.INVALID_ARGUMENTS,
                    "TypeError",
                    f"tool {info.name!r}: parameter {name!r} at {exc.path}: {exc}",
                    path=exc.path,
                ) from None
        return checked

    def health(self) -> dict[str, Any]:
        now = time.monotonic()
        with self._calls_lock:
            calls = list(self._calls.values())
        running = [
            {
                "tool": call.tool,
                "ms": int((now - call.started) * 1000),
                **({"cancelled_ms": int((now - call.cancelled_at) * 1000)} if call.cancelled_at else {}),
            }
            for call in calls
        ]
        blocked = self._blocked()
        return {
            "ok": blocked is None,
            "detail": blocked or "",
            "pid": os.getpid(),
            "rss_bytes": _rss_bytes(),
            "active_calls": len(calls),
            "uptime_ms": int((now - self._started) * 1000),
            "running": running,
        }

    # -- sessions ----------------------------------------------------------- #

    def cleanup_session(self, session: str) -> bool:
        return self._sessions.pop(session, None) is not None

    # -- calls -------------------------------------------------------------- #

    @property
    def active(self) -> int:
        return len(self._calls)

    def wait_idle(self, timeout: float) -> bool:
        """Waits until no call runs; False if ``timeout`` seconds pass first."""
        deadline = time.monotonic() + timeout
        with self._idle:
            self._idle_waiters += 1
            try:
                while self._calls:
                    remaining = deadline - time.monotonic()
                    if remaining <= 0:
                        return False
                    self._idle.wait(remaining)
            finally:
                self._idle_waiters -= 1
        return True

    def is_running(self, call_id: object) -> bool:
        return call_id in self._calls

    def cancel(self, call_id: object) -> None:
        with self._calls_lock:
            call = self._calls.get(call_id)
        if call is not None:
            call.cancel()

    def grant(self, call_id: object, n: int) -> None:
        with self._calls_lock:
            call = self._calls.get(call_id)
        if call is not None and call.credit is not None:
            call.credit.grant(n)

    def prepare(
        self,
        call_id: object,
        tool: str,
        args: Any,
        *,
        session: str = "",
        stream: bool = False,
        window: int = 0,
        attachments: dict[str, bytes] | None = None,
        traceparent: str = "",
        send_telemetry: Callable[[list[Item]], None] | None = None,
        session_moved: bool = False,
    ) -> tuple[Call, ToolInfo, dict[str, Any]]:
        """Finds the tool and binds the arguments; raises ToolFailure when it cannot.

        ``traceparent`` is the caller's span; ``send_telemetry`` delivers the call's spans and log
        records as they are made (else they wait for its next result or chunk: see telemetry.py).
        """
        info = self.tools.get(tool)
        if info is None:
            raise ToolFailure(
                errors.TOOL_NOT_FOUND, "ToolNotFound", f"no tool named {tool!r}", available_tools=sorted(self.tools)
            )
        if not isinstance(args, dict):
            raise ToolFailure(
                errors.INVALID_ARGUMENTS, "TypeError", f"arguments must be an object, not {type(args).__name__}"
            )
        problem = info.check_arguments(args)
        if problem is not None:
            raise ToolFailure(errors.INVALID_ARGUMENTS, "TypeError", f"tool {info.name!r}: {problem}")
        if info.streaming and not stream:
            raise ToolFailure(
                errors.INVALID_ARGUMENTS, "TypeError", f"tool {info.name} streams; call it with executeStream"
            )
        if self.validate_arguments:
            args = self._validate(info, args)
        tel = CallTelemetry(info.name, traceparent, send_telemetry)
        call = Call(call_id, info.name, session, Credit(window) if stream else None, tel)
        if info.accepts_ctx:
            args = dict(args)
            args["ctx"] = ToolContext(
                session_id=session,
                worker_id=self.worker_id,
                run_id=self.run_id,
                session=self._sessions.setdefault(session, {}) if session else {},
                attachments=dict(attachments or {}),
                host_bridge=self.host_bridge,
                cancel_event=call.cancel_requested,
                telemetry=tel,
                session_moved=session_moved,
            )
        with self._calls_lock:
            self._calls[call_id] = call
        return call, info, args

    def _finish(self, call: Call) -> None:
        with self._calls_lock:
            self._calls.pop(call.id, None)
        if self._idle_waiters and not self._calls:
            with self._idle:
                self._idle.notify_all()

    def run(self, call: Call, info: ToolInfo, kwargs: dict[str, Any], sink: Sink) -> None:
        """Runs a prepared call: sync tools in this thread, async tools on the loop."""
        tel = call.telemetry
        tel.start_tool_span()
        if tel.root is not None:
            sink = _SpanEndingSink(sink, tel)
        if info.is_async:
            self.loop.submit(self._run_async(call, info, kwargs, sink))
            return
        handed_off = False
        try:
            with tel.active():
                if info.streaming:
                    self._stream_sync(call, info.func(**kwargs), sink)
                else:
                    handed_off = self._call_sync(call, info, kwargs, sink)
        finally:
            if not handed_off:
                self._finish(call)

    def _call_sync(self, call: Call, info: ToolInfo, kwargs: dict[str, Any], sink: Sink) -> bool:
        """Runs a sync tool; True when its result is an awaitable now finishing on the loop."""
        try:
            try:
                call.arm()
                try:
                    value = info.func(**kwargs)
                finally:
                    call.disarm()
            except CallCancelled:
                call.disarm()
                sink.cancelled()
                return False
        except BaseException as exc:  # a tool's SystemExit must not stop the worker
            sink.failure(errors.from_exception(errors.PYTHON_EXCEPTION, exc))
            return False
        if type(value) not in _PLAIN and inspect.isawaitable(value):
            # A sync function returning an awaitable: finish it on the loop, cancellable there.
            self.loop.submit(self._await_then(call, value, sink))
            return True
        sink.result(_unwrap(value))
        return False

    async def _await_then(self, call: Call, awaitable: Any, sink: Sink) -> None:
        import asyncio

        task = asyncio.current_task()
        assert task is not None
        call.attach_task(task, asyncio.get_running_loop())
        try:
            with call.telemetry.active():
                value = await awaitable
        except (asyncio.CancelledError, CallCancelled):
            sink.cancelled()
            return
        except BaseException as exc:
            sink.failure(errors.from_exception(errors.PYTHON_EXCEPTION, exc))
            return
        finally:
            self._finish(call)
        sink.result(_unwrap(value))

    def _stream_sync(self, call: Call, gen: Iterator[Any], sink: Sink) -> None:
        credit = call.credit
        assert credit is not None
        closed_by_cancel = False
        try:
            while True:
                if not credit.take():
                    closed_by_cancel = True
                    return
                try:
                    call.arm()
                    try:
                        item = next(gen, _EXHAUSTED)
                    finally:
                        call.disarm()
                except CallCancelled:
                    call.disarm()
                    closed_by_cancel = True
                    return
                except BaseException as exc:
                    sink.failure(errors.from_exception(errors.PYTHON_EXCEPTION, exc))
                    return
                if item is _EXHAUSTED:
                    sink.end()
                    return
                if not sink.chunk(_unwrap(item)):
                    return
        finally:
            try:
                gen.close()  # type: ignore[attr-defined]  # runs the generator's finally
            except BaseException:
                log.exception("closing the generator of tool %s failed", call.tool)
            if closed_by_cancel:
                sink.cancelled()

    async def _run_async(self, call: Call, info: ToolInfo, kwargs: dict[str, Any], sink: Sink) -> None:
        import asyncio

        task = asyncio.current_task()
        assert task is not None
        call.attach_task(task, asyncio.get_running_loop())
        with call.telemetry.active():
            await self._run_async_tool(call, info, kwargs, sink)

    async def _run_async_tool(self, call: Call, info: ToolInfo, kwargs: dict[str, Any], sink: Sink) -> None:
        import asyncio

        try:
            if info.streaming:
                await self._stream_async(call, info.func(**kwargs), sink)
                return
            try:
                value = await info.func(**kwargs)
            except (asyncio.CancelledError, CallCancelled):
                sink.cancelled()
                return
            except BaseException as exc:
                sink.failure(errors.from_exception(errors.PYTHON_EXCEPTION, exc))
                return
            sink.result(_unwrap(value))
        finally:
            self._finish(call)

    async def _stream_async(self, call: Call, agen: AsyncIterator[Any], sink: Sink) -> None:
        import asyncio

        credit = call.credit
        assert credit is not None
        closed_by_cancel = False
        try:
            while True:
                try:
                    if not await credit.atake():
                        closed_by_cancel = True
                        return
                    item = await agen.__anext__()
                except StopAsyncIteration:
                    sink.end()
                    return
                except (asyncio.CancelledError, CallCancelled):
                    closed_by_cancel = True
                    return
                except BaseException as exc:
                    sink.failure(errors.from_exception(errors.PYTHON_EXCEPTION, exc))
                    return
                if not sink.chunk(_unwrap(item)):
                    return
        finally:
            try:
                await agen.aclose()  # type: ignore[attr-defined]
            except BaseException:
                log.exception("closing the generator of tool %s failed", call.tool)
            if closed_by_cancel:
                sink.cancelled()


class _SpanEndingSink:
    """Ends the tool's span (with the outcome's status) before the outcome is sent, so it rides along."""

    __slots__ = ("_sink", "_tel")

    def __init__(self, sink: Sink, tel: CallTelemetry) -> None:
        self._sink = sink
        self._tel = tel

    def result(self, value: Any) -> None:
        self._tel.end_tool_span()
        self._sink.result(value)

    def failure(self, failure: ToolFailure) -> None:
        self._tel.end_tool_span((failure.type, failure.message, failure.traceback))
        self._sink.failure(failure)

    def chunk(self, value: Any) -> bool:
        return self._sink.chunk(value)

    def end(self) -> None:
        self._tel.end_tool_span()
        self._sink.end()

    def cancelled(self) -> None:
        self._tel.end_tool_span(cancelled=True)
        self._sink.cancelled()


_PLAIN = frozenset({dict, list, str, int, float, bool, type(None), bytes, tuple})


class _Exhausted:
    pass


_EXHAUSTED = _Exhausted()


def _unwrap(value: Any) -> Any:
    """A ToolResult's value; its attachments ride along as ``{"value", "attachments"}``."""
    if isinstance(value, ToolResult):
        if not value.attachments:
            return value.value
        return {"value": value.value, "attachments": dict(value.attachments)}
    return value
