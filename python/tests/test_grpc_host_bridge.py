"""Host tools over gRPC: GrpcHostBridge against an in-process fake HostToolService, and a real
``--transport grpc`` worker that learns the bridge's address and secret from its bootstrap line.

Skipped when grpcio is not importable.
"""

from __future__ import annotations

import importlib.util
import json
import os
import pickle
import shutil
import tempfile
import threading
import time
import unittest
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from snakepit_bridge import HostBridge, HostToolError, HostToolsUnavailable, ToolContext
from snakepit_bridge.host_bridge import HOST_TOOLS_UNAVAILABLE
from snakepit_bridge.values import ValueEncoder, decode_tagged

from .worker_process import GrpcWorker

HAVE_GRPC = importlib.util.find_spec("grpc") is not None

if HAVE_GRPC:
    import grpc

    from snakepit_bridge.generated import snakepit_bridge_pb2 as pb
    from snakepit_bridge.generated import snakepit_bridge_pb2_grpc as pb_grpc
    from snakepit_bridge.grpc_host_bridge import SECRET_METADATA_KEY, GrpcHostBridge

    from .test_grpc_server import TOKEN, Client, address_of

    Servicer: Any = pb_grpc.HostToolServiceServicer
else:  # pragma: no cover - only without grpcio
    Servicer = object

SECRET = "s3cret-for-tests"
HOST_TOOLS = ["blob", "boom", "greet", "slow", "whoami"]


def _result(value: Any) -> Any:
    encoder = ValueEncoder()
    data = encoder.dumps(value)
    return pb.CallHostToolResponse(result_json=data, blobs=[bytes(b) for b in encoder.blobs], tagged=encoder.tagged)


class FakeHost(Servicer):
    """What the TypeScript host serves, reduced to a few tools; it requires the secret."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.calls: list[Any] = []
        self._lock = threading.Lock()

    def _authorize(self, context: Any) -> None:
        if dict(context.invocation_metadata()).get(SECRET_METADATA_KEY) != self.secret:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong x-snakepit-secret")

    def ListHostTools(self, request: Any, context: Any) -> Any:
        self._authorize(context)
        return pb.ListHostToolsResponse(
            tools=[
                pb.ToolSpec(
                    name="greet",
                    description="Greet someone.",
                    parameters=[
                        pb.ToolParameter(name="name", type="string", required=True),
                        pb.ToolParameter(name="punctuation", type="string", default_json=b'"!"'),
                    ],
                ),
                pb.ToolSpec(name="boom", description="Always fails."),
            ]
        )

    def CallHostTool(self, request: Any, context: Any) -> Any:
        self._authorize(context)
        with self._lock:
            self.calls.append(request)
        args = json.loads(request.args_json or b"{}")
        if request.tagged:
            args = decode_tagged(args, list(request.blobs))
        if request.tool == "greet":
            return _result(f"hello {args['name']}")
        if request.tool == "blob":
            # Binary values both ways: the argument's bytes reversed, as bytes.
            return _result({"reversed": bytes(args["data"])[::-1]})
        if request.tool == "boom":
            return pb.CallHostToolResponse(
                error=pb.ToolError(
                    kind=pb.ToolError.Kind.PYTHON_EXCEPTION,
                    type="ValueError",
                    message="bad input",
                    traceback="ValueError: bad input\n    at boom (host.ts:1:1)",
                )
            )
        if request.tool == "whoami":
            return _result(
                {
                    "session_id": request.session_id,
                    "worker_id": request.worker_id,
                    "args": args,
                    "attachments": {k: v.decode() for k, v in request.attachments.items()},
                }
            )
        if request.tool == "slow":
            time.sleep(args.get("seconds", 0.5))
            return _result("late")
        return pb.CallHostToolResponse(
            error=pb.ToolError(
                kind=pb.ToolError.Kind.TOOL_NOT_FOUND,
                type="ToolNotFound",
                message=f"no host tool named {request.tool!r}",
                available_tools=HOST_TOOLS,
            )
        )


class FakeHostServer:
    """A sync gRPC server in this process, serving a FakeHost."""

    def __init__(self, address: str = "127.0.0.1:0", secret: str = SECRET) -> None:
        self.host = FakeHost(secret)
        self.server = grpc.server(ThreadPoolExecutor(max_workers=8))
        pb_grpc.add_HostToolServiceServicer_to_server(self.host, self.server)
        port = self.server.add_insecure_port(address)
        self.address = address if address.startswith("unix:") else f"127.0.0.1:{port}"
        self.server.start()

    def stop(self) -> None:
        self.server.stop(None).wait()


class WithFakeHost:
    """A FakeHostServer for the tests of a class."""

    server: FakeHostServer

    @classmethod
    def setUpClass(cls) -> None:
        cls.server = FakeHostServer()

    @classmethod
    def tearDownClass(cls) -> None:
        cls.server.stop()


@unittest.skipUnless(HAVE_GRPC, "grpcio is not installed")
class GrpcHostBridgeSyncTest(WithFakeHost, unittest.TestCase):
    def setUp(self) -> None:
        self.server.host.calls.clear()
        self.bridge = GrpcHostBridge(self.server.address, SECRET, worker_id="w1")

    def tearDown(self) -> None:
        self.bridge.close()

    def test_sync_call(self) -> None:
        self.assertTrue(self.bridge.configured)
        self.assertEqual(self.bridge.call("greet", {"name": "ada"}), "hello ada")

    def test_session_worker_and_attachments_reach_the_host(self) -> None:
        reply = self.bridge.call("whoami", {"x": [1, None]}, "sess-1", {"blob": b"bytes"})
        self.assertEqual(
            reply,
            {"session_id": "sess-1", "worker_id": "w1", "args": {"x": [1, None]}, "attachments": {"blob": "bytes"}},
        )
        self.assertEqual(self.bridge.call("whoami", worker_id="other")["worker_id"], "other")

    def test_bytes_cross_raw_both_ways(self) -> None:
        self.assertEqual(self.bridge.call("blob", {"data": b"\x00\x01\x02"}), {"reversed": b"\x02\x01\x00"})
        (request,) = self.server.host.calls
        self.assertTrue(request.tagged)
        self.assertEqual(list(request.blobs), [b"\x00\x01\x02"])

    def test_list_tools(self) -> None:
        self.assertEqual(
            self.bridge.list_tools(),
            [
                {
                    "name": "greet",
                    "description": "Greet someone.",
                    "parameters": [
                        {"name": "name", "type": "string", "required": True, "default": None},
                        {"name": "punctuation", "type": "string", "required": False, "default": "!"},
                    ],
                },
                {"name": "boom", "description": "Always fails.", "parameters": []},
            ],
        )

    def test_host_exception_crosses_with_type_and_message(self) -> None:
        with self.assertRaises(HostToolError) as raised:
            self.bridge.call("boom")
        err = raised.exception
        self.assertEqual((err.kind, err.type, err.message), ("exception", "ValueError", "bad input"))
        self.assertEqual(str(err), "ValueError: bad input")
        self.assertIn("host.ts", err.traceback)

    def test_unknown_tool_lists_the_available_ones(self) -> None:
        with self.assertRaises(HostToolError) as raised:
            self.bridge.call("nope", {})
        err = raised.exception
        self.assertEqual((err.kind, err.type), ("not_found", "ToolNotFound"))
        self.assertEqual(err.available_tools, tuple(HOST_TOOLS))
        self.assertIn("'nope'", err.message)
        self.assertIn("blob, boom, greet, slow, whoami", str(err))

    def test_wrong_or_missing_secret_is_unauthenticated(self) -> None:
        for secret in ("wrong", None):
            with self.subTest(secret=secret):
                bridge = GrpcHostBridge(self.server.address, secret)
                try:
                    with self.assertRaises(HostToolError) as raised:
                        bridge.call("greet", {"name": "ada"})
                    self.assertEqual(
                        (raised.exception.kind, raised.exception.type), ("unauthenticated", "Unauthenticated")
                    )
                    with self.assertRaises(HostToolError):
                        bridge.list_tools()
                finally:
                    bridge.close()
        self.assertEqual(self.server.host.calls, [])

    def test_arguments_that_cannot_cross_are_refused_before_sending(self) -> None:
        for args in ({"x": 1j}, {"x": float("nan")}, ["not", "a", "mapping"]):
            with self.subTest(args=args), self.assertRaises(TypeError):
                self.bridge.call("greet", args)  # type: ignore[arg-type]
        self.assertEqual(self.server.host.calls, [])

    def test_deadline(self) -> None:
        with self.assertRaises(HostToolError) as raised:
            self.bridge.call("slow", {"seconds": 0.5}, timeout=0.1)
        self.assertEqual((raised.exception.kind, raised.exception.type), ("timeout", "DeadlineExceeded"))

    def test_threads_share_one_channel(self) -> None:
        with ThreadPoolExecutor(max_workers=8) as pool:
            replies = list(pool.map(lambda i: self.bridge.call("greet", {"name": str(i)}), range(32)))
        self.assertEqual(replies, [f"hello {i}" for i in range(32)])

    def test_unreachable_host(self) -> None:
        self.server.stop()
        try:
            with self.assertRaisesRegex(HostToolsUnavailable, "^host bridge unreachable: "):
                self.bridge.call("greet", {"name": "ada"})
        finally:
            type(self).server = FakeHostServer()

    def test_tool_context_delegates_with_its_ids(self) -> None:
        ctx = ToolContext(session_id="sess-2", worker_id="w2", host_bridge=self.bridge)
        reply = ctx.call_host("whoami", {"a": 1})
        self.assertEqual((reply["session_id"], reply["worker_id"], reply["args"]), ("sess-2", "w2", {"a": 1}))
        self.assertEqual([t["name"] for t in ctx.list_host_tools()], ["greet", "boom"])

    def test_the_secret_is_not_in_repr(self) -> None:
        self.assertNotIn(SECRET, repr(self.bridge))
        self.assertNotIn(SECRET, repr(ToolContext(host_bridge=self.bridge)))


@unittest.skipUnless(HAVE_GRPC, "grpcio is not installed")
class GrpcHostBridgeAsyncTest(WithFakeHost, unittest.IsolatedAsyncioTestCase):
    async def asyncSetUp(self) -> None:
        self.bridge = GrpcHostBridge(self.server.address, SECRET, worker_id="w1")

    async def asyncTearDown(self) -> None:
        await self.bridge.aclose()

    async def test_async_call(self) -> None:
        self.assertEqual(await self.bridge.acall("greet", {"name": "ada"}), "hello ada")
        ctx = ToolContext(session_id="s", worker_id="w3", host_bridge=self.bridge)
        reply = await ctx.acall_host("whoami")
        self.assertEqual((reply["session_id"], reply["worker_id"]), ("s", "w3"))

    async def test_async_list_tools(self) -> None:
        self.assertEqual([t["name"] for t in await self.bridge.alist_tools()], ["greet", "boom"])

    async def test_async_errors(self) -> None:
        with self.assertRaises(HostToolError) as raised:
            await self.bridge.acall("boom")
        self.assertEqual((raised.exception.type, raised.exception.message), ("ValueError", "bad input"))
        bad = GrpcHostBridge(self.server.address, "wrong")
        try:
            with self.assertRaises(HostToolError) as raised:
                await bad.acall("greet", {"name": "ada"})
            self.assertEqual(raised.exception.kind, "unauthenticated")
        finally:
            await bad.aclose()
        with self.assertRaises(TypeError):
            await self.bridge.acall("greet", {"x": object()})


@unittest.skipUnless(HAVE_GRPC, "grpcio is not installed")
class UnixSocketTest(unittest.TestCase):
    def test_unix_socket_address(self) -> None:
        directory = tempfile.mkdtemp(prefix="snakepit-host-")
        server = FakeHostServer(f"unix:{os.path.join(directory, 'host.sock')}")
        bridge = GrpcHostBridge(server.address, SECRET)
        try:
            self.assertEqual(bridge.call("greet", {"name": "unix"}), "hello unix")
        finally:
            bridge.close()
            server.stop()
            shutil.rmtree(directory, ignore_errors=True)


class UnconfiguredBridgeTest(unittest.IsolatedAsyncioTestCase):
    """The base HostBridge: a worker whose host offers no tools (needs no grpcio)."""

    async def test_every_call_is_unavailable(self) -> None:
        bridge = HostBridge()
        self.assertFalse(bridge.configured)
        with self.assertRaises(HostToolsUnavailable) as raised:
            bridge.call("greet", {"name": "ada"})
        self.assertEqual(str(raised.exception), HOST_TOOLS_UNAVAILABLE)
        self.assertIsInstance(raised.exception, RuntimeError)
        with self.assertRaisesRegex(HostToolsUnavailable, HOST_TOOLS_UNAVAILABLE):
            await bridge.acall("greet")
        with self.assertRaisesRegex(HostToolsUnavailable, HOST_TOOLS_UNAVAILABLE):
            bridge.list_tools()
        with self.assertRaisesRegex(HostToolsUnavailable, HOST_TOOLS_UNAVAILABLE):
            await bridge.alist_tools()
        # Arguments are still checked first.
        with self.assertRaises(TypeError):
            bridge.call("greet", ["not", "a", "mapping"])  # type: ignore[arg-type]

    def test_a_tool_context_made_outside_a_worker_has_no_host(self) -> None:
        with self.assertRaisesRegex(HostToolsUnavailable, HOST_TOOLS_UNAVAILABLE):
            ToolContext(session_id="s").call_host("x", {})

    def test_error_pickles(self) -> None:
        err = HostToolError("ValueError", "bad input", "exception", available_tools=["a"])
        copy = pickle.loads(pickle.dumps(err))
        self.assertEqual(
            (copy.type, copy.message, copy.kind, copy.available_tools, str(copy)),
            ("ValueError", "bad input", "exception", ("a",), "ValueError: bad input"),
        )


@unittest.skipUnless(HAVE_GRPC, "grpcio is not installed")
class WorkerCallsHostTest(unittest.TestCase):
    """A real gRPC worker calling back into the fake host, configured by its bootstrap line only."""

    def start(self, secret: str, env: dict[str, str] | None = None) -> tuple[GrpcWorker, Client]:
        worker = GrpcWorker(
            bootstrap={"token": TOKEN, "host_bridge": {"address": self.server.address, "secret": secret}}, env=env
        )
        self.addCleanup(worker.close)
        client = Client(address_of(worker.read_ready()), TOKEN)
        self.addCleanup(client.close)
        return worker, client

    def setUp(self) -> None:
        self.server = FakeHostServer()
        self.addCleanup(self.server.stop)

    def test_tools_call_the_host(self) -> None:
        worker, client = self.start(SECRET)
        self.assertEqual(client.result("call_host", {"tool": "greet", "args": {"name": "ada"}}), "hello ada")
        reply = client.result("acall_host_tool", {"tool": "whoami", "args": {"k": "v"}}, session_id="sess-e2e")
        self.assertEqual(
            reply, {"session_id": "sess-e2e", "worker_id": "test-worker", "args": {"k": "v"}, "attachments": {}}
        )
        error = client.execute("call_host", {"tool": "boom"}).error
        self.assertEqual((error.type, error.message), ("HostToolError", "ValueError: bad input"))
        error = client.execute("call_host", {"tool": "nope", "args": {}}).error
        self.assertIn("available host tools: blob, boom, greet, slow, whoami", error.message)
        # Stop closes the bridge's channels on the way out and still exits 0.
        client.rpc("Stop", pb.StopRequest(grace_ms=500))
        self.assertEqual(worker.wait(), 0)
        self.assertEqual([c.worker_id for c in self.server.host.calls], ["test-worker"] * 4)

    def test_the_secret_stays_out_of_the_environment(self) -> None:
        worker, client = self.start(SECRET)
        for name in ("environ", "cmdline"):
            with open(f"/proc/{worker.pid}/{name}", "rb") as f:
                self.assertNotIn(SECRET.encode(), f.read(), name)
        self.assertEqual(
            client.result("env", {"names": ["SNAKEPIT_HOST_BRIDGE", "SNAKEPIT_HOST_SECRET"]}),
            {"SNAKEPIT_HOST_BRIDGE": None, "SNAKEPIT_HOST_SECRET": None},
        )

    def test_a_wrong_secret(self) -> None:
        _, client = self.start("wrong")
        error = client.execute("call_host", {"tool": "greet", "args": {"name": "ada"}}).error
        self.assertEqual(error.type, "HostToolError")
        self.assertTrue(error.message.startswith("Unauthenticated: "), error.message)
        self.assertEqual(self.server.host.calls, [])

    def test_the_environment_no_longer_configures_the_bridge(self) -> None:
        worker = GrpcWorker(
            bootstrap={"token": TOKEN},
            env={"SNAKEPIT_HOST_BRIDGE": self.server.address, "SNAKEPIT_HOST_SECRET": SECRET},
        )
        self.addCleanup(worker.close)
        client = Client(address_of(worker.read_ready()), TOKEN)
        self.addCleanup(client.close)
        error = client.execute("call_host", {"tool": "greet", "args": {"name": "ada"}}).error
        self.assertEqual((error.type, error.message), ("HostToolsUnavailable", HOST_TOOLS_UNAVAILABLE))
        self.assertEqual(self.server.host.calls, [])


if __name__ == "__main__":
    unittest.main()
