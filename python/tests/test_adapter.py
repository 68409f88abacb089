"""@tool metadata, tool discovery and adapter loading, in process."""

from __future__ import annotations

import contextlib
import io
import os
import unittest
from collections.abc import AsyncIterator, Iterator
from typing import Any
from unittest import mock

from snakepit_bridge import (
    HOST_TOOLS_UNAVAILABLE,
    BaseAdapter,
    HostToolsUnavailable,
    ToolContext,
    tool,
)
from snakepit_bridge.adapter import CallCancelled
from snakepit_bridge.cli import parse_args
from snakepit_bridge.loading import load_adapter_class
from snakepit_bridge.showcase import ShowcaseAdapter


class SampleAdapter(BaseAdapter):
    @tool
    def plain(self, a: int, b: str = "x", *, flag: bool = False, ctx: ToolContext | None = None) -> str:
        """Do a plain thing.

        More detail that is not part of the description.
        """
        return f"{a}{b}{flag}"

    @tool(name="renamed", description="Explicit description.")
    def original_name(self, items: list[int], opts: Any = None) -> int:
        """Ignored docstring."""
        return len(items)

    @tool()
    def untyped(self, value, default=(1, 2)):  # type: ignore[no-untyped-def]
        return value

    @tool
    def gen(self, n: int) -> Iterator[int]:
        yield from range(n)

    @tool
    async def agen(self, n: int) -> AsyncIterator[int]:
        for i in range(n):
            yield i

    @tool
    async def coro(self) -> int:
        return 1

    @tool
    def odd_default(self, value: object = object()) -> None:
        """A default JSON cannot represent."""

    def not_a_tool(self) -> None:
        pass


class ToolMetadataTest(unittest.TestCase):
    def setUp(self) -> None:
        self.tools = SampleAdapter().tools()

    def test_discovers_only_decorated_methods(self) -> None:
        self.assertEqual(sorted(self.tools), ["agen", "coro", "gen", "odd_default", "plain", "renamed", "untyped"])

    def test_parameters_from_signature(self) -> None:
        plain = self.tools["plain"]
        self.assertEqual(plain.description, "Do a plain thing.")
        params = [(p.name, p.type, p.required, p.default_json) for p in plain.parameters]
        # ctx is never described, and self is not a parameter of the bound method.
        self.assertEqual(
            params,
            [("a", "int", True, ""), ("b", "str", False, '"x"'), ("flag", "bool", False, "false")],
        )
        self.assertTrue(plain.accepts_ctx)
        self.assertFalse(plain.streaming)
        self.assertFalse(plain.is_async)

    def test_name_and_description_options(self) -> None:
        renamed = self.tools["renamed"]
        self.assertEqual(renamed.description, "Explicit description.")
        self.assertEqual([p.type for p in renamed.parameters], ["list[int]", "Any"])
        self.assertEqual(renamed.parameters[1].default_json, "null")
        self.assertEqual(renamed.func(items=[1, 2, 3]), 3)

    def test_untyped_parameters(self) -> None:
        untyped = self.tools["untyped"]
        self.assertEqual(untyped.description, "")
        self.assertEqual([(p.type, p.default_json) for p in untyped.parameters], [("", ""), ("", "[1, 2]")])
        self.assertFalse(untyped.accepts_ctx)

    def test_unrepresentable_default_is_optional_without_json(self) -> None:
        (param,) = self.tools["odd_default"].parameters
        self.assertEqual((param.required, param.default_json), (False, ""))

    def test_streaming_and_async_flags(self) -> None:
        self.assertEqual((self.tools["gen"].streaming, self.tools["gen"].is_async), (True, False))
        self.assertEqual((self.tools["agen"].streaming, self.tools["agen"].is_async), (True, True))
        self.assertEqual((self.tools["coro"].streaming, self.tools["coro"].is_async), (False, True))

    def test_binding_signature_excludes_ctx(self) -> None:
        sig = self.tools["plain"].signature
        sig.bind(a=1)
        with self.assertRaisesRegex(TypeError, "ctx"):
            sig.bind(a=1, ctx=None)
        with self.assertRaisesRegex(TypeError, "'a'"):
            sig.bind(b="y")

    def test_decorated_method_stays_callable(self) -> None:
        self.assertEqual(SampleAdapter().plain(1, "y"), "1yFalse")

    def test_duplicate_tool_names_are_refused(self) -> None:
        class Duplicated(BaseAdapter):
            @tool(name="same")
            def one(self) -> None: ...

            @tool(name="same")
            def two(self) -> None: ...

        with self.assertRaisesRegex(ValueError, "two tools named 'same'"):
            Duplicated().tools()

    def test_subclass_inherits_and_overrides_tools(self) -> None:
        class Child(SampleAdapter):
            @tool
            def coro(self) -> int:  # type: ignore[override]
                """Now synchronous."""
                return 2

        tools = Child().tools()
        self.assertIn("plain", tools)
        self.assertFalse(tools["coro"].is_async)
        self.assertEqual(tools["coro"].func(), 2)


class ShowcaseToolsTest(unittest.TestCase):
    def test_showcase_has_exactly_the_documented_tools(self) -> None:
        self.assertEqual(
            sorted(ShowcaseAdapter().tools()),
            sorted(
                [
                    "ping",
                    "echo",
                    "add",
                    "sleep",
                    "fail",
                    "crash",
                    "spawn_child",
                    "session_put",
                    "session_get",
                    "stream_numbers",
                    "flood",
                    "flood_report",
                    "env",
                    "hog",
                    "call_host",
                ]
            ),
        )

    def test_fail_raises_builtin_exceptions_only(self) -> None:
        adapter = ShowcaseAdapter()
        with self.assertRaisesRegex(KeyError, "k"):
            adapter.fail("KeyError", "k")
        with self.assertRaisesRegex(ValueError, "not a built-in exception class"):
            adapter.fail("NotAnException", "x")
        with self.assertRaisesRegex(ValueError, "not a built-in exception class"):
            adapter.fail("print", "x")

    def test_flood_reports_close(self) -> None:
        adapter = ShowcaseAdapter()
        gen = adapter.flood(100, size=3)
        self.assertEqual(next(gen), "xxx")
        gen.close()  # type: ignore[attr-defined]  # flood is a generator
        self.assertEqual(adapter.flood_report(), {"produced": 1, "closed": True})

    def test_hog_holds_memory(self) -> None:
        adapter = ShowcaseAdapter()
        adapter.hog(1)
        self.assertEqual(adapter.hog(2), {"held_mb": 3})


class ToolContextTest(unittest.IsolatedAsyncioTestCase):
    async def test_host_calls_are_not_available_without_a_bridge(self) -> None:
        # The environment no longer configures a bridge: only a worker's transport does.
        with mock.patch.dict(os.environ, {"SNAKEPIT_HOST_BRIDGE": "127.0.0.1:1", "SNAKEPIT_HOST_SECRET": "x"}):
            ctx = ToolContext(session_id="s")
        self.assertFalse(ctx.host_bridge.configured)
        with self.assertRaisesRegex(HostToolsUnavailable, HOST_TOOLS_UNAVAILABLE):
            ctx.call_host("x", {})
        with self.assertRaisesRegex(RuntimeError, HOST_TOOLS_UNAVAILABLE):
            await ctx.acall_host("x", {})
        with self.assertRaisesRegex(HostToolsUnavailable, HOST_TOOLS_UNAVAILABLE):
            ctx.list_host_tools()

    def test_cancellation_is_visible_to_the_tool(self) -> None:
        ctx = ToolContext()
        self.assertFalse(ctx.cancelled)
        ctx.check_cancelled()
        ctx.cancel_event.set()
        self.assertTrue(ctx.cancelled)
        with self.assertRaises(CallCancelled):
            ctx.check_cancelled()
        # Like asyncio.CancelledError, it is not an Exception a tool's handler would swallow.
        self.assertFalse(issubclass(CallCancelled, Exception))


class LoadAdapterTest(unittest.TestCase):
    def test_explicit_class(self) -> None:
        self.assertIs(load_adapter_class("snakepit_bridge.showcase:ShowcaseAdapter"), ShowcaseAdapter)

    def test_single_class_is_picked(self) -> None:
        self.assertEqual(load_adapter_class("tests.fixture_failing_start").__name__, "FailingStartAdapter")

    def test_ambiguous_module_is_an_error(self) -> None:
        with self.assertRaisesRegex(LookupError, "FirstAdapter, SecondAdapter"):
            load_adapter_class("tests.fixture_two_adapters")

    def test_not_an_adapter_is_an_error(self) -> None:
        with self.assertRaises(TypeError):
            load_adapter_class("json:JSONDecoder")
        with self.assertRaises(AttributeError):
            load_adapter_class("snakepit_bridge.showcase:Missing")


class CommandLineTest(unittest.TestCase):
    def test_defaults(self) -> None:
        args = parse_args([])
        self.assertEqual(
            (
                args.adapter,
                args.transport,
                args.concurrency,
                args.port,
                args.host,
                args.unix_socket,
                args.max_message_bytes,
                args.log_level,
            ),
            ("snakepit_bridge.showcase:ShowcaseAdapter", "local", 1, 0, "127.0.0.1", "", 64 * 1024 * 1024, "INFO"),
        )

    def test_loopback_only(self) -> None:
        for host in ("127.0.0.1", "127.0.0.2", "::1", "localhost"):
            self.assertEqual(parse_args(["--host", host]).host, host)
        for host in ("0.0.0.0", "10.1.2.3", "::", "example.com"):
            with self.subTest(host=host), self.assertRaises(SystemExit), contextlib.redirect_stderr(io.StringIO()):
                parse_args(["--host", host])

    def test_bad_values_are_refused(self) -> None:
        for argv in (
            ["--transport", "http"],
            ["--concurrency", "0"],
            ["--port", "70000"],
            ["--max-message-bytes", "0"],
            ["--log-level", "LOUD"],
        ):
            with self.subTest(argv=argv), self.assertRaises(SystemExit), contextlib.redirect_stderr(io.StringIO()):
                parse_args(argv)

    def test_the_old_entry_point_still_runs_the_worker(self) -> None:
        from snakepit_bridge import cli, server

        self.assertIs(server.main, cli.main)


if __name__ == "__main__":
    unittest.main()
