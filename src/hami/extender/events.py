"""Recording a pod event from the extender: never raises, a failure is logged."""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from hami.kube.client import KubeClient
from hami.kube.errors import KubeError
from hami.protocol import bodies

log = logging.getLogger(__name__)


async def record_event(
    client: KubeClient, pod: Mapping[str, Any], reason: str, message: str, *, warning: bool, component: str
) -> None:
    """A ``Normal`` or ``Warning`` event on ``pod``; an API error is logged, never raised (an event
    is a courtesy: no scheduling step may fail because of it)."""
    try:
        await client.create_event(
            dict(pod),
            reason=reason,
            message=message,
            type="Warning" if warning else "Normal",
            component=component,
        )
    except KubeError as exc:
        log.warning("could not record event %s on pod %s: %s", reason, bodies.uid(pod), exc)
