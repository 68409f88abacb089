"""dispatch.py in process: binding, results and failures, cancellation, streams with credit, sessions, health."""

from __future__ import annotations

import asyncio
import os
import sys
import threading
import time
import unittest
from collections.abc import Iterator
from types import FrameType
from typing import Any

from snakepit_bridge import ToolContext, ToolResult, tool
from snakepit_bridge.dispatch import Call, Credit, Dispatcher, LoopThread
from snakepit_bridge.errors import (
    INVALID_ARGUMENTS,
    PYTHON_EXCEPTION,
    TOOL_NOT_FOUND,
    CallCancelled,
    ToolFailure,
)
from snakepit_bridge.host_bridge import HostBridge

from .fixture_adapters import OddAdapter

TIMEOUT = 10.0


class RecordingSink:
    """A call's outcome, recorded; waits are bounded."""

    def __init__(self) -> None:
        self.events: list[tuple[str, Any]] = []
        self._cond = threading.Condition()

    def _add(self, kind: str, value: Any) -> None:
        with self._cond:
            self.events.append((kind, value))
            self._cond.notify_all()

    def result(self, value: Any) -> None:
        self._add("result", value)

    def failure(self, failure: ToolFailure) -> None:
        self._add("failure", failure)

    def chunk(self, value: Any) -> bool:
        self._add("chunk", value)
        return True

    def end(self) -> None:
        self._add("end", None)

    def cancelled(self) -> None:
        self._add("cancelled", None)

    @property
    def chunks(self) -> list[Any]:
        with self._cond:
            return [value for kind, value in self.events if kind == "chunk"]

    def wait_for(self, predicate: Any, what: str) -> None:
        with self._cond:
            if not self._cond.wait_for(lambda: predicate(self.events), TIMEOUT):
                raise AssertionError(f"timed out waiting for {what}; events: {self.events}")

    def wait_chunks(self, n: int) -> None:
        self.wait_for(lambda events: sum(1 for kind, _ in events if kind == "chunk") >= n, f"{n} chunks")

    def terminal(self) -> tuple[str, Any]:
        self.wait_for(lambda events: any(kind != "chunk" for kind, _ in events), "the call's outcome")
        with self._cond:
            terminals = [event for event in self.events if event[0] != "chunk"]
        if len(terminals) != 1:
            raise AssertionError(f"expected exactly one outcome, got {terminals}")
        return terminals[0]


class RefusingSink(RecordingSink):
    """Records every chunk, and says it could not send any after the first ``after``."""

    def __init__(self, after: int) -> None:
        super().__init__()
        self._after = after

    def chunk(self, value: Any) -> bool:
        super().chunk(value)
        return len(self.chunks) <= self._after


def waiting_in(thread: threading.Thread, function: str) -> bool:
    """True when ``thread`` is currently inside a function named ``function``."""
    frame: FrameType | None = sys._current_frames().get(thread.ident or -1)
    while frame is not None:
        if frame.f_code.co_name == function:
            return True
        frame = frame.f_back
    return False


def wait_until(condition: Any, what: str) -> None:
    deadline = time.monotonic() + TIMEOUT
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.002)


class Tools(OddAdapter):
    """The end-to-end fixture's tools (its streams among them), and tools for in-process tests."""

    def __init__(self) -> None:
        super().__init__()
        self.entered = threading.Event()
        self.gate = threading.Event()
        self.runs = 0

    @tool
    def add(self, a: int, b: int = 1) -> int:  # type: ignore[override]
        return a + b

    @tool
    def with_rest(self, a: int, **rest: Any) -> dict[str, Any]:
        return {"a": a, "rest": rest}

    @tool
    def positional_only(self, a: int, /, b: int = 2) -> int:
        return a + b

    @tool
    def star_args(self, *items: int, scale: int = 1) -> int:
        return sum(items) * scale

    @tool
    def uses_ctx(self, key: str, ctx: ToolContext) -> Any:
        return {"session_id": ctx.session_id, "worker": ctx.worker_id, "run": ctx.run_id, "value": ctx.session.get(key)}

    @tool
    def put(self, key: str, value: Any, ctx: ToolContext) -> None:
        ctx.session[key] = value

    @tool
    def with_attachments(self, ctx: ToolContext) -> ToolResult:
        return ToolResult(value=sorted(ctx.attachments), attachments={k: v.upper() for k, v in ctx.attachments.items()})

    @tool
    async def async_add(self, a: int, b: int) -> int:
        await asyncio.sleep(0)
        return a + b

    @tool
    def returns_awaitable(self) -> Any:
        async def later() -> str:
            await asyncio.sleep(0)
            return "awaited"

        return later()

    @tool
    def returns_pending_awaitable(self) -> Any:
        return asyncio.sleep(3600)

    @tool
    def raises(self) -> None:
        self._helper()

    def _helper(self) -> None:
        raise KeyError("deep down")

    @tool
    def exits(self) -> None:
        sys.exit(3)

    @tool
    def spin(self, ctx: ToolContext) -> None:  # type: ignore[override]
        self.runs += 1
        report = self.reports["spin"] = {"finished": False, "saw_cancelled": None}
        self.entered.set()
        try:
            while True:
                pass
        finally:
            report["finished"] = True
            report["saw_cancelled"] = ctx.cancelled

    @tool
    def blocked_in_c(self) -> str:
        """Blocks where no exception can reach it (a lock wait), until the test opens the gate."""
        self.entered.set()
        self.gate.wait(TIMEOUT)
        return "done"

    @tool
    def cooperative(self, ctx: ToolContext) -> None:
        self.entered.set()
        while True:
            ctx.check_cancelled()

    @tool
    async def async_wait(self, ctx: ToolContext) -> None:  # type: ignore[override]
        report = self.reports["async_wait"] = {"cancelled": False, "saw_cancelled": None}
        self.entered.set()
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            report["cancelled"] = True
            report["saw_cancelled"] = ctx.cancelled
            raise

    @tool
    def spin_in_stream(self) -> Iterator[int]:
        report = self.reports["spin_in_stream"] = {"closed": False}
        try:
            yield 0
            self.entered.set()
            while True:
                pass
        finally:
            report["closed"] = True

    @tool
    def broken_stream(self) -> Iterator[int]:  # type: ignore[override]
        yield 1
        raise ValueError("stream broke")


class DispatcherTestCase(unittest.TestCase):
    loop: LoopThread

    @classmethod
    def setUpClass(cls) -> None:
        cls.loop = LoopThread()

    @classmethod
    def tearDownClass(cls) -> None:
        loop = cls.loop.loop
        loop.call_soon_threadsafe(loop.stop)

    def setUp(self) -> None:
        self.adapter = Tools()
        self.dispatcher = Dispatcher(
            self.adapter, worker_id="w-1", run_id="r-1", host_bridge=HostBridge(), loop=self.loop
        )
        self._ids = 0
        self.threads: list[threading.Thread] = []

    def tearDown(self) -> None:
        # Whatever a test left running is cancelled; no tool thread outlives its test.
        for call_id in list(self.dispatcher._calls):
            self.dispatcher.cancel(call_id)
        self.adapter.gate.set()
        for thread in self.threads:
            thread.join(TIMEOUT)
            self.assertFalse(thread.is_alive(), "a tool thread outlived its test")
        self.assertTrue(self.dispatcher.wait_idle(TIMEOUT))

    def prepare(self, tool_name: str, args: Any = None, **kw: Any) -> tuple[Call, Any, dict[str, Any]]:
        self._ids += 1
        return self.dispatcher.prepare(self._ids, tool_name, {} if args is None else args, **kw)

    def run_call(self, tool_name: str, args: Any = None, **kw: Any) -> RecordingSink:
        """Prepare and run; a sync tool runs in this thread, so only for tools that end by themselves."""
        call, info, kwargs = self.prepare(tool_name, args, **kw)
        sink = RecordingSink()
        self.dispatcher.run(call, info, kwargs, sink)
        return sink

    def start_call(self, tool_name: str, args: Any = None, **kw: Any) -> tuple[Call, RecordingSink]:
        """Prepare and run in a thread of its own, as a transport's tool thread does."""
        call, info, kwargs = self.prepare(tool_name, args, **kw)
        sink = RecordingSink()
        thread = threading.Thread(target=self.dispatcher.run, args=(call, info, kwargs, sink), daemon=True)
        self.threads.append(thread)
        thread.start()
        return call, sink

    def failure_of(self, tool_name: str, args: Any = None, **kw: Any) -> ToolFailure:
        with self.assertRaises(ToolFailure) as raised:
            self.prepare(tool_name, args, **kw)
        return raised.exception


class BindingTest(DispatcherTestCase):
    def test_tool_not_found_lists_the_tools(self) -> None:
        failure = self.failure_of("nope")
        self.assertEqual((failure.kind, failure.type), (TOOL_NOT_FOUND, "ToolNotFound"))
        self.assertIn("'nope'", failure.message)
        self.assertEqual(failure.available_tools, sorted(self.adapter.tools()))
        self.assertEqual(failure.to_json()["available"], failure.available_tools)

    def test_arguments_must_be_an_object(self) -> None:
        for args in ([1, 2], "x", 3):
            with self.subTest(args=args):
                failure = self.failure_of("add", args)
                self.assertEqual(failure.kind, INVALID_ARGUMENTS)
                self.assertIn("must be an object", failure.message)

    def test_missing_and_unexpected_arguments(self) -> None:
        missing = self.failure_of("add", {"b": 2})
        self.assertEqual(missing.kind, INVALID_ARGUMENTS)
        self.assertIn("missing a required argument: 'a'", missing.message)
        unexpected = self.failure_of("add", {"a": 1, "c": 3})
        self.assertIn("unexpected keyword argument 'c'", unexpected.message)
        self.assertIn("'add'", unexpected.message)

    def test_ctx_is_never_bound_from_the_arguments(self) -> None:
        failure = self.failure_of("uses_ctx", {"key": "k", "ctx": 1})
        self.assertEqual(failure.kind, INVALID_ARGUMENTS)
        self.assertIn("'ctx'", failure.message)

    def test_var_keyword_accepts_any_other_name(self) -> None:
        sink = self.run_call("with_rest", {"a": 1, "x": 2, "y": [3]})
        self.assertEqual(sink.terminal(), ("result", {"a": 1, "rest": {"x": 2, "y": [3]}}))
        self.assertIn("'a'", self.failure_of("with_rest", {"x": 2}).message)

    def test_signatures_that_are_not_simple_fall_back_to_binding(self) -> None:
        info = self.adapter.tools()["positional_only"]
        self.assertFalse(info.simple)
        failure = self.failure_of("positional_only", {"a": 1})
        self.assertEqual(failure.kind, INVALID_ARGUMENTS)
        self.assertIn("positional", failure.message)
        star = self.adapter.tools()["star_args"]
        self.assertFalse(star.simple)
        self.assertEqual(self.run_call("star_args", {"scale": 3}).terminal(), ("result", 0))
        self.assertIn("unexpected keyword argument 'items'", self.failure_of("star_args", {"items": [1]}).message)

    def test_check_arguments_agrees_with_binding_on_simple_signatures(self) -> None:
        info = self.adapter.tools()["add"]
        self.assertTrue(info.simple)
        for args in ({"a": 1}, {"a": 1, "b": 2}, {}, {"b": 1}, {"a": 1, "zz": 0}):
            with self.subTest(args=args):
                try:
                    info.signature.bind(**args)
                    binds = True
                except TypeError:
                    binds = False
                self.assertEqual(info.check_arguments(args) is None, binds)

    def test_a_streaming_tool_called_as_unary_is_refused(self) -> None:
        failure = self.failure_of("counted_stream", {"count": 1})
        self.assertEqual(failure.kind, INVALID_ARGUMENTS)
        self.assertEqual(failure.message, "tool counted_stream streams; call it with executeStream")

    def test_a_refused_call_is_not_registered(self) -> None:
        self.failure_of("add", {})
        self.assertEqual(self.dispatcher.active, 0)
        self.assertEqual(self.dispatcher.health()["running"], [])


class OutcomeTest(DispatcherTestCase):
    def test_sync_and_async_results(self) -> None:
        self.assertEqual(self.run_call("add", {"a": 2, "b": 40}).terminal(), ("result", 42))
        self.assertEqual(self.run_call("async_add", {"a": 2, "b": 3}).terminal(), ("result", 5))
        self.assertEqual(self.run_call("returns_awaitable").terminal(), ("result", "awaited"))

    def test_a_tool_result_carries_its_attachments(self) -> None:
        sink = self.run_call("with_attachments", attachments={"a": b"xy", "b": b"z"})
        self.assertEqual(sink.terminal(), ("result", {"value": ["a", "b"], "attachments": {"a": b"XY", "b": b"Z"}}))

    def test_a_python_exception_with_a_trimmed_traceback(self) -> None:
        kind, failure = self.run_call("raises").terminal()
        self.assertEqual(kind, "failure")
        self.assertEqual((failure.kind, failure.type, failure.message), (PYTHON_EXCEPTION, "KeyError", "'deep down'"))
        self.assertTrue(failure.traceback.startswith("Traceback (most recent call last):"))
        # The tool's frames, and none of the runtime's that led up to it.
        self.assertIn("in raises", failure.traceback)
        self.assertIn("in _helper", failure.traceback)
        self.assertNotIn(os.path.join("snakepit_bridge", "dispatch.py"), failure.traceback)
        self.assertTrue(failure.traceback.rstrip().endswith("KeyError: 'deep down'"))

    def test_system_exit_in_a_tool_is_a_failure(self) -> None:
        kind, failure = self.run_call("exits").terminal()
        self.assertEqual((kind, failure.type), ("failure", "SystemExit"))
        self.assertEqual(self.run_call("add", {"a": 1}).terminal(), ("result", 2))


class CancellationTest(DispatcherTestCase):
    def test_a_cpu_bound_sync_loop_is_cancelled(self) -> None:
        call, sink = self.start_call("spin")
        self.assertTrue(self.adapter.entered.wait(TIMEOUT))
        self.assertTrue(self.dispatcher.is_running(call.id))
        self.dispatcher.cancel(call.id)
        self.assertEqual(sink.terminal(), ("cancelled", None))
        # The loop ran its finally, and by then the tool could see that it was cancelled.
        self.assertEqual(self.adapter.reports["spin"], {"finished": True, "saw_cancelled": True})
        wait_until(lambda: not self.dispatcher.is_running(call.id), "the call to leave the registry")

    def test_a_cancel_that_arrives_before_the_tool_starts(self) -> None:
        call, info, kwargs = self.prepare("spin")
        self.dispatcher.cancel(call.id)
        sink = RecordingSink()
        self.dispatcher.run(call, info, kwargs, sink)
        self.assertEqual(sink.terminal(), ("cancelled", None))
        self.assertEqual(self.adapter.runs, 0, "the tool never ran")

    def test_a_cancelled_call_leaves_nothing_pending_in_its_thread(self) -> None:
        # The cancel's exception must not fire later, in whatever this thread runs next.
        for _ in range(20):
            call, info, kwargs = self.prepare("add", {"a": 1})
            sink = RecordingSink()
            self.dispatcher.cancel(call.id)
            self.dispatcher.run(call, info, kwargs, sink)
            self.assertEqual(sink.terminal(), ("cancelled", None))
            total = 0
            for i in range(10_000):
                total += i
        self.assertEqual(self.run_call("add", {"a": 1}).terminal(), ("result", 2))

    def test_ctx_cancelled_and_check_cancelled(self) -> None:
        call, _info, kwargs = self.prepare("uses_ctx", {"key": "k"})
        ctx: ToolContext = kwargs["ctx"]
        self.assertFalse(ctx.cancelled)
        ctx.check_cancelled()
        call.cancel()
        self.assertTrue(ctx.cancelled)
        with self.assertRaises(CallCancelled):
            ctx.check_cancelled()
        self.dispatcher._finish(call)

    def test_a_cooperative_tool_stops_on_check_cancelled(self) -> None:
        call, sink = self.start_call("cooperative")
        self.assertTrue(self.adapter.entered.wait(TIMEOUT))
        self.dispatcher.cancel(call.id)
        self.assertEqual(sink.terminal(), ("cancelled", None))

    def test_call_cancelled_is_not_an_exception_a_tool_swallows(self) -> None:
        self.assertFalse(issubclass(CallCancelled, Exception))

    def test_an_async_tool_is_cancelled(self) -> None:
        call, sink = self.start_call("async_wait")
        self.assertTrue(self.adapter.entered.wait(TIMEOUT))
        self.dispatcher.cancel(call.id)
        self.assertEqual(sink.terminal(), ("cancelled", None))
        self.assertEqual(self.adapter.reports["async_wait"], {"cancelled": True, "saw_cancelled": True})
        wait_until(lambda: not self.dispatcher.is_running(call.id), "the async call to leave the registry")

    def test_health_reports_running_and_cancelled_calls(self) -> None:
        call, sink = self.start_call("blocked_in_c")
        self.assertTrue(self.adapter.entered.wait(TIMEOUT))
        health = self.dispatcher.health()
        self.assertEqual(health["active_calls"], 1)
        (running,) = health["running"]
        self.assertEqual(running["tool"], "blocked_in_c")
        self.assertGreaterEqual(running["ms"], 0)
        self.assertNotIn("cancelled_ms", running)
        # Blocked in C, the call outlives its cancel: health shows it, so the host can retire the worker.
        self.dispatcher.cancel(call.id)
        (running,) = self.dispatcher.health()["running"]
        self.assertIn("cancelled_ms", running)
        self.assertGreaterEqual(running["cancelled_ms"], 0)
        self.assertFalse(self.dispatcher.wait_idle(0.05))
        self.adapter.gate.set()
        self.assertEqual(sink.terminal(), ("cancelled", None))
        self.assertTrue(self.dispatcher.wait_idle(TIMEOUT))
        self.assertEqual(self.dispatcher.health()["running"], [])

    def test_a_sync_tool_returning_an_awaitable_stays_cancellable(self) -> None:
        # The awaitable runs on the loop after run() returns: until it settles the call is
        # still running, and a cancel must reach it.
        call, info, kwargs = self.prepare("returns_pending_awaitable")
        sink = RecordingSink()
        self.dispatcher.run(call, info, kwargs, sink)
        self.assertTrue(self.dispatcher.is_running(call.id), "the awaitable is still running")
        self.dispatcher.cancel(call.id)
        self.assertEqual(sink.terminal(), ("cancelled", None))


class HealthTest(DispatcherTestCase):
    def test_health_when_idle(self) -> None:
        health = self.dispatcher.health()
        self.assertEqual(health["active_calls"], 0)
        self.assertTrue(health["ok"])
        self.assertEqual(health["detail"], "")
        self.assertGreater(health["rss_bytes"], 1024 * 1024)
        self.assertGreaterEqual(health["uptime_ms"], 0)

    def test_the_transport_says_why_it_is_blocked(self) -> None:
        self.dispatcher.set_blocked_probe(lambda: "all 1 tool threads are busy")
        health = self.dispatcher.health()
        self.assertEqual((health["ok"], health["detail"]), (False, "all 1 tool threads are busy"))

    def test_describe(self) -> None:
        described = {spec["name"]: spec for spec in self.dispatcher.describe()}
        self.assertEqual(list(described), sorted(described))
        self.assertEqual(
            described["add"]["parameters"],
            [
                {"name": "a", "type": "int", "required": True, "default_json": ""},
                {"name": "b", "type": "int", "required": False, "default_json": "1"},
            ],
        )
        self.assertTrue(described["counted_stream"]["streaming"])
        self.assertFalse(described["add"]["streaming"])


class SessionTest(DispatcherTestCase):
    def test_sessions_keep_state_per_session(self) -> None:
        self.run_call("put", {"key": "k", "value": [1]}, session="s1")
        self.assertEqual(
            self.run_call("uses_ctx", {"key": "k"}, session="s1").terminal(),
            ("result", {"session_id": "s1", "worker": "w-1", "run": "r-1", "value": [1]}),
        )
        self.assertEqual(self.run_call("uses_ctx", {"key": "k"}, session="s2").terminal()[1]["value"], None)
        # Without a session, state lives only for the call.
        self.run_call("put", {"key": "k", "value": "none"})
        self.assertEqual(self.run_call("uses_ctx", {"key": "k"}).terminal()[1]["value"], None)
        self.assertTrue(self.dispatcher.cleanup_session("s1"))
        self.assertFalse(self.dispatcher.cleanup_session("s1"))
        self.assertFalse(self.dispatcher.cleanup_session("never"))
        self.assertEqual(self.run_call("uses_ctx", {"key": "k"}, session="s1").terminal()[1]["value"], None)


class StreamTest(DispatcherTestCase):
    def test_a_sync_stream_sends_no_more_than_its_credit(self) -> None:
        call, sink = self.start_call("counted_stream", {"count": 100}, stream=True, window=2)
        thread = self.threads[-1]
        sink.wait_chunks(2)
        wait_until(lambda: waiting_in(thread, "take"), "the generator to wait for credit")
        self.assertEqual(sink.chunks, [0, 1])
        self.assertEqual(self.adapter.reports["counted"]["produced"], 2)
        self.dispatcher.grant(call.id, 3)
        sink.wait_chunks(5)
        wait_until(lambda: waiting_in(thread, "take"), "the generator to wait for credit again")
        self.assertEqual(sink.chunks, [0, 1, 2, 3, 4])
        self.assertEqual(self.adapter.reports["counted"], {"produced": 5, "closed": False})
        # Cancelled while waiting for credit: the generator is closed and its finally runs.
        self.dispatcher.cancel(call.id)
        self.assertEqual(sink.terminal(), ("cancelled", None))
        self.assertEqual(self.adapter.reports["counted"], {"produced": 5, "closed": True})

    def test_a_sync_stream_runs_to_its_end(self) -> None:
        sink = self.run_call("counted_stream", {"count": 3}, stream=True, window=10)
        self.assertEqual(sink.events, [("chunk", 0), ("chunk", 1), ("chunk", 2), ("end", None)])
        self.assertTrue(self.adapter.reports["counted"]["closed"])

    def test_a_stream_cancelled_while_its_generator_runs(self) -> None:
        call, sink = self.start_call("spin_in_stream", stream=True, window=10)
        self.assertTrue(self.adapter.entered.wait(TIMEOUT))
        self.dispatcher.cancel(call.id)
        self.assertEqual(sink.terminal(), ("cancelled", None))
        self.assertEqual(sink.chunks, [0])
        self.assertTrue(self.adapter.reports["spin_in_stream"]["closed"])

    def test_a_generator_that_raises_fails_the_stream_after_its_chunks(self) -> None:
        sink = self.run_call("broken_stream", stream=True, window=10)
        self.assertEqual(sink.chunks, [1])
        kind, failure = sink.terminal()
        self.assertEqual((kind, failure.type, failure.message), ("failure", "ValueError", "stream broke"))
        self.assertIn("in broken_stream", failure.traceback)

    def test_a_chunk_the_sink_cannot_send_ends_the_stream(self) -> None:
        # The sink has reported the failure itself: nothing more may follow, and the generator is closed.
        for tool_name, report in (("counted_stream", "counted"), ("async_counted_stream", "async_counted")):
            with self.subTest(tool=tool_name):
                call, info, kwargs = self.prepare(tool_name, {"count": 100}, stream=True, window=100)
                sink = RefusingSink(after=2)
                self.dispatcher.run(call, info, kwargs, sink)
                wait_until(lambda r=report: self.adapter.reports.get(r, {}).get("closed"), "the generator to be closed")
                wait_until(lambda c=call: not self.dispatcher.is_running(c.id), "the call to end")
                self.assertEqual(sink.events, [("chunk", 0), ("chunk", 1), ("chunk", 2)])
                self.assertEqual(self.adapter.reports[report]["produced"], 3)

    def test_a_non_streaming_tool_called_as_a_stream_gives_its_result(self) -> None:
        self.assertEqual(self.run_call("add", {"a": 1}, stream=True, window=1).terminal(), ("result", 2))

    def test_an_async_stream_with_credit_and_cancel(self) -> None:
        call, sink = self.start_call("async_counted_stream", {"count": 100}, stream=True, window=3)
        sink.wait_chunks(3)
        self.assertEqual(self.adapter.reports["async_counted"]["produced"], 3)
        self.dispatcher.grant(call.id, 2)
        sink.wait_chunks(5)
        self.assertEqual(sink.chunks, [0, 1, 2, 3, 4])
        self.assertLessEqual(self.adapter.reports["async_counted"]["produced"], 5)
        self.dispatcher.cancel(call.id)
        self.assertEqual(sink.terminal(), ("cancelled", None))
        self.assertTrue(self.adapter.reports["async_counted"]["closed"])
        self.assertLessEqual(len(sink.chunks), 5)

    def test_an_async_stream_to_its_end(self) -> None:
        _call, sink = self.start_call("async_counted_stream", {"count": 4}, stream=True, window=100)
        self.assertEqual(sink.terminal(), ("end", None))
        self.assertEqual(sink.chunks, [0, 1, 2, 3])
        self.assertEqual(self.adapter.reports["async_counted"], {"produced": 4, "closed": True})


class CreditTest(unittest.TestCase):
    def test_take_blocks_until_granted_and_close_wakes_it(self) -> None:
        credit = Credit(1)
        self.assertTrue(credit.take())
        results: list[bool] = []
        taker = threading.Thread(target=lambda: results.append(credit.take()))
        taker.start()
        wait_until(lambda: waiting_in(taker, "take"), "take to block")
        credit.grant(1)
        taker.join(TIMEOUT)
        self.assertEqual(results, [True])
        taker = threading.Thread(target=lambda: results.append(credit.take()))
        taker.start()
        wait_until(lambda: waiting_in(taker, "take"), "take to block")
        credit.close()
        taker.join(TIMEOUT)
        self.assertEqual(results, [True, False])
        self.assertFalse(credit.take(), "closed stays closed")

    def test_atake(self) -> None:
        async def scenario() -> list[bool]:
            credit = Credit(0)
            loop = asyncio.get_running_loop()
            waiting = asyncio.ensure_future(credit.atake())
            await asyncio.sleep(0)
            self.assertFalse(waiting.done())
            await loop.run_in_executor(None, credit.grant, 1)
            first = await asyncio.wait_for(waiting, TIMEOUT)
            waiting = asyncio.ensure_future(credit.atake())
            await asyncio.sleep(0)
            await loop.run_in_executor(None, credit.close)
            return [first, await asyncio.wait_for(waiting, TIMEOUT)]

        self.assertEqual(asyncio.run(scenario()), [True, False])


if __name__ == "__main__":
    unittest.main()
