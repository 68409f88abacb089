"""Adapters used by the end-to-end tests (not test modules themselves)."""

from __future__ import annotations

import time
from collections.abc import Iterator
from typing import Any

from snakepit_bridge import BaseAdapter, ToolContext, ToolResult, tool

# A stray print at import time must end up on stderr, not on the host's stdout.
print("fixture_adapters imported (this goes to stderr)")


class OddAdapter(BaseAdapter):
    """Tools whose results or behaviour are awkward on purpose."""

    @tool
    def give_set(self) -> Any:
        """Return a set, which JSON cannot encode."""
        return {1, 2, 3}

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
    def noisy(self) -> str:
        """Print to stdout, which must not reach the host."""
        print("noisy tool output (this goes to stderr)", flush=True)
        return "printed"

    @tool
    async def async_add(self, a: int, b: int) -> int:
        """An async tool."""
        return a + b

    @tool
    def sys_exit(self) -> None:
        """Raise SystemExit inside a tool: reported, the worker keeps running."""
        raise SystemExit(7)

    @tool
    def call_host_tool(self, ctx: ToolContext) -> Any:
        """Try to call a host tool."""
        return ctx.call_host("anything", {})

    @tool
    async def acall_host_tool(self, tool: str, ctx: ToolContext, args: dict[str, Any] | None = None) -> Any:
        """Call a host tool from an async tool, i.e. on the worker's event loop."""
        return await ctx.acall_host(tool, args)

    @tool
    def sleep_then(self, ms: int, value: Any = None) -> Any:
        """Sleep, then return value."""
        time.sleep(ms / 1000)
        return value
