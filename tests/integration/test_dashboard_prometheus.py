"""Every dashboard panel against a real Prometheus, without a cluster.

The Prometheus that ``hack/build-prometheus.sh`` builds scrapes, every second, the scheduler's
metrics (:class:`hami.extender.metrics.Metrics` over a ledger with a card, a pod, a namespace quota
and a waiting pod) and the node monitor's (:class:`hami.monitor.metrics.MonitorCollector` over a
synthetic region of a running process, with host cards and a MIG instance), each served over HTTP
here. Every target of every panel of charts/hami/dashboards/hami.json must return a series: here
nothing is missing, not even what the real-node sandbox cannot show (NVML, MIG, kernels).
"""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, HTTPServer
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from prometheus_client import CollectorRegistry, generate_latest

from hami.devices.base import Card, Placement
from hami.devices.hooks import QuotaNames
from hami.extender.metrics import Metrics
from hami.monitor.cards import CardReader, HostCard
from hami.monitor.layout import PodDirectory
from hami.monitor.metrics import MonitorCollector
from hami.protocol import keys
from hami.protocol.pod import ContainerDevice
from hami.scheduling.state import ClusterState, PodAllocation
from hami.testing.prereq import missing
from hami.testing.prometheus import PrometheusMissingError, dashboard_queries, find_prometheus
from hami.testing.regions import FakeDevice, FakeProcess, FakeRegion, SlotHolder, write_region
from hami.testing.stack import wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BOARD = ROOT / "charts" / "hami" / "dashboards" / "hami.json"
MiB, GiB = 1 << 20, 1 << 30
UID = "0b8a4f8e-1111-2222-3333-444455556666"
CARD = "GPU-00000000-0000-0000-0000-000000000000"
NOW_NS = 50 * 10**9


class Cards(CardReader):
    def read(self) -> list[HostCard]:
        return [HostCard(0, CARD, "NVIDIA A100", 40 * GiB, 5 * GiB, 37.0, 12.0)]


def scheduler_registry() -> CollectorRegistry:
    s = ClusterState()
    s.quota.set_vendor(keys.VENDOR_NVIDIA, QuotaNames("nvidia.com/gpumem", "nvidia.com/gpucores", 1))
    s.set_node(
        "n1",
        [
            Card(
                uuid=CARD,
                vendor="NVIDIA",
                type="NVIDIA-A100",
                count=10,
                totalmem=40960,
                totalcores=100,
                index=0,
            )
        ],
    )
    dev = ContainerDevice(uuid=CARD, type="NVIDIA", usedmem=2048, usedcores=30)
    s.add_pod(
        PodAllocation(
            uid=UID, namespace="team", name="pa", node="n1",
            containers={keys.VENDOR_NVIDIA: [(Placement(device=dev),)]}, init_count=0,
        )
    )  # fmt: skip
    s.set_quota("team", "gpu", {"limits.nvidia.com/gpumem": "8000"})
    waiting = {
        "spec": {"schedulerName": "hami-scheduler"},
        "status": {
            "phase": "Pending",
            "conditions": [
                {"type": "PodScheduled", "status": "False", "reason": "Unschedulable", "message": "1/1 CardInsufficientMemory"}
            ],
        },
    }  # fmt: skip
    m = Metrics(s, pods=lambda: [waiting], scheduler_name="hami-scheduler")
    m.filter_results.labels("scheduled").inc()
    m.bind_results.labels("ok").inc()
    m.filter_seconds.observe(0.004)
    m.bind_seconds.observe(0.02)
    return m.registry


@pytest.fixture
def monitor_registry(tmp_path: Path) -> Iterator[CollectorRegistry]:
    root = tmp_path / "containers"
    (root / f"{UID}_main").mkdir(parents=True)
    region = str(root / f"{UID}_main" / "x.cache")
    device = FakeDevice(
        CARD, limit=2 * GiB, used=700 * MiB, ctx_overhead=100 * MiB, sm_limit=30, util_x100=2500
    )
    write_region(
        region,
        FakeRegion(devices=[device], processes=[FakeProcess(1, [500 * MiB])], last_kernel_ns=NOW_NS - 10**9),
    )
    mig = [{"containerIndex": 0, "deviceIndex": 0, "gpuUUID": CARD, "profile": "1g.10gb", "placement": {"start": 0, "size": 1},
            "migUUID": "MIG-1", "gpuInstanceID": 7, "computeInstanceID": 0}]  # fmt: skip
    pods = PodDirectory()
    pods.add(
        {
            "metadata": {"uid": UID, "name": "pa", "namespace": "team",
                         "annotations": {"hami.io/vgpu-mig-allocations": json.dumps(mig)}},
            "spec": {"containers": [{"name": "main"}]},
        }
    )  # fmt: skip
    reg = CollectorRegistry()
    reg.register(MonitorCollector(str(root), "n1", pods, Cards(), monotonic_ns=lambda: NOW_NS))
    with SlotHolder() as holder:
        holder.hold(region, [0])
        yield reg


def _serve(reg: CollectorRegistry) -> tuple[HTTPServer, int]:
    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            body = generate_latest(reg)
            self.send_response(200)
            self.send_header("Content-Type", "text/plain; version=0.0.4")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *_a: Any) -> None:
            pass

    server = HTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, int(server.server_address[1])


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_every_panel_has_series(tmp_path: Path, monitor_registry: CollectorRegistry) -> None:
    try:
        binary = find_prometheus() / "prometheus"
    except PrometheusMissingError as exc:
        missing(str(exc))
    sched, sched_port = _serve(scheduler_registry())
    mon, mon_port = _serve(monitor_registry)
    config = tmp_path / "prometheus.yml"
    config.write_text(
        "global: {scrape_interval: 1s, scrape_timeout: 1s}\nscrape_configs:\n"
        f"  - job_name: hami-scheduler\n    static_configs: [{{targets: ['127.0.0.1:{sched_port}']}}]\n"
        f"  - job_name: hami-monitor\n    static_configs: [{{targets: ['127.0.0.1:{mon_port}']}}]\n"
    )
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with (tmp_path / "prometheus.log").open("w") as log:
        proc = subprocess.Popen(
            [str(binary), f"--config.file={config}", f"--storage.tsdb.path={tmp_path / 'data'}",
             f"--web.listen-address=127.0.0.1:{port}", "--log.level=warn"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    try:
        async with aiohttp.ClientSession() as http:

            async def query(expr: str) -> list[Any]:
                async with http.get(f"{url}/api/v1/query", params={"query": expr}) as r:
                    body = await r.json()
                assert body["status"] == "success", (expr, body)
                return list(body["data"]["result"])

            async def scraped() -> bool:
                try:
                    return len(await query("up == 1")) == 2 and bool(
                        await query("hami_vgpu_memory_used_bytes")
                    )
                except aiohttp.ClientError:
                    return False

            await wait_for(scraped, timeout=60, interval=0.5)
            await asyncio.sleep(3)  # a few samples for rate() and avg_over_time()
            empty = [(q.panel, q.ref, q.expr) for q in dashboard_queries(BOARD) if not await query(q.expr)]
            assert not empty, empty
            (used,) = await query('hami_resource_quota_used{namespace="team"}')
            assert used["value"][1] == "2048"
    finally:
        proc.terminate()
        proc.wait(timeout=20)
        sched.shutdown()
        mon.shutdown()
