"""Lead when the kube-scheduler next to us leads: follow its Lease instead of running an election.

In HAMi's layout every replica is one pod holding a kube-scheduler and the extender, and
kube-scheduler calls the extender on loopback. With ``leaderElection.leaderElect: true`` only the
kube-scheduler holding its Lease schedules, so the extender in *that* pod must be the one that
decides. An extender running its own election on a separate Lease can end up leading in the other
pod; then the scheduling kube-scheduler only ever reaches a follower and every GPU pod fails.

:class:`LeaseFollower` does what HAMi does (``isHolderOf`` / ``isLeaseValid``): it reads the
kube-scheduler's Lease every ``poll`` seconds and reports leadership while ``holderIdentity`` is
this pod's (kube-scheduler's identity is ``<hostname>_<uuid>``) and ``renewTime +
leaseDurationSeconds`` is in the future. Both processes share a host, so comparing the renew time
with the local clock is sound here.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from hami.kube.client import KubeClient
from hami.kube.errors import KubeError, NotFoundError
from hami.kube.paths import api_path
from hami.kube.times import parse_time
from hami.protocol import bodies

log = logging.getLogger(__name__)


def holds(holder: str, prefix: str) -> bool:
    """Is ``holder`` (a Lease holderIdentity) this pod's? kube-scheduler uses ``<hostname>_<uuid>``."""
    return bool(prefix) and (holder == prefix or holder.startswith(prefix + "_"))


class LeaseFollower:
    def __init__(
        self,
        client: KubeClient,
        *,
        namespace: str,
        name: str,
        holder_prefix: str,
        poll: float = 2.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        if not holder_prefix:
            raise ValueError("holder_prefix must not be empty")
        self.client = client
        self.namespace = namespace
        self.name = name
        self.holder_prefix = holder_prefix
        self.poll = poll
        self.clock = clock
        self.holder = ""
        self._valid_until: datetime | None = None
        self._task: asyncio.Task[None] | None = None

    @property
    def is_leader(self) -> bool:
        return self._valid_until is not None and self.clock() < self._valid_until

    def observe(self, lease: dict[str, Any] | None) -> None:
        """Update from a Lease object (``None``: there is no Lease)."""
        spec = bodies.spec(lease or {})
        holder = str(spec.get("holderIdentity") or "")
        if holder != self.holder:
            log.info("lease %s/%s: holder is now %r", self.namespace, self.name, holder)
            self.holder = holder
        renew, duration = spec.get("renewTime"), spec.get("leaseDurationSeconds")
        if not holds(holder, self.holder_prefix) or not renew or not isinstance(duration, int | float):
            self._valid_until = None
            return
        try:
            self._valid_until = parse_time(str(renew)) + timedelta(seconds=float(duration))
        except ValueError:
            self._valid_until = None

    async def refresh(self) -> None:
        try:
            lease = await self.client.get(
                api_path("coordination.k8s.io/v1", "leases", namespace=self.namespace, name=self.name)
            )
        except NotFoundError:
            lease = None
        self.observe(lease)

    async def run(self) -> None:
        while True:
            try:
                await self.refresh()
            except KubeError as exc:  # keep the last observation; it expires by itself
                log.warning("reading lease %s/%s: %s", self.namespace, self.name, exc)
            await asyncio.sleep(self.poll)

    def start(self) -> None:
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self.run(), name=f"lease-follower:{self.name}")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self._valid_until = None
