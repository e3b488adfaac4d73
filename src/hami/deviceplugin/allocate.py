"""Allocate: hand a container the cards the scheduler chose for it (HAMi §2.6, §7).

The kubelet's Allocate carries only replica IDs, so the pod is identified from the API server,
deterministically: the owner of the node lock (`hami.io/mutex.lock`) first, else the *single*
pod on this node in bind-phase `allocating` with cards left to allocate. Two candidates and no
lock owner is an error, never a guess. The container's cards are the first non-empty entry of
`hami.io/vgpu-devices-to-allocate`; the response carries HAMi's env and mounts (hami-core),
MIG instance UUIDs created on demand (mig) or MPS limits (mps). The erased annotation, the MIG
runtime identity and (when the pod is complete) `bind-phase=success` are written in one patch
with a resourceVersion precondition; then the node lock is released. Any error sets
`bind-phase=failed`, releases the lock, destroys MIG instances created by this call and is
returned to the kubelet with a clear message.
"""

from __future__ import annotations

import asyncio
import logging
import os
import uuid as uuidlib
from collections.abc import Callable
from dataclasses import dataclass, replace

from hami.deviceplugin.api import api_pb2
from hami.deviceplugin.hostinstall import LIBRARY_NAME, PRELOAD_NAME, vgpu_dir
from hami.deviceplugin.kubeops import KubeOps, Obj
from hami.deviceplugin.server import AllocationError
from hami.deviceplugin.settings import MIG, MPS, NodeSettings, PhysicalDevice
from hami.deviceplugin.sources.base import DeviceSource, DeviceSourceError, MigInstance, MigPlacement
from hami.devices.nvidia import NvidiaBackend
from hami.kube.errors import ConflictError, KubeError, NotFoundError
from hami.kube.nodelock import release_node_lock
from hami.protocol import keys
from hami.protocol.enforcement import disables_control, disables_core_limit
from hami.protocol.errors import ProtocolError
from hami.protocol.pod import (
    ContainerDevices,
    MigAllocation,
    decode_mig_allocations,
    decode_pod_devices,
    encode_mig_allocations,
    encode_pod_devices,
)

log = logging.getLogger(__name__)

ENV_MPS_THREADS = "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"
ENV_MPS_MEM_LIMIT = "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT"
ENV_MPS_PIPE = "CUDA_MPS_PIPE_DIRECTORY"
ENV_MPS_LOG = "CUDA_MPS_LOG_DIRECTORY"


def _ann(obj: Obj) -> dict[str, str]:
    return (obj.get("metadata") or {}).get("annotations") or {}


def _key(pod: Obj) -> str:
    meta = pod.get("metadata") or {}
    return f"{meta.get('namespace')}/{meta.get('name')}"


def pod_containers(pod: Obj) -> list[Obj]:
    """Init containers first, then regular containers: the annotation's index order."""
    spec = pod.get("spec") or {}
    return list(spec.get("initContainers") or []) + list(spec.get("containers") or [])


@dataclass(frozen=True)
class OptOutRequest:
    """What a container's own env asks of enforcement (HAMi-core mode)."""

    #: CUDA_DISABLE_CONTROL is anything but empty/0/f/false (any case), or comes from valueFrom.
    disable_control: bool
    #: CUDA_DISABLE_CONTROL has a literal value (a valueFrom value cannot be known here).
    disable_control_literal: bool
    #: GPU_CORE_UTILIZATION_POLICY is `disable` (any case), or comes from valueFrom.
    core_policy_off: bool


def opt_out_request(container: Obj) -> OptOutRequest:
    """Read a container's opt-out env like the webhook does: the kubelet passes both the device
    plugin's and the container's env to the runtime, so whatever the container says must be
    judged here too (the last entry of a name wins, as in the kubelet)."""
    literal: dict[str, str] = {}
    from_ref: set[str] = set()
    for e in container.get("env") or []:
        name = e.get("name")
        if name not in (keys.ENV_DISABLE_CONTROL, keys.ENV_CORE_POLICY):
            continue
        if e.get("valueFrom") is not None:
            from_ref.add(name)
            literal.pop(name, None)
        else:
            from_ref.discard(name)
            literal[name] = str(e.get("value") or "")
    dc_literal = keys.ENV_DISABLE_CONTROL in literal and disables_control(literal[keys.ENV_DISABLE_CONTROL])
    return OptOutRequest(
        disable_control=dc_literal or keys.ENV_DISABLE_CONTROL in from_ref,
        disable_control_literal=dc_literal,
        core_policy_off=disables_core_limit(literal.get(keys.ENV_CORE_POLICY, ""))
        or keys.ENV_CORE_POLICY in from_ref,
    )


def _remaining(entries: list[ContainerDevices]) -> bool:
    return any(entries)


def _other_vendors_pending(ann: dict[str, str]) -> bool:
    """Another vendor's `*-devices-to-allocate` still holds devices (multi-vendor pod): its device
    plugin sets the final bind-phase and releases the lock, as in HAMi's PodAllocationTrySuccess."""
    return any(
        k != keys.VGPU_DEVICES_TO_ALLOCATE and k.endswith("devices-to-allocate") and ":" in v
        for k, v in ann.items()
    )


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
        self._lock_release_attempts = lock_release_attempts
        self._lock = asyncio.Lock()
        self._stale_mig: set[tuple[str, int]] = set()

    @property
    def node_name(self) -> str:
        return self.settings.node_name

    # ---- pod identification ---------------------------------------------------------------

    def _candidate(self, pod: Obj) -> bool:
        ann = _ann(pod)
        spec_node = (pod.get("spec") or {}).get("nodeName")
        if spec_node and spec_node != self.node_name:
            return False
        if (
            ann.get(keys.VGPU_NODE) != self.node_name
            or ann.get(keys.BIND_PHASE) != keys.BIND_PHASE_ALLOCATING
        ):
            return False
        if (pod.get("status") or {}).get("phase", "Pending") != "Pending":
            return False
        if (pod.get("metadata") or {}).get("deletionTimestamp"):
            return False
        try:
            return _remaining(decode_pod_devices(ann.get(keys.VGPU_DEVICES_TO_ALLOCATE, "")))
        except ProtocolError:
            return True  # reported (and failed) by allocate with the decoding error

    async def find_pod(self) -> Obj:
        """The pod being allocated on this node (see module doc); AllocationError otherwise."""
        node = await self.kube.get_node(self.node_name)
        lock_value = _ann(node).get(NvidiaBackend.node_lock.key)
        if lock_value:
            try:
                lock = NvidiaBackend.node_lock.decode(lock_value)
            except ProtocolError as e:
                log.warning("node %s: unreadable node lock %r: %s", self.node_name, lock_value, e)
                lock = None
            if lock is not None and lock.namespace and lock.name:
                try:
                    owner = await self.kube.get_pod(lock.namespace, lock.name)
                except NotFoundError:
                    owner = None
                if owner is not None and self._candidate(owner):
                    return owner
                log.info("node lock owner %s/%s is not waiting for allocation", lock.namespace, lock.name)
        pods = [p for p in await self.kube.list_node_pods(self.node_name) if self._candidate(p)]
        if len(pods) == 1:
            return pods[0]
        if not pods:
            raise AllocationError(
                f"no pod on node {self.node_name} is waiting for GPU allocation "
                f"({keys.BIND_PHASE}={keys.BIND_PHASE_ALLOCATING} with devices left in "
                f"{keys.VGPU_DEVICES_TO_ALLOCATE})"
            )
        names = ", ".join(sorted(_key(p) for p in pods))
        raise AllocationError(
            f"{len(pods)} pods on node {self.node_name} are waiting for GPU allocation ({names}) and none "
            "holds the node lock; refusing to guess which one the kubelet is admitting"
        )

    async def preferred_cards(self, size: int) -> list[str] | None:
        pod = await self.find_pod()
        entries = decode_pod_devices(_ann(pod).get(keys.VGPU_DEVICES_TO_ALLOCATE, ""))
        first = next((e for e in entries if e), ())
        return [d.uuid for d in first] or None

    # ---- Allocate -------------------------------------------------------------------------

    async def allocate(self, request: api_pb2.AllocateRequest) -> api_pb2.AllocateResponse:
        async with self._lock:
            pod = await self.find_pod()
            try:
                resp = await self._allocate_pod(pod, request)
            except AllocationError as e:
                await self._mark_failed(pod, str(e))
                raise
            except (KubeError, DeviceSourceError, ProtocolError, OSError) as e:
                msg = f"allocating GPUs for pod {_key(pod)} failed: {e}"
                await self._mark_failed(pod, msg)
                raise AllocationError(msg) from e
            return resp

    async def _allocate_pod(self, pod: Obj, request: api_pb2.AllocateRequest) -> api_pb2.AllocateResponse:
        ann = _ann(pod)
        raw = ann.get(keys.VGPU_DEVICES_TO_ALLOCATE, "")
        try:
            entries = decode_pod_devices(raw)
        except ProtocolError as e:
            raise AllocationError(
                f"pod {_key(pod)}: bad {keys.VGPU_DEVICES_TO_ALLOCATE} annotation: {e}"
            ) from e
        try:
            migs = decode_mig_allocations(ann.get(keys.VGPU_MIG_ALLOCATIONS, ""))
        except ProtocolError as e:
            raise AllocationError(f"pod {_key(pod)}: bad {keys.VGPU_MIG_ALLOCATIONS} annotation: {e}") from e
        containers = pod_containers(pod)
        inventory = {d.uuid: d for d in self._devices()}
        resp = api_pb2.AllocateResponse()
        created: list[MigInstance] = []
        mig_changed = False
        try:
            for creq in request.container_requests:
                idx = next((i for i, e in enumerate(entries) if e), None)
                if idx is None:
                    raise AllocationError(
                        f"pod {_key(pod)}: no container has devices left in {keys.VGPU_DEVICES_TO_ALLOCATE}"
                    )
                devs = entries[idx]
                if idx >= len(containers):
                    raise AllocationError(
                        f"pod {_key(pod)}: {keys.VGPU_DEVICES_TO_ALLOCATE} entry {idx} has no matching container"
                    )
                ctr = containers[idx]
                if len(devs) != len(creq.devices_ids):
                    raise AllocationError(
                        f"pod {_key(pod)} container {ctr.get('name')!r}: device number not matched: the kubelet "
                        f"asked for {len(creq.devices_ids)}, the scheduler assigned {len(devs)}"
                    )
                for d in devs:
                    phys = inventory.get(d.uuid)
                    if phys is None:
                        raise AllocationError(
                            f"pod {_key(pod)}: card {d.uuid} is not on node {self.node_name}"
                        )
                    if not phys.healthy:
                        raise AllocationError(f"pod {_key(pod)}: card {d.uuid} is unhealthy")
                ctr_migs = sorted((a for a in migs if a.container_index == idx), key=lambda a: a.device_index)
                modes = {inventory[d.uuid].mode for d in devs}
                if ctr_migs or MIG in modes:
                    car, migs, new = await self._mig_response(pod, idx, devs, ctr_migs, migs)
                    created += new
                    mig_changed = mig_changed or bool(new)
                elif modes == {MPS}:
                    car = self._mps_response(devs)
                else:
                    car = await self._hami_core_response(pod, ctr, devs)
                resp.container_responses.append(car)
                entries[idx] = ()
            await self._commit(pod, raw, entries, migs if mig_changed else None)
        except BaseException:
            for inst in created:
                try:
                    await asyncio.to_thread(
                        self.source.destroy_mig_instance, inst.gpu_uuid, inst.gpu_instance_id
                    )
                except Exception as e:
                    log.error(
                        "could not roll back MIG instance %s on %s: %s", inst.mig_uuid, inst.gpu_uuid, e
                    )
            raise
        if not _remaining(entries) and not _other_vendors_pending(_ann(pod)):
            await self._release_lock(pod)
        return resp

    async def _commit(
        self, pod: Obj, raw: str, entries: list[ContainerDevices], migs: list[MigAllocation] | None
    ) -> None:
        """One patch: erased to-allocate (+ MIG runtime ids, + success); retried while unchanged."""
        ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        patch: dict[str, str] = {keys.VGPU_DEVICES_TO_ALLOCATE: encode_pod_devices(entries)}
        if migs is not None:
            patch[keys.VGPU_MIG_ALLOCATIONS] = encode_mig_allocations(migs)
        if not _remaining(entries) and not _other_vendors_pending(_ann(pod)):
            patch[keys.BIND_PHASE] = keys.BIND_PHASE_SUCCESS
        current = pod
        for _ in range(5):
            rv = current["metadata"].get("resourceVersion")
            try:
                # the label lets the monitor select this node's pods; the extender may not have set it
                meta = {"annotations": patch, "labels": {keys.VGPU_NODE: self.node_name}}
                await self.kube.patch_pod(ns, name, {"metadata": meta}, resource_version=rv)
                return
            except ConflictError:
                current = await self.kube.get_pod(ns, name)
                if _ann(current).get(keys.VGPU_DEVICES_TO_ALLOCATE, "") != raw:
                    raise AllocationError(
                        f"pod {_key(pod)}: {keys.VGPU_DEVICES_TO_ALLOCATE} changed during allocation"
                    ) from None
        raise AllocationError(f"pod {_key(pod)}: could not update annotations (conflicts)")

    # ---- responses ------------------------------------------------------------------------

    def _opt_out_allowed(self, pod: Obj) -> bool:
        return (pod.get("metadata") or {}).get("namespace") in self.settings.enforcement_opt_out_namespaces

    def _core_policy(self) -> str:
        """The configured policy (`disableCoreLimit` means `disable`)."""
        if self.settings.disable_core_limit:
            return "disable"
        return self.settings.gpu_core_policy or "default"

    def _priority(self, ctr: Obj) -> str | None:
        res = ctr.get("resources") or {}
        for section in ("limits", "requests"):
            value = (res.get(section) or {}).get(self.settings.priority_resource_name)
            if value is not None:
                return str(value)
        return None

    async def _hami_core_response(
        self, pod: Obj, ctr: Obj, devs: ContainerDevices
    ) -> api_pb2.ContainerAllocateResponse:
        s = self.settings
        vgpu = vgpu_dir(s.hook_path)
        car = api_pb2.ContainerAllocateResponse()
        env = car.envs
        env[keys.ENV_VISIBLE_DEVICES] = ",".join(d.uuid for d in devs)
        # Per card as well as plain: the shim prefers CUDA_DEVICE_SM_LIMIT_<i>, so a plain
        # CUDA_DEVICE_SM_LIMIT from the container's envFrom (invisible at admission) changes nothing.
        for i, d in enumerate(devs):
            env[f"{keys.ENV_MEMORY_LIMIT}_{i}"] = f"{d.usedmem}m"
            env[f"{keys.ENV_SM_LIMIT}_{i}"] = str(d.usedcores)
        env[keys.ENV_SM_LIMIT] = str(devs[0].usedcores)
        env[keys.ENV_SHARED_CACHE] = f"{vgpu}/{self._new_cache_id()}.cache"
        env[keys.ENV_LOG_LEVEL] = s.libcuda_log_level
        if s.memory_scaling > 1:
            env[keys.ENV_OVERSUBSCRIBE] = "true"
        priority = self._priority(ctr)
        if priority is not None:
            env[keys.ENV_TASK_PRIORITY] = priority
        # Enforcement: the kubelet hands the runtime the device plugin's env *and* the container's,
        # so both opt-out variables are always set explicitly, and the preload mount (the part a
        # container cannot override) is dropped only where the configuration allows opting out.
        policy = self._core_policy()
        want = opt_out_request(ctr)
        allowed = self._opt_out_allowed(pod)
        denied: list[str] = []
        if want.disable_control and not allowed:
            denied.append(keys.ENV_DISABLE_CONTROL)
        if want.core_policy_off and policy != "disable":
            if allowed:
                policy = "disable"
            else:
                denied.append(f"{keys.ENV_CORE_POLICY}=disable")
        if denied:
            await self._event(
                pod,
                "EnforcementOptOutDenied",
                f"container {ctr.get('name')!r}: {' and '.join(denied)} ignored: namespace is not in "
                "hami.enforcementOptOutNamespaces",
                warning=True,
            )
        disable_control = allowed and want.disable_control_literal
        if allowed and want.disable_control and not disable_control:
            log.info(
                "pod %s container %r: %s from valueFrom cannot be read here; enforcement stays on",
                _key(pod),
                ctr.get("name"),
                keys.ENV_DISABLE_CONTROL,
            )
        if not disable_control:
            env[keys.ENV_DISABLE_CONTROL] = "false"
        env[keys.ENV_CORE_POLICY] = policy
        uid = (pod.get("metadata") or {}).get("uid", "")
        cache_dir = f"{vgpu}/containers/{uid}_{ctr.get('name')}"
        if self._make_dirs:
            await asyncio.to_thread(_make_cache_dir, cache_dir)
        library = f"{vgpu}/{LIBRARY_NAME}"
        car.mounts.add(container_path=library, host_path=library, read_only=True)
        car.mounts.add(container_path=vgpu, host_path=cache_dir, read_only=False)
        car.mounts.add(container_path="/tmp/vgpulock", host_path="/tmp/vgpulock", read_only=False)
        if not disable_control:
            car.mounts.add(
                container_path="/etc/ld.so.preload", host_path=f"{vgpu}/{PRELOAD_NAME}", read_only=True
            )
        driver = self.source.driver_edits([d.uuid for d in devs])
        for k, v in driver.env.items():
            env.setdefault(k, v)
        for container_path, host_path in driver.mounts:
            car.mounts.add(container_path=container_path, host_path=host_path, read_only=True)
        return car

    def _mps_response(self, devs: ContainerDevices) -> api_pb2.ContainerAllocateResponse:
        s = self.settings
        car = api_pb2.ContainerAllocateResponse()
        car.envs[keys.ENV_VISIBLE_DEVICES] = ",".join(d.uuid for d in devs)
        if 0 < devs[0].usedcores < 100:
            car.envs[ENV_MPS_THREADS] = str(devs[0].usedcores)
        limits = [f"{i}={d.usedmem}M" for i, d in enumerate(devs) if d.usedmem > 0]
        if limits:
            car.envs[ENV_MPS_MEM_LIMIT] = ",".join(limits)
        car.envs[ENV_MPS_PIPE] = s.mps_pipe_dir
        car.envs[ENV_MPS_LOG] = s.mps_log_dir
        car.mounts.add(container_path=s.mps_pipe_dir, host_path=s.mps_pipe_dir, read_only=False)
        car.mounts.add(container_path=s.mps_log_dir, host_path=s.mps_log_dir, read_only=False)
        return car

    async def _mig_response(
        self,
        pod: Obj,
        idx: int,
        devs: ContainerDevices,
        ctr_migs: list[MigAllocation],
        migs: list[MigAllocation],
    ) -> tuple[api_pb2.ContainerAllocateResponse, list[MigAllocation], list[MigInstance]]:
        if [a.device_index for a in ctr_migs] != list(range(len(devs))):
            raise AllocationError(
                f"pod {_key(pod)}: {keys.VGPU_MIG_ALLOCATIONS} has {len(ctr_migs)} entries for container "
                f"{idx}, expected one per device (0..{len(devs) - 1})"
            )
        existing = {
            (i.gpu_uuid, i.gpu_instance_id): i
            for i in await asyncio.to_thread(self.source.list_mig_instances)
        }
        created: list[MigInstance] = []
        uuids: list[str] = []
        out = list(migs)
        for a, d in zip(ctr_migs, devs, strict=True):
            if a.gpu_uuid != d.uuid:
                raise AllocationError(
                    f"pod {_key(pod)}: MIG allocation of container {idx} device {a.device_index} is on "
                    f"{a.gpu_uuid}, the device annotation says {d.uuid}"
                )
            have = existing.get((a.gpu_uuid, a.gpu_instance_id)) if a.gpu_instance_id is not None else None
            if a.mig_uuid and have is not None and have.mig_uuid == a.mig_uuid:
                uuids.append(a.mig_uuid)
                continue
            try:
                inst = await asyncio.to_thread(
                    self.source.create_mig_instance,
                    a.gpu_uuid,
                    a.profile,
                    MigPlacement(a.placement_start, a.placement_size),
                )
            except DeviceSourceError as e:
                for c in created:
                    await asyncio.to_thread(self.source.destroy_mig_instance, c.gpu_uuid, c.gpu_instance_id)
                raise AllocationError(f"pod {_key(pod)}: {e}") from e
            created.append(inst)
            uuids.append(inst.mig_uuid)
            out[out.index(a)] = replace(
                a,
                mig_uuid=inst.mig_uuid,
                gpu_instance_id=inst.gpu_instance_id,
                compute_instance_id=inst.compute_instance_id,
            )
        car = api_pb2.ContainerAllocateResponse()
        car.envs[keys.ENV_VISIBLE_DEVICES] = ",".join(uuids)
        return car, out, created

    # ---- failure / lock -------------------------------------------------------------------

    async def _event(self, pod: Obj, reason: str, message: str, *, warning: bool = False) -> None:
        try:
            await self.kube.pod_event(pod, reason, message, warning=warning)
        except Exception as e:
            log.info("could not record event %s on %s: %s", reason, _key(pod), e)

    async def _mark_failed(self, pod: Obj, message: str) -> None:
        log.error("%s", message)
        ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        try:
            await self.kube.patch_pod(
                ns, name, {"metadata": {"annotations": {keys.BIND_PHASE: keys.BIND_PHASE_FAILED}}}
            )
        except Exception as e:
            log.error("could not set %s=failed on %s: %s", keys.BIND_PHASE, _key(pod), e)
        await self._event(pod, "GPUAllocationFailed", message, warning=True)
        await self._release_lock(pod)

    async def _release_lock(self, pod: Obj) -> None:
        """Remove the node lock if this pod (or a legacy, ownerless lock) holds it."""
        ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        for _ in range(self._lock_release_attempts):
            try:
                await release_node_lock(
                    self.kube, self.node_name, ns, name, codec=NvidiaBackend.node_lock, attempts=1
                )
                return
            except ConflictError:
                continue
            except KubeError as e:
                log.warning("releasing node lock of %s failed: %s", _key(pod), e)
                await asyncio.sleep(0.1)
        log.error("could not release node lock on %s held by %s", self.node_name, _key(pod))

    # ---- MIG reconciliation -----------------------------------------------------------------

    async def reconcile_mig(self) -> list[MigInstance]:
        """Destroy MIG instances on MIG-mode cards that no live pod's allocation references.

        An instance is destroyed only when found unreferenced on two consecutive passes (an
        allocation in flight is never raced). Returns the destroyed instances.
        """
        async with self._lock:
            mig_cards = {d.uuid for d in self._devices() if d.mode == MIG}
            if not mig_cards:
                self._stale_mig = set()
                return []
            active: set[tuple[str, int]] = set()
            for pod in await self.kube.list_node_pods(self.node_name):
                if (pod.get("status") or {}).get("phase") in ("Succeeded", "Failed"):
                    continue
                try:
                    allocs = decode_mig_allocations(_ann(pod).get(keys.VGPU_MIG_ALLOCATIONS, ""))
                except ProtocolError as e:
                    log.error("MIG reconcile skipped: pod %s has a bad MIG annotation: %s", _key(pod), e)
                    return []
                active |= {(a.gpu_uuid, a.gpu_instance_id) for a in allocs if a.gpu_instance_id is not None}
            instances = await asyncio.to_thread(self.source.list_mig_instances)
            stale = {
                (i.gpu_uuid, i.gpu_instance_id): i
                for i in instances
                if i.gpu_uuid in mig_cards and (i.gpu_uuid, i.gpu_instance_id) not in active
            }
            doomed = [i for k, i in stale.items() if k in self._stale_mig]
            self._stale_mig = set(stale) - {(i.gpu_uuid, i.gpu_instance_id) for i in doomed}
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

    async def run_mig_reconciler(self, interval: float = 5.0) -> None:
        while True:
            try:
                await self.reconcile_mig()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("MIG reconcile failed: %s", e)
            await asyncio.sleep(interval)


def _make_cache_dir(path: str) -> None:
    os.makedirs(path, exist_ok=True)
    # The container's user is unknown; the directory is mounted into this container only.
    os.chmod(path, 0o777)
