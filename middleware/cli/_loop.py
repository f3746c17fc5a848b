"""The event loop long-running commands run on: uvloop where it is installed (Linux, macOS),
else asyncio's own. ``CARELOOP_EVENT_LOOP=asyncio`` forces asyncio's.

uvloop cut the whole pipeline's CPU per message by about a fifth on the bench machine
(docs/benchmarks.md): MLLP reads and ACK writes, the HTTP API and webhook sends all run on it.
"""
from __future__ import annotations

import asyncio
import os
from typing import Any, Coroutine


def run(coro: Coroutine[Any, Any, Any]) -> Any:
    if os.environ.get("CARELOOP_EVENT_LOOP", "uvloop").lower() != "asyncio":
        try:
            import uvloop
        except ImportError:
            pass
        else:
            return uvloop.run(coro)
    return asyncio.run(coro)
