"""The web UI in a real browser (Playwright + Debian's chromium) against a seeded real control plane.

Seeded in a real kube-apiserver: two GPU nodes registered as the device plugin does (one whose
card type is hostile markup, as a node could report), pods bound to them with hami's decision
annotations (one with an env value and a last-applied manifest that must never be shown), a pod
that waits (it asks for a card type nobody has, through an annotation holding hostile markup), and
a ResourceQuota. A real ``hami monitor`` (in-process, its HTTP server and region decoder) reads a
shared region written in libvgpu's layout for the bound pod, so the pages show live usage. The web
UI runs in-process with its informers; chromium loads each page at 1366x768.

Checked: every page loads with no console error, page error or dialog; the tables show the seeded
cards and pods with limits against live usage; the pending pod shows the core's reason in plain
words; hostile markup is shown as text (no element injected, no dialog); env values and the last
applied manifest never appear; a pod created during the test appears without a reload; Tab reaches
the navigation and a table; no page scrolls horizontally.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest

from hami.kube.client import KubeClient
from hami.kube.paths import api_path
from hami.monitor.runner import Monitor, MonitorSettings
from hami.protocol import keys
from hami.protocol.pod import ContainerDevice, encode_pod_devices
from hami.testing.browser import Watch, chromium, new_page, require_chromium
from hami.testing.controlplane import ControlPlane
from hami.testing.gpucluster import create_gpu_node, gpu_cards
from hami.testing.regions import FakeDevice, FakeProcess, FakeRegion, SlotHolder, write_region
from hami.testing.stack import wait_for
from hami.webui.runner import WebUI, WebUISettings
from hami.webui.server import PAGES

pytestmark = pytest.mark.integration

MiB = 1 << 20
HOSTILE = "<img src=x onerror=alert(1)>"
#: the waiting pod's card type (no card's type contains it, so the pod waits)
HOSTILE_TYPE = '"><script>alert(2)</script>'
SECRET = "s3cr3t-env-value-never-shown"


def bound_pod(name: str, node: str, devices: list[ContainerDevice], **extra: Any) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "annotations": {
                keys.VGPU_NODE: node,
                keys.VGPU_DEVICES_ALLOCATED: encode_pod_devices([devices]),
                keys.BIND_PHASE: keys.BIND_PHASE_SUCCESS,
                **extra.get("annotations", {}),
            },
        },
        "spec": {
            "schedulerName": "hami-scheduler",
            "nodeName": node,
            "containers": [
                {
                    "name": "main",
                    "image": "registry.invalid/cuda:12",
                    "env": [{"name": "API_TOKEN", "value": SECRET}],
                    "resources": {
                        "limits": {
                            "nvidia.com/gpu": len(devices),
                            "nvidia.com/gpumem": devices[0].usedmem,
                            "nvidia.com/gpucores": devices[0].usedcores,
                        }
                    },
                }
            ],
        },
    }


async def now(fn: Any) -> Any:
    """``fn()`` as an awaitable, for :func:`wait_for`."""
    return fn()


class Seeded:
    def __init__(self, ns: str) -> None:
        self.ns = ns
        # short: a card UUID (GPU-<node>-<i>) must fit the region's 47-byte UUID field
        self.node_a = f"wa-{ns[-6:]}"
        self.node_b = f"wb-{ns[-6:]}"
        self.cards_a = gpu_cards(self.node_a, 2, mem=16384)
        self.cards_b = gpu_cards(self.node_b, 1, mem=24576, type=f"NVIDIA-{HOSTILE}")


async def seed(client: KubeClient, s: Seeded) -> dict[str, Any]:
    await create_gpu_node(client, s.node_a, s.cards_a)
    await create_gpu_node(client, s.node_b, s.cards_b)
    pods = api_path("v1", "pods", namespace=s.ns)
    train = await client.create(
        pods,
        bound_pod(
            "train",
            s.node_a,
            [ContainerDevice(s.cards_a[0].id, "NVIDIA", 8000, 30)],
            annotations={"kubectl.kubernetes.io/last-applied-configuration": f'{{"env": "{SECRET}"}}'},
        ),
    )
    await client.create(
        pods, bound_pod("infer", s.node_b, [ContainerDevice(s.cards_b[0].id, "NVIDIA", 4000, 10)])
    )
    await client.create(
        pods,
        {
            "metadata": {"name": "waits", "annotations": {keys.NVIDIA_USE_GPUTYPE: HOSTILE_TYPE}},
            "spec": {
                "schedulerName": "hami-scheduler",
                "containers": [
                    {
                        "name": "main",
                        "image": "registry.invalid/cuda:12",
                        "resources": {"limits": {"nvidia.com/gpu": 1, "nvidia.com/gpumem": 2000}},
                    }
                ],
            },
        },
    )
    await client.create(
        api_path("v1", "resourcequotas", namespace=s.ns),
        {"metadata": {"name": "gpu"}, "spec": {"hard": {"limits.nvidia.com/gpumem": "20000"}}},
    )
    return train


@contextlib.asynccontextmanager
async def monitor_for(
    node: str, pod_uid: str, card: str, client: KubeClient, tmp: Path
) -> AsyncIterator[int]:
    """A real monitor for ``node`` whose hook directory holds one live region of ``pod_uid``."""
    region_dir = tmp / "hook" / "vgpu" / "containers" / f"{pod_uid}_main"
    region_dir.mkdir(parents=True)
    path = str(region_dir / "r.cache")
    write_region(
        path,
        FakeRegion(
            devices=[FakeDevice(card, limit=8000 * MiB, used=3000 * MiB, util_x100=2500)],
            processes=[FakeProcess(pid=os.getpid(), used=[3000 * MiB])],
        ),
    )
    settings = MonitorSettings(
        node_name=node,
        hook_path=str(tmp / "hook"),
        metrics_host="127.0.0.1",
        metrics_port=0,
        nvml=False,
        feedback_interval=None,
        gc_grace=3600,
    )
    monitor = Monitor(settings, client)
    stop = asyncio.Event()
    with SlotHolder() as holder:
        holder.hold(path, [0])
        task = asyncio.create_task(monitor.run(stop))
        try:
            await wait_for(lambda: now(lambda: monitor.metrics_port), timeout=30)
            assert monitor.metrics_port is not None
            yield monitor.metrics_port
        finally:
            stop.set()
            await task


async def test_webui_pages_in_a_real_browser(
    control_plane: ControlPlane, kube_client: KubeClient, namespace: str, tmp_path: Path
) -> None:
    browser_path = require_chromium()
    s = Seeded(namespace)
    train = await seed(kube_client, s)
    async with monitor_for(
        s.node_a, train["metadata"]["uid"], s.cards_a[0].id, kube_client, tmp_path
    ) as port:
        ui = WebUI(
            control_plane.kube_config(),
            WebUISettings(
                host="127.0.0.1",
                port=0,
                monitor_urls=(f"http://127.0.0.1:{port}/metrics",),
                usage_interval=0.5,
            ),
        )
        await ui.start()
        try:
            await wait_for(lambda: now(lambda: ui.usage.pod_memory(namespace, "train")), timeout=30)
            async with chromium(browser_path) as browser:
                await check_pages(browser, ui.url, s, kube_client)
        finally:
            await ui.stop()


async def check_pages(browser: Any, base: str, s: Seeded, client: KubeClient) -> None:
    watch = Watch()
    page = await new_page(browser, watch)
    for p in PAGES:
        response = await page.goto(base + p.path)
        assert response is not None and response.status == 200, p.path
        assert await page.locator("h1").inner_text() == p.title
        html = await page.content()
        assert SECRET not in html, f"{p.path} shows an env value or the last applied manifest"
        assert "last-applied-configuration" not in html
        # hostile markup stays text: no element was made from it
        assert await page.locator("main img, main script").count() == 0, p.path
        wide = await page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert wide <= 0, f"{p.path} scrolls horizontally by {wide}px at 1366x768"
    assert watch.problems == [], watch.problems

    # cards: the seeded cards, the slice of train (limit 8000 MiB, 30 %) against its live 3000 MiB
    await page.goto(f"{base}/cards?q={s.ns[-6:]}")
    cards = page.locator("#cards")
    for card in (*s.cards_a, *s.cards_b):
        assert await cards.get_by_text(card.id, exact=True).count() == 1, card.id
    train_slice = cards.locator("li", has_text=f"{s.ns}/train")
    assert "8000 MiB, 30 % → 3000 MiB, 25 %" in await train_slice.inner_text()
    # the hostile card type, as text
    assert await cards.get_by_text(f"NVIDIA-{HOSTILE}", exact=True).count() == 1

    # workloads: running pods with limits and live usage, the waiting pod with its reason
    await page.goto(f"{base}/workloads?q={s.ns}")
    rows = page.locator("#workloads tbody tr")
    row = rows.filter(has_text=f"{s.ns}/train")
    assert await row.count() == 1
    text = await row.inner_text()
    assert "nvidia.com/gpumem=8000" in text and "3000 MiB" in text and s.node_a in text
    waiting = page.locator("article.pending", has_text=f"{s.ns}/waits")
    assert await waiting.count() == 1
    reason = await waiting.locator(".reason").inner_text()
    assert "CardTypeMismatch" in reason, reason
    assert "not the one the pod's annotations ask for" in await waiting.inner_text()
    await waiting.locator("summary").click()
    assert await waiting.get_by_text(HOSTILE_TYPE, exact=True).count() == 1
    assert await page.locator("main img, main script").count() == 0

    # a pod created now appears without a reload (the live region refreshes itself)
    await page.evaluate("window.__sameDocument = true")
    await client.create(
        api_path("v1", "pods", namespace=s.ns),
        bound_pod("late", s.node_a, [ContainerDevice(s.cards_a[1].id, "NVIDIA", 2000, 5)]),
    )
    await page.locator("#workloads tbody tr", has_text=f"{s.ns}/late").wait_for(timeout=15_000)
    assert await page.evaluate("window.__sameDocument === true")
    assert "Updated" in await page.locator("#live-status").inner_text()

    # namespaces: allocation and the quota
    await page.goto(f"{base}/namespaces?q={s.ns}")
    ns_row = page.locator("#namespaces tbody tr", has_text=s.ns)
    ns_text = await ns_row.inner_text()
    assert "limits.nvidia.com/gpumem: 14000 of 20000 MiB" in ns_text, ns_text

    # keyboard: Tab reaches the skip link, the navigation, then a table's links
    await page.goto(f"{base}/nodes")
    where = []
    for _ in range(20):
        await page.keyboard.press("Tab")
        where.append(
            await page.evaluate(
                "(() => { const e = document.activeElement;"
                " return e.closest('nav') ? 'nav' : e.closest('table') ? 'table' : e.className || e.tagName; })()"
            )
        )
    assert where[0] == "skip", where
    assert "nav" in where and "table" in where and where.index("nav") < where.index("table"), where
    assert watch.problems == [], watch.problems
