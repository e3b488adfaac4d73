"""The Grafana dashboard against a real Prometheus scraping the real-node sandbox.

``helm install charts/hami`` (the monitor is on by default) with the dashboard ConfigMap, on the
sandbox's simulated cards (examples/fake-sandbox.yaml: node1's four A100s in MIG mode, node2's two
T4s and an L4); each node's monitor reads that node's cards through the fake NVML, given to it as a
real node's monitor is given the host driver's (``monitor.nvml``). The namespace gets a
ResourceQuota on device memory; a GPU pod on node2 runs the probe program (it launches kernels,
then keeps half of its slice allocated), a second pod asks more memory than any card has (it waits,
unschedulable), and a pod on node1 (another namespace, outside the quota) gets a MIG instance. A
Prometheus built from the Go module proxy (``hack/build-prometheus.sh``; ``$HAMI_PROMETHEUS_BIN``)
runs on the host and scrapes the scheduler pod (:9395) and every monitor pod (:9394) at their pod
IPs (the sandbox's CNI bridges are reachable from the host) every second. Then every target of every
panel of charts/hami/dashboards/hami.json, run through ``/api/v1/query`` with the template
variables set to match everything, returns at least one series, and the values behind hami's own
panels are what the pods did.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import subprocess
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest
import yaml
from realnode_chart import HOLD, NAMESPACE, chart_installed, gpu_pod, probe_report, scratch_namespace

from hami.kube.client import KubeClient
from hami.kube.paths import api_path
from hami.sandbox.cluster import Sandbox
from hami.testing.helm import Helm
from hami.testing.prereq import missing
from hami.testing.prometheus import PrometheusMissingError, Query, dashboard_queries, find_prometheus
from hami.testing.stack import wait_for

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
BOARD = ROOT / "charts" / "hami" / "dashboards" / "hami.json"
MONITOR_PORT, SCHEDULER_PORT = 9394, 9395
SLICE_MIB, TOO_BIG_MIB = 3000, 50000  # the largest card (an A100) has 40960 MiB
MIG_MIB = 4000  # fits node1's 1g.5gb profile (4864 MiB)
FAKE_SANDBOX = ROOT / "examples" / "fake-sandbox.yaml"
#: node1 serves MIG instances (its MIG-capable A100s); node2 shares its cards through libvgpu
NODE_CONFIG = '{"nodeconfig": [{"name": "node1", "operatingmode": "mig"}]}'


@pytest.fixture(scope="module")
def prometheus_dir() -> Path:
    try:
        return find_prometheus()
    except PrometheusMissingError as exc:
        missing(str(exc))


@pytest.fixture(scope="module")
def installed(sandbox: Sandbox, prometheus_dir: Path) -> Iterator[Helm]:
    extra = {
        "dashboard": {"enabled": True},
        "devicePlugin": {"nodeConfiguration": {"config": NODE_CONFIG}},
    }
    with chart_installed(sandbox, extra, fake_node=FAKE_SANDBOX.read_text()) as helm:
        yield helm


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.asynccontextmanager
async def prometheus(binary: Path, targets: dict[str, list[str]]) -> AsyncIterator[str]:
    """Prometheus on the host scraping ``targets`` (job -> host:port) every second; yields its URL."""
    with tempfile.TemporaryDirectory(prefix="hami-prom-") as tmp:
        jobs = []
        for job, addrs in targets.items():
            listed = ", ".join(f'"{a}"' for a in addrs)
            jobs.append(f"  - job_name: {job}\n    static_configs:\n      - targets: [{listed}]\n")
        config = Path(tmp) / "prometheus.yml"
        config.write_text(
            "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\n  evaluation_interval: 1s\n"
            "scrape_configs:\n" + "".join(jobs)
        )
        port = _free_port()
        log = (Path(tmp) / "prometheus.log").open("w")
        proc = subprocess.Popen(
            [
                str(binary),
                f"--config.file={config}",
                f"--storage.tsdb.path={Path(tmp) / 'data'}",
                f"--web.listen-address=127.0.0.1:{port}",
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
        )
        try:
            yield f"http://127.0.0.1:{port}"
        finally:
            proc.terminate()
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            log.close()


async def _api(session: aiohttp.ClientSession, url: str, path: str, **params: str) -> Any:
    async with session.get(f"{url}{path}", params=params) as r:
        body = await r.json()
    assert body.get("status") == "success", body
    return body["data"]


async def _pod_ips(kc: KubeClient, component: str) -> list[str]:
    pods = await kc.list(
        api_path("v1", "pods", namespace=NAMESPACE), label_selector=f"app.kubernetes.io/component={component}"
    )
    return [p["status"]["podIP"] for p in pods["items"] if p["status"].get("podIP")]


def _gpu_pod(name: str, command: list[str], mem: int, node: str | None = None) -> dict[str, Any]:
    return gpu_pod(name, {"nvidia.com/gpu": 1, "nvidia.com/gpumem": mem}, command, node=node)


@pytest.fixture
async def mig_ns(kc: KubeClient) -> AsyncIterator[str]:
    """A second namespace (outside the quota) for the MIG pod."""
    async with scratch_namespace(kc, "rn-mig") as name:
        yield name


def _node_cards(node: str) -> dict[str, str]:
    """Card UUID -> model of ``node`` in the sandbox's fake device source."""
    spec = yaml.safe_load(FAKE_SANDBOX.read_text())
    cards = (spec["nodes"].get(node) or spec)["cards"]
    return {f"GPU-fake-{node}-{c['index']}": c["model"] for c in cards}


async def test_every_dashboard_panel_returns_series(
    leading: None, prometheus_dir: Path, kc: KubeClient, ns: str, mig_ns: str
) -> None:
    # the chart shipped the dashboard
    cm = await kc.get(api_path("v1", "configmaps", namespace=NAMESPACE, name="hami-dashboard"))
    assert cm["metadata"]["labels"]["grafana_dashboard"] == "1"
    assert cm["data"]["hami.json"] == BOARD.read_text().rstrip("\n")

    # quota (the quota panels), a probe holding memory, a pod that cannot fit
    await kc.create(
        api_path("v1", "resourcequotas", namespace=ns),
        {"metadata": {"name": "gpu"}, "spec": {"hard": {"limits.nvidia.com/gpumem": "100000"}}},
    )
    await kc.create(
        api_path("v1", "pods", namespace=ns),
        _gpu_pod("probe", ["python3", "-c", HOLD], SLICE_MIB, node="node2"),
    )
    await kc.create(
        api_path("v1", "pods", namespace=ns), _gpu_pod("too-big", ["sleep", "1000000"], TOO_BIG_MIB)
    )
    await kc.create(
        api_path("v1", "pods", namespace=mig_ns), _gpu_pod("mig", ["sleep", "1000000"], MIG_MIB, node="node1")
    )

    seen = await probe_report(kc, ns, "probe")
    assert seen["alloc_half"] == 0 and seen["total_mib"] == SLICE_MIB and seen["launch"] == 0, seen

    scheduler_ips = await wait_for(lambda: _pod_ips(kc, "scheduler"), timeout=60, interval=1)
    monitor_ips = await wait_for(lambda: _pod_ips(kc, "monitor"), timeout=60, interval=1)
    targets = {
        "hami-scheduler": [f"{ip}:{SCHEDULER_PORT}" for ip in scheduler_ips],
        "hami-monitor": [f"{ip}:{MONITOR_PORT}" for ip in monitor_ips],
    }
    async with prometheus(prometheus_dir / "prometheus", targets) as url, aiohttp.ClientSession() as http:

        async def scraped() -> bool:
            try:
                data = await _api(http, url, "/api/v1/targets")
            except (aiohttp.ClientError, AssertionError):
                return False
            active = data["activeTargets"]
            if len(active) != len(scheduler_ips) + len(monitor_ips):
                return False
            if not all(t["health"] == "up" for t in active):
                return False
            probe = f'hami_container_last_kernel_elapsed_seconds{{namespace="{ns}",pod="probe"}}'
            waiting = 'hami_pods_unschedulable{reason="card_memory"} >= 1'
            quota = f'hami_resource_quota_used{{namespace="{ns}"}} > 0'
            mig = f'hami_mig_device_info{{namespace="{mig_ns}",pod="mig"}}'
            for q in (probe, waiting, quota, mig):
                if not (await _api(http, url, "/api/v1/query", query=q))["result"]:
                    return False
            return True

        try:
            await wait_for(scraped, timeout=180, interval=1)
        except AssertionError as exc:
            with contextlib.suppress(aiohttp.ClientError, AssertionError):
                exc.args = (f"{exc}; targets: {await _api(http, url, '/api/v1/targets')}",)
            raise
        await asyncio.sleep(5)  # rate() and avg_over_time() need a few samples in their window

        empty: list[Query] = []
        for q in dashboard_queries(BOARD):
            data = await _api(http, url, "/api/v1/query", query=q.expr)
            if not data["result"]:
                empty.append(q)
        assert not empty, f"panels without series: {[(q.panel, q.ref, q.expr) for q in empty]}"

        # host panels: each node's monitor reports that node's own cards, read through NVML
        host = await _api(http, url, "/api/v1/query", query="hami_host_gpu_memory_used_bytes")
        seen_cards: dict[str, dict[str, str]] = {}
        for r in host["result"]:
            m = r["metric"]
            seen_cards.setdefault(m["node"], {})[m["device_uuid"]] = m["device_type"]
        assert seen_cards == {n: _node_cards(n) for n in ("node1", "node2")}, seen_cards
        # the MIG pod's instance, as the monitor on node1 reports it from the pod's allocation
        migs = await _api(http, url, "/api/v1/query", query=f'hami_mig_device_info{{namespace="{mig_ns}"}}')
        (mig,) = [r["metric"] for r in migs["result"]]
        assert (mig["pod"], mig["profile"]) == ("mig", "1g.5gb"), mig
        assert mig["device_uuid"] in _node_cards("node1") and mig["mig_uuid"], mig
        # the probe launched kernels: a last-kernel time; at no core limit, no throttled time
        for family, want in (
            ("hami_container_last_kernel_elapsed_seconds", None),
            ("hami_container_throttled_seconds_total", 0.0),
        ):
            query = f'{family}{{namespace="{ns}",pod="probe",device_uuid="{seen["cards"][0]}"}}'
            got = await _api(http, url, "/api/v1/query", query=query)
            assert len(got["result"]) == 1, (query, got)
            value = float(got["result"][0]["value"][1])
            assert value >= 0 if want is None else value == want, (family, value)

        # the values behind the hami panels are the probe's
        used = await _api(
            http, url, "/api/v1/query", query=f'sum(hami_namespace_gpu_memory_used_bytes{{namespace="{ns}"}})'
        )
        alloc = await _api(
            http,
            url,
            "/api/v1/query",
            query=f'sum(hami_vgpu_memory_allocated_bytes{{namespace="{ns}",pod="probe"}})',
        )
        assert float(alloc["result"][0]["value"][1]) == SLICE_MIB << 20
        assert 0 < float(used["result"][0]["value"][1]) <= SLICE_MIB << 20
        quota = await _api(http, url, "/api/v1/query", query=f'hami_resource_quota_used{{namespace="{ns}"}}')
        assert [float(s["value"][1]) for s in quota["result"]] == [SLICE_MIB]
