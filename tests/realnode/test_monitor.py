"""The node monitor installed by the chart on real nodes, scraped through the API server.

``helm install charts/hami`` (the monitor is on by default; a short collection grace period); a
GPU pod runs the probe program (an unmodified CUDA driver-API client with ``libvgpu.so``
preloaded) and keeps half of its slice allocated. The monitor pod on the probe's node, scraped
through the API server's pod proxy, must report exactly that container's usage under HAMi's family
names and labels, and every node's monitor its own cards (fake-node-small: two Tesla T4 each)
through the fake NVML; the scheduler's families must show the same pod's allocation. Once the pod is
deleted, its series disappear and its region directory is removed from the node.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from realnode_chart import (
    HOLD,
    NAMESPACE,
    chart_installed,
    gpu_pod,
    probe_report,
    samples,
    scrape_metrics,
)

from hami.kube.client import KubeClient
from hami.kube.errors import KubeError
from hami.kube.paths import api_path
from hami.sandbox.cluster import Sandbox
from hami.testing.helm import Helm
from hami.testing.stack import wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
MiB = 1 << 20
SLICE_MIB = 3000
MONITOR_PORT, SCHEDULER_PORT = 9394, 9395


@pytest.fixture(scope="module")
def installed(sandbox: Sandbox) -> Iterator[Helm]:
    """The chart with the monitor on (and a short collection grace period)."""
    extra = {"monitor": {"extraArgs": ["--gc-grace=3", "--gc-interval=1"]}}
    with chart_installed(sandbox, extra) as helm:
        yield helm


async def _monitor_state(kc: KubeClient, node: str) -> str:
    """The monitor pod's status, log tail and what it serves, for a failure message."""
    pods = await kc.list(
        api_path("v1", "pods", namespace=NAMESPACE), label_selector="app.kubernetes.io/component=monitor"
    )
    parts = []
    for p in pods["items"]:
        if p["spec"].get("nodeName") != node:
            continue
        path = api_path("v1", "pods", namespace=NAMESPACE, name=p["metadata"]["name"])
        parts.append(f"phase {p['status'].get('phase')} {p['status'].get('containerStatuses')}")
        for what, url in (("log", f"{path}/log"), ("metrics", f"{path}:{MONITOR_PORT}/proxy/metrics")):
            try:
                text = await kc.get_text(url)
            except KubeError as exc:
                text = f"({exc})"
            parts.append(f"{what}: {text[-3000:]}")
    return "\n".join(parts) or "no monitor pod"


async def test_monitor_reports_what_the_probe_container_holds(
    leading: None, sandbox: Sandbox, kc: KubeClient, ns: str
) -> None:
    limits = {"nvidia.com/gpu": 1, "nvidia.com/gpumem": SLICE_MIB}
    await kc.create(api_path("v1", "pods", namespace=ns), gpu_pod("probe", limits, ["python3", "-c", HOLD]))
    seen = await probe_report(kc, ns, "probe")
    assert seen["alloc_half"] == 0 and seen["total_mib"] == SLICE_MIB, seen
    pod = await kc.get(api_path("v1", "pods", namespace=ns, name="probe"))
    node, uid, card = pod["spec"]["nodeName"], pod["metadata"]["uid"], seen["cards"][0]
    ident = {"zone": "vGPU", "namespace": ns, "pod": "probe", "container": "main"}
    dev = {**ident, "vdevice_index": "0", "device_uuid": card}

    async def monitored() -> dict[str, Any] | None:
        fams = await scrape_metrics(kc, "monitor", node, MONITOR_PORT)
        return fams if fams and samples(fams, "hami_vgpu_memory_used_bytes", **dev) else None

    try:
        fams: dict[str, Any] = await wait_for(monitored, timeout=180, interval=1)
    except AssertionError as exc:
        raise AssertionError(f"{exc}; the monitor on {node}: {await _monitor_state(kc, node)}") from None
    half = SLICE_MIB * MiB // 2
    (used,) = samples(fams, "hami_vgpu_memory_used_bytes", **dev)
    (limit,) = samples(fams, "hami_vgpu_memory_limit_bytes", **dev)
    (context,) = samples(fams, "hami_vgpu_memory_context_bytes", **dev)
    (buffer,) = samples(fams, "hami_vgpu_memory_buffer_bytes", **dev)
    assert limit.value == SLICE_MIB * MiB
    assert buffer.value == half, (used.value, context.value, buffer.value)  # the probe's half, exactly
    assert used.value == buffer.value + context.value
    assert samples(fams, "hami_container_device_memory_bytes", **dev)[0].value == used.value
    assert samples(fams, "hami_container_processes", **ident)[0].value == 1
    assert samples(fams, "hami_vgpu_memory_module_bytes", **dev)[0].value == 0
    for name in ("hami_container_device_utilization_ratio", "hami_vgpu_core_limit_ratio"):
        assert samples(fams, name, **dev), name
    assert (
        samples(fams, "hami_namespace_gpu_memory_used_bytes", namespace=ns, node=node)[0].value == used.value
    )
    assert samples(fams, "hami_monitor_regions", node=node, state="ok")[0].value >= 1
    assert samples(fams, "hami_build_info")
    # host families: every node's monitor reads its own node's cards through the (fake) NVML the
    # chart gave it (monitor.nvml), with HAMi's label set
    for n in sandbox.nodes:

        async def scraped(node: str = n.name) -> dict[str, Any] | None:
            return await scrape_metrics(kc, "monitor", node, MONITOR_PORT)

        node_fams: dict[str, Any] = await wait_for(scraped, timeout=60, interval=1)
        host = samples(node_fams, "hami_host_gpu_memory_used_bytes")
        assert {
            (s.labels["device_index"], s.labels["device_uuid"], s.labels["device_type"]) for s in host
        } == {(str(i), f"GPU-fake-{n.name}-{i}", "Tesla T4") for i in range(2)}, (n.name, host)
        for s in host:
            assert set(s.labels) == {"zone", "node", "device_index", "device_uuid", "device_type"}
            assert s.labels["node"] == n.name
        assert len(samples(node_fams, "hami_host_gpu_utilization_ratio", node=n.name)) == 2

    # the scheduler's view of the same pod
    sched = await wait_for(
        lambda: scrape_metrics(kc, "scheduler", None, SCHEDULER_PORT), timeout=60, interval=1
    )
    alloc = samples(sched, "hami_vgpu_memory_allocated_bytes", namespace=ns, pod="probe", device_uuid=card)
    assert [s.value for s in alloc] == [SLICE_MIB * MiB] and alloc[0].labels["node"] == node
    overview = samples(sched, "hami_node_gpu_overview", node=node, device_uuid=card)
    assert overview and overview[0].value >= SLICE_MIB * MiB

    # the pod goes: its series go, and its region directory is removed from the node
    await kc.request(
        "DELETE", api_path("v1", "pods", namespace=ns, name="probe"), params={"gracePeriodSeconds": 0}
    )
    regions = next(n for n in sandbox.nodes if n.name == node).state / "hook" / "vgpu" / "containers"
    assert (regions / f"{uid}_main").exists()

    async def forgotten() -> bool:
        fams = await scrape_metrics(kc, "monitor", node, MONITOR_PORT)
        return fams is not None and not samples(
            fams, "hami_vgpu_memory_used_bytes", pod="probe", namespace=ns
        )

    await wait_for(forgotten, timeout=120, interval=1)

    async def collected() -> bool:
        return not (regions / f"{uid}_main").exists()

    await wait_for(collected, timeout=120, interval=1)
