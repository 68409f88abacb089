"""telemetry.py in process: trace context, ctx.span nesting, the tool's span, log records, limits."""

from __future__ import annotations

import asyncio
import logging
import unittest
from typing import Any
from unittest import mock

from snakepit_bridge import BaseAdapter, ToolContext, tool
from snakepit_bridge import telemetry as tel
from snakepit_bridge.dispatch import Dispatcher, LoopThread
from snakepit_bridge.host_bridge import HostBridge

from .test_dispatch import RecordingSink

TRACE = "0af7651916cd43dd8448eb211c80319c"
PARENT = "b7ad6b7169203331"
TRACEPARENT = f"00-{TRACE}-{PARENT}-01"

log = logging.getLogger("test_telemetry")
log.addHandler(logging.NullHandler())  # no last-resort printing when a test installs no handler


class Traced(BaseAdapter):
    @tool
    def nested(self, ctx: ToolContext) -> str:
        with ctx.span("outer", n=1) as outer:
            outer.set_attribute("late", [1, 2])
            with ctx.span("inner"):
                log.warning("in inner %d", 7)
        return ctx.trace_id

    @tool
    async def nested_async(self, ctx: ToolContext) -> None:
        async with ctx.span("a"):
            await asyncio.sleep(0)
            async with ctx.span("b"):
                pass

    @tool
    def fails(self, ctx: ToolContext) -> None:
        with ctx.span("doomed"):
            raise KeyError("gone")

    @tool
    def many_spans(self, count: int, ctx: ToolContext) -> None:
        for i in range(count):
            with ctx.span("s", i=i):
                pass


def run(tool_name: str, args: dict[str, Any] | None = None, traceparent: str = TRACEPARENT) -> tuple[list[Any], Any]:
    """Runs a tool the way a transport does; returns every telemetry item (sent and piggybacked) and the outcome."""
    loop = LoopThread()
    dispatcher = Dispatcher(Traced(), worker_id="w", run_id="r", host_bridge=HostBridge(), loop=loop)
    sent: list[Any] = []
    sink = RecordingSink()
    call, info, kwargs = dispatcher.prepare(
        1, tool_name, args or {}, traceparent=traceparent, send_telemetry=lambda items: sent.extend(items)
    )
    dispatcher.run(call, info, kwargs, sink)
    outcome = sink.terminal()
    return sent + (call.telemetry.drain() or []), outcome


def spans(items: list[Any]) -> dict[str, dict[str, Any]]:
    """Each span by name: its start item merged with its end item."""
    started = {item["s"]: dict(item) for item in items if item["k"] == "start"}
    for item in items:
        if item["k"] == "end":
            start = started[item["s"]]
            start.update({"end": item["t"], "end_attributes": item.get("a", {}), "error": item.get("x")})
    return {span["n"]: span for span in started.values()}


class TraceparentTest(unittest.TestCase):
    def test_parses_and_refuses(self) -> None:
        self.assertEqual(tel.parse_traceparent(TRACEPARENT), (TRACE, PARENT, True))
        self.assertEqual(tel.parse_traceparent(f"00-{TRACE}-{PARENT}-00"), (TRACE, PARENT, False))
        for bad in [
            "",
            "00-xyz-abc-01",
            f"00-{'0' * 32}-{PARENT}-01",
            f"00-{TRACE}-{PARENT}",
            f"00-{TRACE}-zz{PARENT[2:]}-01",
        ]:
            self.assertIsNone(tel.parse_traceparent(bad), bad)


class SpansTest(unittest.TestCase):
    def test_spans_nest_under_the_tool_span_under_the_host_span(self) -> None:
        items, outcome = run("nested")
        self.assertEqual(outcome, ("result", TRACE))
        by_name = spans(items)
        root, outer, inner = by_name["python nested"], by_name["outer"], by_name["inner"]
        self.assertEqual(root["p"], PARENT)
        self.assertEqual(outer["p"], root["s"])
        self.assertEqual(inner["p"], outer["s"])
        self.assertEqual(outer["a"], {"n": 1})
        self.assertEqual(outer["end_attributes"], {"late": [1, 2]})
        self.assertLessEqual(outer["t"], inner["t"])
        self.assertLessEqual(inner["end"], outer["end"])
        # Items arrive in the order they were made: every start before its end.
        order = [(item["k"], item.get("s")) for item in items if item["k"] in ("start", "end")]
        for span in by_name.values():
            self.assertLess(order.index(("start", span["s"])), order.index(("end", span["s"])))

    def test_async_tools_nest_too(self) -> None:
        items, _ = run("nested_async")
        by_name = spans(items)
        self.assertEqual(by_name["b"]["p"], by_name["a"]["s"])
        self.assertEqual(by_name["a"]["p"], by_name["python nested_async"]["s"])

    def test_an_exception_fails_the_span_and_the_tool_span(self) -> None:
        items, outcome = run("fails")
        self.assertEqual(outcome[0], "failure")
        by_name = spans(items)
        for name in ("doomed", "python fails"):
            self.assertEqual(by_name[name]["error"]["type"], "KeyError", name)
            self.assertIn("gone", by_name[name]["error"]["traceback"])

    def test_spans_past_the_cap_are_dropped_and_counted(self) -> None:
        with mock.patch.object(tel, "MAX_SPANS_PER_CALL", 5):
            items, _ = run("many_spans", {"count": 8})
        self.assertEqual(len([i for i in items if i["k"] == "start" and i["n"] == "s"]), 5)
        self.assertIn({"k": "dropped", "logs": 0, "spans": 3}, items)

    def test_an_untraced_call_records_no_span(self) -> None:
        items, outcome = run("nested", traceparent="")
        self.assertEqual(outcome, ("result", ""))
        self.assertEqual([i for i in items if i["k"] in ("start", "end")], [])


class LogsTest(unittest.TestCase):
    def setUp(self) -> None:
        self.handler = tel.CallLogHandler()
        root = logging.getLogger()
        root.addHandler(self.handler)
        self.addCleanup(root.removeHandler, self.handler)

    def test_a_record_in_a_call_goes_to_the_host_with_its_span(self) -> None:
        items, _ = run("nested")
        record = next(i for i in items if i["k"] == "log")
        self.assertEqual(
            {k: record[k] for k in ("l", "g", "m")}, {"l": logging.WARNING, "g": "test_telemetry", "m": "in inner 7"}
        )
        self.assertEqual(record["s"], spans(items)["inner"]["s"])

    def test_records_outside_a_call_stay_on_stderr(self) -> None:
        record = logging.LogRecord("x", logging.INFO, __file__, 1, "outside", None, None)
        self.assertTrue(tel.outside_call(record))

    def test_a_flood_is_limited_and_the_drop_counted(self) -> None:
        with mock.patch.object(tel, "LIMITER", tel.LogLimiter(rate=0.0, burst=3)):
            call = tel.CallTelemetry("flood", TRACEPARENT)
            with call.active():
                for i in range(10):
                    log.warning("flood %d", i)
            items = call.drain() or []
        self.assertEqual([i["m"] for i in items if i["k"] == "log"], ["flood 0", "flood 1", "flood 2"])
        self.assertEqual(items[-1], {"k": "dropped", "logs": 7, "spans": 0})


if __name__ == "__main__":
    unittest.main()
