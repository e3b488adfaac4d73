"""NodePrepareResources / NodeUnprepareResources for one claim: the allocation → a CDI spec.

`ClaimPreparer.prepare` reads the claim from the API, takes this driver's results in
`status.allocation.devices.results` (device, request, `consumedCapacity`), checks each device
against the node's healthy inventory and builds, per request, the container edits the device
plugin builds for hami-core (`hami.deviceplugin.modes.hami_core_edits`: per-card memory limit =
consumed memory, SM limit = consumed cores, the shared cache, `libvgpu.so`, `ld.so.preload`, the
read-only `vgpu.conf`) plus the cards' device nodes. All requests of a claim go into one CDI spec
file (kind `hami-core-gpu.project-hami.io/gpu`, one CDI device `<claim uid>-<request>` per
request), written atomically; every container that references the claim (or the request) gets
that one CDI device from the kubelet, so they share the claim's limits and shared region. A MIG
device (`partitions`) gets a MIG instance made at its profile placement, and its request's CDI
device names that instance (`NVIDIA_VISIBLE_DEVICES=MIG-…`, no HAMi-core injection: the hardware
enforces the slice), as the device plugin's MIG mode does; unprepare destroys it. A card is never
both split into MIG instances and shared whole by prepared claims of this node.

Guarantees: prepare is idempotent — a claim UID already in the checkpoint whose spec file exists
returns the recorded result without reading the API or writing anything; every failure is a
`PrepareError` naming the claim and the reason, and leaves no spec file, directory, MIG instance
or checkpoint entry behind; the checkpoint entry is written after the spec, so a crash in between leaves a spec
that the next prepare of the claim rewrites. Unprepare removes the spec, the claim's directories
and the checkpoint entry, and succeeds for a claim it never prepared. Calls are serialised.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import shutil
from collections.abc import Callable
from pathlib import Path

from hami.deviceplugin.allocate import make_cache_dir, write_conf
from hami.deviceplugin.edits import ContainerEdits, DeviceNode, Mount, cdi_spec
from hami.deviceplugin.hostinstall import write_atomically
from hami.deviceplugin.mig import destroy_all
from hami.deviceplugin.modes import (
    container_cache_dir,
    container_conf_path,
    decide_enforcement,
    hami_core_edits,
    mig_edits,
    vgpu_conf,
)
from hami.deviceplugin.settings import NodeSettings, PhysicalDevice
from hami.deviceplugin.sources.base import DeviceSource, DeviceSourceError, MigInstance
from hami.draplugin import partitions
from hami.draplugin.checkpoint import Checkpoint, CheckpointError, PreparedClaim, PreparedDevice
from hami.draplugin.kubeops import DraKube
from hami.draplugin.slices import device_name
from hami.kube.errors import KubeError, NotFoundError
from hami.protocol import bodies, keys
from hami.protocol.dra import DeviceAllocation, claim_allocations
from hami.protocol.errors import ProtocolError
from hami.protocol.pod import ContainerDevice

log = logging.getLogger(__name__)

#: CDI kind of the devices hami's DRA plugin declares (vendor = the driver name, class `gpu`).
CDI_KIND = f"{keys.DRA_DRIVER}/gpu"


class PrepareError(RuntimeError):
    """A claim cannot be prepared or unprepared; the message names the claim and the reason."""


def cdi_device_name(claim_uid: str, request: str) -> str:
    return f"{claim_uid}-{request}"


def cdi_file_name(claim_uid: str) -> str:
    return f"{keys.DRA_DRIVER}-{claim_uid}.json"


class ClaimPreparer:
    """Prepares and unprepares this node's claims of hami's driver."""

    def __init__(
        self,
        kube: DraKube,
        settings: NodeSettings,
        source: DeviceSource,
        devices: Callable[[], list[PhysicalDevice]],
        *,
        cdi_dir: str,
        checkpoint: Checkpoint,
        make_dirs: bool = True,
    ) -> None:
        self.kube = kube
        self.settings = settings
        self.source = source
        self._devices = devices
        self.cdi_dir = cdi_dir
        self.checkpoint = checkpoint
        self._make_dirs = make_dirs
        self._lock = asyncio.Lock()

    async def prepare(self, namespace: str, uid: str, name: str) -> PreparedClaim:
        ref = f"{namespace}/{name} ({uid})"
        async with self._lock:
            done = self.checkpoint.get(uid)
            if done is not None and os.path.exists(done.cdi_file):
                return done
            try:
                claim = await self.kube.get_claim(namespace, name)
            except NotFoundError:
                raise PrepareError(f"claim {ref}: not found") from None
            except KubeError as e:
                raise PrepareError(f"claim {ref}: cannot read it: {e}") from e
            if bodies.uid(claim) != uid:
                raise PrepareError(
                    f"claim {ref}: the API has UID {bodies.uid(claim)!r} under that name (the claim was replaced)"
                )
            try:
                allocs = claim_allocations(claim)
            except ProtocolError as e:
                raise PrepareError(str(e)) from e
            if not allocs:
                raise PrepareError(f"claim {ref}: no device of driver {keys.DRA_DRIVER} is allocated to it")
            return await self._prepare(ref, namespace, uid, name, allocs)

    async def _prepare(
        self, ref: str, namespace: str, uid: str, name: str, allocs: list[DeviceAllocation]
    ) -> PreparedClaim:
        devices = self._devices()
        inventory = {device_name(d.card.index): d for d in devices}
        split = partitions.partitioned_indexes(devices)
        migs = {m.name: m for d in devices if d.card.index in split for m in partitions.mig_devices(d)}
        by_request: dict[str, list[ContainerDevice]] = {}
        mig_by_request: dict[str, list[partitions.MigDevice]] = {}
        for a in allocs:
            if a.pool != self.settings.node_name:
                raise PrepareError(
                    f"claim {ref}: device {a.device} is in pool {a.pool!r}, not this node's ({self.settings.node_name})"
                )
            mig = migs.get(a.device)
            phys = mig.card if mig is not None else inventory.get(a.device)
            if phys is None:
                raise PrepareError(f"claim {ref}: device {a.device} is not on node {self.settings.node_name}")
            if not phys.healthy:
                raise PrepareError(f"claim {ref}: device {a.device} ({phys.uuid}) is unhealthy")
            self._check_overlap(ref, uid, phys, mig is not None)
            if mig is not None:
                mig_by_request.setdefault(a.request, []).append(mig)
                continue
            memory = phys.devmem if a.memory_mib is None else a.memory_mib
            if memory <= 0:
                raise PrepareError(f"claim {ref}: device {a.device}: refusing a 0-MiB memory share")
            cores = 0 if a.cores is None else a.cores
            by_request.setdefault(a.request, []).append(
                ContainerDevice(uuid=phys.uuid, type=phys.type, usedmem=memory, usedcores=cores)
            )
        mixed = sorted(set(by_request) & set(mig_by_request))
        if mixed:
            raise PrepareError(f"claim {ref}: request {mixed[0]!r} mixes MIG devices and whole cards")
        enforcement = decide_enforcement({}, self.settings, namespace)
        specs: dict[str, ContainerEdits] = {}
        dirs: list[str] = []
        created: list[MigInstance] = []
        try:
            for request, mig_devs in mig_by_request.items():
                specs[cdi_device_name(uid, request)] = await self._mig_edits(mig_devs, created)
            for request, devs in by_request.items():
                # the claim's UID keeps its directories apart from any pod's (container_cache_dir's
                # first part is a pod UID in device plugin mode)
                cache_dir = container_cache_dir(self.settings, uid, request)
                uuids = [d.uuid for d in devs]
                edits = hami_core_edits(
                    tuple(devs),
                    {},
                    self.settings,
                    enforcement=enforcement,
                    cache_id=cdi_device_name(uid, request),
                    cache_dir=cache_dir,
                    driver=self.source.driver_edits(uuids),
                ).with_defaults(device_nodes=[DeviceNode(p) for p in self.source.device_nodes(uuids)])
                specs[cdi_device_name(uid, request)] = edits
                if self._make_dirs:
                    dirs.append(cache_dir)
                    await asyncio.to_thread(make_cache_dir, cache_dir)
                    await asyncio.to_thread(write_conf, container_conf_path(cache_dir), vgpu_conf(edits))
            cdi_file = os.path.join(self.cdi_dir, cdi_file_name(uid))
            text = json.dumps(cdi_spec(CDI_KIND, specs), indent=1)
            await asyncio.to_thread(_write_spec, cdi_file, text)
            seen: set[str] = set()
            prepared_devices = []
            for a in allocs:
                # one CDI device per request, listed once (the kubelet passes every listed ID)
                ids = () if a.request in seen else (f"{CDI_KIND}={cdi_device_name(uid, a.request)}",)
                seen.add(a.request)
                prepared_devices.append(PreparedDevice((a.request,), a.pool, a.device, ids))
            prepared = PreparedClaim(
                uid,
                namespace,
                name,
                tuple(prepared_devices),
                cdi_file,
                tuple(dirs),
                tuple((i.gpu_uuid, i.gpu_instance_id) for i in created),
            )
            try:
                self.checkpoint.put(prepared)
            except CheckpointError:
                _remove_file(cdi_file)
                raise
        except (OSError, DeviceSourceError, CheckpointError, ValueError) as e:
            for d in dirs:
                _remove_dir(d)
            await destroy_all(self.source, created)
            raise PrepareError(f"claim {ref}: {e}") from e
        log.info("prepared claim %s: %s", ref, ", ".join(f"{a.request}={a.device}" for a in allocs))
        return prepared

    async def _mig_edits(
        self, mig_devs: list[partitions.MigDevice], created: list[MigInstance]
    ) -> ContainerEdits:
        """Make one MIG instance per device at its placement (appended to `created` as they are
        made, for the caller's roll back) and name them to the container, as the device plugin's
        MIG mode does, with the cards' device nodes and the driver's edits."""
        for m in mig_devs:
            created.append(
                await asyncio.to_thread(
                    self.source.create_mig_instance, m.card.uuid, m.profile.name, m.placement
                )
            )
        cards = list(dict.fromkeys(m.card.uuid for m in mig_devs))
        driver = self.source.driver_edits(cards)
        return mig_edits([i.mig_uuid for i in created[-len(mig_devs) :]]).with_defaults(
            driver.env,
            (Mount(container_path=c, host_path=h, read_only=True) for c, h in driver.mounts),
            [DeviceNode(p) for p in self.source.device_nodes(cards)],
        )

    def _check_overlap(self, ref: str, uid: str, card: PhysicalDevice, mig: bool) -> None:
        """A MIG instance and a whole-card claim never share a card on this node, whatever the
        scheduler allocated (kube-scheduler v1.34 does not count a shared card's counters across
        allocation passes, docs/dra.md)."""
        whole = device_name(card.card.index)
        for other in self.checkpoint.claims().values():
            if other.uid == uid:
                continue
            holds_mig = any(u == card.uuid for u, _ in other.mig_instances)
            holds_whole = any(d.device_name == whole for d in other.devices)
            if (mig and holds_whole) or (not mig and holds_mig):
                what = "a share of the whole card" if holds_whole else "a MIG instance"
                raise PrepareError(
                    f"claim {ref}: card {card.uuid} ({whole}) already has {what} prepared for claim "
                    f"{other.namespace}/{other.name}; a card is either shared whole or split into MIG instances"
                )

    async def unprepare(self, namespace: str, uid: str, name: str) -> None:
        async with self._lock:
            done = self.checkpoint.get(uid)
            if done is None:
                return
            try:
                _remove_file(done.cdi_file)
                for d in done.cache_dirs:
                    _remove_dir(d)
                await self._destroy_instances(done.mig_instances)
                self.checkpoint.remove(uid)
            except (OSError, CheckpointError, DeviceSourceError) as e:
                raise PrepareError(f"claim {namespace}/{name} ({uid}): unprepare failed: {e}") from e
            log.info("unprepared claim %s/%s (%s)", namespace, name, uid)

    async def _destroy_instances(self, instances: tuple[tuple[str, int], ...]) -> None:
        """Destroy the claim's MIG instances that still exist (a retried unprepare skips those an
        earlier try destroyed); DeviceSourceError when one cannot be destroyed."""
        if not instances:
            return
        live = {
            (i.gpu_uuid, i.gpu_instance_id) for i in await asyncio.to_thread(self.source.list_mig_instances)
        }
        for card, gi in instances:
            if (card, gi) in live:
                await asyncio.to_thread(self.source.destroy_mig_instance, card, gi)


def _write_spec(path: str, text: str) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    write_atomically(Path(path), text.encode(), 0o644)


def _remove_file(path: str) -> None:
    with contextlib.suppress(FileNotFoundError):
        os.unlink(path)


def _remove_dir(cache_dir: str) -> None:
    """A claim's shared-region directory and the configuration file beside it."""
    shutil.rmtree(cache_dir, ignore_errors=True)
    _remove_file(container_conf_path(cache_dir))
