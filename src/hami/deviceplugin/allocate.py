"""Allocate: hand a container the cards the scheduler chose for it (HAMi §2.6, §7).

`PodAllocator` ties the pieces together, one Allocate at a time per node: the pod is found
(`identify`), each container's cards are the first non-empty entry of
`hami.io/vgpu-devices-to-allocate`, checked against this node's healthy inventory; what the
container receives is built as `ContainerEdits` for its mode (`modes`: hami-core, MPS, or MIG with
instances created on demand by `mig`) and rendered as the kubelet's response (`edits`); the result
is written in one compare-and-swap patch and the node lock released once the pod is complete
(`commit`). Guarantees: any error sets `bind-phase=failed`, releases the lock, destroys the MIG
instances this call created and reaches the kubelet as an `AllocationError` with a clear message;
the MIG reconciler (`mig.MigReconciler`) shares this allocator's lock.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid as uuidlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from hami.deviceplugin.api import api_pb2
from hami.deviceplugin.commit import AllocationWriter, pod_complete
from hami.deviceplugin.edits import ContainerEdits, allocate_response
from hami.deviceplugin.hostinstall import write_atomically
from hami.deviceplugin.identify import find_pod
from hami.deviceplugin.kubeops import KubeOps, Obj
from hami.deviceplugin.mig import MigReconciler, destroy_all, instances_for_container
from hami.deviceplugin.modes import (
    container_cache_dir,
    container_conf_path,
    decide_enforcement,
    hami_core_edits,
    mig_edits,
    mps_edits,
    vgpu_conf,
)
from hami.deviceplugin.server import AllocationError
from hami.deviceplugin.settings import MIG, MPS, NodeSettings, PhysicalDevice
from hami.deviceplugin.sources.base import DeviceSource, DeviceSourceError, MigInstance
from hami.kube.errors import KubeError
from hami.protocol import bodies, keys
from hami.protocol.errors import ProtocolError
from hami.protocol.pod import ContainerDevices, MigAllocation, decode_mig_allocations, decode_pod_devices

log = logging.getLogger(__name__)


class PodAllocator:
    """Allocator for `DevicePluginServer` backed by the Kubernetes API (via `KubeOps`)."""

    def __init__(
        self,
        kube: KubeOps,
        settings: NodeSettings,
        source: DeviceSource,
        devices: Callable[[], list[PhysicalDevice]],
        *,
        new_cache_id: Callable[[], str] = lambda: str(uuidlib.uuid4()),
        make_dirs: bool = True,
        lock_release_attempts: int = 5,
    ) -> None:
        self.kube = kube
        self.settings = settings
        self.source = source
        self._devices = devices
        self._new_cache_id = new_cache_id
        self._make_dirs = make_dirs
        self._lock = asyncio.Lock()
        self._writer = AllocationWriter(kube, settings.node_name, lock_release_attempts=lock_release_attempts)
        self._mig = MigReconciler(kube, settings.node_name, source, devices, self._lock)

    #: Lock mode: the pod is found at Allocate; nothing to do at PreStartContainer.
    pre_start_required = False

    @property
    def node_name(self) -> str:
        return self.settings.node_name

    @property
    def writer(self) -> AllocationWriter:
        """The API writes of this node's allocations (commit, failure mark, node lock)."""
        return self._writer

    @property
    def lock(self) -> asyncio.Lock:
        """Held by Allocate and the MIG reconciler (MIG instances change only under it)."""
        return self._lock

    def devices(self) -> list[PhysicalDevice]:
        """The node's registered devices now."""
        return self._devices()

    async def prestart(self, device_ids: list[str]) -> None:
        """Lock mode registers without `pre_start_required`: nothing to do."""

    async def find_pod(self) -> Obj:
        """The pod being allocated on this node (`identify.find_pod`)."""
        return await find_pod(self.kube, self.node_name)

    async def preferred_cards(self, size: int) -> list[str] | None:
        pod = await self.find_pod()
        entries = decode_pod_devices(bodies.annotations(pod).get(keys.VGPU_DEVICES_TO_ALLOCATE, ""))
        first = next((e for e in entries if e), ())
        return [d.uuid for d in first] or None

    async def allocate(self, request: api_pb2.AllocateRequest) -> api_pb2.AllocateResponse:
        async with self._lock:
            pod = await self.find_pod()
            try:
                resp = await self._allocate_pod(pod, request)
            except AllocationError as e:
                await self._writer.mark_failed(pod, str(e))
                raise
            except (KubeError, DeviceSourceError, ProtocolError, OSError) as e:
                msg = f"allocating GPUs for pod {bodies.pod_key(pod)} failed: {e}"
                await self._writer.mark_failed(pod, msg)
                raise AllocationError(msg) from e
            return resp

    async def _allocate_pod(self, pod: Obj, request: api_pb2.AllocateRequest) -> api_pb2.AllocateResponse:
        ann = bodies.annotations(pod)
        raw = ann.get(keys.VGPU_DEVICES_TO_ALLOCATE, "")
        try:
            entries = decode_pod_devices(raw)
        except ProtocolError as e:
            raise AllocationError(
                f"pod {bodies.pod_key(pod)}: bad {keys.VGPU_DEVICES_TO_ALLOCATE} annotation: {e}"
            ) from e
        try:
            migs = decode_mig_allocations(ann.get(keys.VGPU_MIG_ALLOCATIONS, ""))
        except ProtocolError as e:
            raise AllocationError(
                f"pod {bodies.pod_key(pod)}: bad {keys.VGPU_MIG_ALLOCATIONS} annotation: {e}"
            ) from e
        containers = bodies.pod_containers(pod)
        inventory = {d.uuid: d for d in self._devices()}
        resp = api_pb2.AllocateResponse()
        created: list[MigInstance] = []
        mig_changed = False
        try:
            for creq in request.container_requests:
                idx = next((i for i, e in enumerate(entries) if e), None)
                if idx is None:
                    raise AllocationError(
                        f"pod {bodies.pod_key(pod)}: no container has devices left in {keys.VGPU_DEVICES_TO_ALLOCATE}"
                    )
                devs = entries[idx]
                if idx >= len(containers):
                    raise AllocationError(
                        f"pod {bodies.pod_key(pod)}: {keys.VGPU_DEVICES_TO_ALLOCATE} entry {idx} has no matching container"
                    )
                ctr = containers[idx]
                if len(devs) != len(creq.devices_ids):
                    raise AllocationError(
                        f"pod {bodies.pod_key(pod)} container {ctr.get('name')!r}: device number not matched: the kubelet "
                        f"asked for {len(creq.devices_ids)}, the scheduler assigned {len(devs)}"
                    )
                edits, migs, new = await self.container_edits(pod, idx, devs, migs, inventory)
                created += new
                mig_changed = mig_changed or bool(new)
                resp.container_responses.append(allocate_response(edits))
                entries[idx] = ()
            await self._writer.commit(pod, raw, entries, migs if mig_changed else None)
        except BaseException:
            await destroy_all(self.source, created)
            raise
        if pod_complete(pod, entries):
            await self._writer.release_lock(pod)
        return resp

    async def container_edits(
        self,
        pod: Obj,
        idx: int,
        devs: ContainerDevices,
        migs: list[MigAllocation],
        inventory: Mapping[str, PhysicalDevice],
        *,
        cache_id: str | None = None,
    ) -> tuple[ContainerEdits, list[MigAllocation], list[MigInstance]]:
        """What container `idx` of `pod` (init containers first) receives for the cards `devs`,
        each checked against this node's `inventory`: its edits, the pod's MIG allocations
        `migs` with created instances filled in, and the MIG instances created (the caller
        destroys them if it fails later). `cache_id` names a hami-core container's shared region
        (a new one when None). Raises AllocationError naming the pod and the card."""
        ctr = bodies.pod_containers(pod)[idx]
        for d in devs:
            phys = inventory.get(d.uuid)
            if phys is None:
                raise AllocationError(
                    f"pod {bodies.pod_key(pod)}: card {d.uuid} is not on node {self.node_name}"
                )
            if not phys.healthy:
                raise AllocationError(f"pod {bodies.pod_key(pod)}: card {d.uuid} is unhealthy")
            if d.usedmem <= 0 and phys.mode != MIG:
                # 0 must never reach a container as a limit: libvgpu refuses every allocation, MPS
                # would leave the card without a pinned limit (a MIG instance's size is its limit)
                raise AllocationError(
                    f"pod {bodies.pod_key(pod)}: card {d.uuid} was assigned {d.usedmem} MiB; refusing a 0-MiB slice"
                )
        ctr_migs = sorted((a for a in migs if a.container_index == idx), key=lambda a: a.device_index)
        modes = {inventory[d.uuid].mode for d in devs}
        if ctr_migs or MIG in modes:
            uuids, migs, new = await instances_for_container(self.source, pod, idx, devs, ctr_migs, migs)
            return mig_edits(uuids), migs, new
        if modes == {MPS}:
            return mps_edits(devs, self.settings), migs, []
        return await self._hami_core_edits(pod, ctr, devs, cache_id), migs, []

    async def _hami_core_edits(
        self, pod: Obj, ctr: Mapping[str, Any], devs: ContainerDevices, cache_id: str | None = None
    ) -> ContainerEdits:
        """HAMi-core edits, with their side effects: the opt-out denial event, the log line for an
        unreadable opt-out, the container's cache directory, the driver's edits."""
        meta = bodies.meta(pod)
        cache_id = cache_id or self._new_cache_id()
        enforcement = decide_enforcement(ctr, self.settings, meta.get("namespace"))
        denial = enforcement.denial_message(ctr.get("name"))
        if denial is not None:
            await self._writer.event(pod, "EnforcementOptOutDenied", denial, warning=True)
        if enforcement.unreadable_disable_control:
            log.info(
                "pod %s container %r: %s from valueFrom cannot be read here; enforcement stays on",
                bodies.pod_key(pod),
                ctr.get("name"),
                keys.ENV_DISABLE_CONTROL,
            )
        cache_dir = container_cache_dir(self.settings, meta.get("uid", ""), ctr.get("name"))
        edits = hami_core_edits(
            devs,
            ctr,
            self.settings,
            enforcement=enforcement,
            cache_id=cache_id,
            cache_dir=cache_dir,
            driver=self.source.driver_edits([d.uuid for d in devs]),
        )
        if self._make_dirs:
            await asyncio.to_thread(make_cache_dir, cache_dir)
            await asyncio.to_thread(write_conf, container_conf_path(cache_dir), vgpu_conf(edits))
        return edits

    async def reconcile_mig(self) -> list[MigInstance]:
        """One MIG reconciliation pass (`mig.MigReconciler.reconcile`)."""
        return await self._mig.reconcile()

    async def run_mig_reconciler(self, interval: float = 5.0) -> None:
        await self._mig.run(interval)


def make_cache_dir(path: str) -> None:
    """A container's shared-region directory, writable by whatever user the container runs as."""
    os.makedirs(path, exist_ok=True)
    # The container's user is unknown; the directory is mounted into this container only.
    os.chmod(path, 0o777)


def write_conf(path: str, text: str) -> None:
    """The library's configuration file, replaced atomically, readable by the container's user and
    writable by nobody there (it is also mounted read-only)."""
    write_atomically(Path(path), text.encode(), 0o444)
