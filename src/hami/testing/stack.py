"""A hami control-plane stack for e2e tests and benchmarks: extender in-process + kube-scheduler + fake node agent."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from typing import Any

from hami.config import DeviceConfig
from hami.devices.registry import default_registry
from hami.extender.runner import Extender, ExtenderSettings
from hami.extender.schedulerconfig import scheduler_configuration
from hami.kube.client import KubeClient
from hami.kube.config import KubeConfig
from hami.kube.paths import api_path
from hami.kube.poll import poll_until
from hami.protocol import bodies, keys
from hami.protocol.node import decode_node_devices
from hami.protocol.pod import decode_pod_devices
from hami.testing.controlplane import SchedulerHandle, free_port
from hami.testing.gpucluster import AllocationCompleter


def extender_scheduler_config(
    url: str, *, preempt: bool = False, dra: bool = False, device_config: DeviceConfig | None = None
) -> dict[str, Any]:
    """kube-scheduler's configuration with hami's extender entry pointing at ``url`` (managedResources
    from ``device_config``, None: HAMi's default). Without ``preempt`` DefaultPreemption looks at no
    candidate node, so it never finds victims."""
    cfg = scheduler_configuration(
        extender_url=url, registry=default_registry(device_config), preempt=preempt, dra=dra
    )
    if not preempt:
        cfg["profiles"][0]["pluginConfig"] = [
            {"name": "DefaultPreemption", "args": {"minCandidateNodesAbsolute": 0}}
        ]
    return cfg


class Stack:
    def __init__(
        self,
        kube_config: KubeConfig,
        start_scheduler: Callable[..., SchedulerHandle],
        *,
        lock_expiry: float = 60.0,
        completer: bool = True,
    ) -> None:
        """``completer=False`` runs without the :class:`AllocationCompleter`: pods stay in bind-phase
        ``allocating`` holding the node lock until a device plugin's Allocate (or the test) completes
        them (see :class:`hami.testing.pluginnode.PluginNode`)."""
        self.kube_config = kube_config
        self.start_scheduler = start_scheduler
        self.port = free_port()
        self.lock_expiry = lock_expiry
        self.use_completer = completer
        self.extender: Extender | None = None
        self.completer: AllocationCompleter | None = None
        self.kube_scheduler: SchedulerHandle | None = None

    annotate_at_filter: bool = True
    bind_queue_limit: int = 0
    #: register hami's ``preemptVerb`` with kube-scheduler, with DefaultPreemption at its defaults
    preempt: bool = False
    #: the extender's device-only preemption (on by default, as in the chart)
    device_preemption: bool = True
    #: DRA mode: the extender watches slices and claims, kube-scheduler gets the DRA extender entry
    dra: bool = False
    #: more kube-scheduler flags (DRA mode: :data:`hami.testing.dra.DRA_GATES`)
    scheduler_args: tuple[str, ...] = ()
    #: the extender's device config and kube-scheduler's managedResources (None: HAMi's default)
    device_config: DeviceConfig | None = None

    def _settings(self) -> ExtenderSettings:
        return ExtenderSettings(
            host="127.0.0.1",
            port=self.port,
            device_config=self.device_config or DeviceConfig.default(),
            node_lock_expiry=self.lock_expiry,
            bind_lock_wait=20.0,
            annotate_at_filter=self.annotate_at_filter,
            bind_queue_limit=self.bind_queue_limit,
            device_preemption=self.device_preemption,
            dra=self.dra,
        )

    async def start_extender(self) -> Extender:
        self.extender = Extender(self.kube_config, self._settings())
        await self.extender.start()
        return self.extender

    async def stop_extender(self) -> None:
        if self.extender is not None:
            await self.extender.stop()
            self.extender = None

    async def __aenter__(self) -> Stack:
        await self.start_extender()
        if self.use_completer:
            self.completer = AllocationCompleter(KubeClient(self.kube_config))
            await self.completer.start()
        cfg = extender_scheduler_config(
            f"http://127.0.0.1:{self.port}",
            preempt=self.preempt,
            dra=self.dra,
            device_config=self.device_config,
        )
        self.kube_scheduler = await asyncio.to_thread(
            self.start_scheduler, cfg, extra_args=self.scheduler_args
        )
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self.kube_scheduler is not None:
            self.kube_scheduler.stop()
        if self.completer is not None:
            await self.completer.stop()
            await self.completer.client.close()
        await self.stop_extender()


async def wait_for(predicate: Callable[[], Any], *, timeout: float, interval: float = 0.25) -> Any:
    """:func:`hami.kube.poll.poll_until` for tests: a timeout is an AssertionError."""
    try:
        return await poll_until(predicate, timeout=timeout, interval=interval)
    except TimeoutError as exc:
        raise AssertionError(str(exc)) from None


async def list_pods(client: KubeClient, namespace: str) -> list[dict[str, Any]]:
    out = await client.get(api_path("v1", "pods", namespace=namespace))
    items: list[dict[str, Any]] = out.get("items") or []
    return items


async def assert_no_overcommit(
    client: KubeClient, namespace: str | Sequence[str], nodes: list[str]
) -> dict[str, list[int]]:
    """From API objects only: on every card, the bound, non-terminated pods' allocations (in
    ``namespace``, or each of several) fit its capacity — slots, memory, cores — and a card given
    whole (100 % of its cores) holds that one pod. Returns ``[slots, MiB, cores]`` per card uuid."""
    capacity: dict[str, tuple[int, int, int]] = {}
    for name in nodes:
        node = await client.get(api_path("v1", "nodes", name=name))
        for d in decode_node_devices(node["metadata"]["annotations"][keys.NODE_NVIDIA_REGISTER]):
            capacity[d.id] = (d.count, d.devmem, d.devcore)
    pods: list[dict[str, Any]] = []
    for ns in [namespace] if isinstance(namespace, str) else namespace:
        pods.extend(await list_pods(client, ns))
    usage: dict[str, list[int]] = {}
    whole: dict[str, str] = {}
    for pod in pods:
        if not bodies.node_name(pod) or bodies.phase(pod) in ("Succeeded", "Failed"):
            continue
        value = bodies.annotations(pod).get(keys.VGPU_DEVICES_ALLOCATED, "")
        for container in decode_pod_devices(value):
            for dev in container:
                u = usage.setdefault(dev.uuid, [0, 0, 0])
                u[0] += 1
                u[1] += dev.usedmem
                u[2] += dev.usedcores
                if dev.usedcores >= 100:
                    whole[dev.uuid] = bodies.name(pod)
    for uuid, (slots, mem, cores) in usage.items():
        assert uuid in capacity, f"pod allocated unknown card {uuid}"
        cap = capacity[uuid]
        assert slots <= cap[0] and mem <= cap[1] and cores <= cap[2], (
            f"card {uuid} over-committed: {usage[uuid]} > {cap}"
        )
        assert uuid not in whole or slots == 1, (
            f"card {uuid} given whole to {whole[uuid]} is shared: {slots} pods"
        )
    return usage
