"""The web UI's seeded control plane: raw objects from :mod:`hami.testing.webuiseed` stored in a
real API server, and a real ``hami monitor`` reporting live usage for some of their containers.

* :func:`store` creates Nodes (registration annotations, then allocatable and Ready through the
  status subresource), Pods (bound ones get phase Running through the status subresource, as a
  kubelet would report) and ResourceQuotas;
* :func:`live_monitor` runs :class:`hami.monitor.runner.Monitor` in-process for one node, with a
  shared region in libvgpu's layout per container (held open as a running process would), and
  yields its metrics port.

Used by the integration tier (tests/integration/test_webui_browser.py) and by ``make screenshots``.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hami.kube.client import KubeClient
from hami.kube.paths import api_path
from hami.kube.poll import poll_until
from hami.monitor.runner import Monitor, MonitorSettings
from hami.protocol import bodies
from hami.testing.regions import FakeDevice, FakeProcess, FakeRegion, SlotHolder, write_region

MiB = 1 << 20


async def store_node(client: KubeClient, node: dict[str, Any]) -> dict[str, Any]:
    body = {k: v for k, v in node.items() if k != "status"}
    body["metadata"] = {k: v for k, v in node["metadata"].items() if k != "uid"}
    await client.create(api_path("v1", "nodes"), body)
    return await client.patch(
        api_path("v1", "nodes", name=bodies.name(node), subresource="status"),
        {"status": node.get("status") or {}},
        content_type="application/strategic-merge-patch+json",
    )


async def store_pod(client: KubeClient, pod: dict[str, Any], namespace: str | None = None) -> dict[str, Any]:
    """Create the pod (in ``namespace``, else its own); a bound one is then reported Running."""
    ns = namespace or bodies.namespace(pod) or "default"
    meta = {k: v for k, v in pod["metadata"].items() if k not in ("uid", "namespace")}
    created = await client.create(
        api_path("v1", "pods", namespace=ns), {**pod, "metadata": meta, "status": {}}
    )
    phase = (pod.get("status") or {}).get("phase")
    if bodies.node_name(pod) and phase == "Running":
        created = await client.patch(
            api_path("v1", "pods", namespace=ns, name=bodies.name(pod), subresource="status"),
            {"status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]}},
            content_type="application/strategic-merge-patch+json",
        )
    return created


async def ensure_namespace(client: KubeClient, name: str) -> None:
    existing = await client.list(api_path("v1", "namespaces"), field_selector=f"metadata.name={name}")
    if not existing.get("items"):
        await client.create(api_path("v1", "namespaces"), {"metadata": {"name": name}})


async def store(
    client: KubeClient,
    nodes: Sequence[dict[str, Any]],
    pods: Sequence[dict[str, Any]],
    quotas: Sequence[dict[str, Any]] = (),
) -> dict[str, dict[str, Any]]:
    """Store everything; returns the created pods by ``namespace/name`` (with their real uids)."""
    for node in nodes:
        await store_node(client, node)
    for ns in sorted({bodies.namespace(o) or "default" for o in (*pods, *quotas)}):
        await ensure_namespace(client, ns)
    created = {}
    for pod in pods:
        created[bodies.pod_key(pod)] = await store_pod(client, pod)
    for quota in quotas:
        await client.create(api_path("v1", "resourcequotas", namespace=bodies.namespace(quota)), quota)
    return created


@dataclass(frozen=True)
class LiveContainer:
    """One container's live use of one card, as its shared region will say."""

    pod_uid: str
    container: str
    card: str
    limit_mib: int
    used_mib: int
    util_percent: int = 0


@asynccontextmanager
async def live_monitor(
    client: KubeClient, node: str, containers: Sequence[LiveContainer], hook: Path
) -> AsyncIterator[int]:
    """A real monitor for ``node`` reading one live region per container; yields its metrics port."""
    with SlotHolder() as holder:
        for c in containers:
            region_dir = hook / "vgpu" / "containers" / f"{c.pod_uid}_{c.container}"
            region_dir.mkdir(parents=True)
            path = str(region_dir / "r.cache")
            write_region(
                path,
                FakeRegion(
                    devices=[
                        FakeDevice(
                            c.card,
                            limit=c.limit_mib * MiB,
                            used=c.used_mib * MiB,
                            util_x100=c.util_percent * 100,
                        )
                    ],
                    processes=[FakeProcess(pid=os.getpid(), used=[c.used_mib * MiB])],
                ),
            )
            holder.hold(path, [0])
        settings = MonitorSettings(
            node_name=node,
            hook_path=str(hook),
            metrics_host="127.0.0.1",
            metrics_port=0,
            nvml=False,
            feedback_interval=None,
            gc_grace=3600,
        )
        monitor = Monitor(settings, client)
        stop = asyncio.Event()
        task = asyncio.create_task(monitor.run(stop))

        async def port() -> int | None:
            if task.done():
                task.result()  # the monitor failed: say why
            return monitor.metrics_port

        try:
            yield await poll_until(port, timeout=30)
        finally:
            stop.set()
            await task
