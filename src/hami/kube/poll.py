"""Waiting for a condition on the cluster: one polling loop for services, tools and tests."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

__all__ = ["poll_until"]


async def poll_until(
    predicate: Callable[[], Awaitable[Any]], *, timeout: float, interval: float = 0.25
) -> Any:
    """Await ``predicate()`` every ``interval`` s until it returns something truthy, and return that.

    Raises :class:`TimeoutError` naming the last value once ``timeout`` s have passed; errors the
    predicate raises propagate at once.
    """
    deadline = time.monotonic() + timeout
    while True:
        value = await predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise TimeoutError(f"condition not met within {timeout}s (last value {value!r})")
        await asyncio.sleep(interval)
