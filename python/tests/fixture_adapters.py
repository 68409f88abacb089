"""Adapters used by the end-to-end tests (not test modules themselves).

OddAdapter has every showcase tool plus tools whose results or behaviour are awkward on
purpose: output on fd 1 and fd 2, processes that try to escape, CPU-bound loops, streams
with a report of how far they got, and host calls.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import threading
import time
from collections.abc import AsyncIterator, Iterable, Iterator
from typing import Any

from snakepit_bridge import ToolContext, ToolResult, tool
from snakepit_bridge.showcase import ShowcaseAdapter

# A stray print at import time must end up on stderr, not on the host's channel or stdout.
print("fixture_adapters imported (this goes to stderr)")

# What a tool writes to fd 1 and fd 2: a length prefix that would parse as a frame header
# if it ever reached the channel, followed by bytes that are not UTF-8.
GARBAGE = b'\x00\x00\x00\x10\x00\x00\x00\x00\x05{"t":"result"}\xff\xfe GARBAGE\n'

# A child that inherits fds 1 and 2, writes garbage to both, and reports (on fd 2, i.e. the
# worker's log) whether the channel sockets on fds 3 and 4 reached it.
_CHILD = (
    "import os, sys\n"
    f"os.write(1, {GARBAGE!r}); os.write(2, {GARBAGE!r})\n"
    "def is_open(fd):\n"
    "    try:\n"
    "        os.fstat(fd)\n"
    "        return True\n"
    "    except OSError:\n"
    "        return False\n"
    "sys.exit(10 * is_open(3) + is_open(4))\n"
)

# Forks; the first child starts a new session and exits at once, so its child (the daemon)
# is orphaned; the daemon prints its pid and sleeps.
_DAEMON = (
    "import os, sys, time\n"
    "if os.fork():\n"
    "    os._exit(0)\n"
    "os.setsid()\n"
    "if os.fork():\n"
    "    os._exit(0)\n"
    "os.write(1, str(os.getpid()).encode() + b'\\n'); os.close(1)\n"
    "time.sleep(120)\n"
)


class OddAdapter(ShowcaseAdapter):
    """The showcase's tools and awkward ones."""

    def __init__(self) -> None:
        super().__init__()
        self.reports: dict[str, dict[str, Any]] = {}
        self._gates: dict[str, threading.Event] = {}
        self._gates_lock = threading.Lock()

    def _gate(self, name: str) -> threading.Event:
        with self._gates_lock:
            return self._gates.setdefault(name, threading.Event())

    # -- results ------------------------------------------------------------- #

    @tool
    def give_complex(self) -> Any:
        """Return a complex number, which nothing converts."""
        return {"z": 1j}

    @tool
    def give_nan(self) -> float:
        """Return NaN, which JSON cannot encode."""
        return float("nan")

    @tool
    def give_blob(self, ctx: ToolContext) -> ToolResult:
        """Return the request attachments reversed, as attachments."""
        return ToolResult(
            value={"names": sorted(ctx.attachments)},
            attachments={k: v[::-1] for k, v in ctx.attachments.items()},
        )

    @tool
    def give_bytes(self, size: int, fill: int = 7) -> dict[str, Any]:
        """Return ``size`` bytes of ``fill`` inside a JSON value."""
        return {"size": size, "data": bytes([fill]) * size, "nested": [b"", bytearray(b"ba")]}

    @tool
    def describe_value(self, value: Any) -> Any:
        """Describe the Python types of ``value``, so a test sees what arrived."""
        if isinstance(value, bytes):
            return {"bytes": len(value), "head": list(value[:4])}
        if isinstance(value, dict):
            return {k: self.describe_value(v) for k, v in value.items()}
        if isinstance(value, list):
            return [self.describe_value(v) for v in value]
        return type(value).__name__

    @tool
    def fail_deep(self) -> None:
        """Raise from a helper, so the traceback has two frames of the adapter's own."""
        self._fail_here()

    def _fail_here(self) -> None:
        raise LookupError("deep")

    @tool
    def sys_exit(self) -> None:
        """Raise SystemExit inside a tool: reported, the worker keeps running."""
        raise SystemExit(7)

    @tool
    async def async_add(self, a: int, b: int) -> int:
        """An async tool."""
        return a + b

    @tool
    def sleep_then(self, ms: int, value: Any = None) -> Any:
        """Sleep, then return value."""
        time.sleep(ms / 1000)
        return value

    # -- output on fd 1 and fd 2 -------------------------------------------- #

    @tool
    def noisy(self) -> str:
        """Print to stdout, which must not reach the host."""
        print("noisy tool output (this goes to stderr)", flush=True)
        return "printed"

    @tool
    def garbage(self) -> dict[str, Any]:
        """Write garbage to fd 1 and fd 2 every way there is, then return normally."""
        print("garbage via print", GARBAGE.decode("latin-1"), flush=True)
        sys.stdout.write("garbage via sys.stdout\n")
        sys.stdout.flush()
        sys.stderr.write("garbage via sys.stderr\n")
        os.write(1, GARBAGE)
        os.write(2, GARBAGE)
        child = subprocess.run([sys.executable, "-c", _CHILD], close_fds=False, timeout=30, check=False)
        return {"child_saw_call_fd": child.returncode // 10 == 1, "child_saw_control_fd": child.returncode % 10 == 1}

    @tool
    def garbage_stream(self, count: int) -> Iterator[int]:
        """Yield 0..count-1, writing garbage to fd 1 and fd 2 before each item."""
        for i in range(count):
            os.write(1, GARBAGE)
            os.write(2, GARBAGE)
            yield i

    # -- cancellation -------------------------------------------------------- #

    @tool
    def spin(self, ctx: ToolContext, name: str = "spin") -> int:
        """A CPU-bound loop that never ends on its own; the report says how it ended."""
        report = self.reports[name] = {"started": True, "finished": False, "saw_cancelled": None}
        n = 0
        try:
            while True:
                n += 1
        finally:
            report["finished"] = True
            report["saw_cancelled"] = ctx.cancelled

    @tool
    async def async_wait(self, ctx: ToolContext, name: str = "async_wait") -> str:
        """Waits for an hour on the event loop; the report says whether it was cancelled."""
        report = self.reports[name] = {"started": True, "cancelled": False}
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            report["cancelled"] = True
            raise
        return "woke"

    @tool
    def block(self, name: str = "gate") -> str:
        """Wait where no cancel can reach (a lock wait in C) until release(name), or 30 s."""
        self._gate(name).wait(30)
        return "released"

    @tool
    def release(self, name: str = "gate") -> None:
        """Let block(name) return (needs a second tool thread, or a call from another transport thread)."""
        self._gate(name).set()

    @tool
    def report(self, name: str) -> Any:
        """What the tool or stream that reports under ``name`` said, or null."""
        return self.reports.get(name)

    def _counted(self, items: Iterable[Any], name: str) -> Iterator[Any]:
        """Yield ``items``; the report counts the items produced and says whether ``finally`` ran."""
        report = self.reports[name] = {"produced": 0, "closed": False}
        try:
            for item in items:
                report["produced"] += 1
                yield item
        finally:
            report["closed"] = True

    @tool
    def counted_stream(self, count: int, name: str = "counted") -> Iterator[int]:
        """Yield 0..count-1, reporting under ``name``."""
        yield from self._counted(range(count), name)

    @tool
    async def async_counted_stream(self, count: int, name: str = "async_counted") -> AsyncIterator[int]:
        """Async form of counted_stream."""
        report = self.reports[name] = {"produced": 0, "closed": False}
        try:
            for i in range(count):
                report["produced"] += 1
                yield i
        finally:
            report["closed"] = True

    @tool
    def bad_chunk_stream(self, name: str = "bad_chunk") -> Iterator[Any]:
        """Yield a good chunk, one JSON cannot carry, then another good one."""
        yield from self._counted(({"ok": 0}, 1j, {"ok": 2}), name)

    @tool
    def broken_stream(self, good: int = 2) -> Iterator[dict[str, int]]:
        """Yield good chunks, then raise."""
        for i in range(good):
            yield {"i": i}
        raise KeyError("stream broke")

    @tool
    async def broken_async_stream(self, good: int = 2):  # type: ignore[no-untyped-def]
        """Yield good chunks, then raise (async)."""
        for i in range(good):
            yield {"i": i}
        raise RuntimeError("async stream broke")

    @tool
    def blob_stream(self, count: int, size: int) -> Iterator[bytes]:
        """Yield ``count`` blobs of ``size`` bytes, blob i filled with byte i."""
        for i in range(count):
            yield bytes([i % 256]) * size

    # -- processes ----------------------------------------------------------- #

    @tool
    def spawn_escapees(self) -> dict[str, int]:
        """Start a child in a new session and a double-forked daemon; return their pids."""
        session_child = subprocess.Popen(
            [sys.executable, "-c", "import time; time.sleep(120)"],
            start_new_session=True,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._children.append(session_child)
        launcher = subprocess.run(
            [sys.executable, "-c", _DAEMON],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            timeout=30,
            check=True,
        )
        return {"session_child": session_child.pid, "daemon": int(launcher.stdout.decode().strip())}

    # -- host tools ---------------------------------------------------------- #

    @tool
    def call_host_with(
        self,
        tool: str,
        ctx: ToolContext,
        args: dict[str, Any] | None = None,
        attachments: dict[str, bytes] | None = None,
        timeout: float = 30,
    ) -> Any:
        """Call a host tool from a sync tool and return its result."""
        return ctx.call_host(tool, args, attachments=attachments, timeout=timeout)

    @tool
    def call_host_tool(self, ctx: ToolContext) -> Any:
        """Try to call a host tool."""
        return ctx.call_host("anything", {})

    @tool
    async def acall_host_tool(self, tool: str, ctx: ToolContext, args: dict[str, Any] | None = None) -> Any:
        """Call a host tool from an async tool, i.e. on the worker's event loop."""
        return await ctx.acall_host(tool, args)

    @tool
    def list_host(self, ctx: ToolContext) -> Any:
        """The host's tools."""
        return ctx.list_host_tools()
