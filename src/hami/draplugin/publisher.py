"""Keeps the node's ResourceSlice equal to its healthy cards.

`SlicePublisher.publish(devices)` writes the slice built by `slices` for the given inventory:
created when missing, replaced (with the pool generation raised by one) when its devices differ,
left alone when they are equal. MIG-capable cards are published as partitionable devices
(`partitions`) unless the API server drops the shared counters (its `DRAPartitionableDevices` gate
is off): then the slice is rewritten at once with whole cards only, and stays so (logged). The
runner (`runner.DraNodePlugin`) re-reads the inventory and publishes on every health event of
the device source and periodically, so an unhealthy card
leaves the slice and a recovered one returns. Guarantees: `try_publish` logs a failed write
instead of raising (the next round retries it); a conflict (someone else changed the slice)
re-reads it and retries; the slice is owned by the Node, so it goes away with the node.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from hami.deviceplugin.settings import PhysicalDevice
from hami.deviceplugin.sources.base import DeviceSource
from hami.draplugin.kubeops import DraKube
from hami.draplugin.slices import resource_slice, shared_counters, slice_devices, slice_name
from hami.kube.errors import ConflictError, KubeError, NotFoundError
from hami.protocol import bodies

log = logging.getLogger(__name__)


class SlicePublisher:
    """Writes one node's ResourceSlice for hami's driver."""

    def __init__(self, kube: DraKube, node_name: str, source: DeviceSource) -> None:
        self.kube = kube
        self.node_name = node_name
        self.source = source
        self._node_uid: str | None = None
        self._lock = asyncio.Lock()
        self.published = 0  # writes that changed the slice (observability, tests)
        #: False once the API server dropped the slice's shared counters (its
        #: DRAPartitionableDevices gate is off): MIG-capable cards are then published whole only
        self.partitions = True

    async def publish(self, devices: list[PhysicalDevice], attempts: int = 5) -> dict[str, Any]:
        """Make the slice describe `devices`; returns the slice as stored."""
        async with self._lock:
            if self._node_uid is None:
                self._node_uid = bodies.uid(await self.kube.get_node(self.node_name))
            links = await asyncio.to_thread(self.source.links)
            for _ in range(attempts):
                want = slice_devices(devices, links, partitioned=self.partitions)
                counters = shared_counters(devices) if self.partitions else []
                try:
                    current = await self.kube.get_slice(slice_name(self.node_name))
                except NotFoundError:
                    try:
                        body = resource_slice(self.node_name, self._node_uid, 1, want, counters)
                        created = await self.kube.create_slice(body)
                    except ConflictError:
                        continue
                    self.published += 1
                    if self._counters_dropped(counters, created):
                        continue
                    return created
                spec = bodies.spec(current)
                if spec.get("devices") == want and (spec.get("sharedCounters") or []) == counters:
                    return current
                generation = int((spec.get("pool") or {}).get("generation") or 0) + 1
                body = resource_slice(self.node_name, self._node_uid, generation, want, counters)
                body["metadata"]["resourceVersion"] = bodies.resource_version(current)
                try:
                    replaced = await self.kube.replace_slice(body)
                except ConflictError:
                    continue
                self.published += 1
                if self._counters_dropped(counters, replaced):
                    continue
                return replaced
            raise ConflictError(
                409, "Conflict", f"resourceslice {slice_name(self.node_name)}: conflicting writers"
            )

    def _counters_dropped(self, counters: list[dict[str, Any]], stored: dict[str, Any]) -> bool:
        """True (and partitions off from now on) when the API server stored the slice without the
        shared counters it was sent: the next attempt publishes whole cards only."""
        if not counters or bodies.spec(stored).get("sharedCounters"):
            return False
        log.warning(
            "node %s: the API server dropped the slice's shared counters (feature gate "
            "DRAPartitionableDevices is off): MIG-capable cards are published whole, without MIG devices",
            self.node_name,
        )
        self.partitions = False
        return True

    async def try_publish(self, devices: list[PhysicalDevice]) -> bool:
        """`publish`, logging instead of raising; True when the slice is current."""
        try:
            await self.publish(devices)
        except (KubeError, ValueError) as e:
            log.error("publishing the ResourceSlice of node %s failed (retried later): %s", self.node_name, e)
            return False
        return True
