"""Snakepit for Effect: the Python worker runtime.

Write an adapter by subclassing :class:`BaseAdapter` and decorating methods
with :func:`tool`; run it with ``python -m snakepit_bridge.server --adapter
module:Class``.
"""

from .adapter import (
    HOST_TOOLS_UNAVAILABLE,
    BaseAdapter,
    HostBridge,
    HostToolError,
    HostToolsUnavailable,
    ToolContext,
    ToolInfo,
    ToolParameterInfo,
    ToolResult,
    tool,
)

__all__ = [
    "HOST_TOOLS_UNAVAILABLE",
    "BaseAdapter",
    "HostBridge",
    "HostToolError",
    "HostToolsUnavailable",
    "ToolContext",
    "ToolInfo",
    "ToolParameterInfo",
    "ToolResult",
    "tool",
]
