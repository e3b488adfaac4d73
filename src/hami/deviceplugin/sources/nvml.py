"""Device source backed by the NVIDIA driver through nvidia-ml-py (`import pynvml`).

Needs a GPU node; without `libnvidia-ml.so.1` construction raises `DeviceSourceError`. Mirrors
what HAMi's plugin reads: UUID, name, memory, NUMA node from sysfs, PCIe/NVLink pair topology,
MIG mode and GPU-instance profiles, XID critical-error events (application XIDs ignored;
`DP_DISABLE_HEALTHCHECKS` / `DP_ENABLE_HEALTHCHECKS` as in the upstream plugin).
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import logging
import math
import os
import threading
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

from hami.deviceplugin.sources.base import (
    DeviceSource,
    DeviceSourceError,
    HealthEvent,
    LinkType,
    MigInstance,
    MigPlacement,
    PairLink,
    SourceCard,
    SourceMigProfile,
    xid_is_critical,
)

log = logging.getLogger(__name__)

_SYSFS_PCI = Path("/sys/bus/pci/devices")
_NVLINK_DEVICE_TYPE_SWITCH = 2  # nvmlIntNvLinkDeviceType_t: GPU 0, IBMNPU 1, SWITCH 2


#: Device nodes every CUDA container needs besides its cards' own.
_CONTROL_NODES = ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools")


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


def _topology_link(level: int) -> LinkType:
    # NVML_TOPOLOGY_INTERNAL 0, SINGLE 10, MULTIPLE 20, HOSTBRIDGE 30, NODE 40, SYSTEM 50
    return {
        0: LinkType.SAME_BOARD,
        10: LinkType.SINGLE_SWITCH,
        20: LinkType.MULTI_SWITCH,
        30: LinkType.HOST_BRIDGE,
        40: LinkType.SAME_CPU,
    }.get(level, LinkType.CROSS_CPU)


def _env_xids(name: str) -> tuple[bool, frozenset[int]]:
    """(everything disabled, set of XIDs) from a DP_*_HEALTHCHECKS variable."""
    raw = os.environ.get(name, "")
    items = {x.strip().lower() for x in raw.split(",") if x.strip()}
    disabled_all = bool(items & {"all", "xids"})
    return disabled_all, frozenset(int(x) for x in items if x.isdigit())


class NvmlSource(DeviceSource):
    """Real GPUs through NVML. All methods are blocking; call them from a worker thread."""

    def __init__(self, *, sysfs_pci: Path = _SYSFS_PCI) -> None:
        try:
            import pynvml
        except ImportError as e:  # pragma: no cover - dependency of the package
            raise DeviceSourceError(f"nvidia-ml-py is not installed: {e}") from e
        self._nvml: Any = pynvml
        self._sysfs_pci = sysfs_pci
        try:
            pynvml.nvmlInit()
        except pynvml.NVMLError as e:
            raise DeviceSourceError(f"cannot initialise NVML (is the NVIDIA driver installed?): {e}") from e
        self._lock = threading.Lock()
        self._unhealthy: dict[str, int | None] = {}

    def close(self) -> None:
        with contextlib.suppress(Exception):
            self._nvml.nvmlShutdown()

    # ---- helpers ------------------------------------------------------------------------

    def _handles(self) -> Iterator[tuple[int, Any]]:
        n = self._nvml
        for i in range(n.nvmlDeviceGetCount()):
            yield i, n.nvmlDeviceGetHandleByIndex(i)

    def _handle(self, uuid: str) -> Any:
        try:
            return self._nvml.nvmlDeviceGetHandleByUUID(uuid)
        except self._nvml.NVMLError as e:
            raise DeviceSourceError(f"card {uuid}: {e}") from e

    def _bus_id(self, handle: Any) -> str:
        # NVML: "00000000:3B:00.0" (8-digit domain); sysfs: "0000:3b:00.0"
        return _s(self._nvml.nvmlDeviceGetPciInfo(handle).busId).lower()[-12:]

    def _numa(self, handle: Any) -> int:
        try:
            text = (self._sysfs_pci / self._bus_id(handle) / "numa_node").read_text().strip()
            return max(0, int(text))
        except (OSError, ValueError, self._nvml.NVMLError):
            return 0

    def _mig_mode(self, handle: Any) -> tuple[bool, bool]:
        n = self._nvml
        try:
            current, _pending = n.nvmlDeviceGetMigMode(handle)
        except n.NVMLError:
            return False, False
        return True, current == n.NVML_DEVICE_MIG_ENABLE

    def _sm_count(self, handle: Any) -> int:
        try:
            return int(self._nvml.nvmlDeviceGetAttributes(handle).multiprocessorCount)
        except self._nvml.NVMLError:
            return 0

    # ---- inventory ----------------------------------------------------------------------

    def device_nodes(self, uuids: list[str]) -> tuple[str, ...]:
        """`/dev/nvidia<minor>` of each card, then the driver's control and UVM nodes."""
        try:
            minors = [int(self._nvml.nvmlDeviceGetMinorNumber(self._handle(u))) for u in uuids]
        except self._nvml.NVMLError as e:
            raise DeviceSourceError(f"NVML minor number: {e}") from e
        return (*(f"/dev/nvidia{m}" for m in minors), *_CONTROL_NODES)

    def cards(self) -> list[SourceCard]:
        n = self._nvml
        out = []
        try:
            for index, h in self._handles():
                uuid = _s(n.nvmlDeviceGetUUID(h))
                capable, enabled = self._mig_mode(h)
                with self._lock:
                    healthy = uuid not in self._unhealthy
                out.append(
                    SourceCard(
                        uuid=uuid,
                        index=index,
                        model=_s(n.nvmlDeviceGetName(h)),
                        memory_mib=int(n.nvmlDeviceGetMemoryInfo(h).total // (1024 * 1024)),
                        numa=self._numa(h),
                        healthy=healthy,
                        mig_capable=capable,
                        mig_enabled=enabled,
                        sm_count=self._sm_count(h),
                    )
                )
        except n.NVMLError as e:
            raise DeviceSourceError(f"NVML device enumeration failed: {e}") from e
        return out

    def _nvlink_peers(self, handle: Any) -> tuple[dict[str, int], int]:
        """(bus id of peer GPU -> direct link count, links to NVSwitches)."""
        n = self._nvml
        peers: dict[str, int] = {}
        switch = 0
        for link in range(n.NVML_NVLINK_MAX_LINKS):
            try:
                if n.nvmlDeviceGetNvLinkState(handle, link) != n.NVML_FEATURE_ENABLED:
                    continue
                remote = _s(n.nvmlDeviceGetNvLinkRemotePciInfo(handle, link).busId).lower()[-12:]
            except n.NVMLError:
                continue  # link not present / not supported
            kind = None
            with contextlib.suppress(n.NVMLError, AttributeError):
                kind = n.nvmlDeviceGetNvLinkRemoteDeviceType(handle, link)
            if kind == _NVLINK_DEVICE_TYPE_SWITCH:
                switch += 1
            else:
                peers[remote] = peers.get(remote, 0) + 1
        return peers, switch

    def links(self) -> list[PairLink]:
        n = self._nvml
        try:
            devs = [(_s(n.nvmlDeviceGetUUID(h)), h) for _, h in self._handles()]
        except n.NVMLError as e:
            raise DeviceSourceError(f"NVML device enumeration failed: {e}") from e
        info: dict[str, tuple[str, dict[str, int], int]] = {}
        for u, h in devs:
            try:
                info[u] = (self._bus_id(h), *self._nvlink_peers(h))
            except n.NVMLError as e:
                log.warning("no PCI/NVLink data for %s: %s", u, e)
                info[u] = ("", {}, 0)
        out = []
        for i, (ua, ha) in enumerate(devs):
            for ub, hb in devs[i + 1 :]:
                try:
                    link = _topology_link(int(n.nvmlDeviceGetTopologyCommonAncestor(ha, hb)))
                except n.NVMLError as e:
                    log.warning("no PCIe topology between %s and %s: %s", ua, ub, e)
                    continue
                bus_a, peers_a, sw_a = info[ua]
                bus_b, peers_b, sw_b = info[ub]
                ab, ba = peers_a.get(bus_b, 0), peers_b.get(bus_a, 0)
                via_switch = min(sw_a, sw_b)
                asym = ab != ba
                if asym:
                    log.warning("asymmetric NVLink data between %s (%d) and %s (%d)", ua, ab, ub, ba)
                out.append(PairLink(ua, ub, link, max(ab, via_switch) if not asym else 0, asym))
        return out

    def mig_profiles(self, uuid: str) -> list[SourceMigProfile]:
        n = self._nvml
        h = self._handle(uuid)
        capable, _ = self._mig_mode(h)
        if not capable:
            return []
        full_sm = self._sm_count(h)
        infos = []
        for pid in range(n.NVML_GPU_INSTANCE_PROFILE_COUNT):
            try:
                infos.append(n.nvmlDeviceGetGpuInstanceProfileInfo(h, pid))
            except n.NVMLError:
                continue  # profile not supported on this card
        full_sm = full_sm or max((int(i.multiprocessorCount) for i in infos), default=0)
        out = []
        for info in infos:
            name = _s(info.name).removeprefix("MIG ").strip()
            out.append(
                SourceMigProfile(
                    name=name,
                    memory_mb=int(info.memorySizeMB),
                    core=math.ceil(int(info.multiprocessorCount) * 100 / full_sm) if full_sm else 0,
                    slice_count=int(info.sliceCount),
                    placements=tuple(self._placements(h, int(info.id), int(info.instanceCount))),
                    instance_count=int(info.instanceCount),
                )
            )
        return out

    def _placements(self, handle: Any, profile_id: int, instance_count: int) -> list[MigPlacement]:
        n = self._nvml
        size = max(instance_count, 1) * 2
        arr = (n.c_nvmlGpuInstancePlacement_t * size)()
        count = ctypes.c_uint(size)
        try:
            n.nvmlDeviceGetGpuInstancePossiblePlacements(handle, profile_id, arr, ctypes.byref(count))
        except n.NVMLError as e:
            log.warning("cannot read placements of MIG profile %d: %s", profile_id, e)
            return []
        return [MigPlacement(int(arr[i].start), int(arr[i].size)) for i in range(count.value)]

    def _profile_id(self, handle: Any, profile: str) -> tuple[int, int]:
        n = self._nvml
        for pid in range(n.NVML_GPU_INSTANCE_PROFILE_COUNT):
            try:
                info = n.nvmlDeviceGetGpuInstanceProfileInfo(handle, pid)
            except n.NVMLError:
                continue
            if _s(info.name).removeprefix("MIG ").strip() == profile:
                return int(info.id), int(info.sliceCount)
        raise DeviceSourceError(f"MIG profile {profile!r} is not supported by this card")

    # ---- MIG ----------------------------------------------------------------------------

    def _ci_profile_for(self, slices: int) -> int:
        n = self._nvml
        table: dict[int, int] = {
            1: n.NVML_COMPUTE_INSTANCE_PROFILE_1_SLICE,
            2: n.NVML_COMPUTE_INSTANCE_PROFILE_2_SLICE,
            3: n.NVML_COMPUTE_INSTANCE_PROFILE_3_SLICE,
            4: n.NVML_COMPUTE_INSTANCE_PROFILE_4_SLICE,
            6: n.NVML_COMPUTE_INSTANCE_PROFILE_6_SLICE,
            7: n.NVML_COMPUTE_INSTANCE_PROFILE_7_SLICE,
            8: n.NVML_COMPUTE_INSTANCE_PROFILE_8_SLICE,
        }
        return table[slices]

    def _mig_uuid(self, handle: Any, gi_id: int, ci_id: int) -> str:
        n = self._nvml
        for i in range(n.nvmlDeviceGetMaxMigDeviceCount(handle)):
            try:
                mh = n.nvmlDeviceGetMigDeviceHandleByIndex(handle, i)
            except n.NVMLError:
                continue
            if n.nvmlDeviceGetGpuInstanceId(mh) == gi_id and n.nvmlDeviceGetComputeInstanceId(mh) == ci_id:
                return _s(n.nvmlDeviceGetUUID(mh))
        raise DeviceSourceError(f"no MIG device for GPU instance {gi_id} / compute instance {ci_id}")

    def create_mig_instance(self, uuid: str, profile: str, placement: MigPlacement) -> MigInstance:
        n = self._nvml
        h = self._handle(uuid)
        pid, slices = self._profile_id(h, profile)
        pl = n.c_nvmlGpuInstancePlacement_t()
        pl.start, pl.size = placement.start, placement.size
        try:
            gi = n.nvmlDeviceCreateGpuInstanceWithPlacement(h, pid, ctypes.byref(pl))
        except n.NVMLError as e:
            raise DeviceSourceError(
                f"cannot create GPU instance {profile} at {placement.start}+{placement.size} on {uuid}: {e}"
            ) from e
        try:
            gi_id = int(n.nvmlGpuInstanceGetInfo(gi).id)
            ci_info = n.nvmlGpuInstanceGetComputeInstanceProfileInfo(
                gi, self._ci_profile_for(slices), n.NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED
            )
            ci = n.nvmlGpuInstanceCreateComputeInstance(gi, ci_info.id)
            ci_id = int(n.nvmlComputeInstanceGetInfo(ci).id)
            mig_uuid = self._mig_uuid(h, gi_id, ci_id)
        except (n.NVMLError, KeyError, DeviceSourceError) as e:
            with contextlib.suppress(n.NVMLError):
                self._destroy_gi(gi)
            raise DeviceSourceError(f"cannot create compute instance {profile} on {uuid}: {e}") from e
        return MigInstance(uuid, profile, placement, mig_uuid, gi_id, ci_id)

    def _destroy_gi(self, gi: Any) -> None:
        n = self._nvml
        for cpid in range(n.NVML_COMPUTE_INSTANCE_PROFILE_COUNT):
            arr = (n.c_nvmlComputeInstance_t * 8)()
            count = ctypes.c_uint(0)
            try:
                ci_info = n.nvmlGpuInstanceGetComputeInstanceProfileInfo(
                    gi, cpid, n.NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED
                )
                n.nvmlGpuInstanceGetComputeInstances(gi, ci_info.id, arr, ctypes.byref(count))
            except n.NVMLError:
                continue
            for i in range(count.value):
                n.nvmlComputeInstanceDestroy(arr[i])
        n.nvmlGpuInstanceDestroy(gi)

    def destroy_mig_instance(self, uuid: str, gpu_instance_id: int) -> None:
        n = self._nvml
        h = self._handle(uuid)
        try:
            self._destroy_gi(n.nvmlDeviceGetGpuInstanceById(h, gpu_instance_id))
        except n.NVMLError as e:
            raise DeviceSourceError(f"cannot destroy GPU instance {gpu_instance_id} on {uuid}: {e}") from e

    def list_mig_instances(self, uuid: str | None = None) -> list[MigInstance]:
        n = self._nvml
        uuids = [uuid] if uuid is not None else [c.uuid for c in self.cards() if c.mig_enabled]
        out = []
        for u in uuids:
            h = self._handle(u)
            for pid in range(n.NVML_GPU_INSTANCE_PROFILE_COUNT):
                try:
                    info = n.nvmlDeviceGetGpuInstanceProfileInfo(h, pid)
                    arr = (n.c_nvmlGpuInstance_t * max(int(info.instanceCount), 1))()
                    count = ctypes.c_uint(0)
                    n.nvmlDeviceGetGpuInstances(h, info.id, arr, ctypes.byref(count))
                except n.NVMLError:
                    continue
                name = _s(info.name).removeprefix("MIG ").strip()
                for i in range(count.value):
                    gi_info = n.nvmlGpuInstanceGetInfo(arr[i])
                    gi_id = int(gi_info.id)
                    placement = MigPlacement(int(gi_info.placement.start), int(gi_info.placement.size))
                    ci_id, mig_uuid = 0, ""
                    for mi in range(n.nvmlDeviceGetMaxMigDeviceCount(h)):
                        try:
                            mh = n.nvmlDeviceGetMigDeviceHandleByIndex(h, mi)
                        except n.NVMLError:
                            continue
                        if n.nvmlDeviceGetGpuInstanceId(mh) == gi_id:
                            ci_id = int(n.nvmlDeviceGetComputeInstanceId(mh))
                            mig_uuid = _s(n.nvmlDeviceGetUUID(mh))
                            break
                    out.append(MigInstance(u, name, placement, mig_uuid, gi_id, ci_id))
        return out

    # ---- health -------------------------------------------------------------------------

    def _watch(self, emit: Any, stop: threading.Event) -> None:
        """Blocking XID event loop (runs in its own thread)."""
        n = self._nvml
        all_off, skipped = _env_xids("DP_DISABLE_HEALTHCHECKS")
        _, forced = _env_xids("DP_ENABLE_HEALTHCHECKS")
        if all_off:
            log.info("health checks disabled by DP_DISABLE_HEALTHCHECKS")
            return
        mask = (
            n.nvmlEventTypeXidCriticalError
            | n.nvmlEventTypeDoubleBitEccError
            | n.nvmlEventTypeSingleBitEccError
        )
        try:
            event_set = n.nvmlEventSetCreate()
        except n.NVMLError as e:
            log.error("NVML health events unavailable (%s); cards will not be marked unhealthy", e)
            return
        try:
            uuids = []
            for _, h in self._handles():
                u = _s(n.nvmlDeviceGetUUID(h))
                uuids.append(u)
                try:
                    supported = n.nvmlDeviceGetSupportedEventTypes(h)
                    n.nvmlDeviceRegisterEvents(h, mask & supported, event_set)
                except n.NVMLError as e:
                    log.warning("card %s does not support health events: %s", u, e)
            while not stop.is_set():
                try:
                    data = n.nvmlEventSetWait(event_set, 1000)
                except n.NVMLError as e:
                    if getattr(e, "value", None) == n.NVML_ERROR_TIMEOUT:
                        continue
                    log.error("NVML event wait failed: %s", e)
                    stop.wait(1.0)
                    continue
                if data.eventType != n.nvmlEventTypeXidCriticalError:
                    continue
                xid = int(data.eventData)
                if not xid_is_critical(xid, skipped=skipped, forced=forced):
                    log.info("ignoring application XID %d", xid)
                    continue
                try:
                    targets = [_s(n.nvmlDeviceGetUUID(data.device))]
                except n.NVMLError:
                    targets = uuids  # event without a device: every card is suspect (as upstream)
                for u in targets:
                    with self._lock:
                        first = u not in self._unhealthy
                        self._unhealthy[u] = xid
                    if first:
                        log.warning("card %s unhealthy: XID %d", u, xid)
                        emit(HealthEvent(u, False, xid, f"XID {xid}"))
        finally:
            with contextlib.suppress(n.NVMLError):
                n.nvmlEventSetFree(event_set)

    async def health_events(self) -> AsyncIterator[HealthEvent]:
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[HealthEvent] = asyncio.Queue()
        stop = threading.Event()

        def emit(ev: HealthEvent) -> None:
            loop.call_soon_threadsafe(queue.put_nowait, ev)

        thread = threading.Thread(target=self._watch, args=(emit, stop), name="nvml-health", daemon=True)
        thread.start()
        try:
            while True:
                yield await queue.get()
        finally:
            stop.set()
