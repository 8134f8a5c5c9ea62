"""The HTTP service and MCP server over the engine (`sandbox serve`, `sandbox mcp`).

Needs the `server` extra: `pip install 'sandbox[server]'`. `create_app` and `Settings` are imported
lazily so that `sandbox --help` works without it.
"""

from __future__ import annotations

from typing import Any

__all__ = ["create_app", "Settings"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from .app import create_app
        return create_app
    if name == "Settings":
        from .settings import Settings
        return Settings
    raise AttributeError(name)
