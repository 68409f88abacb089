"""End to end: a real worker process, called over gRPC with the generated stub."""

from __future__ import annotations

import concurrent.futures
import json
import os
import unittest

import grpc

from snakepit_bridge.generated import snakepit_bridge_pb2 as pb

from .worker_process import RPC_TIMEOUT, WorkerProcess, wait_until

Kind = pb.ToolError.Kind


class ShowcaseWorkerTest(unittest.TestCase):
    """One showcase worker shared by the tests that do not end it."""

    worker: WorkerProcess

    @classmethod
    def setUpClass(cls) -> None:
        cls.worker = WorkerProcess(watch_stdin=True)
        try:
            cls.worker.read_ready()
        except BaseException:
            cls.worker.close()
            raise

    @classmethod
    def tearDownClass(cls) -> None:
        cls.worker.close()

    def test_readiness_line(self) -> None:
        ready = self.worker.ready
        assert ready is not None
        self.assertEqual(
            set(ready), {"port", "pid", "worker_id", "adapter", "protocol"}
        )
        self.assertEqual(ready["pid"], self.worker.proc.pid)
        self.assertEqual(ready["worker_id"], "test-worker")
        self.assertEqual(ready["adapter"], "snakepit_bridge.showcase:ShowcaseAdapter")
        self.assertEqual(ready["protocol"], 1)
        self.assertGreater(ready["port"], 0)

    def test_worker_leads_its_own_process_group(self) -> None:
        self.assertEqual(os.getpgid(self.worker.proc.pid), self.worker.proc.pid)

    def test_ping_rpc(self) -> None:
        assert self.worker.stub is not None
        reply = self.worker.stub.Ping(pb.PingRequest(message="hello"), timeout=RPC_TIMEOUT)
        self.assertEqual(reply.message, "pong")
        self.assertEqual(reply.pid, self.worker.proc.pid)
        self.assertEqual(reply.worker_id, "test-worker")
        self.assertEqual(reply.adapter, "snakepit_bridge.showcase:ShowcaseAdapter")
        self.assertRegex(reply.python_version, r"^3\.\d+")

    def test_health_rpc(self) -> None:
        assert self.worker.stub is not None
        health = self.worker.stub.Health(pb.HealthRequest(), timeout=RPC_TIMEOUT)
        self.assertTrue(health.ok)
        self.assertEqual(health.pid, self.worker.proc.pid)
        self.assertGreater(health.rss_bytes, 1024 * 1024)
        self.assertGreaterEqual(health.uptime_ms, 0)

    def test_sync_tool_does_not_block_the_loop(self) -> None:
        assert self.worker.stub is not None
        stub = self.worker.stub
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            slow = pool.submit(self.worker.result, "sleep", {"ms": 800})
            wait_until(
                lambda: stub.Health(pb.HealthRequest(), timeout=RPC_TIMEOUT).active_calls >= 1,
                5,
                "the sleep call to be active",
            )
            # Ping answers while the sleep is still running in the executor.
            stub.Ping(pb.PingRequest(), timeout=RPC_TIMEOUT)
            self.assertFalse(slow.done())
            self.assertEqual(slow.result(timeout=RPC_TIMEOUT), {"slept_ms": 800})

    def test_ping_echo_add(self) -> None:
        self.assertEqual(self.worker.result("ping"), {"message": "pong", "pid": self.worker.proc.pid})
        value = {"nested": [1, "two", None, True, 2.5]}
        self.assertEqual(self.worker.result("echo", {"value": value}), value)
        self.assertEqual(self.worker.result("add", {"a": 2, "b": 40}), 42)

    def test_empty_args_mean_empty_object(self) -> None:
        self.assertEqual(self.worker.call("ping", raw=b"").WhichOneof("outcome"), "result_json")

    def test_unknown_tool(self) -> None:
        error = self.worker.call("nope", {}).error
        self.assertEqual(error.kind, Kind.TOOL_NOT_FOUND)
        self.assertIn("nope", error.message)
        self.assertEqual(list(error.available_tools), sorted(error.available_tools))
        self.assertIn("echo", error.available_tools)

    def test_missing_parameter(self) -> None:
        error = self.worker.call("add", {"a": 1}).error
        self.assertEqual(error.kind, Kind.INVALID_ARGUMENTS)
        self.assertIn("'b'", error.message)

    def test_unexpected_parameter(self) -> None:
        error = self.worker.call("add", {"a": 1, "b": 2, "c": 3}).error
        self.assertEqual(error.kind, Kind.INVALID_ARGUMENTS)
        self.assertIn("'c'", error.message)

    def test_ctx_cannot_be_passed_as_an_argument(self) -> None:
        error = self.worker.call("session_get", {"key": "k", "ctx": 1}).error
        self.assertEqual(error.kind, Kind.INVALID_ARGUMENTS)

    def test_bad_json(self) -> None:
        for raw in (b"{not json", b"[1, 2]", b"\xff\xfe"):
            with self.subTest(raw=raw):
                error = self.worker.call("ping", raw=raw).error
                self.assertEqual(error.kind, Kind.INVALID_ARGUMENTS)

    def test_python_exception(self) -> None:
        error = self.worker.call("fail", {"type": "ZeroDivisionError", "message": "no way"}).error
        self.assertEqual(error.kind, Kind.PYTHON_EXCEPTION)
        self.assertEqual(error.type, "ZeroDivisionError")
        self.assertEqual(error.message, "no way")
        self.assertIn("Traceback", error.traceback)
        self.assertIn("in fail", error.traceback)

    def test_fail_defaults(self) -> None:
        error = self.worker.call("fail", {}).error
        self.assertEqual((error.type, error.message), ("ValueError", "boom"))

    def test_streaming_tool_via_execute_tool_is_refused(self) -> None:
        error = self.worker.call("stream_numbers", {"count": 3}).error
        self.assertEqual(error.kind, Kind.INVALID_ARGUMENTS)
        self.assertEqual(error.message, "tool stream_numbers streams; call it with executeStream")

    def test_stream_numbers(self) -> None:
        chunks = self.worker.stream("stream_numbers", {"count": 5, "delay_ms": 5})
        self.assertEqual([json.loads(c.data_json) for c in chunks], [{"i": i} for i in range(5)])

    def test_stream_sync_generator(self) -> None:
        chunks = self.worker.stream("flood", {"count": 3, "size": 4})
        self.assertEqual([json.loads(c.data_json) for c in chunks], ["xxxx"] * 3)
        self.assertEqual(self.worker.result("flood_report"), {"produced": 3, "closed": True})

    def test_non_streaming_tool_via_stream_gives_one_chunk(self) -> None:
        chunks = self.worker.stream("add", {"a": 1, "b": 2})
        self.assertEqual([json.loads(c.data_json) for c in chunks], [3])

    def test_stream_errors_are_chunks(self) -> None:
        (unknown,) = self.worker.stream("nope", {})
        self.assertEqual(unknown.error.kind, Kind.TOOL_NOT_FOUND)
        (bad_args,) = self.worker.stream("stream_numbers", {})
        self.assertEqual(bad_args.error.kind, Kind.INVALID_ARGUMENTS)
        (failed,) = self.worker.stream("fail", {})
        self.assertEqual((failed.error.kind, failed.error.type), (Kind.PYTHON_EXCEPTION, "ValueError"))

    def test_cancelling_a_flood_closes_the_generator(self) -> None:
        assert self.worker.stub is not None
        request = pb.ExecuteToolRequest(
            tool="flood", args_json=json.dumps({"count": 10_000_000, "size": 1024}).encode()
        )
        call = self.worker.stub.ExecuteStreamingTool(request, timeout=RPC_TIMEOUT)
        for _ in range(5):
            self.assertEqual(len(json.loads(next(call).data_json)), 1024)
        call.cancel()
        wait_until(lambda: self.worker.result("flood_report")["closed"], 5, "the flood to be closed")
        report = self.worker.result("flood_report")
        # Backpressure: the generator stopped long before its count.
        self.assertLess(report["produced"], 1_000_000)
        self.assertGreaterEqual(report["produced"], 5)

    def test_sessions(self) -> None:
        assert self.worker.stub is not None
        stub = self.worker.stub
        stub.InitializeSession(pb.InitializeSessionRequest(session_id="s1"), timeout=RPC_TIMEOUT)
        self.worker.result("session_put", {"key": "k", "value": [1, 2]}, session_id="s1")
        self.assertEqual(self.worker.result("session_get", {"key": "k"}, session_id="s1"), [1, 2])
        # Other sessions and session-less calls do not see it.
        self.assertIsNone(self.worker.result("session_get", {"key": "k"}, session_id="s2"))
        self.assertIsNone(self.worker.result("session_get", {"key": "k"}))
        # A session used without InitializeSession is created on demand.
        self.worker.result("session_put", {"key": "k", "value": "auto"}, session_id="s3")
        self.assertEqual(self.worker.result("session_get", {"key": "k"}, session_id="s3"), "auto")

        cleaned = stub.CleanupSession(pb.CleanupSessionRequest(session_id="s1"), timeout=RPC_TIMEOUT)
        self.assertTrue(cleaned.existed)
        self.assertIsNone(self.worker.result("session_get", {"key": "k"}, session_id="s1"))
        stub.CleanupSession(pb.CleanupSessionRequest(session_id="s1"), timeout=RPC_TIMEOUT)
        again = stub.CleanupSession(pb.CleanupSessionRequest(session_id="never"), timeout=RPC_TIMEOUT)
        self.assertFalse(again.existed)

    def test_describe_tools(self) -> None:
        assert self.worker.stub is not None
        reply = self.worker.stub.DescribeTools(pb.DescribeToolsRequest(), timeout=RPC_TIMEOUT)
        self.assertEqual(reply.adapter, "snakepit_bridge.showcase:ShowcaseAdapter")
        specs = {spec.name: spec for spec in reply.tools}
        self.assertEqual(len(specs), 15)
        add = specs["add"]
        self.assertEqual(add.description, "Return a + b.")
        self.assertEqual(
            [(p.name, p.type, p.required) for p in add.parameters], [("a", "float", True), ("b", "float", True)]
        )
        fail = specs["fail"]
        self.assertEqual([p.default_json for p in fail.parameters], [b'"ValueError"', b'"boom"'])
        self.assertTrue(specs["stream_numbers"].streaming)
        self.assertTrue(specs["flood"].streaming)
        self.assertFalse(specs["echo"].streaming)
        self.assertEqual([p.name for p in specs["session_put"].parameters], ["key", "value"])

    def test_env_and_hog(self) -> None:
        self.assertEqual(
            self.worker.result("env", {"names": ["PYTHONPATH", "SNAKEPIT_SURELY_UNSET"]}),
            {"PYTHONPATH": os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
             "SNAKEPIT_SURELY_UNSET": None},
        )
        assert self.worker.stub is not None
        before = self.worker.stub.Health(pb.HealthRequest(), timeout=RPC_TIMEOUT).rss_bytes
        held = self.worker.result("hog", {"mb": 32})["held_mb"]
        self.assertGreaterEqual(held, 32)
        after = self.worker.stub.Health(pb.HealthRequest(), timeout=RPC_TIMEOUT).rss_bytes
        self.assertGreater(after - before, 24 * 1024 * 1024)

    def test_call_host_is_not_available(self) -> None:
        error = self.worker.call("call_host", {"tool": "t", "args": {}}).error
        self.assertEqual((error.kind, error.type), (Kind.PYTHON_EXCEPTION, "HostToolsUnavailable"))
        self.assertEqual(error.message, "host tools are not available: the host bridge is not configured")


class FixtureWorkerTest(unittest.TestCase):
    """Awkward results and streams, from tests/fixture_adapters.py."""

    worker: WorkerProcess

    @classmethod
    def setUpClass(cls) -> None:
        cls.worker = WorkerProcess(adapter="tests.fixture_adapters:OddAdapter", watch_stdin=False,
                                   env={"SNAKEPIT_HOST_BRIDGE": "127.0.0.1:9"})
        try:
            cls.worker.read_ready()
        except BaseException:
            cls.worker.close()
            raise

    @classmethod
    def tearDownClass(cls) -> None:
        cls.worker.close()

    def test_unserialisable_results(self) -> None:
        for tool in ("give_set", "give_nan"):
            with self.subTest(tool=tool):
                error = self.worker.call(tool, {}).error
                self.assertEqual(error.kind, Kind.UNSERIALIZABLE_RESULT)
                self.assertIn(tool, error.message)

    def test_attachments_both_ways(self) -> None:
        response = self.worker.call("give_blob", {}, attachments={"a": b"\x00\x01\x02", "b": b"xy"})
        self.assertEqual(json.loads(response.result_json), {"names": ["a", "b"]})
        self.assertEqual(dict(response.attachments), {"a": b"\x02\x01\x00", "b": b"yx"})

    def test_generator_exception_mid_stream(self) -> None:
        for tool, exc_type, message in (
            ("broken_stream", "KeyError", "'stream broke'"),
            ("broken_async_stream", "RuntimeError", "async stream broke"),
        ):
            with self.subTest(tool=tool):
                chunks = self.worker.stream(tool, {"good": 2})
                self.assertEqual([c.WhichOneof("outcome") for c in chunks], ["data_json", "data_json", "error"])
                self.assertEqual([json.loads(c.data_json) for c in chunks[:2]], [{"i": 0}, {"i": 1}])
                error = chunks[2].error
                self.assertEqual((error.kind, error.type, error.message), (Kind.PYTHON_EXCEPTION, exc_type, message))
                self.assertIn(tool, error.traceback)

    def test_async_tool(self) -> None:
        self.assertEqual(self.worker.result("async_add", {"a": 1, "b": 2}), 3)

    def test_system_exit_in_tool_is_reported(self) -> None:
        error = self.worker.call("sys_exit", {}).error
        self.assertEqual((error.kind, error.type), (Kind.PYTHON_EXCEPTION, "SystemExit"))
        self.assertEqual(self.worker.result("async_add", {"a": 1, "b": 1}), 2)

    def test_unreachable_host_bridge(self) -> None:
        error = self.worker.call("call_host_tool", {}).error
        self.assertEqual((error.kind, error.type), (Kind.PYTHON_EXCEPTION, "HostToolsUnavailable"))
        self.assertRegex(error.message, "^host bridge unreachable: ")

    def test_prints_do_not_reach_stdout(self) -> None:
        self.assertEqual(self.worker.result("noisy"), "printed")
        wait_until(lambda: "noisy tool output" in self.worker.stderr(), 5, "the print on stderr")
        self.assertIn("fixture_adapters imported", self.worker.stderr())

    def test_client_deadline_cancels_unary_call(self) -> None:
        assert self.worker.stub is not None
        request = pb.ExecuteToolRequest(tool="sleep_then", args_json=b'{"ms": 2000}')
        with self.assertRaises(grpc.RpcError) as raised:
            self.worker.stub.ExecuteTool(request, timeout=0.2)
        self.assertEqual(raised.exception.code(), grpc.StatusCode.DEADLINE_EXCEEDED)
        self.assertEqual(self.worker.result("async_add", {"a": 2, "b": 2}), 4)


if __name__ == "__main__":
    unittest.main()
