"""Screenshots of every web UI page (``make screenshots`` -> docs/webui/*.png).

Starts the integration tier's control plane (real etcd + kube-apiserver), stores a small demo
cluster in it (:mod:`hami.testing.webuiseed` objects: A100 and H100 nodes, a node with a broken registration,
running slices in three namespaces, two pods that wait, a quota), runs a real ``hami monitor`` per node for live usage,
serves the web UI in-process and photographs each page at 1366x768 with Debian's chromium.

Usage: HAMI_K8S_BIN=$(hack/build-k8s.sh) python scripts/webui_screenshots.py [--out docs/webui]
"""

from __future__ import annotations

import argparse
import asyncio
import tempfile
from contextlib import AsyncExitStack
from pathlib import Path
from typing import Any

from hami.kube.client import KubeClient
from hami.kube.poll import poll_until
from hami.protocol import bodies, keys
from hami.protocol.pod import ContainerDevice
from hami.testing import webuiseed as w
from hami.testing.browser import Watch, chromium, chromium_path, new_page
from hami.testing.controlplane import ControlPlane, find_binaries
from hami.testing.webuiapi import LiveContainer, live_monitor, store
from hami.webui.runner import WebUI, WebUISettings
from hami.webui.server import PAGES

A100, H100 = "NVIDIA-A100-SXM4-40GB", "NVIDIA-H100-80GB-HBM3"
#: (namespace, pod, node, card index, MiB, cores %, live MiB, live util %)
SLICES = [
    ("ml-research", "bert-finetune", "gpu-a100-0", 0, 20000, 50, 17210, 61),
    ("ml-research", "notebook-ana", "gpu-a100-0", 0, 8000, 20, 2304, 4),
    ("ml-research", "notebook-raj", "gpu-a100-0", 1, 8000, 20, 7950, 33),
    ("inference", "llama-7b-0", "gpu-a100-1", 0, 16000, 30, 14336, 48),
    ("inference", "llama-7b-1", "gpu-a100-1", 1, 16000, 30, 14290, 45),
    ("inference", "whisper", "gpu-a100-1", 1, 4000, 10, 3100, 12),
    ("batch", "render-0", "gpu-h100-0", 0, 81920, 100, 70400, 97),
    ("batch", "render-1", "gpu-h100-0", 1, 81920, 100, 69120, 95),
    ("batch", "etl-embed", "gpu-h100-0", 2, 24000, 40, 9000, 18),
]


def demo() -> tuple[list[dict[str, Any]], list[dict[str, Any]], list[dict[str, Any]]]:
    cards = {
        "gpu-a100-0": w.cards_of("gpu-a100-0", 4, mem=40960, type=A100),
        "gpu-a100-1": w.cards_of("gpu-a100-1", 4, mem=40960, type=A100),
        "gpu-h100-0": w.cards_of("gpu-h100-0", 8, mem=81920, type=H100),
    }
    nodes = [w.node(name, infos) for name, infos in cards.items()]
    # a node whose device plugin wrote a truncated registration: listed with the scheduler's error
    broken = w.node("gpu-v100-0", w.cards_of("gpu-v100-0", 2, type="Tesla-V100"))
    broken["metadata"]["annotations"][keys.NODE_NVIDIA_REGISTER] = '[{"id": "GPU-gpu-v100-0-0", "count": 10'
    nodes.append(broken)
    pods = [
        w.running_pod(pod, ns, node, [ContainerDevice(cards[node][i].id, "NVIDIA", mem, cores)])
        for ns, pod, node, i, mem, cores, _, _ in SLICES
    ]
    pods.append(w.pending_pod("llm-70b", "inference", gpus=8, mem=60000))
    pods.append(w.pending_pod("render-l4", "batch", mem=8000, gputype="L4"))
    quota = {
        "metadata": {"name": "gpu-quota", "namespace": "ml-research"},
        "spec": {"hard": {"limits.nvidia.com/gpumem": "64000", "limits.nvidia.com/gpucores": "200"}},
    }
    return nodes, pods, [quota]


async def shoot(cp: ControlPlane, out: Path, browser_path: str) -> list[Path]:
    nodes, pods, quotas = demo()
    async with KubeClient(cp.kube_config()) as client, AsyncExitStack() as stack:
        created = await store(client, nodes, pods, quotas)
        urls = []
        hook = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="hami-shots-")))
        for node in sorted({s[2] for s in SLICES}):
            live = [
                LiveContainer(bodies.uid(created[f"{ns}/{pod}"]), "main", f"GPU-{node}-{i}", mem, used, util)
                for ns, pod, n, i, mem, _, used, util in SLICES
                if n == node
            ]
            port = await stack.enter_async_context(live_monitor(client, node, live, hook / node))
            urls.append(f"http://127.0.0.1:{port}/metrics")
        ui = WebUI(
            cp.kube_config(),
            WebUISettings(host="127.0.0.1", port=0, monitor_urls=tuple(urls), usage_interval=1),
        )
        await ui.start()
        stack.push_async_callback(ui.stop)

        async def all_usage() -> bool:
            return len(ui.usage.sources) == len(urls) and len(ui.usage.containers) == len(SLICES)

        await poll_until(all_usage, timeout=30)
        shots = []
        async with chromium(browser_path) as browser:
            watch = Watch()
            page = await new_page(browser, watch)
            out.mkdir(parents=True, exist_ok=True)
            for p in PAGES:
                await page.goto(ui.url + p.path)
                if p.name == "workloads":  # show the explanation of the first waiting pod
                    await page.locator("article.pending details summary").first.click()
                path = out / f"{p.name}.png"
                await page.screenshot(path=str(path), full_page=True)
                shots.append(path)
            if watch.problems:
                raise SystemExit(f"the pages reported problems: {watch.problems}")
        return shots


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "webui")
    args = ap.parse_args()
    browser_path = chromium_path()
    if browser_path is None:
        raise SystemExit("no chromium: hack/ensure-debian-tool.sh chromium chromium")
    with ControlPlane(find_binaries()) as cp:
        for path in asyncio.run(shoot(cp, args.out, browser_path)):
            print(path)


if __name__ == "__main__":
    main()
