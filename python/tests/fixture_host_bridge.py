"""An adapter for host-side tests of the credential handover (not a test module itself).

The showcase's tools, plus one that reports what the worker's host bridge holds, so that a
test can check that the secret reached the worker (and nothing else) and act as a stray
process that knows the address but not the secret.
"""

from __future__ import annotations

from typing import Any

from snakepit_bridge import ToolContext, tool
from snakepit_bridge.showcase import ShowcaseAdapter


class BridgeInspector(ShowcaseAdapter):
    @tool
    def bridge_credentials(self, ctx: ToolContext) -> dict[str, Any]:
        """The host bridge's class, address and secret as this worker knows them (null when none)."""
        bridge = ctx.host_bridge
        metadata = dict(getattr(bridge, "_metadata", ()))
        return {
            "bridge": type(bridge).__name__,
            "address": getattr(bridge, "address", None),
            "secret": metadata.get("x-snakepit-secret"),
        }
