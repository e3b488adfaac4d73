"""The lock-free allocation mode (`allocation mode: cdi`): no node lock, the container found at
PreStartContainer through the kubelet's PodResources API, its devices handed over as a CDI spec.

Allocate answers, for each container, only the CDI device `hami.io/vgpu=<hash of its replica
IDs>` (`cdi`): it neither waits for nor reads the node lock, so binds to one node need not queue.
The plugin registers with `pre_start_required`; the kubelet calls PreStartContainer with the
container's IDs just before it asks the runtime to create the container, and the runtime resolves
the CDI device then. PreStart finds the one pod whose containers hold the IDs in PodResources
(`podresources`) — or, for a regular init container with no later container sharing its IDs
(PodResources never lists those), the one pod the kubelet's device checkpoint names
(`kubeletcheckpoint`) — and the one container of it that is starting (`startorder`), reads that
container's cards from the scheduler's `hami.io/vgpu-devices-allocated` (index = its position, init
containers first), builds its edits exactly as the Allocate path does (`PodAllocator.container_edits`:
hami-core, MPS, MIG with instances created here) and writes the CDI spec (`cdi.SpecStore`).

Guarantees:
 * never a guess: IDs no pod holds (in PodResources or the kubelet's checkpoint), IDs two pods
   hold, a pod whose status cannot tell which of its containers is starting (after a bounded
   wait for the status to catch up), a missing or unreadable decision, or a card this node does
   not have fail PreStart with a gRPC error whose message names the IDs and what PodResources or
   the annotations said; where the pod is known it gets `bind-phase=failed` and a `GPUAllocationFailed` event;
 * no memory across restarts: everything PreStart needs comes from PodResources and the device
   checkpoint (the kubelet keeps both across its own restarts) and the API, and the CDI name from
   the IDs, so a new plugin instance serves a PreStart for an Allocate the old one answered;
   every (re)start of a container rewrites its spec;
 * no API request on success when the scheduler bound lock-free (`bind-phase=success` already)
   and the node's pod cache (a watch of the node's pods, `KubeOps.cached_pod`) has the pod whose
   UID the kubelet's device checkpoint records for the IDs; otherwise one GET of the pod;
   a pod bound the lock way (`bind-phase=allocating`, node lock taken) gets, after its first
   successful PreStart, one patch (to-allocate emptied, `success`) and its node lock released, so
   lock-mode binds to this node complete too;
 * `collect` removes the spec files of allocations neither PodResources nor the checkpoint reports
   (`SpecStore.collect`).
"""

from __future__ import annotations

import asyncio
import contextlib
import copy
import logging
import time
from pathlib import Path

from hami.deviceplugin import kubeletcheckpoint
from hami.deviceplugin.allocate import PodAllocator
from hami.deviceplugin.api import api_pb2
from hami.deviceplugin.cdi import SpecStore, device_name, qualified_name
from hami.deviceplugin.kubeops import Obj, patch_pod_with_retry
from hami.deviceplugin.mig import destroy_all
from hami.deviceplugin.podresources import (
    PodHolding,
    PodResourcesClient,
    PodResourcesError,
    describe,
    holders_text,
    live_id_sets,
    pods_holding,
)
from hami.deviceplugin.podresources_api import api_pb2 as pr_pb2
from hami.deviceplugin.preferred import card_of
from hami.deviceplugin.server import AllocationError
from hami.deviceplugin.settings import MIG
from hami.deviceplugin.sources.base import DeviceSourceError
from hami.deviceplugin.startorder import Ambiguous, starting_container
from hami.kube.errors import KubeError, NotFoundError
from hami.protocol import bodies, keys
from hami.protocol.errors import ProtocolError
from hami.protocol.pod import decode_mig_allocations, decode_pod_devices, encode_mig_allocations

log = logging.getLogger(__name__)


class LockFreeAllocator:
    """`Allocator` of the lock-free mode (see module doc), around a `PodAllocator` for the edits,
    the API writes and the MIG lock."""

    pre_start_required = True

    def __init__(
        self,
        core: PodAllocator,
        pod_resources: PodResourcesClient,
        store: SpecStore,
        *,
        status_wait: float = 20.0,
        poll: float = 0.25,
        checkpoint: Path | None = None,
    ) -> None:
        self.core = core
        self.pod_resources = pod_resources
        self.store = store
        #: The kubelet's device checkpoint (`kubeletcheckpoint`): who holds IDs PodResources does
        #: not show (regular init containers followed by no container asking for the resource).
        self.checkpoint = checkpoint
        #: How long PreStart waits for a pod's status to show which container is starting (the
        #: kubelet allows PreStartContainer 30 s).
        self.status_wait = status_wait
        self.poll = poll

    @property
    def resource(self) -> str:
        return self.core.settings.resource_name

    async def preferred_cards(self, size: int) -> list[str] | None:
        """No hint: which pod is being admitted is unknown until PreStart (the cards come from the
        decision annotation, whatever replica IDs the kubelet picks)."""
        return None

    async def allocate(self, request: api_pb2.AllocateRequest) -> api_pb2.AllocateResponse:
        resp = api_pb2.AllocateResponse()
        for creq in request.container_requests:
            car = resp.container_responses.add()
            car.cdi_devices.add(name=qualified_name(creq.devices_ids))
        return resp

    async def prestart(self, device_ids: list[str]) -> None:
        """Write the CDI spec of the container starting with `device_ids` (see module doc)."""
        ids = sorted(device_ids)
        if not ids:
            raise AllocationError("PreStartContainer carried no device IDs")
        pod, idx = await self._identify(ids)
        try:
            await self._prepare(pod, idx, ids)
        except AllocationError as e:
            await self.core.writer.mark_failed(pod, str(e))
            raise
        except (KubeError, DeviceSourceError, ProtocolError, OSError) as e:
            msg = f"preparing GPUs for pod {bodies.pod_key(pod)} failed: {e}"
            await self.core.writer.mark_failed(pod, msg)
            raise AllocationError(msg) from e
        if bodies.annotations(pod).get(keys.BIND_PHASE) == keys.BIND_PHASE_ALLOCATING:
            await self._finish_lock_bind(pod)

    # ---- which container -----------------------------------------------------------------

    async def _list(self) -> pr_pb2.ListPodResourcesResponse:
        try:
            return await self.pod_resources.list()
        except PodResourcesError as e:
            raise AllocationError(str(e)) from e

    async def _identify(self, ids: list[str]) -> tuple[Obj, int]:
        """The pod and the index (init containers first) of the container starting with `ids`."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.status_wait
        while True:
            resp = await self._list()
            holdings = pods_holding(resp, self.resource, ids)
            if not holdings:
                holding, pod = await self._from_checkpoint(ids, resp)
            elif len(holdings) > 1:
                msg = (
                    f"device IDs {ids} are held by {len(holdings)} pods in the kubelet's PodResources API "
                    f"({holders_text(holdings)}); refusing to guess which container is starting"
                )
                for h in holdings:
                    with contextlib.suppress(AllocationError):
                        await self.core.writer.mark_failed(await self._get_pod(h, ids), msg)
                raise AllocationError(msg)
            else:
                holding = holdings[0]
                pod = await self._get_pod(holding, ids)
            choice = starting_container(pod, holding.exact, self.resource, len(ids))
            if isinstance(choice, str):
                names = [c.get("name") for c in bodies.pod_containers(pod)]
                return pod, names.index(choice)
            msg = (
                f"pod {holding.key}: cannot tell which container is starting with device IDs {ids}: "
                f"{choice.reason} (PodResources: {holders_text(holdings) or 'nothing'})"
            )
            if isinstance(choice, Ambiguous) or loop.time() >= deadline:
                await self.core.writer.mark_failed(pod, msg)
                raise AllocationError(msg)
            log.info("%s; reading the pod again", msg)
            await asyncio.sleep(self.poll)

    async def _checkpoint_entries(self) -> list[kubeletcheckpoint.Entry]:
        if self.checkpoint is None:
            return []
        try:
            return await asyncio.to_thread(kubeletcheckpoint.read, self.checkpoint)
        except kubeletcheckpoint.CheckpointError as e:
            raise AllocationError(f"the kubelet's device checkpoint: {e}") from e

    async def _node_pods(self, what: str) -> dict[str, Obj]:
        """This node's pods that are not finished (their containers may still start), by UID. The
        kubelet rewrites its checkpoint only when it allocates, so it can still name deleted pods."""
        try:
            pods = await self.core.kube.list_node_pods(self.core.settings.node_name)
        except KubeError as e:
            raise AllocationError(f"{what}: listing this node's pods failed: {e}") from e
        return {
            bodies.uid(p): p
            for p in pods
            if (p.get("status") or {}).get("phase") not in ("Succeeded", "Failed")
            and not (p.get("metadata") or {}).get("deletionTimestamp")
        }

    async def _from_checkpoint(
        self, ids: list[str], resp: pr_pb2.ListPodResourcesResponse
    ) -> tuple[PodHolding, Obj]:
        """The pod whose regular init containers hold `ids` by the kubelet's checkpoint (PodResources
        listed nobody): exactly one live pod of this node, or an error."""
        recorded = kubeletcheckpoint.holders(await self._checkpoint_entries(), self.resource, ids)
        if not recorded:
            raise AllocationError(
                f"device IDs {ids}: no pod holds them in the kubelet's PodResources API (it reports: "
                f"{describe(resp, self.resource)}) nor in its device checkpoint; refusing to guess which "
                "container is starting"
            )
        live = await self._node_pods(f"device IDs {ids}")
        uids = {uid: names for uid, names in recorded.items() if uid in live}
        if not uids:
            raise AllocationError(
                f"device IDs {ids}: the kubelet's device checkpoint records them for pod UIDs "
                f"{sorted(recorded)}, none of them a live pod of node {self.core.settings.node_name}"
            )
        if len(uids) > 1:
            raise AllocationError(
                f"device IDs {ids} are held by {len(uids)} pods in the kubelet's device checkpoint "
                f"(UIDs {sorted(uids)}); refusing to guess which container is starting"
            )
        [(uid, containers)] = uids.items()
        pod = live[uid]
        return PodHolding(bodies.namespace(pod) or "", bodies.name(pod), containers, ()), pod

    async def _get_pod(self, holding: PodHolding, ids: list[str]) -> Obj:
        """The pod holding `ids`: the node's pod cache's copy when the kubelet's device checkpoint
        records `ids` for that copy's UID (so it is this pod, not an older one of the same name),
        else a read from the API."""
        cached = self.core.kube.cached_pod(holding.namespace, holding.name)
        if cached is not None:
            try:
                recorded = kubeletcheckpoint.holders(await self._checkpoint_entries(), self.resource, ids)
            except AllocationError as e:
                log.info("pod %s: reading it from the API: %s", holding.key, e)
                recorded = {}
            if set(recorded) == {bodies.uid(cached)}:
                return copy.deepcopy(cached)
        try:
            return await self.core.kube.get_pod(holding.namespace, holding.name)
        except NotFoundError as e:
            raise AllocationError(
                f"device IDs {ids}: pod {holding.key}, which holds them in PodResources, is not in the API"
            ) from e
        except KubeError as e:
            raise AllocationError(f"device IDs {ids}: reading pod {holding.key} failed: {e}") from e

    # ---- what it gets ----------------------------------------------------------------------

    async def _prepare(self, pod: Obj, idx: int, ids: list[str]) -> None:
        key = bodies.pod_key(pod)
        ctr_name = bodies.pod_containers(pod)[idx].get("name")
        ann = bodies.annotations(pod)
        raw = ann.get(keys.VGPU_DEVICES_ALLOCATED, "")
        if not raw:
            raise AllocationError(
                f"pod {key}: no {keys.VGPU_DEVICES_ALLOCATED} annotation (the scheduler's decision) for "
                f"container {ctr_name!r} starting with device IDs {ids}"
            )
        try:
            entries = decode_pod_devices(raw)
            migs = decode_mig_allocations(ann.get(keys.VGPU_MIG_ALLOCATIONS, ""))
        except ProtocolError as e:
            raise AllocationError(f"pod {key}: bad decision annotation: {e}") from e
        devs = entries[idx] if idx < len(entries) else ()
        if len(devs) != len(ids):
            raise AllocationError(
                f"pod {key} container {ctr_name!r}: {keys.VGPU_DEVICES_ALLOCATED} assigns it {len(devs)} "
                f"device(s), the kubelet allocated {len(ids)} ({ids})"
            )
        inventory = {d.uuid: d for d in self.core.devices()}
        unknown = [i for i in ids if card_of(i) not in inventory]
        if unknown:
            raise AllocationError(f"pod {key} container {ctr_name!r}: unknown device IDs {unknown}")
        needs_mig = any(a.container_index == idx for a in migs) or any(
            inventory[d.uuid].mode == MIG for d in devs if d.uuid in inventory
        )
        async with self.core.lock if needs_mig else contextlib.nullcontext():
            # the region is named after the allocation: a restarted container finds its own again
            edits, migs, created = await self.core.container_edits(
                pod, idx, devs, migs, inventory, cache_id=device_name(ids)
            )
            try:
                if created:
                    patch = {
                        "metadata": {"annotations": {keys.VGPU_MIG_ALLOCATIONS: encode_mig_allocations(migs)}}
                    }
                    ns, name = bodies.namespace(pod) or "", bodies.name(pod)
                    await patch_pod_with_retry(self.core.kube, ns, name, lambda _cur: patch, current=pod)
                await asyncio.to_thread(self.store.write, device_name(ids), edits)
            except BaseException:
                await destroy_all(self.core.source, created)
                raise
        log.info("pod %s container %r: CDI spec %s written", key, ctr_name, device_name(ids))

    async def _finish_lock_bind(self, pod: Obj) -> None:
        """A lock-mode bind: empty to-allocate, `success`, release the lock (best effort: the
        container already has its spec)."""
        try:
            raw = bodies.annotations(pod).get(keys.VGPU_DEVICES_TO_ALLOCATE, "")
            entries = [() for _ in decode_pod_devices(raw)]
            await self.core.writer.commit(pod, raw, list(entries), None)
            await self.core.writer.release_lock(pod)
        except (AllocationError, KubeError, ProtocolError) as e:
            # a concurrent PreStart of another container of the pod may have done it already
            log.info("pod %s: completing its lock-mode bind: %s", bodies.pod_key(pod), e)

    # ---- spec garbage collection ---------------------------------------------------------

    async def collect(self) -> list[str]:
        """Remove the spec files of allocations neither PodResources nor the kubelet's device
        checkpoint (for a live pod of this node: a regular init container's IDs are only there)
        reports. An unreadable checkpoint or pod list skips the pass: a spec kept too long harms
        nobody, one removed too early fails a container start."""
        taken = time.time()
        resp = await self.pod_resources.list()
        live = {device_name(ids) for ids in live_id_sets(resp, self.resource)}
        present = set(await asyncio.to_thread(self.store.names))
        try:
            entries = await self._checkpoint_entries()
            if any(device_name(e.ids) in present - live for e in entries if e.resource == self.resource):
                pods = await self._node_pods("CDI spec collection")
                kept = [e for e in entries if e.pod_uid in pods]
                live |= {device_name(ids) for ids in kubeletcheckpoint.id_sets(kept, self.resource)}
        except AllocationError as e:
            log.warning("CDI spec collection skipped: %s", e)
            return []
        removed = await asyncio.to_thread(self.store.collect, live, taken)
        for name in removed:
            log.info("removed CDI spec %s: its allocation is gone", name)
        return removed

    async def run_collector(self, interval: float = 30.0) -> None:
        """`collect` every `interval` seconds until cancelled; a failed pass is logged."""
        while True:
            await asyncio.sleep(interval)
            try:
                await self.collect()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("CDI spec collection failed: %s", e)
