"""The web UI in a real browser (Playwright + Debian's chromium) against a seeded real control plane.

Seeded in a real kube-apiserver: two GPU nodes registered as the device plugin does (one whose
card type is hostile markup, as a node could report) and one whose registration is truncated;
pods bound to them with hami's decision annotations (one with an env value and a last-applied
manifest that must never be shown); a pod that waits (it asks for a card type nobody has, through
an annotation holding hostile markup); a ResourceQuota. A real ``hami monitor`` (in-process, its
HTTP server and region decoder) reads a shared region written in libvgpu's layout for the bound
pod, so the pages show live usage. The web UI runs in-process with its informers; chromium loads
each page at 1366x768.

Checked: every page loads with no console error, page error or dialog; the tables show the seeded
cards and pods with limits against live usage; the pending pod shows the core's reason in plain
words; the broken node shows the scheduler's reading error; hostile markup is shown as text (no
element injected, no dialog); env values and the last applied manifest never appear; a pod created
during the test appears without a reload; Tab reaches the navigation and a table; no page scrolls
horizontally.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from hami.kube.client import KubeClient
from hami.protocol import keys
from hami.protocol.pod import ContainerDevice
from hami.testing import webuiseed as w
from hami.testing.browser import Watch, chromium, new_page, require_chromium
from hami.testing.controlplane import ControlPlane
from hami.testing.stack import wait_for
from hami.testing.webuiapi import LiveContainer, live_monitor, store, store_pod
from hami.webui.runner import WebUI, WebUISettings
from hami.webui.server import PAGES

pytestmark = pytest.mark.integration

HOSTILE = "<img src=x onerror=alert(1)>"
#: the waiting pod's card type (no card's type contains it, so the pod waits)
HOSTILE_TYPE = '"><script>alert(2)</script>'
SECRET = "s3cr3t-env-value-never-shown"


class Seeded:
    """Two nodes (one reporting a hostile card type), two bound pods, a waiting pod, a quota."""

    def __init__(self, ns: str) -> None:
        self.ns = ns
        # short: a card UUID (GPU-<node>-<i>) must fit the region's 47-byte UUID field
        self.node_a = f"wa-{ns[-6:]}"
        self.node_b = f"wb-{ns[-6:]}"
        self.cards_a = w.cards_of(self.node_a, 2, mem=16384, type="NVIDIA-A100")
        self.cards_b = w.cards_of(self.node_b, 1, mem=24576, type=f"NVIDIA-{HOSTILE}")
        self.nodes = [w.node(self.node_a, self.cards_a), w.node(self.node_b, self.cards_b)]
        # a node whose registration is truncated JSON: listed with the scheduler's reading error
        self.node_bad = f"wc-{ns[-6:]}"
        broken = w.node(self.node_bad, w.cards_of(self.node_bad, 1))
        broken["metadata"]["annotations"][keys.NODE_NVIDIA_REGISTER] = '[{"id": 1'
        self.nodes.append(broken)
        train = w.running_pod(
            "train", ns, self.node_a, [ContainerDevice(self.cards_a[0].id, "NVIDIA", 8000, 30)]
        )
        train["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"] = (
            f'{{"env": "{SECRET}"}}'
        )
        train["spec"]["containers"][0]["env"] = [{"name": "API_TOKEN", "value": SECRET}]
        infer = w.running_pod(
            "infer", ns, self.node_b, [ContainerDevice(self.cards_b[0].id, "NVIDIA", 4000, 10)]
        )
        self.pods = [train, infer, w.pending_pod("waits", ns, mem=2000, gputype=HOSTILE_TYPE)]
        self.quotas = [
            {
                "metadata": {"name": "gpu", "namespace": ns},
                "spec": {"hard": {"limits.nvidia.com/gpumem": "20000"}},
            }
        ]


async def now(fn: Any) -> Any:
    """``fn()`` as an awaitable, for :func:`wait_for`."""
    return fn()


async def test_webui_pages_in_a_real_browser(
    control_plane: ControlPlane, kube_client: KubeClient, namespace: str, tmp_path: Path
) -> None:
    browser_path = require_chromium()
    s = Seeded(namespace)
    created = await store(kube_client, s.nodes, s.pods, s.quotas)
    live = LiveContainer(
        created[f"{namespace}/train"]["metadata"]["uid"], "main", s.cards_a[0].id, 8000, 3000, 25
    )
    async with live_monitor(kube_client, s.node_a, [live], tmp_path / "hook") as port:
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
    await store_pod(
        client,
        w.running_pod("late", s.ns, s.node_a, [ContainerDevice(s.cards_a[1].id, "NVIDIA", 2000, 5)]),
    )
    await page.locator("#workloads tbody tr", has_text=f"{s.ns}/late").wait_for(timeout=15_000)
    assert await page.evaluate("window.__sameDocument === true")
    assert "Updated" in await page.locator("#live-status").inner_text()

    # namespaces: allocation and the quota
    await page.goto(f"{base}/namespaces?q={s.ns}")
    ns_row = page.locator("#namespaces tbody tr", has_text=s.ns)
    ns_text = await ns_row.inner_text()
    assert "limits.nvidia.com/gpumem: 14000 of 20000 MiB" in ns_text, ns_text

    # nodes: the broken registration is shown with why it cannot be read
    await page.goto(f"{base}/nodes?q={s.ns[-6:]}")
    bad = await page.locator("#nodes tbody tr", has_text=s.node_bad).inner_text()
    assert "node register annotation is not valid JSON" in bad, bad

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
