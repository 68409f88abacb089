"""The default adapter: small tools that exercise every path of the bridge.

The host's tests use these to check results, errors, streaming, cancellation,
sessions, memory accounting and process cleanup.
"""

from __future__ import annotations

import builtins
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from typing import Any

from .adapter import BaseAdapter, ToolContext, tool

_PAGE = 4096


class ShowcaseAdapter(BaseAdapter):
    """Demonstration and test tools."""

    def __init__(self) -> None:
        self._last_flood: dict[str, Any] = {"produced": 0, "closed": False}
        self._hoard: list[bytearray] = []
        # Kept so the children are reaped rather than left as zombies.
        self._children: list[subprocess.Popen[bytes]] = []

    @tool
    def ping(self) -> dict[str, Any]:
        """Reply "pong" with the worker's pid."""
        return {"message": "pong", "pid": os.getpid()}

    @tool
    def echo(self, value):  # type: ignore[no-untyped-def]  # untyped on purpose: any JSON value
        """Return the value unchanged."""
        return value

    @tool
    def add(self, a: float, b: float) -> float:
        """Return a + b."""
        return a + b

    @tool
    def sleep(self, ms: int) -> dict[str, int]:
        """Sleep for ms milliseconds (blocking, in the tool thread pool)."""
        time.sleep(ms / 1000)
        return {"slept_ms": ms}

    @tool
    def fail(self, type: str = "ValueError", message: str = "boom") -> None:
        """Raise the built-in exception class named by type, with message."""
        exc_class = getattr(builtins, type, None)
        if not (isinstance(exc_class, builtins.type) and issubclass(exc_class, Exception)):
            raise ValueError(f"{type!r} is not a built-in exception class")
        raise exc_class(message)

    @tool
    def crash(self, code: int = 1) -> None:
        """Exit the worker process at once with the given code."""
        os._exit(code)

    @tool
    def spawn_child(self, ctx: ToolContext, seconds: float = 600) -> dict[str, int]:
        """Start a grandchild process (same process group) that sleeps; return its pid."""
        # The run id on its command line lets a leak check find it like any worker.
        child = subprocess.Popen(
            [sys.executable, "-c", f"import time; time.sleep({float(seconds)!r})", "--snakepit-run-id", ctx.run_id],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._children.append(child)
        return {"pid": child.pid}

    @tool
    def session_put(self, key: str, value: Any, ctx: ToolContext) -> None:
        """Store value under key in the session's state."""
        ctx.session[key] = value

    @tool
    def session_get(self, key: str, ctx: ToolContext) -> Any:
        """Return the value stored under key in the session's state, or null."""
        return ctx.session.get(key)

    @tool
    async def stream_numbers(self, count: int, delay_ms: int = 0) -> AsyncIterator[dict[str, int]]:
        """Yield {"i": i} for i in range(count), delay_ms apart."""
        import asyncio

        for i in range(count):
            if i and delay_ms:
                await asyncio.sleep(delay_ms / 1000)
            yield {"i": i}

    @tool
    def flood(self, count: int, size: int = 1024) -> Iterator[str]:
        """Yield count strings of size characters as fast as possible.

        flood_report tells how many were produced and whether the generator
        was closed, which shows that cancellation reaches the generator.
        """
        state: dict[str, Any] = {"produced": 0, "closed": False}
        self._last_flood = state
        payload = "x" * size
        try:
            for _ in range(count):
                state["produced"] += 1
                yield payload
        finally:
            state["closed"] = True

    @tool
    def flood_report(self) -> dict[str, Any]:
        """Report {"produced", "closed"} for the last flood."""
        return dict(self._last_flood)

    @tool
    def env(self, names: list[str]) -> dict[str, str | None]:
        """Return the named environment variables (null when unset)."""
        return {name: os.environ.get(name) for name in names}

    @tool
    def hog(self, mb: int) -> dict[str, int]:
        """Allocate and keep mb MiB of memory; return the total held."""
        block = bytearray(mb * 1024 * 1024)
        # bytearray memory is only resident once touched: write one byte per page.
        block[::_PAGE] = b"\x01" * len(range(0, len(block), _PAGE))
        self._hoard.append(block)
        return {"held_mb": sum(len(b) for b in self._hoard) // (1024 * 1024)}

    @tool
    def call_host(self, tool: str, ctx: ToolContext, args: dict[str, Any] | None = None) -> Any:
        """Call the host tool named tool with args and return its result.

        A failing host tool raises HostToolError, which reaches the host as a
        PYTHON_EXCEPTION whose message is "<host error type>: <message>".
        """
        return ctx.call_host(tool, args)
