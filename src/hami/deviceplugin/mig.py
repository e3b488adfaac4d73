"""MIG instances on this node: made for an allocation, undone when it fails, reaped when orphaned.

Guarantees:
 * `instances_for_container` returns one instance UUID per device of the container, in device
   order: an instance the pod's `hami.io/vgpu-mig-allocations` already names and that still
   exists is reused, any other is created at the scheduler's placement; if one creation fails,
   the instances this call created are destroyed before the error is raised;
 * `destroy_all` never raises (a failed destruction is logged);
 * `MigReconciler` destroys an instance on a MIG-mode card only when no live pod's allocation
   references it on two consecutive passes, under the same lock as Allocate, so an allocation in
   flight is never raced; a pod with an unreadable MIG annotation stops the pass (nothing is
   destroyed).
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from dataclasses import dataclass, field, replace

from hami.deviceplugin.kubeops import KubeOps, Obj
from hami.deviceplugin.server import AllocationError
from hami.deviceplugin.settings import MIG, PhysicalDevice
from hami.deviceplugin.sources.base import DeviceSource, DeviceSourceError, MigInstance, MigPlacement
from hami.protocol import bodies, keys
from hami.protocol.errors import ProtocolError
from hami.protocol.pod import ContainerDevices, MigAllocation, decode_mig_allocations

log = logging.getLogger(__name__)


async def instances_for_container(
    source: DeviceSource,
    pod: Obj,
    idx: int,
    devs: ContainerDevices,
    ctr_migs: list[MigAllocation],
    migs: list[MigAllocation],
) -> tuple[list[str], list[MigAllocation], list[MigInstance]]:
    """MIG instance UUIDs for container `idx` of `pod` (its allocations `ctr_migs`, sorted by
    device index), the pod's allocations `migs` with the runtime identity of created instances
    filled in, and the instances created."""
    if [a.device_index for a in ctr_migs] != list(range(len(devs))):
        raise AllocationError(
            f"pod {bodies.pod_key(pod)}: {keys.VGPU_MIG_ALLOCATIONS} has {len(ctr_migs)} entries for container "
            f"{idx}, expected one per device (0..{len(devs) - 1})"
        )
    existing = {
        (i.gpu_uuid, i.gpu_instance_id): i for i in await asyncio.to_thread(source.list_mig_instances)
    }
    created: list[MigInstance] = []
    uuids: list[str] = []
    out = list(migs)
    for a, d in zip(ctr_migs, devs, strict=True):
        if a.gpu_uuid != d.uuid:
            raise AllocationError(
                f"pod {bodies.pod_key(pod)}: MIG allocation of container {idx} device {a.device_index} is on "
                f"{a.gpu_uuid}, the device annotation says {d.uuid}"
            )
        have = existing.get((a.gpu_uuid, a.gpu_instance_id)) if a.gpu_instance_id is not None else None
        if a.mig_uuid and have is not None and have.mig_uuid == a.mig_uuid:
            uuids.append(a.mig_uuid)
            continue
        try:
            inst = await asyncio.to_thread(
                source.create_mig_instance,
                a.gpu_uuid,
                a.profile,
                MigPlacement(a.placement_start, a.placement_size),
            )
        except DeviceSourceError as e:
            for c in created:
                await asyncio.to_thread(source.destroy_mig_instance, c.gpu_uuid, c.gpu_instance_id)
            raise AllocationError(f"pod {bodies.pod_key(pod)}: {e}") from e
        created.append(inst)
        uuids.append(inst.mig_uuid)
        out[out.index(a)] = replace(
            a,
            mig_uuid=inst.mig_uuid,
            gpu_instance_id=inst.gpu_instance_id,
            compute_instance_id=inst.compute_instance_id,
        )
    return uuids, out, created


async def destroy_all(source: DeviceSource, instances: list[MigInstance]) -> None:
    """Roll back: destroy `instances`, logging (not raising) what cannot be destroyed."""
    for inst in instances:
        try:
            await asyncio.to_thread(source.destroy_mig_instance, inst.gpu_uuid, inst.gpu_instance_id)
        except Exception as e:
            log.error("could not roll back MIG instance %s on %s: %s", inst.mig_uuid, inst.gpu_uuid, e)


@dataclass(eq=False)
class MigReconciler:
    """Destroys MIG instances that no live pod on the node references (see module doc)."""

    kube: KubeOps
    node_name: str
    source: DeviceSource
    devices: Callable[[], list[PhysicalDevice]]
    #: Held by Allocate too: a pass never runs beside an allocation.
    lock: asyncio.Lock
    #: Unreferenced at the last pass: destroyed if still unreferenced at the next.
    _stale: set[tuple[str, int]] = field(default_factory=set, init=False)

    async def reconcile(self) -> list[MigInstance]:
        """One pass; returns the instances destroyed."""
        async with self.lock:
            mig_cards = {d.uuid for d in self.devices() if d.mode == MIG}
            if not mig_cards:
                self._stale = set()
                return []
            active: set[tuple[str, int]] = set()
            for pod in await self.kube.list_node_pods(self.node_name):
                if bodies.phase(pod) in ("Succeeded", "Failed"):
                    continue
                try:
                    allocs = decode_mig_allocations(
                        bodies.annotations(pod).get(keys.VGPU_MIG_ALLOCATIONS, "")
                    )
                except ProtocolError as e:
                    log.error(
                        "MIG reconcile skipped: pod %s has a bad MIG annotation: %s", bodies.pod_key(pod), e
                    )
                    return []
                active |= {(a.gpu_uuid, a.gpu_instance_id) for a in allocs if a.gpu_instance_id is not None}
            instances = await asyncio.to_thread(self.source.list_mig_instances)
            stale = {
                (i.gpu_uuid, i.gpu_instance_id): i
                for i in instances
                if i.gpu_uuid in mig_cards and (i.gpu_uuid, i.gpu_instance_id) not in active
            }
            doomed = [i for k, i in stale.items() if k in self._stale]
            self._stale = set(stale) - {(i.gpu_uuid, i.gpu_instance_id) for i in doomed}
            for inst in doomed:
                try:
                    await asyncio.to_thread(
                        self.source.destroy_mig_instance, inst.gpu_uuid, inst.gpu_instance_id
                    )
                    log.info(
                        "destroyed unused MIG instance %s (%s on %s)",
                        inst.mig_uuid,
                        inst.profile,
                        inst.gpu_uuid,
                    )
                except DeviceSourceError as e:
                    log.error("could not destroy MIG instance %s: %s", inst.mig_uuid, e)
            return doomed

    async def run(self, interval: float = 5.0) -> None:
        """`reconcile` every `interval` seconds until cancelled; a failed pass is logged."""
        while True:
            try:
                await self.reconcile()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("MIG reconcile failed: %s", e)
            await asyncio.sleep(interval)
