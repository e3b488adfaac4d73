"""Writing an Allocate's outcome to the API server: the commit, the failure mark, the node lock.

Guarantees:
 * success is one merge patch — the container's entry erased from
   `hami.io/vgpu-devices-to-allocate`, the MIG runtime identity when instances were created,
   `bind-phase=success` once the pod has no devices left (for any vendor) — sent with the
   resourceVersion it was computed from; a conflict re-reads the pod and retries only while
   the to-allocate annotation is unchanged, so a concurrent reassignment of the cards is never
   overwritten (the allocation fails instead);
 * failure sets `bind-phase=failed`, records a warning event and releases the node lock, and
   never raises (each step's error is logged);
 * the node lock is removed only when this pod (or a legacy, ownerless lock) holds it.
"""

from __future__ import annotations

import asyncio
import logging

from hami.deviceplugin.kubeops import KubeOps, Obj, patch_pod_with_retry
from hami.deviceplugin.server import AllocationError
from hami.devices.nvidia import NvidiaBackend
from hami.kube.errors import ConflictError, KubeError
from hami.kube.nodelock import release_node_lock
from hami.protocol import bodies, keys
from hami.protocol.pod import ContainerDevices, MigAllocation, encode_mig_allocations, encode_pod_devices

log = logging.getLogger(__name__)

#: Patches the commit sends before giving up on conflicts.
COMMIT_ATTEMPTS = 5


def other_vendors_pending(ann: dict[str, str]) -> bool:
    """Another vendor's `*-devices-to-allocate` still holds devices (multi-vendor pod): its device
    plugin sets the final bind-phase and releases the lock, as in HAMi's PodAllocationTrySuccess."""
    return any(
        k != keys.VGPU_DEVICES_TO_ALLOCATE and k.endswith("devices-to-allocate") and ":" in v
        for k, v in ann.items()
    )


def pod_complete(pod: Obj, entries: list[ContainerDevices]) -> bool:
    """No container of `pod` has devices left to allocate, for this plugin or any other vendor's."""
    return not any(entries) and not other_vendors_pending(bodies.annotations(pod))


class AllocationWriter:
    """The API writes of the Allocate path for one node."""

    def __init__(self, kube: KubeOps, node_name: str, *, lock_release_attempts: int = 5) -> None:
        self.kube = kube
        self.node_name = node_name
        self._lock_release_attempts = lock_release_attempts

    async def commit(
        self, pod: Obj, raw: str, entries: list[ContainerDevices], migs: list[MigAllocation] | None
    ) -> None:
        """One patch: erased to-allocate (+ MIG runtime ids, + success); retried while `raw` (the
        to-allocate value the allocation was computed from) is unchanged."""
        ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        patch: dict[str, str] = {keys.VGPU_DEVICES_TO_ALLOCATE: encode_pod_devices(entries)}
        if migs is not None:
            patch[keys.VGPU_MIG_ALLOCATIONS] = encode_mig_allocations(migs)
        if pod_complete(pod, entries):
            patch[keys.BIND_PHASE] = keys.BIND_PHASE_SUCCESS
        # the label lets the monitor select this node's pods; the extender may not have set it
        body = {"metadata": {"annotations": patch, "labels": {keys.VGPU_NODE: self.node_name}}}
        looks = 0

        def mutate(current: Obj) -> Obj:
            nonlocal looks
            looks += 1
            if bodies.annotations(current).get(keys.VGPU_DEVICES_TO_ALLOCATE, "") != raw:
                raise AllocationError(
                    f"pod {bodies.pod_key(pod)}: {keys.VGPU_DEVICES_TO_ALLOCATE} changed during allocation"
                )
            if looks > COMMIT_ATTEMPTS:  # the pod re-read after the last conflict, only to report
                raise AllocationError(f"pod {bodies.pod_key(pod)}: could not update annotations (conflicts)")
            return body

        await patch_pod_with_retry(self.kube, ns, name, mutate, current=pod, attempts=COMMIT_ATTEMPTS + 1)

    async def event(self, pod: Obj, reason: str, message: str, *, warning: bool = False) -> None:
        """Record an event on `pod`; a failure to do so is logged, never raised."""
        try:
            await self.kube.pod_event(pod, reason, message, warning=warning)
        except Exception as e:
            log.info("could not record event %s on %s: %s", reason, bodies.pod_key(pod), e)

    async def mark_failed(self, pod: Obj, message: str) -> None:
        """`bind-phase=failed`, a GPUAllocationFailed event, and the node lock released."""
        log.error("%s", message)
        ns, name = pod["metadata"]["namespace"], pod["metadata"]["name"]
        try:
            await self.kube.patch_pod(
                ns, name, {"metadata": {"annotations": {keys.BIND_PHASE: keys.BIND_PHASE_FAILED}}}
            )
        except Exception as e:
            log.error("could not set %s=failed on %s: %s", keys.BIND_PHASE, bodies.pod_key(pod), e)
        await self.event(pod, "GPUAllocationFailed", message, warning=True)
        await self.release_lock(pod)

    async def release_lock(self, pod: Obj) -> None:
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
                log.warning("releasing node lock of %s failed: %s", bodies.pod_key(pod), e)
                await asyncio.sleep(0.1)
        log.error("could not release node lock on %s held by %s", self.node_name, bodies.pod_key(pod))
