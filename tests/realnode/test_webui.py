"""The web UI installed by the chart on the real-node sandbox, in Debian's chromium (Playwright).

``helm install charts/hami`` with ``webui.enabled`` and the monitor; the browser opens the web UI
the way docs/webui.md tells a user to: ``kubectl -n hami-system port-forward svc/hami-webui``
(the real kubectl, through kubelet's streaming server and containerd), at 127.0.0.1. Checked: every page loads without console or page errors;
the cards page lists the sandbox's real cards (registered by the chart's device plugins); a GPU pod
created now appears on the workloads page without a reload, bound to a real card, and later with
the live usage its probe holds (scraped by the web UI from the chart's monitor pods); a pod asking
for a card type the sandbox lacks shows the scheduler's reason.
"""

from __future__ import annotations

import contextlib
import os
import re
import subprocess
import threading
from collections.abc import Iterator

import pytest
from realnode_chart import HOLD, NAMESPACE, chart_installed, gpu_pod, hami_leading, workload_ready

from hami.kube.client import KubeClient
from hami.kube.paths import api_path
from hami.protocol import keys
from hami.sandbox.cluster import Sandbox
from hami.testing.browser import Watch, chromium, new_page, require_chromium
from hami.testing.helm import Helm
from hami.testing.prereq import missing
from hami.testing.stack import wait_for
from hami.webui.server import PAGES

pytestmark = pytest.mark.integration

#: the sandbox's fake-node-small cards: GPU-fake-<node>-<index>
CARDS = [f"GPU-fake-{node}-{i}" for node in ("node1", "node2") for i in range(2)]


@pytest.fixture(scope="module")
def installed(sandbox: Sandbox) -> Iterator[Helm]:
    with chart_installed(
        sandbox, {"webui": {"enabled": True, "usageInterval": 1}, "monitor": {"enabled": True}}
    ) as helm:
        yield helm


async def _webui_ready(kc: KubeClient) -> None:
    await wait_for(lambda: workload_ready(kc, "deployments", "hami-webui"), timeout=180, interval=1)


@contextlib.contextmanager
def port_forward(sandbox: Sandbox) -> Iterator[str]:
    """``kubectl port-forward svc/hami-webui :8090`` running; yields the local URL."""
    assert sandbox.cp is not None
    kubectl = sandbox.binaries.kube_apiserver.parent / "kubectl"
    if not os.access(kubectl, os.X_OK):
        missing(f"{kubectl} is missing (run hack/build-k8s.sh)")
    argv = [str(kubectl), f"--kubeconfig={sandbox.cp.kubeconfig_path}", "-n", NAMESPACE]
    argv += ["port-forward", "svc/hami-webui", ":8090", "--address=127.0.0.1"]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    said: list[str] = []
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()  # "Forwarding from 127.0.0.1:<port> -> 8090"
        found = re.search(r"127\.0\.0\.1:(\d+)", line)
        assert found, f"kubectl port-forward said: {line!r}"
        # keep reading ("Handling connection for ..." per connection) so kubectl never blocks
        threading.Thread(target=lambda: said.extend(proc.stdout or ()), daemon=True).start()
        yield f"http://127.0.0.1:{found.group(1)}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


async def test_webui_shows_the_sandbox(installed: Helm, sandbox: Sandbox, kc: KubeClient, ns: str) -> None:
    browser_path = require_chromium()
    await hami_leading(kc)
    await _webui_ready(kc)
    with port_forward(sandbox) as base:
        await check_pages(base, browser_path, kc, ns)


async def check_pages(base: str, browser_path: str, kc: KubeClient, ns: str) -> None:
    async with chromium(browser_path) as browser:
        watch = Watch()
        page = await new_page(browser, watch)
        for p in PAGES:
            response = await page.goto(base + p.path)
            assert response is not None and response.status == 200, p.path
        assert watch.problems == [], watch.problems

        # the real cards the device plugins registered
        await page.goto(f"{base}/cards")
        for card in CARDS:
            await page.locator("#cards").get_by_text(card, exact=True).wait_for(timeout=60_000)

        # a GPU pod created now appears without a reload, then with its live usage
        await page.goto(f"{base}/workloads?q={ns}")
        await page.evaluate("window.__sameDocument = true")
        limits = {"nvidia.com/gpu": 1, "nvidia.com/gpumem": 3000}
        await kc.create(
            api_path("v1", "pods", namespace=ns), gpu_pod("probe", limits, ["python3", "-c", HOLD])
        )
        row = page.locator("#workloads tbody tr", has_text=f"{ns}/probe")
        await row.wait_for(timeout=60_000)
        text = await row.inner_text()
        assert "GPU-fake-node" in text and "main: nvidia.com/gpumem=3000" in text, text
        assert await page.evaluate("window.__sameDocument === true")
        await row.locator("td", has_text="MiB").nth(1).wait_for(timeout=120_000)  # used, from the monitor

        # a pod asking for a card type the sandbox lacks waits, with the scheduler's reason
        waiting = gpu_pod("wants-a100", {"nvidia.com/gpu": 1, "nvidia.com/gpumem": 1000}, ["true"])
        waiting["metadata"]["annotations"] = {keys.NVIDIA_USE_GPUTYPE: "A100"}
        await kc.create(api_path("v1", "pods", namespace=ns), waiting)
        article = page.locator("article.pending", has_text=f"{ns}/wants-a100")
        await article.wait_for(timeout=60_000)
        reason = await article.locator(".reason").inner_text()
        assert "CardTypeMismatch" in reason and "node1" in reason and "node2" in reason, reason
        assert watch.problems == [], watch.problems
