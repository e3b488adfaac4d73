"""The demo's table: placements from the allocation annotation, what the container printed, and
the scheduler's reason for a pending pod."""

from __future__ import annotations

import json
from typing import Any

import pytest

from hami.protocol import keys
from hami.sandbox.demo import NAMESPACE, render_table, row_for, workload


def _pod(name: str, phase: str, node: str | None = None, allocated: str | None = None) -> dict[str, Any]:
    ann = {keys.VGPU_DEVICES_ALLOCATED: allocated} if allocated else {}
    return {
        "metadata": {"name": name, "annotations": ann},
        "spec": {"nodeName": node},
        "status": {"phase": phase},
    }


def test_a_running_pod_shows_its_cards_and_what_its_container_sees() -> None:
    pod = _pod("pair", "Running", "node1", "GPU-aaaa-0001,NVIDIA,40960,100:GPU-aaaa-0002,NVIDIA,40960,100:;")
    log = json.dumps(
        {
            "cards": ["GPU-aaaa-0001", "GPU-aaaa-0002"],
            "memory": ["40960m", "40960m"],
            "cores": "0",
            "preload": "/x/libvgpu.so",
            "total_mib": 40960,
            "alloc_beyond": 2,
        }
    )
    log = "[libvgpu ERROR pid=1] OOM dev=0 cuMemAlloc ... -> CUDA_ERROR_OUT_OF_MEMORY\n" + log
    row = row_for(pod, log + "\n", None)
    assert (row.node, row.cards, row.memory, row.cores) == (
        "node1",
        "GPU-…0001,GPU-…0002",
        "40960+40960 MiB",
        "100+100 %",
    )
    assert row.sees == "CUDA sees 40960 MiB, over it refused; SM unlimited; libvgpu.so preloaded"


def test_a_pending_pod_shows_the_scheduler_reason() -> None:
    row = row_for(_pod("too-big", "Pending"), None, "0/1 nodes are available: too big")
    assert (row.status, row.node, row.cards, row.sees) == (
        "Pending",
        "-",
        "-",
        "0/1 nodes are available: too big",
    )
    table = render_table([row])
    assert table.splitlines()[0].startswith("POD") and "too big" in table.splitlines()[1]


def test_the_workload_covers_sharing_a_whole_card_a_percentage_topology_and_a_misfit() -> None:
    pods = {p["metadata"]["name"]: p for p in workload()}
    assert all(p["metadata"]["namespace"] == NAMESPACE for p in pods.values())
    limits = {n: p["spec"]["containers"][0]["resources"]["limits"] for n, p in pods.items()}
    assert limits["whole-card"]["nvidia.com/gpucores"] == 100
    assert "nvidia.com/gpumem-percentage" in limits["quarter"]
    assert pods["nvlink-pair"]["metadata"]["annotations"]["hami.io/gpu-scheduler-policy"] == "topology-aware"
    assert limits["too-big"]["nvidia.com/gpumem"] > 40960
    assert pods["l4-only"]["metadata"]["annotations"]["nvidia.com/use-gputype"] == "L4"


def test_the_probe_report_is_found_whatever_the_order_of_the_streams() -> None:
    from hami.sandbox.probe import report

    line = json.dumps({"total_mib": 3000})
    oom = "[libvgpu ERROR pid=1] OOM dev=0 ... -> CUDA_ERROR_OUT_OF_MEMORY"
    assert report(f"{oom}\n{line}\n") == report(f"{line}\n{oom}\n") == {"total_mib": 3000}
    with pytest.raises(ValueError, match="no probe report"):
        report(oom)
