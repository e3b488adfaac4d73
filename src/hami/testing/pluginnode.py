"""A fake GPU node served by the real device plugin, for e2e tests on a real API server.

:class:`PluginNode` creates a Node object (no HAMi annotations), runs a :class:`FakeKubelet` and a
:class:`~hami.deviceplugin.agent.NodeAgent` over a :class:`FakeSource` YAML file, with the agent
talking to the API server (``ClientKubeOps``): the plugin itself writes
``hami.io/node-nvidia-register``. The harness plays the kubelet's part: it copies the plugin's
ListAndWatch device count into the Node's allocatable ``nvidia.com/gpu`` and marks the node Ready,
and :meth:`PluginNode.admit` admits a pod the way the kubelet's device manager does
(``pkg/kubelet/cm/devicemanager/manager.go``, v1.34) — for every container (init containers first)
that asks for ``nvidia.com/gpu``: IDs from the pod's reuse pool first, then GetPreferredAllocation
(when the plugin offers it and IDs are still needed) over the free healthy replica IDs plus the
reused ones (which it must include), then one Allocate per container over the plugin's unix
socket. The reuse pool is the kubelet's ``devicesToReuse``: the IDs of a finished init container
go back to the pod, so the containers after it are handed the *same* IDs; a native sidecar
(``restartPolicy: Always``) or an app container takes its IDs out of the pool again. The pool
belongs to one pod: admitting another pod drops it.
"""

from __future__ import annotations

import asyncio
import contextlib
import shutil
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hami.deviceplugin.agent import NodeAgent
from hami.deviceplugin.api import api_pb2
from hami.deviceplugin.kubeops import ClientKubeOps, KubeOps
from hami.deviceplugin.settings import NodeSettings
from hami.deviceplugin.sources.fake import FakeSource
from hami.kube.client import KubeClient
from hami.kube.paths import api_path
from hami.protocol import bodies, keys
from hami.testing.kubelet import FakeKubelet, PluginClient


@dataclass
class Admission:
    """What the kubelet got for one container."""

    container: str
    device_ids: list[str]  # the replica IDs the kubelet asked for
    preferred: list[str] | None  # GetPreferredAllocation's answer (None when not offered)
    response: api_pb2.ContainerAllocateResponse

    @property
    def envs(self) -> dict[str, str]:
        return dict(self.response.envs)

    @property
    def mounts(self) -> dict[str, tuple[str, bool]]:
        """container path -> (host path, read only)."""
        return {m.container_path: (m.host_path, m.read_only) for m in self.response.mounts}


def _gpu_count(container: Mapping[str, Any], resource: str) -> int:
    res = container.get("resources") or {}
    for section in ("limits", "requests"):
        value = (res.get(section) or {}).get(resource)
        if value is not None:
            return int(value)
    return 0


class PluginNode:
    """One Node object whose GPUs are registered and allocated by a real NodeAgent.

    ``kube`` is the agent's API access (default: :class:`ClientKubeOps` over ``client``); a test
    may pass one that acts between the plugin's calls.
    """

    def __init__(
        self,
        client: KubeClient,
        name: str,
        fake_node: str | Path,
        *,
        labels: dict[str, str] | None = None,
        hook_path: str | Path | None = None,
        kube: KubeOps | None = None,
        agent_client: KubeClient | None = None,
        **settings: Any,
    ) -> None:
        """``client`` plays the kubelet (creates the Node, writes its status); the device plugin
        talks to the API server through ``agent_client`` (default: ``client``), e.g. as the
        plugin's own ServiceAccount."""
        self.client = client
        self.name = name
        self.fake_node = Path(fake_node)
        self.labels = {"gpu": "on", **(labels or {})}
        # unix socket paths are limited to 108 bytes: keep the plugin dir short
        self.plugin_dir = Path(tempfile.mkdtemp(prefix="hdp", dir="/tmp"))
        self.hook_path = Path(hook_path) if hook_path is not None else self.plugin_dir / "hook"
        settings.setdefault("enable_preferred_allocation", True)
        self.settings = NodeSettings(node_name=name, hook_path=str(self.hook_path), **settings)
        self.source = FakeSource.from_file(self.fake_node, node_name=name, poll_interval=0.1)
        self.kubelet = FakeKubelet(self.plugin_dir)
        self.agent = NodeAgent(
            self.source,
            self.settings,
            kube=kube if kube is not None else ClientKubeOps(agent_client or client, host=name),
            plugin_dir=self.plugin_dir,
            watch_interval=0.1,
        )
        #: replica IDs handed to containers so far (the kubelet's own bookkeeping)
        self.assigned: set[str] = set()
        #: the kubelet's ``devicesToReuse``: (pod UID, IDs its finished init containers free)
        self._reuse: tuple[str, set[str]] = ("", set())

    @property
    def resource(self) -> str:
        return self.settings.resource_name

    @property
    def plugin(self) -> PluginClient:
        return self.kubelet.client(self.resource)

    async def start(self, timeout: float = 10.0) -> None:
        await self.client.create(
            api_path("v1", "nodes"),
            {"apiVersion": "v1", "kind": "Node", "metadata": {"name": self.name, "labels": self.labels}},
        )
        await self.kubelet.start()
        await self.agent.start()
        await self.kubelet.wait_for(lambda: bool(self.kubelet.devices.get(self.resource)), timeout)
        await self.sync_node_status()
        deadline = asyncio.get_running_loop().time() + timeout
        while keys.NODE_NVIDIA_REGISTER not in await self.annotations():
            if asyncio.get_running_loop().time() > deadline:
                raise AssertionError(f"the device plugin did not register node {self.name}")
            await asyncio.sleep(0.1)

    async def stop(self, *, delete_node: bool = True) -> None:
        with contextlib.suppress(Exception):
            await self.agent.stop()
        with contextlib.suppress(Exception):
            await self.kubelet.stop()
        shutil.rmtree(self.plugin_dir, ignore_errors=True)
        if delete_node:
            with contextlib.suppress(Exception):
                await self.client.delete(api_path("v1", "nodes", name=self.name))

    async def __aenter__(self) -> PluginNode:
        try:
            await self.start()
        except BaseException:
            await self.stop()
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def node(self) -> dict[str, Any]:
        node: dict[str, Any] = await self.client.get(api_path("v1", "nodes", name=self.name))
        return node

    async def annotations(self) -> dict[str, str]:
        return bodies.annotations(await self.node())

    def healthy_ids(self) -> list[str]:
        return sorted(i for i, h in self.kubelet.devices.get(self.resource, {}).items() if h == "Healthy")

    async def sync_node_status(self) -> None:
        """The kubelet's node status: capacity = every advertised replica, allocatable = healthy ones."""
        devices = self.kubelet.devices.get(self.resource, {})
        base = {"pods": "110", "cpu": "64", "memory": "256Gi"}
        status = {
            "status": {
                "capacity": {**base, self.resource: str(len(devices))},
                "allocatable": {**base, self.resource: str(len(self.healthy_ids()))},
                "conditions": [
                    {
                        "type": "Ready",
                        "status": "True",
                        "reason": "KubeletReady",
                        "lastHeartbeatTime": None,
                        "lastTransitionTime": None,
                    }
                ],
            }
        }
        await self.client.patch(
            api_path("v1", "nodes", name=self.name, subresource="status"),
            status,
            content_type="application/strategic-merge-patch+json",
        )

    async def allocate(
        self, count: int, container: str = "main", *, reusable: frozenset[str] = frozenset()
    ) -> Admission:
        """One container's admission, as the kubelet's ``devicesToAllocate``: IDs from `reusable`
        first; if more are needed, the preferred allocation (if offered) over the free IDs plus the
        reused ones, which it must include; then Allocate of `count` IDs."""
        ids = sorted(reusable)[:count]
        preferred: list[str] | None = None
        if len(ids) < count:
            free = [i for i in self.healthy_ids() if i not in self.assigned]
            needed = count - len(ids)
            if len(free) < needed:
                raise AssertionError(f"node {self.name}: {count} {self.resource} wanted, {len(free)} free")
            options = self.kubelet.options(self.resource)
            if options is not None and options.get_preferred_allocation_available:
                preferred = await self.plugin.preferred(sorted({*free, *ids}), count, must_include=ids)
            picked = [i for i in preferred or () if i in free][:needed]
            ids += picked + [i for i in free if i not in picked][: needed - len(picked)]
        resp = await self.plugin.allocate(ids)
        self.assigned |= set(ids)
        return Admission(container, ids, preferred, resp.container_responses[0])

    async def admit(self, namespace: str, name: str) -> list[Admission]:
        """Admit a pod bound to this node as the kubelet would (see the module doc); raises
        grpc.aio.AioRpcError when the plugin refuses a container."""
        pod = await self.client.get(api_path("v1", "pods", namespace=namespace, name=name))
        if bodies.node_name(pod) != self.name:
            raise AssertionError(f"pod {namespace}/{name} is not bound to {self.name}")
        uid = bodies.uid(pod)
        if self._reuse[0] != uid:
            self._reuse = (uid, set())
        reuse = self._reuse[1]
        out = []
        for kind, ctr in bodies.all_containers(pod):
            n = _gpu_count(ctr, self.resource)
            if n > 0:
                adm = await self.allocate(n, ctr["name"], reusable=frozenset(reuse))
                out.append(adm)
                if kind == "init":  # ran to completion: its cards go back
                    reuse |= set(adm.device_ids)
                else:
                    reuse -= set(adm.device_ids)
        return out
