"""The demo workload: what `make demo` applies to the sandbox and the table it prints.

A small mix that shows what hami does: three pods sharing one card, a pod that takes a whole card
(``gpucores: 100``), a percentage request, a two-card pod placed by NVLink topology, a pod that
asks for one card model (``nvidia.com/use-gputype: L4``, found on node2 only), and a pod that cannot
fit (it stays Pending, and the table says why). Every container prints what it was given
(:mod:`hami.sandbox.probe`: the memory the CUDA driver API reports through ``libvgpu.so``, and
whether an allocation beyond it is refused) and sleeps.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from hami.protocol import bodies, keys
from hami.protocol.pod import decode_pod_devices
from hami.sandbox.probe import CUDA_OUT_OF_MEMORY, PROBE, report

__all__ = ["NAMESPACE", "DemoRow", "render_table", "row_for", "workload"]

NAMESPACE = "hami-demo"
IMAGE = "hami.local/hami:0.1.0"
#: pack these onto one card (the chart's default card policy is HAMi's spread)
BINPACK = {"hami.io/gpu-scheduler-policy": "binpack"}
REPORT = PROBE + "\nimport time\ntime.sleep(10**9)\n"


def _pod(name: str, limits: dict[str, Any], annotations: dict[str, str] | None = None) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "namespace": NAMESPACE, "annotations": annotations or {}},
        "spec": {
            "terminationGracePeriodSeconds": 1,
            "containers": [
                {
                    "name": "main",
                    "image": IMAGE,
                    "command": ["python3", "-c", REPORT],
                    "resources": {"limits": limits},
                }
            ],
        },
    }


def workload() -> list[dict[str, Any]]:
    """The demo pods, in the order they are created."""
    return [
        _pod("nvlink-pair", {"nvidia.com/gpu": 2}, {"hami.io/gpu-scheduler-policy": "topology-aware"}),
        _pod(
            "share-a", {"nvidia.com/gpu": 1, "nvidia.com/gpumem": 10000, "nvidia.com/gpucores": 30}, BINPACK
        ),
        _pod(
            "share-b", {"nvidia.com/gpu": 1, "nvidia.com/gpumem": 10000, "nvidia.com/gpucores": 30}, BINPACK
        ),
        _pod("quarter", {"nvidia.com/gpu": 1, "nvidia.com/gpumem-percentage": 25}, BINPACK),
        _pod("whole-card", {"nvidia.com/gpu": 1, "nvidia.com/gpucores": 100}),
        _pod("l4-only", {"nvidia.com/gpu": 1, "nvidia.com/gpumem": 8000}, {"nvidia.com/use-gputype": "L4"}),
        _pod("too-big", {"nvidia.com/gpu": 1, "nvidia.com/gpumem": 100000}),
    ]


@dataclass(frozen=True)
class DemoRow:
    pod: str
    status: str
    node: str
    cards: str
    memory: str
    cores: str
    sees: str


def row_for(pod: dict[str, Any], log: str | None, reason: str | None) -> DemoRow:
    """One table row from the pod, the first line its container printed, and a scheduling reason."""
    ann = bodies.annotations(pod)
    cards, mem, cores = [], [], []
    for container in decode_pod_devices(ann.get(keys.VGPU_DEVICES_ALLOCATED, "")):
        for dev in container:
            cards.append(f"GPU-…{dev.uuid[-4:]}")
            mem.append(f"{dev.usedmem}")
            cores.append(f"{dev.usedcores}")
    sees = ""
    if log:
        try:
            seen = report(log)
            sm = seen["cores"]
            cuda = (
                f"CUDA sees {seen['total_mib']} MiB, over it refused"
                if seen.get("alloc_beyond") == CUDA_OUT_OF_MEMORY
                else f"CUDA: {seen.get('driver') or seen.get('total_mib', '?')}"
            )
            sees = (
                f"{cuda}; SM {'unlimited' if sm in ('', '0') else sm + '%'}"
                f"; libvgpu.so {'preloaded' if seen['preload'] else 'NOT preloaded'}"
            )
        except (ValueError, KeyError):
            sees = log.strip()[:60]
    phase = str(bodies.status(pod).get("phase") or "?")
    if phase == "Pending" and reason:
        sees = reason
    return DemoRow(
        pod=str(bodies.meta(pod).get("name")),
        status=phase,
        node=str(bodies.node_name(pod) or "-"),
        cards=",".join(cards) or "-",
        memory="+".join(mem) + " MiB" if mem else "-",
        cores="+".join(cores) + " %" if cores else "-",
        sees=sees,
    )


def render_table(rows: list[DemoRow]) -> str:
    head = ("POD", "STATUS", "NODE", "CARD(S)", "MEMORY", "CORES", "WHAT THE CONTAINER SEES / WHY PENDING")
    table = [head, *((r.pod, r.status, r.node, r.cards, r.memory, r.cores, r.sees) for r in rows)]
    widths = [max(len(line[i]) for line in table) for i in range(len(head) - 1)]
    return "\n".join(
        "  ".join(cell.ljust(w) for cell, w in zip(line[:-1], widths, strict=True)) + "  " + line[-1]
        for line in table
    )
