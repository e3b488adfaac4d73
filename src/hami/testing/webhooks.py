"""Waiting for kube-apiserver to start calling a just-registered admission webhook."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any

from hami.kube.errors import ApiError

#: what the API server answers while it still holds the configuration from before the CA bundle
#: was injected (failurePolicy Fail turns the failed TLS verification into a refusal)
UNKNOWN_CA = "certificate signed by unknown authority"


async def create_until_admitted_by_webhook(
    create: Callable[[int], Awaitable[dict[str, Any]]],
    mutated: Callable[[dict[str, Any]], bool],
    *,
    discard: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
    attempts: int = 50,
    interval: float = 0.2,
) -> dict[str, Any]:
    """Create objects (``create(attempt)``) until one comes back ``mutated`` by the webhook.

    The API server picks webhook configurations up asynchronously: first none (the object is
    admitted unmutated; ``discard`` removes it), possibly the configuration as created before its
    caBundle was injected (the call fails TLS verification and is refused), then the final one.
    Any other refusal is raised. Raises AssertionError when no attempt was mutated.
    """
    last: dict[str, Any] | None = None
    for attempt in range(attempts):
        try:
            last = await create(attempt)
        except ApiError as exc:
            if UNKNOWN_CA not in str(exc):
                raise
            last = None
        if last is not None:
            if mutated(last):
                return last
            if discard is not None:
                await discard(last)
        await asyncio.sleep(interval)
    raise AssertionError(f"the webhook never mutated a created object within {attempts} attempts: {last!r}")
