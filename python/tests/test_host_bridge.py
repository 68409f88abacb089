"""Host tools: the HostBridge client against an in-process fake HostToolService.

The fake host stands in for the TypeScript host: it requires the secret
metadata and serves ``greet``, ``boom``, ``whoami`` and ``slow``.
"""

from __future__ import annotations

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

import grpc

from snakepit_bridge import HostBridge, HostToolError, HostToolsUnavailable, ToolContext
from snakepit_bridge.generated import snakepit_bridge_pb2 as pb
from snakepit_bridge.generated import snakepit_bridge_pb2_grpc as pb_grpc
from snakepit_bridge.host_bridge import HOST_TOOLS_UNAVAILABLE, SECRET_METADATA_KEY

from .worker_process import RPC_TIMEOUT, WorkerProcess

Kind = pb.ToolError.Kind
SECRET = "s3cret-for-tests"
HOST_TOOLS = ["boom", "greet", "slow", "whoami"]


class FakeHost(pb_grpc.HostToolServiceServicer):
    """What the TypeScript host serves, reduced to a few tools."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.calls: list[pb.CallHostToolRequest] = []
        self._lock = threading.Lock()

    def _authorize(self, context: grpc.ServicerContext) -> None:
        metadata = dict(context.invocation_metadata())
        if metadata.get(SECRET_METADATA_KEY) != self.secret:
            context.abort(grpc.StatusCode.UNAUTHENTICATED, "missing or wrong x-snakepit-secret")

    def ListHostTools(
        self, request: pb.ListHostToolsRequest, context: grpc.ServicerContext
    ) -> pb.ListHostToolsResponse:
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

    def CallHostTool(self, request: pb.CallHostToolRequest, context: grpc.ServicerContext) -> pb.CallHostToolResponse:
        self._authorize(context)
        with self._lock:
            self.calls.append(request)
        args = json.loads(request.args_json or b"{}")
        if request.tool == "greet":
            return _result(f"hello {args['name']}")
        if request.tool == "boom":
            return pb.CallHostToolResponse(
                error=pb.ToolError(
                    kind=Kind.PYTHON_EXCEPTION,
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
                kind=Kind.TOOL_NOT_FOUND,
                type="ToolNotFound",
                message=f"no host tool named {request.tool!r}",
                available_tools=HOST_TOOLS,
            )
        )


def _result(value: Any) -> pb.CallHostToolResponse:
    return pb.CallHostToolResponse(result_json=json.dumps(value).encode())


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


class HostBridgeSyncTest(unittest.TestCase):
    server: FakeHostServer

    @classmethod
    def setUpClass(cls) -> None:
        cls.server = FakeHostServer()

    @classmethod
    def tearDownClass(cls) -> None:
        cls.server.stop()

    def setUp(self) -> None:
        self.server.host.calls.clear()
        self.bridge = HostBridge.from_env(
            worker_id="w1",
            environ={"SNAKEPIT_HOST_BRIDGE": self.server.address, "SNAKEPIT_HOST_SECRET": SECRET},
        )

    def tearDown(self) -> None:
        self.bridge.close()

    def test_sync_call(self) -> None:
        self.assertEqual(self.bridge.call("greet", {"name": "ada"}), "hello ada")

    def test_session_worker_and_attachments_reach_the_host(self) -> None:
        reply = self.bridge.call("whoami", {"x": [1, None]}, "sess-1", {"blob": b"bytes"})
        self.assertEqual(
            reply,
            {"session_id": "sess-1", "worker_id": "w1", "args": {"x": [1, None]}, "attachments": {"blob": "bytes"}},
        )
        self.assertEqual(self.bridge.call("whoami", worker_id="other")["worker_id"], "other")

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
        self.assertIn("boom, greet, slow, whoami", str(err))

    def test_wrong_or_missing_secret_is_unauthenticated(self) -> None:
        for secret in ("wrong", None):
            with self.subTest(secret=secret):
                bridge = HostBridge(self.server.address, secret)
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

    def test_non_json_args_are_refused_before_sending(self) -> None:
        for args in ({"x": {1, 2}}, {"x": float("nan")}, {"x": b"bytes"}, ["not", "a", "mapping"]):
            with self.subTest(args=args), self.assertRaises(TypeError):
                self.bridge.call("greet", args)  # type: ignore[arg-type]
        self.assertEqual(self.server.host.calls, [])

    def test_deadline(self) -> None:
        with self.assertRaises(HostToolError) as raised:
            self.bridge.call("slow", {"seconds": 0.5}, timeout=0.1)
        self.assertEqual((raised.exception.kind, raised.exception.type), ("rpc_error", "DEADLINE_EXCEEDED"))

    def test_threads_share_one_channel(self) -> None:
        with ThreadPoolExecutor(max_workers=8) as pool:
            replies = list(pool.map(lambda i: self.bridge.call("greet", {"name": str(i)}), range(32)))
        self.assertEqual(replies, [f"hello {i}" for i in range(32)])
        self.assertIsNotNone(self.bridge._sync)

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

    def test_error_pickles(self) -> None:
        err = HostToolError("ValueError", "bad input", "exception", available_tools=["a"])
        copy = pickle.loads(pickle.dumps(err))
        self.assertEqual((copy.type, copy.message, copy.kind, copy.available_tools, str(copy)),
                         ("ValueError", "bad input", "exception", ("a",), "ValueError: bad input"))


class HostBridgeAsyncTest(unittest.IsolatedAsyncioTestCase):
    server: FakeHostServer

    @classmethod
    def setUpClass(cls) -> None:
        cls.server = FakeHostServer()

    @classmethod
    def tearDownClass(cls) -> None:
        cls.server.stop()

    async def asyncSetUp(self) -> None:
        self.bridge = HostBridge(self.server.address, SECRET, worker_id="w1")

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
        bad = HostBridge(self.server.address, "wrong")
        try:
            with self.assertRaises(HostToolError) as raised:
                await bad.acall("greet", {"name": "ada"})
            self.assertEqual(raised.exception.kind, "unauthenticated")
        finally:
            await bad.aclose()
        with self.assertRaises(TypeError):
            await self.bridge.acall("greet", {"x": object()})


class UnconfiguredBridgeTest(unittest.IsolatedAsyncioTestCase):
    async def test_no_env_means_unavailable(self) -> None:
        bridge = HostBridge.from_env(environ={})
        self.assertFalse(bridge.configured)
        with self.assertRaises(HostToolsUnavailable) as raised:
            bridge.call("greet", {"name": "ada"})
        self.assertEqual(str(raised.exception), HOST_TOOLS_UNAVAILABLE)
        self.assertIsInstance(raised.exception, RuntimeError)
        with self.assertRaisesRegex(HostToolsUnavailable, HOST_TOOLS_UNAVAILABLE):
            await bridge.acall("greet")
        with self.assertRaisesRegex(HostToolsUnavailable, HOST_TOOLS_UNAVAILABLE):
            bridge.list_tools()

    def test_secret_is_not_in_repr(self) -> None:
        self.assertNotIn(SECRET, repr(HostBridge("127.0.0.1:1", SECRET)))
        self.assertNotIn(SECRET, repr(ToolContext(host_bridge=HostBridge("127.0.0.1:1", SECRET))))


class UnixSocketTest(unittest.TestCase):
    def test_unix_socket_address(self) -> None:
        directory = tempfile.mkdtemp(prefix="snakepit-host-")
        server = FakeHostServer(f"unix:{os.path.join(directory, 'host.sock')}")
        bridge = HostBridge(server.address, SECRET)
        try:
            self.assertEqual(bridge.call("greet", {"name": "unix"}), "hello unix")
        finally:
            bridge.close()
            server.stop()
            shutil.rmtree(directory, ignore_errors=True)


class WorkerCallsHostTest(unittest.TestCase):
    """A real worker process calling back into the fake host."""

    server: FakeHostServer
    worker: WorkerProcess

    @classmethod
    def setUpClass(cls) -> None:
        cls.server = FakeHostServer()
        cls.worker = WorkerProcess(
            adapter="tests.fixture_adapters:OddAdapter",
            watch_stdin=False,
            env={"SNAKEPIT_HOST_BRIDGE": cls.server.address, "SNAKEPIT_HOST_SECRET": SECRET},
        )
        try:
            cls.worker.read_ready()
        except BaseException:
            cls.worker.close()
            cls.server.stop()
            raise

    @classmethod
    def tearDownClass(cls) -> None:
        cls.worker.close()
        cls.server.stop()

    def test_async_tool_calls_host(self) -> None:
        reply = self.worker.result("acall_host_tool", {"tool": "whoami", "args": {"k": "v"}}, session_id="sess-e2e")
        self.assertEqual(
            reply, {"session_id": "sess-e2e", "worker_id": "test-worker", "args": {"k": "v"}, "attachments": {}}
        )

    def test_async_tool_host_error(self) -> None:
        error = self.worker.call("acall_host_tool", {"tool": "boom"}).error
        self.assertEqual(
            (error.kind, error.type, error.message), (Kind.PYTHON_EXCEPTION, "HostToolError", "ValueError: bad input")
        )


class ShowcaseCallsHostTest(unittest.TestCase):
    """The showcase worker's call_host tool, as the TypeScript host will use it."""

    def test_call_host_end_to_end(self) -> None:
        server = FakeHostServer()
        worker = WorkerProcess(
            watch_stdin=False,
            env={"SNAKEPIT_HOST_BRIDGE": server.address, "SNAKEPIT_HOST_SECRET": SECRET},
        )
        try:
            worker.read_ready()
            self.assertEqual(worker.result("call_host", {"tool": "greet", "args": {"name": "ada"}}), "hello ada")

            error = worker.call("call_host", {"tool": "boom"}).error
            self.assertEqual((error.kind, error.type), (Kind.PYTHON_EXCEPTION, "HostToolError"))
            self.assertIn("ValueError", error.message)
            self.assertIn("bad input", error.message)

            error = worker.call("call_host", {"tool": "nope", "args": {}}).error
            self.assertEqual(error.type, "HostToolError")
            self.assertIn("available host tools: boom, greet, slow, whoami", error.message)

            # Stop closes the bridge's channels on the way out and still exits 0.
            assert worker.stub is not None
            worker.stub.Stop(pb.StopRequest(grace_ms=500), timeout=RPC_TIMEOUT)
            self.assertEqual(worker.wait(), 0)
        finally:
            worker.close()
            server.stop()
        self.assertEqual([c.worker_id for c in server.host.calls], ["test-worker"] * 3)

    def test_wrong_secret_end_to_end(self) -> None:
        server = FakeHostServer()
        worker = WorkerProcess(
            watch_stdin=False,
            env={"SNAKEPIT_HOST_BRIDGE": server.address, "SNAKEPIT_HOST_SECRET": "wrong"},
        )
        try:
            worker.read_ready()
            error = worker.call("call_host", {"tool": "greet", "args": {"name": "ada"}}).error
            self.assertEqual(error.type, "HostToolError")
            self.assertTrue(error.message.startswith("Unauthenticated: "), error.message)
        finally:
            worker.close()
            server.stop()
        self.assertEqual(server.host.calls, [])


if __name__ == "__main__":
    unittest.main()
