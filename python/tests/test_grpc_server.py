"""The gRPC transport end to end: a real ``--transport grpc`` worker behind its per-worker token.

Skipped when grpcio is not importable: the local transport must work without it.
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import signal
import stat
import tempfile
import unittest
from typing import Any

from .worker_process import ODD_ADAPTER, TIMEOUT, GrpcWorker, pid_alive, wait_until

HAVE_GRPC = importlib.util.find_spec("grpc") is not None

if HAVE_GRPC:
    import grpc

    from snakepit_bridge.generated import snakepit_bridge_pb2 as pb
    from snakepit_bridge.generated import snakepit_bridge_pb2_grpc as pb_grpc
    from snakepit_bridge.values import ValueEncoder, decode_tagged

TOKEN = "worker-token-" + "ab" * 16
EXIT_USAGE = 2


class Client:
    """A gRPC client of one worker; ``token`` None sends no token at all."""

    def __init__(self, address: str, token: str | None) -> None:
        self.channel = grpc.insecure_channel(address, options=[("grpc.enable_http_proxy", 0)])
        self.stub = pb_grpc.BridgeServiceStub(self.channel)
        self.metadata = () if token is None else (("x-snakepit-token", token),)

    def close(self) -> None:
        self.channel.close()

    def rpc(self, name: str, request: Any, timeout: float = TIMEOUT) -> Any:
        return getattr(self.stub, name)(request, metadata=self.metadata, timeout=timeout)

    def request(self, tool: str, args: Any = None, **fields: Any) -> pb.ExecuteToolRequest:
        encoder = ValueEncoder()
        args_json = encoder.dumps({} if args is None else args)
        return pb.ExecuteToolRequest(
            tool=tool, args_json=args_json, blobs=[bytes(b) for b in encoder.blobs], tagged=encoder.tagged, **fields
        )

    def execute(self, tool: str, args: Any = None, **fields: Any) -> pb.ExecuteToolResponse:
        return self.rpc("ExecuteTool", self.request(tool, args, **fields))

    def result(self, tool: str, args: Any = None, **fields: Any) -> Any:
        response = self.execute(tool, args, **fields)
        if response.WhichOneof("outcome") != "result_json":
            raise AssertionError(f"{tool} failed: {response.error}")
        return decoded(response.result_json, response.blobs, response.tagged)

    def stream(self, tool: str, args: Any = None, **fields: Any) -> Any:
        return self.stub.ExecuteStreamingTool(
            self.request(tool, args, **fields), metadata=self.metadata, timeout=TIMEOUT
        )


def address_of(ready: dict[str, Any]) -> str:
    """Where to connect: the unix socket, else the bound port (what a host reads)."""
    return str(ready["address"]) if ready["port"] == 0 else f"127.0.0.1:{ready['port']}"


def decoded(data: bytes, blobs: Any, tagged: bool) -> Any:
    value = json.loads(data)
    return decode_tagged(value, list(blobs)) if tagged else value


@unittest.skipUnless(HAVE_GRPC, "grpcio is not installed")
class GrpcWorkerTest(unittest.TestCase):
    """One gRPC worker shared by the tests that leave it running."""

    worker: GrpcWorker
    client: Client

    @classmethod
    def setUpClass(cls) -> None:
        cls.worker = GrpcWorker(bootstrap={"token": TOKEN})
        try:
            ready = cls.worker.read_ready()
            cls.client = Client(address_of(ready), TOKEN)
        except BaseException:
            cls.worker.close()
            raise

    @classmethod
    def tearDownClass(cls) -> None:
        cls.client.close()
        cls.worker.close()

    def tearDown(self) -> None:
        wait_until(
            lambda: self.client.rpc("Health", pb.HealthRequest()).active_calls == 0, TIMEOUT, "the worker to be idle"
        )

    def report(self, name: str) -> Any:
        return self.client.result("report", {"name": name})

    def test_readiness_line(self) -> None:
        ready = self.worker.ready
        assert ready is not None
        self.assertEqual(set(ready), {"port", "address", "pid", "worker_id", "adapter"})
        self.assertEqual(
            (ready["pid"], ready["worker_id"], ready["adapter"]), (self.worker.pid, "test-worker", ODD_ADAPTER)
        )
        self.assertGreater(ready["port"], 0)
        self.assertEqual(ready["address"], f"127.0.0.1:{ready['port']}")

    def test_every_rpc_without_the_token_is_unauthenticated(self) -> None:
        for token in (None, "", "wrong", TOKEN[:-1], TOKEN + "x"):
            client = Client(address_of(self.worker.ready), token)  # type: ignore[arg-type]
            try:
                for name, request in (
                    ("Ping", pb.PingRequest()),
                    ("Health", pb.HealthRequest()),
                    ("ExecuteTool", client.request("ping")),
                    ("DescribeTools", pb.DescribeToolsRequest()),
                    ("InitializeSession", pb.InitializeSessionRequest(session_id="s")),
                    ("CleanupSession", pb.CleanupSessionRequest(session_id="s")),
                    ("WaitSettled", pb.WaitSettledRequest(request_id="r")),
                    ("Stop", pb.StopRequest(grace_ms=0)),
                ):
                    with self.subTest(token=token, rpc=name), self.assertRaises(grpc.RpcError) as raised:
                        client.rpc(name, request)
                    self.assertEqual(raised.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
                with self.subTest(token=token, rpc="ExecuteStreamingTool"), self.assertRaises(grpc.RpcError) as raised:
                    list(client.stream("counted_stream", {"count": 3, "name": "stray"}))
                self.assertEqual(raised.exception.code(), grpc.StatusCode.UNAUTHENTICATED)
            finally:
                client.close()
        # None of it reached a tool, and the refused Stop did not stop the worker.
        self.assertIsNone(self.report("stray"))
        self.assertTrue(pid_alive(self.worker.pid))
        self.assertEqual(self.client.rpc("Ping", pb.PingRequest(message="x")).message, "pong")

    def test_ping_and_calls_with_the_token(self) -> None:
        reply = self.client.rpc("Ping", pb.PingRequest(message="hello"))
        self.assertEqual(
            (reply.message, reply.pid, reply.worker_id, reply.adapter),
            ("pong", self.worker.pid, "test-worker", ODD_ADAPTER),
        )
        self.assertEqual(self.client.result("add", {"a": 2, "b": 40}), 42)
        self.assertEqual(self.client.result("async_add", {"a": 1, "b": 2}), 3)

    def test_bytes_both_ways(self) -> None:
        described = self.client.result("describe_value", {"value": {"b": bytes(range(10)), "n": 1}})
        self.assertEqual(described, {"b": {"bytes": 10, "head": [0, 1, 2, 3]}, "n": "int"})
        response = self.client.execute("give_bytes", {"size": 4})
        self.assertTrue(response.tagged)
        self.assertEqual(list(response.blobs), [b"\x07" * 4, b"", b"ba"])
        self.assertEqual(self.client.result("give_bytes", {"size": 4})["data"], b"\x07" * 4)
        big = os.urandom(3 * 1024 * 1024)
        self.assertEqual(self.client.result("echo", {"value": big}), big)

    def test_errors(self) -> None:
        kinds = pb.ToolError.Kind
        self.assertEqual(self.client.execute("nope").error.kind, kinds.TOOL_NOT_FOUND)
        self.assertEqual(self.client.execute("add", {"a": 1}).error.kind, kinds.INVALID_ARGUMENTS)
        self.assertEqual(self.client.execute("give_complex").error.kind, kinds.UNSERIALIZABLE_RESULT)
        failed = self.client.execute("fail_deep").error
        self.assertEqual((failed.kind, failed.type, failed.message), (kinds.PYTHON_EXCEPTION, "LookupError", "deep"))
        self.assertIn("_fail_here", failed.traceback)
        bad_json = self.client.rpc("ExecuteTool", pb.ExecuteToolRequest(tool="ping", args_json=b"{nope"))
        self.assertEqual(bad_json.error.kind, kinds.INVALID_ARGUMENTS)
        unknown_kind = self.client.rpc(
            "ExecuteTool",
            pb.ExecuteToolRequest(tool="echo", args_json=b'{"value":{"__snakepit__":"numpy","blob":0}}', tagged=True),
        )
        self.assertEqual((unknown_kind.error.kind, unknown_kind.error.path), (kinds.INVALID_ARGUMENTS, "args.value"))

    def test_a_stream_and_its_cancel(self) -> None:
        chunks = list(self.client.stream("counted_stream", {"count": 3, "name": "grpc_end"}))
        self.assertEqual([json.loads(c.data_json) for c in chunks], [0, 1, 2])
        call = self.client.stream("counted_stream", {"count": 1_000_000, "name": "grpc_cancel"})
        for expected in range(5):
            self.assertEqual(json.loads(next(call).data_json), expected)
        call.cancel()
        wait_until(lambda: self.report("grpc_cancel")["closed"], TIMEOUT, "the generator's finally to run")
        # The generator ran no further than the stream's window ahead of what was read.
        self.assertLess(self.report("grpc_cancel")["produced"], 100)

    def test_blobs_in_chunks(self) -> None:
        chunks = list(self.client.stream("blob_stream", {"count": 2, "size": 1000}))
        self.assertEqual([decoded(c.data_json, c.blobs, c.tagged) for c in chunks], [b"\x00" * 1000, b"\x01" * 1000])

    def test_a_client_cancel_reaches_a_running_call(self) -> None:
        future = self.client.stub.ExecuteTool.future(
            self.client.request("spin", {"name": "grpc_cancel_unary"}), metadata=self.client.metadata, timeout=TIMEOUT
        )
        wait_until(lambda: self.report("grpc_cancel_unary") is not None, TIMEOUT, "spin to start")
        future.cancel()
        wait_until(lambda: bool(self.report("grpc_cancel_unary")["finished"]), TIMEOUT, "spin to end")
        self.assertEqual(self.report("grpc_cancel_unary")["saw_cancelled"], True)

    def test_health_and_wait_settled(self) -> None:
        future = self.client.stub.ExecuteTool.future(
            self.client.request("block", {"name": "settle"}, request_id="req-1"),
            metadata=self.client.metadata,
            timeout=TIMEOUT,
        )
        self.addCleanup(self.client.result, "release", {"name": "settle"})
        wait_until(lambda: self.client.rpc("Health", pb.HealthRequest()).active_calls == 1, TIMEOUT, "block to start")
        health = self.client.rpc("Health", pb.HealthRequest())
        self.assertEqual([r.tool for r in health.running], ["block"])
        self.assertEqual(health.pid, self.worker.pid)
        self.assertFalse(
            self.client.rpc("WaitSettled", pb.WaitSettledRequest(request_id="req-1", timeout_ms=0)).settled
        )
        self.client.result("release", {"name": "settle"})
        self.assertTrue(
            self.client.rpc("WaitSettled", pb.WaitSettledRequest(request_id="req-1", timeout_ms=5000)).settled
        )
        self.assertEqual(json.loads(future.result(TIMEOUT).result_json), "released")
        self.assertTrue(self.client.rpc("WaitSettled", pb.WaitSettledRequest(request_id="never", timeout_ms=0)).settled)

    def test_sessions_and_describe(self) -> None:
        self.client.result("session_put", {"key": "k", "value": 1}, session_id="g1")
        self.assertEqual(self.client.result("session_get", {"key": "k"}, session_id="g1"), 1)
        self.assertTrue(self.client.rpc("CleanupSession", pb.CleanupSessionRequest(session_id="g1")).existed)
        self.assertFalse(self.client.rpc("CleanupSession", pb.CleanupSessionRequest(session_id="g1")).existed)
        described = self.client.rpc("DescribeTools", pb.DescribeToolsRequest())
        self.assertEqual(described.adapter, ODD_ADAPTER)
        specs = {s.name: s for s in described.tools}
        self.assertEqual([(p.name, p.required) for p in specs["add"].parameters], [("a", True), ("b", True)])
        self.assertEqual([p.default_json for p in specs["fail"].parameters], [b'"ValueError"', b'"boom"'])
        self.assertTrue(specs["counted_stream"].streaming)


@unittest.skipUnless(HAVE_GRPC, "grpcio is not installed")
class GrpcLifecycleTest(unittest.TestCase):
    def start(self, *args: str, bootstrap: dict[str, Any] | None = None, **kw: Any) -> GrpcWorker:
        worker = GrpcWorker(*args, bootstrap={"token": TOKEN} if bootstrap is None else bootstrap, **kw)
        self.addCleanup(worker.close)
        return worker

    def test_a_chunk_that_cannot_be_sent_ends_the_stream(self) -> None:
        # A worker of its own: the bug this guards against leaves a call running for good.
        worker = self.start()
        client = Client(address_of(worker.read_ready()), TOKEN)
        self.addCleanup(client.close)
        chunks = list(client.stream("bad_chunk_stream", {"name": "grpc_bad"}))
        self.assertEqual([c.WhichOneof("outcome") for c in chunks], ["data_json", "error"])
        self.assertEqual(chunks[1].error.kind, pb.ToolError.Kind.UNSERIALIZABLE_RESULT)
        # The generator must be closed and the call over, not left waiting for credit that never comes.
        wait_until(lambda: client.result("report", {"name": "grpc_bad"})["closed"], 5, "the generator to be closed")
        self.assertEqual(list(client.rpc("Health", pb.HealthRequest()).running), [])

    def assert_gone(self, pid: int) -> None:
        wait_until(lambda: not pid_alive(pid), TIMEOUT, f"process {pid} to die")

    def test_unix_socket_mode_0600(self) -> None:
        directory = tempfile.mkdtemp(prefix="snakepit-grpc-")
        self.addCleanup(shutil.rmtree, directory, True)
        os.chmod(directory, 0o700)
        path = os.path.join(directory, "worker.sock")
        worker = self.start("--unix-socket", path)
        ready = worker.read_ready()
        self.assertEqual((ready["port"], ready["address"]), (0, f"unix:{path}"))
        self.assertTrue(stat.S_ISSOCK(os.stat(path).st_mode))
        self.assertEqual(stat.S_IMODE(os.stat(path).st_mode), 0o600)
        for token, expected in ((None, grpc.StatusCode.UNAUTHENTICATED), ("wrong", grpc.StatusCode.UNAUTHENTICATED)):
            client = Client(ready["address"], token)
            try:
                with self.assertRaises(grpc.RpcError) as raised:
                    client.rpc("Ping", pb.PingRequest())
                self.assertEqual(raised.exception.code(), expected)
            finally:
                client.close()
        client = Client(ready["address"], TOKEN)
        try:
            self.assertEqual(client.result("add", {"a": 1, "b": 1}), 2)
            client.rpc("Stop", pb.StopRequest(grace_ms=500))
        finally:
            client.close()
        self.assertEqual(worker.wait(), 0)

    def test_no_token_no_server(self) -> None:
        for bootstrap in ({}, {"token": ""}, {"host_bridge": None}):
            with self.subTest(bootstrap=bootstrap):
                worker = self.start(bootstrap=bootstrap)
                self.assertEqual(worker.wait(), EXIT_USAGE)
                self.assertIn("refusing to serve an unauthenticated gRPC port", worker.stderr())
                self.assertEqual(worker.remaining_stdout(), b"")

    def test_a_bad_bootstrap_line(self) -> None:
        for line in (b"{not json\n", b"[1]\n"):
            with self.subTest(line=line):
                worker = GrpcWorker(bootstrap=None)
                self.addCleanup(worker.close)
                assert worker.proc.stdin is not None
                worker.proc.stdin.write(line)
                worker.proc.stdin.flush()
                self.assertEqual(worker.wait(), EXIT_USAGE)
                self.assertIn("bootstrap", worker.stderr())

    def test_the_token_is_neither_on_the_command_line_nor_in_the_environment(self) -> None:
        worker = self.start()
        worker.read_ready()
        for name in ("cmdline", "environ"):
            with open(f"/proc/{worker.pid}/{name}", "rb") as f:
                self.assertNotIn(TOKEN.encode(), f.read(), name)

    def test_stop_and_sigterm_exit_0_and_kill_the_tools_children(self) -> None:
        for how in ("stop", "sigterm"):
            with self.subTest(how=how):
                worker = self.start()
                client = Client(address_of(worker.read_ready()), TOKEN)
                self.addCleanup(client.close)
                child = client.result("spawn_child", {"seconds": 120})["pid"]
                worker.extra_pids.append(child)
                if how == "stop":
                    client.rpc("Stop", pb.StopRequest(grace_ms=500))
                else:
                    worker.proc.send_signal(signal.SIGTERM)
                self.assertEqual(worker.wait(), 0)
                self.assert_gone(child)
                self.assertEqual(worker.remaining_stdout(), b"", "stdout holds only the readiness line")

    def test_stdin_eof_kills_the_worker_and_its_children(self) -> None:
        worker = self.start()
        client = Client(address_of(worker.read_ready()), TOKEN)
        self.addCleanup(client.close)
        child = client.result("spawn_child", {"seconds": 120})["pid"]
        worker.extra_pids.append(child)
        assert worker.proc.stdin is not None
        worker.proc.stdin.close()
        self.assertEqual(worker.wait(), 1)
        wait_until(lambda: not pid_alive(child), TIMEOUT, "the child to die")
        self.assertIn("stdin reached EOF", worker.stderr())

    def test_prints_never_reach_stdout(self) -> None:
        worker = self.start()
        client = Client(address_of(worker.read_ready()), TOKEN)
        self.addCleanup(client.close)
        self.assertEqual(client.result("garbage"), {"child_saw_call_fd": False, "child_saw_control_fd": False})
        client.rpc("Stop", pb.StopRequest(grace_ms=500))
        self.assertEqual(worker.wait(), 0)
        self.assertEqual(worker.remaining_stdout(), b"")
        self.assertIn("garbage via print", worker.stderr())


if __name__ == "__main__":
    unittest.main()
