"""Assembles the extender: API client, node and pod informers, leader election, HTTP(S) server."""

from __future__ import annotations

import asyncio
import gc
import logging
import os
import socket
import ssl
import uuid
from dataclasses import dataclass, field
from typing import Any, TypedDict

from aiohttp import web

from hami import cliutil
from hami.config import DeviceConfig
from hami.devices.registry import default_registry
from hami.extender.devicepreempt import DevicePreemptor
from hami.extender.dra import DraSteering
from hami.extender.handshake import HandshakeWriter
from hami.extender.leasefollow import LeaseFollower
from hami.extender.metrics import Metrics
from hami.extender.nodelock import NodeLocker
from hami.extender.reservations import Reservations
from hami.extender.server import make_app, make_ops_app
from hami.extender.service import ExtenderService, owner_alive_from
from hami.extender.sync import LedgerSync
from hami.kube.client import KubeClient
from hami.kube.config import KubeConfig
from hami.kube.informer import Informer, start_synced
from hami.kube.leader import LeaderElector
from hami.kube.paths import api_path
from hami.protocol import bodies, keys
from hami.protocol.dra import RESOURCE_API
from hami.protocol.nodelock import HAMI_NODE_LOCK, NodeLockCodec
from hami.scheduling.decide import Scheduler

log = logging.getLogger(__name__)


@dataclass
class ExtenderSettings:
    host: str = "127.0.0.1"
    port: int = 8080
    #: ``/metrics``, ``/healthz`` and ``/readyz`` on their own address, served from before the caches
    #: sync (None: only on the extender's port); port 0 picks a free one (see ``Extender.metrics_port``)
    metrics_host: str | None = None
    metrics_port: int | None = None
    cert_file: str | None = None
    key_file: str | None = None
    device_config: DeviceConfig = field(default_factory=DeviceConfig.default)
    node_policy: str | None = None
    gpu_policy: str | None = None
    node_lock_expiry: float | None = None
    bind_lock_wait: float = 20.0
    leader_elect: bool = False
    #: instead of electing, lead while the kube-scheduler in this pod holds *its* Lease
    #: (``lease_namespace``/``lease_name`` then name kube-scheduler's Lease; see leasefollow.py)
    follow_scheduler_lease: bool = False
    lease_holder_prefix: str = field(default_factory=socket.gethostname)
    lease_namespace: str = "kube-system"
    lease_name: str = "hami-scheduler-extender"
    lease_duration: float = 15.0
    renew_deadline: float = 10.0
    retry_period: float = 2.0
    identity: str = field(default_factory=lambda: default_identity())
    sync_timeout: float = 120.0
    #: write the decision annotations on the pod at filter time (HAMi's behaviour); when False only
    #: the Binding carries them, which saves one API write per pod
    annotate_at_filter: bool = True
    #: > 0: a node with this many pods decided but not yet allocated is tried after all others, so
    #: a binpack burst does not queue every bind on one node lock (0 = plain policy order)
    bind_queue_limit: int = 0
    #: also export HAMi's pre-2.10 scheduler metric names (``--legacy-metrics``)
    legacy_metrics: bool = False
    #: preempt lower-priority pods through the Eviction API when only card resources are short
    #: (:mod:`hami.extender.devicepreempt`; the chart's ``scheduler.preemption.enabled``)
    device_preemption: bool = True
    #: DRA mode: watch ResourceSlices and ResourceClaims (``resource.k8s.io/v1``) into the ledger
    #: and serve ``/dra/filter`` and ``/dra/prioritize`` (``--dra``)
    dra: bool = False
    #: how often the vendors' node handshakes (``hami.io/node-handshake-<x>``) are answered (HAMi: 15 s)
    handshake_interval: float = 15.0


class _Lease(TypedDict):
    namespace: str
    name: str


class Extender:
    """The running service. ``await start()``, then ``url``; ``await stop()`` to shut down."""

    def __init__(self, kube_config: KubeConfig, settings: ExtenderSettings) -> None:
        self.settings = settings
        cfg = settings.device_config
        sched_cfg = cfg.hami.scheduler
        self.client = KubeClient(kube_config)
        self.scheduler = Scheduler(
            default_registry(cfg),
            node_policy=settings.node_policy or sched_cfg.node_scheduler_policy,
            gpu_policy=settings.gpu_policy or sched_cfg.gpu_scheduler_policy,
        )
        #: what this process decided and the API server does not show yet: written by the
        #: service's filter and bind, read and settled by the sync's pod events
        self.reservations: Reservations[asyncio.Task[None]] = Reservations()
        self.sync = LedgerSync(
            self.scheduler, scheduler_name=cfg.hami.scheduler_name, reservations=self.reservations
        )
        self.nodes = Informer(
            self.client,
            api_path("v1", "nodes"),
            on_add=self._node_changed,
            on_update=self._node_updated,
            on_delete=self._node_deleted,
            name="nodes",
        )
        self.pods = Informer(
            self.client,
            api_path("v1", "pods"),
            on_add=self.sync.pod_changed,
            on_update=lambda _old, new: self.sync.pod_changed(new),
            on_delete=self._pod_deleted,
            name="pods",
        )
        #: namespace device quota (``limits.<memory|cores resource>`` of each ResourceQuota)
        self.quotas = Informer(
            self.client,
            api_path("v1", "resourcequotas"),
            on_add=self.sync.quota_changed,
            on_update=lambda _old, new: self.sync.quota_changed(new),
            on_delete=self.sync.quota_deleted,
            name="resourcequotas",
        )
        #: DRA mode: slices and claims into the same ledger, and the DRA pods' verbs
        self.dra: DraSteering | None = None
        self.claims: Informer | None = None
        self.slices: Informer | None = None
        if settings.dra:
            split = cfg.nvidia.device_split_count
            self.claims = Informer(
                self.client,
                api_path(RESOURCE_API, "resourceclaims"),
                on_add=self._claim_changed,
                on_update=lambda _old, new: self._claim_changed(new),
                on_delete=self._claim_deleted,
                name="resourceclaims",
            )
            self.dra = DraSteering(self.scheduler, self.claims.get, split=split)
            self.sync.on_forget.append(self.dra.pod_gone)
            self.slices = Informer(
                self.client,
                api_path(RESOURCE_API, "resourceslices"),
                on_add=self.dra.slice_changed,
                on_update=lambda _old, new: self._slice_changed(new),
                on_delete=self._slice_deleted,
                name="resourceslices",
            )
        if settings.leader_elect and settings.follow_scheduler_lease:
            raise ValueError("leader_elect and follow_scheduler_lease are exclusive")
        lease = _Lease(namespace=settings.lease_namespace, name=settings.lease_name)
        #: with --follow-scheduler-lease: leads while kube-scheduler in this pod holds its Lease
        self.follower: LeaseFollower | None = (
            LeaseFollower(
                self.client, **lease, holder_prefix=settings.lease_holder_prefix, poll=settings.retry_period
            )
            if settings.follow_scheduler_lease
            else None
        )
        #: with --leader-elect: an election of its own among the extender replicas
        self.elector: LeaderElector | None = (
            LeaderElector(
                self.client,
                **lease,
                identity=settings.identity,
                lease_duration=settings.lease_duration,
                renew_deadline=settings.renew_deadline,
                retry_period=settings.retry_period,
            )
            if settings.leader_elect
            else None
        )
        expiry = (
            settings.node_lock_expiry
            if settings.node_lock_expiry is not None
            else float(sched_cfg.node_lock_timeout_seconds)
        )

        def locker(codec: NodeLockCodec) -> NodeLocker:
            return NodeLocker(
                self.client,
                expiry=expiry,
                wait=settings.bind_lock_wait,
                owner_alive=lambda ns, name: owner_alive_from(self._pod, self.client, ns, name),
                node_lookup=self.nodes.get,
                codec=codec,
            )

        self.locker = locker(self.scheduler.registry.node_lock() or HAMI_NODE_LOCK)
        #: one locker per other lock key the configured vendors use (Cambricon's dsmlu lock)
        codecs = {c.key: c for c in self.scheduler.registry.node_locks().values()}
        self.lockers = [locker(c) for k, c in codecs.items() if k != self.locker.codec.key]
        self.service = ExtenderService(
            scheduler=self.scheduler,
            sync=self.sync,
            client=self.client,
            locker=self.locker,
            lockers=self.lockers,
            pod_lookup=self._pod,
            node_lookup=self.nodes.get,
            is_leader=self._is_leader,
            is_synced=self._is_synced,
            scheduler_name=cfg.hami.scheduler_name,
            annotate_at_filter=settings.annotate_at_filter,
            bind_queue_limit=settings.bind_queue_limit,
        )
        #: HAMi's scheduler side of the vendors' node handshake (leader only)
        self.handshakes = HandshakeWriter(
            self.client,
            self.scheduler.registry,
            self.nodes.values,
            is_leader=self._is_leader,
            interval=settings.handshake_interval,
        )
        self.metrics = Metrics(
            self.scheduler.state,
            pods=self.pods.values,
            scheduler_name=cfg.hami.scheduler_name,
            legacy=settings.legacy_metrics,
        )
        #: device-only preemption (None with ``device_preemption=False``)
        self.preemptor = self._preemptor() if settings.device_preemption else None
        self._runner: web.AppRunner | None = None
        self._ops_runner: web.AppRunner | None = None
        self.port = settings.port
        self.metrics_port = settings.metrics_port

    def _preemptor(self) -> DevicePreemptor:
        preemptor = DevicePreemptor(
            scheduler=self.scheduler,
            reservations=self.reservations,
            client=self.client,
            pod_lookup=self._pod,
            is_leader=self._is_leader,
            scheduler_name=self.settings.device_config.hami.scheduler_name,
            on_outcome=self.metrics.preempted,
        )
        self.sync.on_pod.append(preemptor.pod_event)
        self.sync.on_forget.append(preemptor.pod_forgotten)
        self.service.on_unschedulable = preemptor.filter_failed
        return preemptor

    def _node_changed(self, node: dict[str, Any]) -> None:
        self.sync.node_changed(node)
        if self.dra is not None:
            self.dra.node_refreshed(node)

    def _all_lockers(self) -> list[NodeLocker]:
        return [self.locker, *self.lockers]

    def _node_updated(self, _old: dict[str, Any], new: dict[str, Any]) -> None:
        self._node_changed(new)
        for lk in self._all_lockers():
            lk.node_changed(bodies.name(new))

    def _slice_changed(self, slice_: dict[str, Any]) -> None:
        assert self.dra is not None
        self.dra.slice_changed(slice_)

    def _slice_deleted(self, slice_: dict[str, Any]) -> None:
        assert self.dra is not None
        self.dra.slice_deleted(slice_)

    def _claim_changed(self, claim: dict[str, Any]) -> None:
        assert self.dra is not None
        self.dra.claim_changed(claim)

    def _claim_deleted(self, claim: dict[str, Any]) -> None:
        assert self.dra is not None
        self.dra.claim_deleted(claim)

    def _node_deleted(self, node: dict[str, Any]) -> None:
        self.sync.node_deleted(node)
        for lk in self._all_lockers():
            lk.node_changed(bodies.name(node))

    def _pod_deleted(self, pod: dict[str, Any]) -> None:
        self.sync.pod_deleted(pod)
        node = bodies.node_name(pod)
        if node and self._is_leader():
            allocating = bodies.annotations(pod).get(keys.BIND_PHASE) == keys.BIND_PHASE_ALLOCATING
            for lk in self._all_lockers():
                lk.owner_deleted(
                    str(node), bodies.namespace(pod) or "default", bodies.name(pod), allocating=allocating
                )

    def _pod(self, namespace: str, name: str) -> dict[str, Any] | None:
        return self.pods.get(f"{namespace}/{name}")

    def _is_leader(self) -> bool:
        if self.elector is not None:
            return self.elector.is_leader
        if self.follower is not None:
            return self.follower.is_leader
        return True

    def _is_synced(self) -> bool:
        extra = [i for i in (self.slices, self.claims) if i is not None]
        return (
            self.nodes.has_synced
            and self.pods.has_synced
            and self.quotas.has_synced
            and all(i.has_synced for i in extra)
        )

    @property
    def url(self) -> str:
        scheme = "https" if self.settings.cert_file else "http"
        return f"{scheme}://{self.settings.host}:{self.port}"

    async def _start_ops(self) -> None:
        if self.settings.metrics_port is None:
            return
        host = self.settings.metrics_host or "0.0.0.0"
        self._ops_runner = web.AppRunner(make_ops_app(self.service, self.metrics), access_log=None)
        await self._ops_runner.setup()
        await web.TCPSite(self._ops_runner, host, self.settings.metrics_port).start()
        self.metrics_port = int(self._ops_runner.addresses[0][1])
        log.info("hami scheduler metrics and probes on %s:%d", host, self.metrics_port)

    async def start(self) -> None:
        await self._start_ops()
        # quotas after the pods: a namespace's first limit counts the pods already in the ledger;
        # slices before claims: a claim's devices resolve against the slices already seen
        await start_synced(
            (self.nodes, self.pods, self.quotas, self.slices, self.claims), timeout=self.settings.sync_timeout
        )
        # The caches are large and long-lived; the default thresholds make the collector walk them
        # every few thousand allocations, which shows up as multi-millisecond /filter pauses.
        gc.collect()
        gc.freeze()
        gc.set_threshold(50_000, 20, 100)
        if self.elector is not None:
            self.elector.start()
        if self.follower is not None:
            self.follower.start()
        ssl_ctx: ssl.SSLContext | None = None
        if self.settings.cert_file:
            ssl_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ssl_ctx.load_cert_chain(self.settings.cert_file, self.settings.key_file)
        self._runner = web.AppRunner(make_app(self.service, self.metrics, self.dra), access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, self.settings.host, self.settings.port, ssl_context=ssl_ctx)
        await site.start()
        if self.settings.port == 0:
            for addr in self._runner.addresses:
                self.port = int(addr[1])
        self.handshakes.start()
        log.info(
            "hami scheduler extender listening on %s (%d nodes, %d pods cached)",
            self.url,
            len(self.scheduler.state.nodes),
            len(self.pods),
        )

    async def stop(self) -> None:
        await self.handshakes.stop()
        for runner in (self._runner, self._ops_runner):
            if runner is not None:
                await runner.cleanup()
        self._runner = self._ops_runner = None
        if self.elector is not None:
            await self.elector.stop()
        if self.follower is not None:
            await self.follower.stop()
        if self.preemptor is not None:
            await self.preemptor.stop()
        for informer in (self.claims, self.slices):
            if informer is not None:
                await informer.stop()
        await self.quotas.stop()
        await self.pods.stop()
        await self.nodes.stop()
        await self.client.close()

    async def run_forever(self) -> None:
        """Start and serve until cancelled; everything started is stopped, also when start fails midway."""
        await cliutil.serve_until_cancelled(self.start, self.stop)


def default_identity() -> str:
    return os.environ.get("POD_NAME") or f"{socket.gethostname()}_{uuid.uuid4().hex[:8]}"
