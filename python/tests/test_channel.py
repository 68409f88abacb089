"""The local transport end to end: a real worker process on two socket pairs, this test as its host."""

from __future__ import annotations

import os
import unittest
from typing import Any

from snakepit_bridge.frames import FLAG_TAGGED, PREFIX, U32

from .worker_process import (
    ODD_ADAPTER,
    TIMEOUT,
    LocalWorker,
    wait_until,
)


class SharedWorkerTest(unittest.TestCase):
    """One worker shared by the tests of a class; each test leaves it idle."""

    worker: LocalWorker
    worker_args: tuple[str, ...] = ()

    @classmethod
    def setUpClass(cls) -> None:
        cls.worker = LocalWorker(*cls.worker_args)
        try:
            cls.worker.read_ready()
        except BaseException:
            cls.worker.close()
            raise

    @classmethod
    def tearDownClass(cls) -> None:
        cls.worker.close()

    def tearDown(self) -> None:
        if self.worker.proc.poll() is None:
            wait_until(lambda: self.worker.health()["active_calls"] == 0, TIMEOUT, "the worker to be idle")

    def long_call(self, tool: str, args: Any = None, **kw: Any) -> int:
        """Start a call that does not end by itself; it is cancelled after the test whatever happens."""
        call_id = self.worker.send_call(tool, args, **kw)
        self.addCleanup(self.worker.cancel, call_id)
        return call_id

    def running(self, tool: str) -> list[dict[str, Any]]:
        """The running calls of ``tool`` (a call that just answered may still be listed for a moment)."""
        return [r for r in self.worker.health()["running"] if r["tool"] == tool]


class CallTest(SharedWorkerTest):
    def test_ready_frame(self) -> None:
        ready = self.worker.ready
        assert ready is not None
        self.assertEqual(set(ready), {"t", "pid", "adapter", "protocol", "python", "tools"})
        self.assertEqual(ready["pid"], self.worker.pid)
        self.assertEqual(ready["adapter"], ODD_ADAPTER)
        self.assertEqual(ready["protocol"], 2)
        self.assertRegex(ready["python"], r"^3\.\d+\.\d+")
        self.assertEqual(ready["tools"], len(self.worker.control("describe")["tools"]))

    def test_worker_leads_its_own_process_group(self) -> None:
        self.assertEqual(os.getpgid(self.worker.pid), self.worker.pid)

    def test_call_and_result(self) -> None:
        self.assertEqual(self.worker.result("add", {"a": 2, "b": 40}), 42)
        value = {"nested": [1, "two", None, True, 2.5], "unicode": "naïve ✓"}
        self.assertEqual(self.worker.result("echo", {"value": value}), value)
        self.assertEqual(self.worker.result("ping"), {"message": "pong", "pid": self.worker.pid})

    def test_bytes_both_ways(self) -> None:
        payload = bytes(range(256))
        described = self.worker.result("describe_value", {"value": {"b": payload, "list": [b"", b"xy"], "n": 1}})
        self.assertEqual(
            described,
            {
                "b": {"bytes": 256, "head": [0, 1, 2, 3]},
                "list": [{"bytes": 0, "head": []}, {"bytes": 2, "head": [120, 121]}],
                "n": "int",
            },
        )
        frame = self.worker.call("give_bytes", {"size": 5})
        self.assertTrue(frame.tagged)
        self.assertEqual(frame.blobs, [b"\x07" * 5, b"", b"ba"])
        self.assertEqual(frame.value("v", "result"), {"size": 5, "data": b"\x07" * 5, "nested": [b"", b"ba"]})

    def test_large_bytes_both_ways(self) -> None:
        big = os.urandom(5 * 1024 * 1024)
        self.assertEqual(self.worker.result("echo", {"value": big}), big)
        result = self.worker.result("give_bytes", {"size": 3 * 1024 * 1024, "fill": 9})
        self.assertEqual(result["data"], b"\x09" * (3 * 1024 * 1024))

    def test_attachments_both_ways(self) -> None:
        result = self.worker.result("give_blob", attachments={"a": b"\x00\x01\x02", "b": b"xy"})
        self.assertEqual(result, {"value": {"names": ["a", "b"]}, "attachments": {"a": b"\x02\x01\x00", "b": b"yx"}})

    def test_async_tool(self) -> None:
        self.assertEqual(self.worker.result("async_add", {"a": 1, "b": 2}), 3)

    def test_sessions(self) -> None:
        self.worker.result("session_put", {"key": "k", "value": [1, 2]}, session="s1")
        self.assertEqual(self.worker.result("session_get", {"key": "k"}, session="s1"), [1, 2])
        self.assertIsNone(self.worker.result("session_get", {"key": "k"}, session="s2"))
        self.assertIsNone(self.worker.result("session_get", {"key": "k"}))
        self.assertEqual(self.worker.control("cleanup", s="s1"), {"existed": True})
        self.assertEqual(self.worker.control("cleanup", s="s1"), {"existed": False})
        self.assertEqual(self.worker.control("cleanup", s="never"), {"existed": False})
        # A call naming a session that was cleaned up starts it afresh.
        self.assertIsNone(self.worker.result("session_get", {"key": "k"}, session="s1"))

    def test_describe(self) -> None:
        described = self.worker.control("describe")
        self.assertEqual(described["adapter"], ODD_ADAPTER)
        tools = {spec["name"]: spec for spec in described["tools"]}
        self.assertEqual(
            tools["add"]["parameters"],
            [
                {"name": "a", "type": "float", "required": True, "default_json": ""},
                {"name": "b", "type": "float", "required": True, "default_json": ""},
            ],
        )
        self.assertEqual(tools["add"]["description"], "Return a + b.")
        self.assertTrue(tools["flood"]["streaming"])
        self.assertTrue(tools["async_counted_stream"]["streaming"])
        self.assertFalse(tools["echo"]["streaming"])

    def test_health(self) -> None:
        health = self.worker.health()
        self.assertEqual(health["pid"], self.worker.pid)
        self.assertTrue(health["ok"])
        self.assertEqual((health["active_calls"], health["running"]), (0, []))
        self.assertGreater(health["rss_bytes"], 1024 * 1024)

    def test_health_reports_running_and_waiting_calls(self) -> None:
        spin = self.long_call("spin", {"name": "health"})
        wait_until(lambda: bool(self.running("spin")), TIMEOUT, "spin to start")
        (running,) = self.running("spin")
        self.assertEqual(running["tool"], "spin")
        self.assertNotIn("cancelled_ms", running)
        # A call waiting behind the busy tool thread makes the worker say so.
        waiting = self.worker.send_call("add", {"a": 1, "b": 1})
        wait_until(lambda: not self.worker.health()["ok"], TIMEOUT, "health to report the waiting call")
        health = self.worker.health()
        self.assertEqual(health["detail"], "the tool thread is busy with 'spin' and a call is waiting")
        self.worker.cancel(spin)
        self.assertEqual(self.worker.frame(spin).header, {"t": "cancelled", "i": spin})
        self.assertEqual(self.worker.frame(waiting).value("v", "result"), 2)
        self.assertTrue(self.worker.health()["ok"])


def _report(worker: LocalWorker, name: str) -> Any:
    """The fixture's report for ``name`` (a call: on the shared worker, only while no sync tool runs)."""
    return worker.result("report", {"name": name})


class ErrorTest(SharedWorkerTest):
    def test_tool_not_found(self) -> None:
        error = self.worker.error("nope")
        self.assertEqual((error["kind"], error["type"]), ("tool_not_found", "ToolNotFound"))
        self.assertIn("'nope'", error["message"])
        self.assertEqual(error["available"], sorted(error["available"]))
        self.assertIn("echo", error["available"])

    def test_invalid_arguments(self) -> None:
        for args, needle in (({"a": 1}, "'b'"), ({"a": 1, "b": 2, "c": 3}, "'c'"), ([1, 2], "must be an object")):
            with self.subTest(args=args):
                error = self.worker.error("add", args)
                self.assertEqual(error["kind"], "invalid_arguments")
                self.assertIn(needle, error["message"])
        error = self.worker.error("session_get", {"key": "k", "ctx": 1})
        self.assertEqual(error["kind"], "invalid_arguments")

    def test_a_tagged_value_of_an_unknown_kind_names_its_path(self) -> None:
        # By hand: a frame flagged tagged whose value has a kind this side does not know.
        header = b'{"t":"call","i":999,"tool":"echo","a":{"value":{"x":[{"__snakepit__":"numpy","blob":0}]}}}'
        total = PREFIX.size - 4 + len(header) + 4 + 1
        self.worker.call_writer.send_parts([PREFIX.pack(total, FLAG_TAGGED, len(header)), header, U32.pack(1), b"z"])
        frame = self.worker.frame(999)
        self.assertEqual(frame.header["t"], "error")
        error = frame.header["e"]
        self.assertEqual(error["kind"], "invalid_arguments")
        self.assertIn("unknown value kind 'numpy'", error["message"])
        self.assertEqual(error["path"], "args.value.x[0]")

    def test_python_exception(self) -> None:
        error = self.worker.error("fail", {"type": "ZeroDivisionError", "message": "no way"})
        self.assertEqual(
            (error["kind"], error["type"], error["message"]), ("python_exception", "ZeroDivisionError", "no way")
        )
        self.assertIn("in fail", error["traceback"])
        self.assertTrue(error["traceback"].rstrip().endswith("ZeroDivisionError: no way"))

    def test_the_traceback_starts_at_the_tool(self) -> None:
        for tool in ("fail_deep", "fail"):
            with self.subTest(tool=tool):
                # The showcase lives in the runtime's own package: its tracebacks must be trimmed too.
                traceback = self.worker.error(tool)["traceback"]
                self.assertNotIn(os.path.join("snakepit_bridge", "dispatch.py"), traceback)
                first_frame = traceback.splitlines()[1]
                self.assertRegex(first_frame, r"(fixture_adapters|showcase)\.py")

    def test_unserialisable_results(self) -> None:
        for tool in ("give_complex", "give_nan"):
            with self.subTest(tool=tool):
                error = self.worker.error(tool)
                self.assertEqual(error["kind"], "unserializable_result")
                self.assertIn(tool, error["message"])

    def test_system_exit_in_a_tool_is_reported(self) -> None:
        error = self.worker.error("sys_exit")
        self.assertEqual((error["kind"], error["type"]), ("python_exception", "SystemExit"))
        self.assertEqual(self.worker.result("add", {"a": 1, "b": 1}), 2)

    def test_a_streaming_tool_called_as_unary(self) -> None:
        error = self.worker.error("flood", {"count": 1})
        self.assertEqual(error["kind"], "invalid_arguments")


class StreamTest(SharedWorkerTest):
    def test_a_stream_to_its_end(self) -> None:
        frames = self.worker.stream("counted_stream", {"count": 3, "name": "to_end"})
        self.assertEqual([f.header["t"] for f in frames], ["chunk", "chunk", "chunk", "end"])
        self.assertEqual([f.value("v", "chunk") for f in frames[:3]], [0, 1, 2])
        self.assertEqual(_report(self.worker, "to_end"), {"produced": 3, "closed": True})

    def test_a_sync_stream_follows_its_credit_and_cancel_runs_its_finally(self) -> None:
        call_id = self.long_call("counted_stream", {"count": 100_000, "name": "credit"}, stream=True, window=3)
        self.assertEqual([self.worker.frame(call_id).value("v", "c") for _ in range(3)], [0, 1, 2])
        self.worker.credit(call_id, 2)
        self.assertEqual([self.worker.frame(call_id).value("v", "c") for _ in range(2)], [3, 4])
        self.worker.cancel(call_id)
        self.assertEqual(self.worker.frame(call_id).header, {"t": "cancelled", "i": call_id})
        # The generator never ran ahead of its credit, and ending the stream ran its finally.
        self.assertEqual(_report(self.worker, "credit"), {"produced": 5, "closed": True})

    def test_an_async_stream_waits_for_credit(self) -> None:
        call_id = self.long_call("async_counted_stream", {"count": 100_000, "name": "acredit"}, stream=True, window=2)
        self.assertEqual([self.worker.frame(call_id).value("v", "c") for _ in range(2)], [0, 1])
        # The async stream runs on the event loop, so the reader thread answers calls meanwhile.
        self.assertEqual(_report(self.worker, "acredit"), {"produced": 2, "closed": False})
        self.worker.credit(call_id, 1)
        self.assertEqual(self.worker.frame(call_id).value("v", "c"), 2)
        self.assertEqual(_report(self.worker, "acredit"), {"produced": 3, "closed": False})
        self.worker.cancel(call_id)
        self.assertEqual(self.worker.frame(call_id).header["t"], "cancelled")
        self.assertEqual(_report(self.worker, "acredit"), {"produced": 3, "closed": True})

    def test_stream_errors_after_chunks(self) -> None:
        for tool, exc_type, message in (
            ("broken_stream", "KeyError", "'stream broke'"),
            ("broken_async_stream", "RuntimeError", "async stream broke"),
        ):
            with self.subTest(tool=tool):
                frames = self.worker.stream(tool, {"good": 2})
                self.assertEqual([f.header["t"] for f in frames], ["chunk", "chunk", "error"])
                error = frames[2].header["e"]
                self.assertEqual(
                    (error["kind"], error["type"], error["message"]), ("python_exception", exc_type, message)
                )
                self.assertIn(tool, error["traceback"])

    def test_blobs_in_chunks(self) -> None:
        frames = self.worker.stream("blob_stream", {"count": 3, "size": 200_000})
        self.assertEqual([f.header["t"] for f in frames], ["chunk", "chunk", "chunk", "end"])
        self.assertEqual([f.value("v", "c") for f in frames[:3]], [bytes([i]) * 200_000 for i in range(3)])

    def test_a_chunk_that_cannot_be_sent_ends_the_stream(self) -> None:
        call_id = self.worker.send_call("bad_chunk_stream", {"name": "bad"}, stream=True, window=100)
        self.assertEqual(self.worker.frame(call_id).value("v", "c"), {"ok": 0})
        error = self.worker.frame(call_id)
        self.assertEqual(error.header["t"], "error")
        self.assertEqual(error.header["e"]["kind"], "unserializable_result")
        # Nothing may follow the error for that call: the host has forgotten it, and a frame
        # for an unknown call breaks the channel.
        ping = self.worker.send_call("ping")
        self.worker.frame(ping)
        self.assertEqual([f.header for f in self.worker.pending_call_frames() if f.header.get("i") == call_id], [])
        self.assertEqual(_report(self.worker, "bad"), {"produced": 2, "closed": True})

    def test_a_non_streaming_tool_called_as_a_stream(self) -> None:
        frames = self.worker.stream("add", {"a": 1, "b": 2})
        self.assertEqual([(f.header["t"], f.value("v", "r")) for f in frames], [("result", 3)])

    def test_stream_call_errors(self) -> None:
        (unknown,) = self.worker.stream("nope", {})
        self.assertEqual(unknown.header["e"]["kind"], "tool_not_found")
        (bad_args,) = self.worker.stream("flood", {})
        self.assertEqual(bad_args.header["e"]["kind"], "invalid_arguments")


class CancelTest(SharedWorkerTest):
    def test_a_cpu_bound_sync_call_is_cancelled(self) -> None:
        call_id = self.long_call("spin", {"name": "cancel_spin"})
        wait_until(lambda: bool(self.running("spin")), TIMEOUT, "spin to start")
        self.worker.cancel(call_id)
        self.assertEqual(self.worker.frame(call_id).header, {"t": "cancelled", "i": call_id})
        self.assertEqual(
            _report(self.worker, "cancel_spin"), {"started": True, "finished": True, "saw_cancelled": True}
        )
        self.assertEqual(self.worker.result("add", {"a": 1, "b": 1}), 2)

    def test_an_async_call_is_cancelled(self) -> None:
        call_id = self.long_call("async_wait", {"name": "cancel_async"})
        wait_until(lambda: _report(self.worker, "cancel_async") is not None, TIMEOUT, "the async tool to start")
        (running,) = self.running("async_wait")
        self.assertEqual(running["tool"], "async_wait")
        self.worker.cancel(call_id)
        self.assertEqual(self.worker.frame(call_id).header["t"], "cancelled")
        self.assertEqual(_report(self.worker, "cancel_async"), {"started": True, "cancelled": True})

    def test_cancelling_an_unknown_or_finished_call_is_harmless(self) -> None:
        self.worker.cancel(424242)
        self.worker.credit(424242, 5)
        call_id = self.worker.send_call("add", {"a": 1, "b": 2})
        self.assertEqual(self.worker.frame(call_id).value("v", "r"), 3)
        self.worker.cancel(call_id)
        self.assertEqual(self.worker.result("add", {"a": 2, "b": 2}), 4)
        self.assertTrue(self.worker.nothing_readable())


class OutputTest(SharedWorkerTest):
    def test_garbage_on_fd_1_and_fd_2_never_reaches_the_channel(self) -> None:
        for _ in range(3):
            # print, sys.stdout, os.write(1/2, ...) and a child process inheriting fds 1 and 2.
            self.assertEqual(self.worker.result("garbage"), {"child_saw_call_fd": False, "child_saw_control_fd": False})
            self.assertEqual(self.worker.result("add", {"a": 1, "b": 1}), 2)
        frames = self.worker.stream("garbage_stream", {"count": 5})
        self.assertEqual([f.header["t"] for f in frames], ["chunk"] * 5 + ["end"])
        self.assertEqual([f.value("v", "c") for f in frames[:5]], list(range(5)))
        wait_until(lambda: "garbage via print" in self.worker.stderr(), TIMEOUT, "the prints on stderr")
        stderr = self.worker.stderr()
        self.assertIn("garbage via sys.stdout", stderr)
        self.assertIn("fixture_adapters imported", stderr)
        self.assertGreaterEqual(stderr.count("GARBAGE"), 3 * 4 + 5 * 2)
        # The original stdout is never written to on the local transport.
        self.assertEqual(self.worker.stdout(), b"")


class ConcurrentWorkerTest(SharedWorkerTest):
    """A worker that may run four calls at once (``--concurrency 4``)."""

    worker_args = ("--concurrency", "4")

    def test_calls_in_flight_at_once(self) -> None:
        spin = self.long_call("spin", {"name": "concurrent"})
        wait_until(lambda: bool(self.running("spin")), TIMEOUT, "spin to start")
        # While spin holds one tool thread, other calls complete on the others.
        ids = [self.worker.send_call("add", {"a": i, "b": 1}) for i in range(10)]
        self.assertEqual([self.worker.frame(i).value("v", "r") for i in ids], [i + 1 for i in range(10)])
        self.assertEqual(len(self.running("spin")), 1)
        self.worker.cancel(spin)
        self.assertEqual(self.worker.frame(spin).header["t"], "cancelled")

    def test_a_sync_stream_in_a_tool_thread_waits_for_credit(self) -> None:
        call_id = self.long_call("counted_stream", {"count": 100_000, "name": "pooled"}, stream=True, window=4)
        self.assertEqual([self.worker.frame(call_id).value("v", "c") for _ in range(4)], [0, 1, 2, 3])
        self.assertEqual(_report(self.worker, "pooled"), {"produced": 4, "closed": False})
        self.worker.cancel(call_id)
        self.assertEqual(self.worker.frame(call_id).header["t"], "cancelled")
        self.assertEqual(_report(self.worker, "pooled"), {"produced": 4, "closed": True})

    def test_a_call_blocked_in_c_stays_in_health_after_its_cancel(self) -> None:
        call_id = self.worker.send_call("block", {"name": "in_c"})
        self.addCleanup(self.worker.send_call, "release", {"name": "in_c"})
        wait_until(lambda: bool(self.running("block")), TIMEOUT, "block to start")
        self.worker.cancel(call_id)
        # The cancel cannot reach a wait in C: health shows it, so the host can retire the worker.
        (running,) = self.running("block")
        self.assertIn("cancelled_ms", running)
        self.assertGreaterEqual(running["cancelled_ms"], 0)
        self.worker.result("release", {"name": "in_c"})
        self.assertEqual(self.worker.frame(call_id).header["t"], "cancelled")


class HostToolTest(SharedWorkerTest):
    """The worker calls host tools over its control socket; this test answers as the host."""

    worker_args = ("--host-tools",)

    def test_host_call_round_trip_with_bytes(self) -> None:
        call_id = self.worker.send_call(
            "call_host_with",
            {"tool": "greet", "args": {"name": "ada", "photo": b"\x89PNG"}, "attachments": {"a": b"att"}},
            session="sess-1",
        )
        request = self.worker.host_request()
        self.assertEqual(request.header["t"], "host_call")
        self.assertEqual(request.header["tool"], "greet")
        self.assertEqual(request.header["s"], "sess-1")
        self.assertEqual(request.value("a", "args"), {"name": "ada", "photo": b"\x89PNG"})
        self.assertEqual(request.value("att", "attachments"), {"a": b"att"})
        self.worker.control_writer.send(
            {"t": "host_result", "i": request.header["i"], "v": {"hi": "ada", "raw": b"\x00\x01"}}
        )
        self.assertEqual(self.worker.frame(call_id).value("v", "r"), {"hi": "ada", "raw": b"\x00\x01"})

    def test_async_tool_calls_the_host(self) -> None:
        call_id = self.worker.send_call("acall_host_tool", {"tool": "whoami", "args": {"k": "v"}})
        request = self.worker.host_request()
        self.assertEqual((request.header["tool"], request.value("a", "args")), ("whoami", {"k": "v"}))
        self.worker.control_writer.send({"t": "host_result", "i": request.header["i"], "v": "you"})
        self.assertEqual(self.worker.frame(call_id).value("v", "r"), "you")

    def test_host_failures_become_host_tool_errors(self) -> None:
        for failure, needles in (
            (
                {"kind": "python_exception", "type": "ValueError", "message": "bad input"},
                ("HostToolError", "ValueError: bad input"),
            ),
            (
                {
                    "kind": "tool_not_found",
                    "type": "ToolNotFound",
                    "message": "no host tool named 'x'",
                    "available": ["boom", "greet"],
                },
                ("HostToolError", "available host tools: boom, greet"),
            ),
        ):
            with self.subTest(kind=failure["kind"]):
                call_id = self.worker.send_call("call_host_with", {"tool": "x"})
                request = self.worker.host_request()
                self.worker.control_writer.send({"t": "host_result", "i": request.header["i"], "e": failure})
                error = self.worker.frame(call_id).header["e"]
                self.assertEqual(error["type"], needles[0])
                self.assertIn(needles[1], error["message"])

    def test_list_host_tools(self) -> None:
        call_id = self.worker.send_call("list_host")
        request = self.worker.host_request()
        self.assertEqual(request.header["t"], "host_list")
        tools = [{"name": "greet", "description": "Greets.", "parameters": []}]
        self.worker.control_writer.send({"t": "host_result", "i": request.header["i"], "v": tools})
        self.assertEqual(self.worker.frame(call_id).value("v", "r"), tools)

    def test_a_host_call_that_times_out_is_cancelled_on_the_host(self) -> None:
        call_id = self.worker.send_call("call_host_with", {"tool": "slow", "timeout": 0.2})
        request = self.worker.host_request()
        error = self.worker.frame(call_id).header["e"]
        self.assertEqual(error["type"], "HostToolError")
        self.assertIn("DeadlineExceeded", error["message"])
        cancel = self.worker.host_request()
        self.assertEqual(cancel.header, {"t": "host_cancel", "i": request.header["i"]})
        # A late answer to the abandoned call is ignored.
        self.worker.control_writer.send({"t": "host_result", "i": request.header["i"], "v": "late"})
        self.assertEqual(self.worker.result("add", {"a": 1, "b": 1}), 2)

    def test_cancelling_a_call_that_waits_for_the_host_cancels_the_host_call(self) -> None:
        # Repeated: the cancel reaches the tool both as a flag and as an exception, and the
        # host call must be abandoned on the host (host_cancel) whichever of them lands first.
        missing = []
        for attempt in range(20):
            call_id = self.worker.send_call("call_host_with", {"tool": "slow"})
            request = self.worker.host_request()
            self.worker.cancel(call_id)
            self.assertEqual(self.worker.frame(call_id).header["t"], "cancelled")
            # The host_cancel is written before the cancelled frame; a health reply flushes it out.
            self.worker.health()
            cancels = self.worker.take_control_frames("host_cancel")
            if [f.header for f in cancels] != [{"t": "host_cancel", "i": request.header["i"]}]:
                missing.append(attempt)
        self.assertEqual(missing, [], "attempts whose host call was never cancelled on the host")


if __name__ == "__main__":
    unittest.main()
