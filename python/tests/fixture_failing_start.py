"""The only adapter in this module fails in on_start (picked without :Class)."""

from snakepit_bridge import BaseAdapter, tool


class FailingStartAdapter(BaseAdapter):
    @tool
    def nothing(self) -> None:
        """Never reachable."""

    async def on_start(self) -> None:
        raise RuntimeError("on_start refuses to start")
