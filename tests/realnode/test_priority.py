"""Task priority and throttled time on real nodes, read through the chart's node monitor.

``helm install charts/hami`` (the monitor is on by default; fake-node-small: two T4 per node).
Two GPU pods are pinned to the same card (``nvidia.com/use-gpuuuid``) and both run the probe's
kernel loop, an unmodified CUDA driver-API client with ``libvgpu.so`` preloaded:

* priority (HAMi's ``nvidia.com/priority``: 0 high, 1 low, the default): while the high-priority
  pod launches, the monitor holds the low-priority one (``hami_container_priority_held``), whose
  launches then wait (its ``hami_container_throttled_seconds_total`` grows, and it launches
  nothing); once the high-priority loop ends, the hold is lifted and the low one launches again;
* core limits (``nvidia.com/gpucores``, ``gpuCorePolicy: default``): two limited pods contending for
  one card are paced by libvgpu, and the time their launches waited grows on both.

Every state is waited for (no timing assertion): the monitor's view is scraped through the API
server's pod proxy, once a second.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest
from realnode_chart import gpu_pod, probe_report, samples, scrape_metrics

from hami.kube.client import KubeClient
from hami.kube.paths import api_path
from hami.sandbox.probe import KERNEL_LOOP, report
from hami.testing.stack import wait_for

pytestmark = pytest.mark.integration

MONITOR_PORT = 9394
NODE, CARD = "node1", "GPU-fake-node1-0"
SLICE_MIB = 2000
HIGH_LOOP_SECONDS = 40  # the high-priority pod's kernel loop, then it idles
THROTTLED = "hami_container_throttled_seconds"  # the parser's name of the _total counter


def _looping(name: str, extra: dict[str, Any], env: dict[str, str] | None = None) -> dict[str, Any]:
    """A pod on ``CARD`` running the probe's kernel loop."""
    limits = {"nvidia.com/gpu": 1, "nvidia.com/gpumem": SLICE_MIB, **extra}
    return gpu_pod(
        name,
        limits,
        ["python3", "-c", KERNEL_LOOP],
        node=NODE,
        env=env,
        annotations={"nvidia.com/use-gpuuuid": CARD},
    )


class Watch:
    """The monitor on ``NODE``, scraped until a condition on a pod's series holds."""

    def __init__(self, kc: KubeClient, ns: str) -> None:
        self.kc = kc
        self.ns = ns
        self.last: dict[str, Any] = {}

    def value(self, family: str, pod: str, **match: str) -> float | None:
        found = samples(self.last, family, namespace=self.ns, pod=pod, **match)
        return float(found[0].value) if found else None

    def launching(self, pod: str) -> bool:
        """The pod launched within the last second (libvgpu stamps launches every 100 ms)."""
        elapsed = self.value("hami_container_last_kernel_elapsed_seconds", pod)
        return elapsed is not None and elapsed < 1

    async def until(self, what: str, cond: Callable[[], bool], timeout: float = 120) -> None:
        async def check() -> bool:
            self.last = await scrape_metrics(self.kc, "monitor", NODE, MONITOR_PORT) or {}
            return cond()

        try:
            await wait_for(check, timeout=timeout, interval=1)
        except AssertionError:
            mine = {
                n: [(s.labels.get("pod"), s.value) for s in f.samples if s.labels.get("namespace") == self.ns]
                for n, f in self.last.items()
            }
            raise AssertionError(f"{what}: not seen in {timeout:.0f} s; monitor on {NODE}: {mine}") from None


async def _log(kc: KubeClient, ns: str, pod: str) -> str:
    return await kc.get_text(api_path("v1", "pods", namespace=ns, name=pod) + "/log")


async def test_high_priority_holds_low_priority_on_the_same_card(
    leading: None, kc: KubeClient, ns: str
) -> None:
    pods = api_path("v1", "pods", namespace=ns)
    w = Watch(kc, ns)
    held = "hami_container_priority_held"
    await kc.create(pods, _looping("low", {"nvidia.com/priority": 1}))
    seen = await probe_report(kc, ns, "low")
    assert seen["cards"] == [CARD] and seen["launch"] == 0, seen
    # low launches unhindered: it is active (recent kernels) and not held
    await w.until(
        "low running, not held",
        lambda: w.value(held, "low") == 0 and w.launching("low"),
    )
    assert w.value("hami_container_priority", "low") == 1

    await kc.create(
        pods, _looping("high", {"nvidia.com/priority": 0}, env={"PROBE_LOOP_SECONDS": str(HIGH_LOOP_SECONDS)})
    )
    assert (await probe_report(kc, ns, "high"))["cards"] == [CARD]
    await w.until("low held while high launches", lambda: w.value(held, "low") == 1)
    assert w.value(held, "high") == 0 and w.value("hami_container_priority", "high") == 0
    waited = w.value(THROTTLED, "low", device_uuid=CARD)
    assert waited is not None
    # held: low's launches wait (its throttled time grows), high's do not
    await w.until(
        "low's throttled time growing while held",
        lambda: (w.value(THROTTLED, "low", device_uuid=CARD) or 0) > waited + 1 and w.value(held, "low") == 1,
    )
    assert w.value(THROTTLED, "high", device_uuid=CARD) == 0

    # high's loop ends: the hold is lifted and low launches again
    async def high_done() -> bool:
        return "loop_done" in await _log(kc, ns, "high")

    await wait_for(high_done, timeout=HIGH_LOOP_SECONDS + 120, interval=1)
    done = report(await _log(kc, ns, "high"))
    assert done["loop_rc"] == 0 and done["loop_done"] > 0, done
    await w.until(
        "low released after high went idle",
        lambda: w.value(held, "low") == 0 and w.launching("low"),
    )


async def test_core_limited_containers_accumulate_throttled_time(
    leading: None, kc: KubeClient, ns: str
) -> None:
    pods = api_path("v1", "pods", namespace=ns)
    w = Watch(kc, ns)
    for name in ("a", "b"):
        await kc.create(pods, _looping(name, {"nvidia.com/gpucores": 30}))
    for name in ("a", "b"):
        seen = await probe_report(kc, ns, name)
        assert seen["cores"] == "30" and seen["launch"] == 0, seen

    def throttled(pod: str) -> float:
        return w.value(THROTTLED, pod, device_uuid=CARD) or 0.0

    await w.until("both contending pods throttled", lambda: throttled("a") > 0 and throttled("b") > 0)
    first = {p: throttled(p) for p in ("a", "b")}
    await w.until("throttled time growing on both", lambda: all(throttled(p) > first[p] + 1 for p in first))
    for pod in ("a", "b"):
        assert w.value("hami_vgpu_core_limit_ratio", pod, device_uuid=CARD) == 30
