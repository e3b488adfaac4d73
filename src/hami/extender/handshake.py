"""HAMi's scheduler side of the vendor handshake: ``hami.io/node-handshake-<x>`` on the Node.

Other vendors' device plugins (Hygon, Iluvatar, Kunlun vXPU, Vastai, Biren, ...) write
``Reported <time>`` beside their register annotation; HAMi's scheduler answers, every 15 s, on each
node that registers the vendor's devices (HAMi ``device.CheckHealth`` / ``NodeCleanUp``):

* absent, ``Reported ...`` or anything else but ``Requesting``: write ``Requesting_<now>`` (Go's
  ``time.DateTime`` layout, the scheduler's local time) — the plugin reports again;
* ``Requesting_<t>`` younger than 60 s, unreadable, or the vendor's count resource still allocatable:
  nothing;
* ``Requesting_<t>`` older than 60 s with nothing allocatable (the plugin is gone): delete the
  annotation (HAMi v2.10's ``NodeCleanUp``; older HAMi wrote ``Deleted_<time>``, read as "anything
  else" here).

The node's cards themselves follow the Node object (a plugin whose count resource is no longer
allocatable registers no cards, :func:`hami.devices.common.plugin_gone`); this module only keeps the
annotation protocol the vendors' plugins expect. NVIDIA is left out: its plugin is hami's own,
which neither reads nor writes the handshake (HAMi's NVIDIA plugin stopped in v2.8).

Guarantees: only the leader writes; one merge patch per node and pass, only when a value changes;
an API error is logged and retried on the next pass, never raised into the loop.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any, Literal

from hami.devices.common import SpecBackend
from hami.devices.registry import BackendRegistry
from hami.kube.client import KubeClient
from hami.kube.paths import api_path
from hami.protocol import bodies
from hami.protocol.errors import ProtocolError
from hami.protocol.handshake import decode_handshake, encode_requesting
from hami.protocol.quantity import parse_int_quantity

log = logging.getLogger(__name__)

#: how long a ``Requesting`` stamp waits for the plugin before its absence counts (HAMi: 60 s)
REQUEST_TIMEOUT = timedelta(seconds=60)
Step = Literal["request", "cleanup"]


def handshake_step(value: str | None, now: datetime, allocatable: bool) -> Step | None:
    """What HAMi's scheduler does with one vendor's handshake value on a node that registers it."""
    hs = decode_handshake(value or "")
    if hs.state != "requesting":
        return "request"
    if hs.time is None or now - hs.time < REQUEST_TIMEOUT or allocatable:
        return None
    return "cleanup"


def _allocatable(node: Mapping[str, Any], name: str) -> bool:
    raw = bodies.allocatable(node).get(name)
    try:
        return raw is not None and parse_int_quantity(raw, field=name) > 0
    except ProtocolError:
        return False


class HandshakeWriter:
    """Keeps every configured vendor's handshake annotation as HAMi's scheduler does."""

    def __init__(
        self,
        client: KubeClient,
        registry: BackendRegistry,
        nodes: Callable[[], Iterable[Mapping[str, Any]]],
        *,
        is_leader: Callable[[], bool] = lambda: True,
        interval: float = 15.0,
        clock: Callable[[], datetime] = datetime.now,
    ) -> None:
        self.client = client
        self.nodes = nodes
        self.is_leader = is_leader
        self.interval = interval
        self.clock = clock
        #: (handshake key, register key, count resource) of every vendor that handshakes
        self.vendors = [
            (b.spec.handshake, b.spec.register_key, b.spec.count_name)
            for b in registry
            if isinstance(b, SpecBackend) and b.spec.handshake and b.spec.register_key
        ]
        self.patches = 0
        self._task: asyncio.Task[None] | None = None

    def node_patch(self, node: Mapping[str, Any]) -> dict[str, str | None]:
        """The handshake annotations to write on ``node`` now (None: delete)."""
        have = bodies.annotations(node)
        now = self.clock()
        out: dict[str, str | None] = {}
        for key, register_key, count_name in self.vendors:
            if not have.get(register_key):
                continue  # HAMi handshakes only where the vendor's plugin registered devices
            step = handshake_step(have.get(key), now, _allocatable(node, count_name))
            if step == "request":
                out[key] = encode_requesting(now)
            elif step == "cleanup":
                out[key] = None
        return out

    async def reconcile(self) -> int:
        """One pass over the cached nodes; returns how many were patched."""
        if not self.is_leader():
            return 0
        patched = 0
        for node in list(self.nodes()):
            patch = self.node_patch(node)
            if not patch:
                continue
            name = bodies.name(node)
            try:
                await self.client.merge_patch(
                    api_path("v1", "nodes", name=name), {"metadata": {"annotations": patch}}
                )
            except Exception as exc:  # the next pass retries
                log.warning("node %s: writing the device handshake failed: %s", name, exc)
                continue
            patched += 1
            log.info("node %s: handshake %s", name, ", ".join(f"{k}={v}" for k, v in sorted(patch.items())))
        self.patches += patched
        return patched

    async def _run(self) -> None:
        while True:
            try:
                await self.reconcile()
            except Exception as exc:  # never end the loop
                log.warning("device handshake pass failed: %s", exc)
            await asyncio.sleep(self.interval)

    def start(self) -> None:
        if self.vendors and self._task is None:
            self._task = asyncio.create_task(self._run(), name="device-handshake")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
