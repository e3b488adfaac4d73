"""Allocate responses pinned byte for byte (golden file), with what Allocate writes to the API.

Each case runs a whole Allocate (pod identification, container edits, commit, lock release)
against in-memory nodes and pods and compares the kubelet-visible response — env, mounts, device
specs, annotations, and the deterministic protobuf encoding — plus the pod's annotations, the
events and the node lock afterwards with ``golden/allocate_responses.json``. The file was recorded
from the Allocate code before it was split into modules; a change here is a wire change.

``HAMI_UPDATE_GOLDEN=1`` rewrites the file (review the diff: it must be intended).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
from dpkit import SPEC, A, B, C

from hami.deviceplugin.allocate import PodAllocator
from hami.deviceplugin.api import api_pb2
from hami.deviceplugin.settings import NodeSettings, build_inventory
from hami.deviceplugin.sources import FakeSource
from hami.protocol import keys
from hami.protocol.pod import MigAllocation, encode_mig_allocations
from hami.testing.memkube import MemoryKube

GOLDEN = Path(__file__).parent / "golden" / "allocate_responses.json"
NODE = "n1"
HOOK = "/opt/hami-golden"
LOCK = "2026-11-22T07:00:00Z"


def ctr(name: str, env: dict[str, str] | None = None, **limits: str) -> dict[str, Any]:
    return {
        "name": name,
        "env": [{"name": k, "value": v} for k, v in (env or {}).items()],
        "resources": {"limits": dict(limits)},
    }


def pod(
    to_allocate: str,
    *,
    ns: str = "default",
    containers: list[dict[str, Any]] | None = None,
    init: list[dict[str, Any]] | None = None,
    extra: dict[str, str] | None = None,
) -> dict[str, Any]:
    return {
        "metadata": {
            "name": "p1",
            "namespace": ns,
            "uid": "uid-p1",
            "annotations": {
                keys.VGPU_NODE: NODE,
                keys.BIND_PHASE: keys.BIND_PHASE_ALLOCATING,
                keys.VGPU_DEVICES_TO_ALLOCATE: to_allocate,
                keys.VGPU_DEVICES_ALLOCATED: to_allocate,
                **(extra or {}),
            },
        },
        "spec": {"nodeName": NODE, "initContainers": init or [], "containers": containers or [ctr("main")]},
        "status": {"phase": "Pending"},
    }


def mig_extra(placements: list[tuple[str, str, int, int]]) -> dict[str, str]:
    allocs = [MigAllocation(0, i, g, prof, s, n) for i, (g, prof, s, n) in enumerate(placements)]
    return {keys.VGPU_MIG_ALLOCATIONS: encode_mig_allocations(allocs)}


#: name -> (pod, container request sizes, NodeSettings overrides, FakeSource spec overrides)
CASES: dict[str, tuple[dict[str, Any], tuple[int, ...], dict[str, Any], dict[str, Any]]] = {
    "hami-core-shared-card": (
        pod(f"{C},NVIDIA,3000,30:;", containers=[ctr("main", **{"nvidia.com/priority": "1"})]),
        (1,),
        {"libcuda_log_level": "3", "memory_scaling": 2.0},
        {},
    ),
    "hami-core-multi-card-simulated-driver": (
        pod(f"{A},NVIDIA,3000,30:{B},NVIDIA,4000,20:{C},NVIDIA,1000,10:;"),
        (3,),
        {"gpu_core_policy": "force"},
        {"driver": {"root": "/sandbox/driver"}},
    ),
    "opt-out-whole-card": (
        pod(
            f"{C},NVIDIA,15360,100:;",
            ns="trusted",
            containers=[
                ctr("main", {"CUDA_DISABLE_CONTROL": "true", "GPU_CORE_UTILIZATION_POLICY": "disable"})
            ],
        ),
        (1,),
        {"enforcement_opt_out_namespaces": frozenset({"trusted"})},
        {},
    ),
    "opt-out-denied": (
        pod(
            f"{C},NVIDIA,15360,100:;",
            ns="tenant",
            containers=[ctr("main", {"CUDA_DISABLE_CONTROL": "1", "GPU_CORE_UTILIZATION_POLICY": "disable"})],
        ),
        (1,),
        {"enforcement_opt_out_namespaces": frozenset({"trusted"}), "disable_core_limit": False},
        {},
    ),
    # B had 0 MiB here, recorded as HAMi answers it: B left out of CUDA_MPS_PINNED_DEVICE_MEM_LIMIT,
    # i.e. unlimited under MPS. A 0-MiB card now fails the pod (test_dp_allocate.py::
    # test_errors_fail_the_pod_and_release_the_lock), so the case gives B 2000 MiB (see "_changes").
    "mps": (
        pod(f"{A},NVIDIA,3000,25:{B},NVIDIA,2000,25:;"),
        (2,),
        {"operating_mode": "mps"},
        {},
    ),
    "mig": (
        pod(
            f"{A},NVIDIA,4864,13:{B},NVIDIA,19968,39:;",
            extra=mig_extra([(A, "1g.5gb", 6, 1), (B, "3g.20gb", 4, 4)]),
        ),
        (2,),
        {"operating_mode": "mig"},
        {},
    ),
    "init-and-app-containers-in-one-request": (
        pod(
            f"{A},NVIDIA,1000,10:;;{B},NVIDIA,2000,20:{C},NVIDIA,3000,0:;",
            init=[ctr("setup")],
            containers=[ctr("web"), ctr("train")],
        ),
        (1, 2),
        {},
        {},
    ),
}


def _response(resp: api_pb2.AllocateResponse) -> dict[str, Any]:
    return {
        "containers": [
            {
                "envs": dict(sorted(car.envs.items())),
                "mounts": [[m.container_path, m.host_path, m.read_only] for m in car.mounts],
                "devices": [[d.container_path, d.host_path, d.permissions] for d in car.devices],
                "annotations": dict(sorted(car.annotations.items())),
                "cdi_devices": [d.name for d in car.cdi_devices],
            }
            for car in resp.container_responses
        ],
        "bytes": resp.SerializeToString(deterministic=True).hex(),
    }


async def run_case(name: str) -> dict[str, Any]:
    the_pod, sizes, settings, spec = CASES[name]
    meta = the_pod["metadata"]
    kube = MemoryKube(
        [{"metadata": {"name": NODE, "annotations": {keys.NODE_LOCK: f"{LOCK},{meta['namespace']},p1"}}}],
        [the_pod],
    )
    src = FakeSource({**SPEC, **spec})
    s = NodeSettings(node_name=NODE, hook_path=HOOK, **settings)
    ids = iter(f"cache{i}" for i in range(100))
    alloc = PodAllocator(
        kube, s, src, lambda: build_inventory(src, s), new_cache_id=lambda: next(ids), make_dirs=False
    )
    req = api_pb2.AllocateRequest()
    for n in sizes:
        req.container_requests.add(devices_ids=[f"GPU-x-{i}" for i in range(n)])
    resp = await alloc.allocate(req)
    after = kube.pods[(meta["namespace"], "p1")]["metadata"]
    return {
        "response": _response(resp),
        "pod_annotations": dict(sorted(after["annotations"].items())),
        "pod_labels": dict(sorted((after.get("labels") or {}).items())),
        "events": [list(e) for e in kube.events],
        "node_lock": kube.nodes[NODE]["metadata"]["annotations"].get(keys.NODE_LOCK),
        "mig_instances": [
            [i.gpu_uuid, i.profile, i.placement.start, i.placement.size, i.mig_uuid]
            for i in src.list_mig_instances()
        ],
    }


@pytest.mark.parametrize("name", sorted(CASES))
async def test_allocate_matches_golden(name: str) -> None:
    got = await run_case(name)
    if os.environ.get("HAMI_UPDATE_GOLDEN") == "1":
        data = json.loads(GOLDEN.read_text()) if GOLDEN.exists() else {}
        data[name] = got
        GOLDEN.parent.mkdir(exist_ok=True)
        GOLDEN.write_text(json.dumps(dict(sorted(data.items())), indent=1) + "\n")
    want = json.loads(GOLDEN.read_text())[name]
    assert got == want
