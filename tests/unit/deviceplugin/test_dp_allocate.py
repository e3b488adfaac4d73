"""Allocate logic against in-memory nodes and pods (MemoryKube)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from dpkit import SPEC, A, B, C

from hami.deviceplugin.allocate import PodAllocator
from hami.deviceplugin.api import api_pb2
from hami.deviceplugin.hostinstall import install_host
from hami.deviceplugin.server import AllocationError
from hami.deviceplugin.settings import NodeSettings, build_inventory
from hami.deviceplugin.sources import FakeSource, MigPlacement
from hami.protocol import keys
from hami.protocol.pod import MigAllocation, decode_mig_allocations, encode_mig_allocations
from hami.testing.memkube import MemoryKube

NODE = "n1"
LOCK_TIME = "2026-11-22T07:00:00Z"


def node(lock: str | None = None) -> dict[str, Any]:
    ann = {keys.NODE_LOCK: lock} if lock else {}
    return {"metadata": {"name": NODE, "annotations": ann}}


def pod(
    name: str,
    to_allocate: str,
    *,
    ns: str = "default",
    containers: list[dict[str, Any]] | None = None,
    init: list[dict[str, Any]] | None = None,
    phase: str = keys.BIND_PHASE_ALLOCATING,
    extra: dict[str, str] | None = None,
) -> dict[str, Any]:
    return {
        "metadata": {
            "name": name,
            "namespace": ns,
            "uid": f"uid-{name}",
            "annotations": {
                keys.VGPU_NODE: NODE,
                keys.BIND_PHASE: phase,
                keys.BIND_TIME: "1790000000",
                keys.VGPU_DEVICES_TO_ALLOCATE: to_allocate,
                keys.VGPU_DEVICES_ALLOCATED: to_allocate,
                **(extra or {}),
            },
        },
        "spec": {
            "nodeName": NODE,
            "initContainers": init or [],
            "containers": containers or [{"name": "main"}],
        },
        "status": {"phase": "Pending"},
    }


def request(*sizes: int) -> api_pb2.AllocateRequest:
    req = api_pb2.AllocateRequest()
    for n in sizes:
        req.container_requests.add(devices_ids=[f"GPU-x-{i}" for i in range(n)])
    return req


def make(
    kube: MemoryKube, tmp_path: Path, *, source: FakeSource | None = None, **settings: Any
) -> tuple[PodAllocator, FakeSource]:
    src = source or FakeSource(SPEC)
    s = NodeSettings(node_name=NODE, hook_path=str(tmp_path), **settings)
    ids = iter(f"cache{i}" for i in range(100))
    return PodAllocator(kube, s, src, lambda: build_inventory(src, s), new_cache_id=lambda: next(ids)), src


def ann(kube: MemoryKube, name: str, ns: str = "default") -> dict[str, str]:
    a: dict[str, str] = kube.pods[(ns, name)]["metadata"]["annotations"]
    return a


def lock_of(kube: MemoryKube) -> str | None:
    return kube.nodes[NODE]["metadata"]["annotations"].get(keys.NODE_LOCK)


async def test_lock_owner_gets_env_mounts_and_success(tmp_path: Path) -> None:
    kube = MemoryKube(
        [node(f"{LOCK_TIME},default,p1")], [pod("p1", f"{A},NVIDIA,3000,30:{B},NVIDIA,4000,30:;")]
    )
    alloc, _ = make(kube, tmp_path, libcuda_log_level="3")
    resp = await alloc.allocate(request(2))
    car = resp.container_responses[0]
    vgpu = f"{tmp_path}/vgpu"
    assert dict(car.envs) == {
        "NVIDIA_VISIBLE_DEVICES": f"{A},{B}",
        "CUDA_DEVICE_MEMORY_LIMIT_0": "3000m",
        "CUDA_DEVICE_MEMORY_LIMIT_1": "4000m",
        "CUDA_DEVICE_SM_LIMIT": "30",
        "CUDA_DEVICE_SM_LIMIT_0": "30",
        "CUDA_DEVICE_SM_LIMIT_1": "30",
        "CUDA_DEVICE_MEMORY_SHARED_CACHE": f"{vgpu}/cache0.cache",
        "LIBCUDA_LOG_LEVEL": "3",
        # always explicit, so a container's own env cannot be the only value the runtime sees
        "GPU_CORE_UTILIZATION_POLICY": "default",
        "CUDA_DISABLE_CONTROL": "false",
    }
    assert [(m.container_path, m.host_path, m.read_only) for m in car.mounts] == [
        (f"{vgpu}/libvgpu.so", f"{vgpu}/libvgpu.so", True),
        (vgpu, f"{vgpu}/containers/uid-p1_main", False),
        ("/tmp/vgpulock", "/tmp/vgpulock", False),
        ("/etc/hami/vgpu.conf", f"{vgpu}/containers/uid-p1_main.conf", True),
        ("/etc/ld.so.preload", f"{vgpu}/ld.so.preload", True),
    ]
    assert (tmp_path / "vgpu" / "containers" / "uid-p1_main").is_dir()
    # the library's limits come from this read-only file, not from the container's env
    conf = tmp_path / "vgpu" / "containers" / "uid-p1_main.conf"
    assert conf.read_text().splitlines() == [
        f"NVIDIA_VISIBLE_DEVICES={A},{B}",
        "CUDA_DEVICE_MEMORY_LIMIT_0=3000m",
        "CUDA_DEVICE_SM_LIMIT_0=30",
        "CUDA_DEVICE_MEMORY_LIMIT_1=4000m",
        "CUDA_DEVICE_SM_LIMIT_1=30",
        "CUDA_DEVICE_SM_LIMIT=30",
        f"CUDA_DEVICE_MEMORY_SHARED_CACHE={vgpu}/cache0.cache",
        "GPU_CORE_UTILIZATION_POLICY=default",
    ]
    assert conf.stat().st_mode & 0o777 == 0o444
    # what `hami install-host` puts on the node is exactly what these mounts expect
    lib_src = tmp_path / "built-libvgpu.so"
    lib_src.write_bytes(b"\x7fELF-test")
    installed = install_host(str(tmp_path), lib_src)
    assert {str(installed.library), str(installed.preload)} == {
        m.host_path for m in car.mounts if m.read_only and m.container_path != "/etc/hami/vgpu.conf"
    }
    assert installed.preload.read_text().strip() == car.mounts[0].container_path
    a = ann(kube, "p1")
    assert a[keys.VGPU_DEVICES_TO_ALLOCATE] == ";"
    assert a[keys.BIND_PHASE] == keys.BIND_PHASE_SUCCESS
    assert a[keys.VGPU_DEVICES_ALLOCATED] == f"{A},NVIDIA,3000,30:{B},NVIDIA,4000,30:;"  # never modified
    assert lock_of(kube) is None


async def test_every_allocated_card_gets_its_own_sm_limit(tmp_path: Path) -> None:
    """The shim prefers CUDA_DEVICE_SM_LIMIT_<i> over CUDA_DEVICE_SM_LIMIT (native/src/config.c), and
    a container's own env (envFrom included, which admission cannot see) overrides the device
    plugin's: with a per-card value set here, a plain CUDA_DEVICE_SM_LIMIT from the tenant is moot."""
    kube = MemoryKube(
        [node(f"{LOCK_TIME},default,p1")],
        [pod("p1", f"{A},NVIDIA,3000,30:{B},NVIDIA,4000,20:{C},NVIDIA,1000,10:;")],
    )
    alloc, _ = make(kube, tmp_path)
    envs = dict((await alloc.allocate(request(3))).container_responses[0].envs)
    assert envs["NVIDIA_VISIBLE_DEVICES"] == f"{A},{B},{C}"
    assert [envs.get(f"CUDA_DEVICE_SM_LIMIT_{i}") for i in range(4)] == ["30", "20", "10", None]
    assert [envs.get(f"CUDA_DEVICE_MEMORY_LIMIT_{i}") for i in range(4)] == ["3000m", "4000m", "1000m", None]
    assert envs["CUDA_DEVICE_SM_LIMIT"] == "30"  # kept for HAMi compatibility


async def test_single_pending_pod_found_without_lock(tmp_path: Path) -> None:
    kube = MemoryKube([node()], [pod("p1", f"{C},NVIDIA,1000,0:;"), pod("done", ";", phase="success")])
    alloc, _ = make(kube, tmp_path)
    resp = await alloc.allocate(request(1))
    assert resp.container_responses[0].envs["NVIDIA_VISIBLE_DEVICES"] == C
    assert ann(kube, "p1")[keys.BIND_PHASE] == keys.BIND_PHASE_SUCCESS


async def test_two_pending_pods_without_lock_is_an_error_not_a_guess(tmp_path: Path) -> None:
    kube = MemoryKube([node()], [pod("p1", f"{A},NVIDIA,1000,0:;"), pod("p2", f"{B},NVIDIA,1000,0:;")])
    alloc, _ = make(kube, tmp_path)
    with pytest.raises(AllocationError, match=r"2 pods .*default/p1, default/p2.*refusing to guess"):
        await alloc.allocate(request(1))
    for name in ("p1", "p2"):  # neither pod touched
        assert ann(kube, name)[keys.BIND_PHASE] == keys.BIND_PHASE_ALLOCATING


async def test_two_pending_pods_never_get_each_others_cards(tmp_path: Path) -> None:
    kube = MemoryKube(
        [node(f"{LOCK_TIME},default,p2")],
        [pod("p1", f"{A},NVIDIA,1000,0:;"), pod("p2", f"{B},NVIDIA,2000,0:;")],
    )
    alloc, _ = make(kube, tmp_path)
    resp = await alloc.allocate(request(1))
    assert resp.container_responses[0].envs["NVIDIA_VISIBLE_DEVICES"] == B
    assert ann(kube, "p1")[keys.BIND_PHASE] == keys.BIND_PHASE_ALLOCATING
    assert lock_of(kube) is None
    # p1 is now the only candidate: it gets its own card
    resp = await alloc.allocate(request(1))
    assert resp.container_responses[0].envs["NVIDIA_VISIBLE_DEVICES"] == A


async def test_stale_lock_owner_falls_back_to_scan(tmp_path: Path) -> None:
    kube = MemoryKube([node(f"{LOCK_TIME},default,gone")], [pod("p1", f"{A},NVIDIA,1000,0:;")])
    alloc, _ = make(kube, tmp_path)
    resp = await alloc.allocate(request(1))
    assert resp.container_responses[0].envs["NVIDIA_VISIBLE_DEVICES"] == A
    assert lock_of(kube) == f"{LOCK_TIME},default,gone"  # not ours: left alone


async def test_containers_in_order_with_init_container(tmp_path: Path) -> None:
    p = pod(
        "p1",
        f";{A},NVIDIA,1000,10:;;{B},NVIDIA,2000,20:;",
        init=[{"name": "setup"}],
        containers=[{"name": "web"}, {"name": "sidecar"}, {"name": "train"}],
    )
    kube = MemoryKube([node(f"{LOCK_TIME},default,p1")], [p])
    alloc, _ = make(kube, tmp_path)
    r1 = await alloc.allocate(request(1))
    assert r1.container_responses[0].envs["NVIDIA_VISIBLE_DEVICES"] == A
    assert r1.container_responses[0].mounts[1].host_path.endswith("/uid-p1_web")
    assert ann(kube, "p1")[keys.BIND_PHASE] == keys.BIND_PHASE_ALLOCATING
    assert lock_of(kube) is not None  # still held until every container is done
    r2 = await alloc.allocate(request(1))
    assert r2.container_responses[0].envs["NVIDIA_VISIBLE_DEVICES"] == B
    assert r2.container_responses[0].mounts[1].host_path.endswith("/uid-p1_train")
    assert ann(kube, "p1")[keys.BIND_PHASE] == keys.BIND_PHASE_SUCCESS
    assert lock_of(kube) is None


@pytest.mark.parametrize(
    ("to_allocate", "sizes", "message", "mode"),
    [
        (
            f"{A},NVIDIA,1000,0:;",
            (2,),
            "device number not matched: the kubelet asked for 2, the scheduler assigned 1",
            "hami-core",
        ),
        ("GPU-elsewhere,NVIDIA,1000,0:;", (1,), "card GPU-elsewhere is not on node n1", "hami-core"),
        ("garbage;", (1,), "bad hami.io/vgpu-devices-to-allocate annotation", "hami-core"),
        # 0 MiB never reaches a container as a limit: libvgpu would refuse every allocation, MPS
        # would leave the card out of CUDA_MPS_PINNED_DEVICE_MEM_LIMIT, i.e. unlimited (HAMi did)
        (f"{A},NVIDIA,0,30:;", (1,), "refusing a 0-MiB slice", "hami-core"),
        (f"{A},NVIDIA,3000,25:{B},NVIDIA,0,25:;", (2,), f"card {B} was assigned 0 MiB; refusing", "mps"),
    ],
)
async def test_errors_fail_the_pod_and_release_the_lock(
    tmp_path: Path, to_allocate: str, sizes: tuple[int, ...], message: str, mode: str
) -> None:
    kube = MemoryKube([node(f"{LOCK_TIME},default,p1")], [pod("p1", to_allocate)])
    alloc, _ = make(kube, tmp_path, operating_mode=mode)
    with pytest.raises(AllocationError, match=message):
        await alloc.allocate(request(*sizes))
    a = ann(kube, "p1")
    assert a[keys.BIND_PHASE] == keys.BIND_PHASE_FAILED
    assert a[keys.VGPU_DEVICES_TO_ALLOCATE] == to_allocate  # nothing half-consumed
    assert lock_of(kube) is None
    assert kube.events and kube.events[-1][1] == "GPUAllocationFailed"


async def test_unhealthy_card_is_refused(tmp_path: Path) -> None:
    kube = MemoryKube([node(f"{LOCK_TIME},default,p1")], [pod("p1", f"{A},NVIDIA,1000,0:;")])
    alloc, src = make(kube, tmp_path)
    src.inject_health(A, False, xid=79)
    with pytest.raises(AllocationError, match="unhealthy"):
        await alloc.allocate(request(1))


async def test_no_pending_pod(tmp_path: Path) -> None:
    kube = MemoryKube([node()], [pod("p1", ";", phase="success")])
    alloc, _ = make(kube, tmp_path)
    with pytest.raises(AllocationError, match="no pod on node n1 is waiting"):
        await alloc.allocate(request(1))


def _ctr(env: dict[str, str], **res: str) -> dict[str, Any]:
    return {
        "name": "main",
        "env": [{"name": k, "value": v} for k, v in env.items()],
        "resources": {"limits": dict(res)},
    }


async def test_disable_control_only_in_allowed_namespaces(tmp_path: Path) -> None:
    ctr = _ctr({"CUDA_DISABLE_CONTROL": "true"})
    kube = MemoryKube(
        [node(f"{LOCK_TIME},trusted,p1")],
        [pod("p1", f"{A},NVIDIA,1000,0:;", ns="trusted", containers=[ctr])],
    )
    alloc, _ = make(kube, tmp_path, enforcement_opt_out_namespaces=frozenset({"trusted"}))
    car = (await alloc.allocate(request(1))).container_responses[0]
    assert "/etc/ld.so.preload" not in [m.container_path for m in car.mounts]
    assert "CUDA_DISABLE_CONTROL" not in car.envs

    kube = MemoryKube(
        [node(f"{LOCK_TIME},tenant,p1")],
        [pod("p1", f"{A},NVIDIA,1000,0:;", ns="tenant", containers=[ctr])],
    )
    alloc, _ = make(kube, tmp_path, enforcement_opt_out_namespaces=frozenset({"trusted"}))
    car = (await alloc.allocate(request(1))).container_responses[0]
    assert "/etc/ld.so.preload" in [m.container_path for m in car.mounts]
    assert car.envs["CUDA_DISABLE_CONTROL"] == "false"
    assert kube.events[-1][1] == "EnforcementOptOutDenied"


async def test_core_policy_priority_and_oversubscription(tmp_path: Path) -> None:
    ctr = _ctr({"GPU_CORE_UTILIZATION_POLICY": "disable"}, **{"nvidia.com/priority": "1"})
    kube = MemoryKube(
        [node(f"{LOCK_TIME},default,p1")], [pod("p1", f"{A},NVIDIA,1000,50:;", containers=[ctr])]
    )
    alloc, _ = make(kube, tmp_path, memory_scaling=2.0, gpu_core_policy="force")
    envs = (await alloc.allocate(request(1))).container_responses[0].envs
    assert envs["CUDA_OVERSUBSCRIBE"] == "true"
    assert envs["CUDA_TASK_PRIORITY"] == "1"
    assert envs["GPU_CORE_UTILIZATION_POLICY"] == "force"  # tenant's "disable" is not honoured
    kube = MemoryKube([node(f"{LOCK_TIME},default,p1")], [pod("p1", f"{A},NVIDIA,1000,50:;")])
    alloc, _ = make(kube, tmp_path, disable_core_limit=True)
    envs = (await alloc.allocate(request(1))).container_responses[0].envs
    assert envs["GPU_CORE_UTILIZATION_POLICY"] == "disable"


async def test_mps_mode(tmp_path: Path) -> None:
    kube = MemoryKube(
        [node(f"{LOCK_TIME},default,p1")], [pod("p1", f"{A},NVIDIA,3000,25:{B},NVIDIA,2000,25:;")]
    )
    alloc, _ = make(kube, tmp_path, operating_mode="mps")
    car = (await alloc.allocate(request(2))).container_responses[0]
    assert dict(car.envs) == {
        "NVIDIA_VISIBLE_DEVICES": f"{A},{B}",
        "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "25",
        "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": "0=3000M,1=2000M",
        "CUDA_MPS_PIPE_DIRECTORY": "/tmp/nvidia-mps",
        "CUDA_MPS_LOG_DIRECTORY": "/tmp/nvidia-log",
    }
    assert "/etc/ld.so.preload" not in [m.container_path for m in car.mounts]


def mig_pod(name: str, placements: list[tuple[str, str, int, int]]) -> dict[str, Any]:
    devs = "".join(f"{g},NVIDIA,4864,13:" for g, _, _, _ in placements) + ";"
    allocs = [
        MigAllocation(0, i, g, prof, start, size) for i, (g, prof, start, size) in enumerate(placements)
    ]
    return pod(name, devs, extra={keys.VGPU_MIG_ALLOCATIONS: encode_mig_allocations(allocs)})


async def test_mig_allocate_creates_instances_and_records_them(tmp_path: Path) -> None:
    kube = MemoryKube(
        [node(f"{LOCK_TIME},default,p1")], [mig_pod("p1", [(A, "1g.5gb", 6, 1), (B, "3g.20gb", 4, 4)])]
    )
    alloc, src = make(kube, tmp_path, operating_mode="mig")
    car = (await alloc.allocate(request(2))).container_responses[0]
    insts = src.list_mig_instances()
    assert [(i.gpu_uuid, i.profile, i.placement) for i in insts] == [
        (A, "1g.5gb", MigPlacement(6, 1)),
        (B, "3g.20gb", MigPlacement(4, 4)),
    ]
    assert dict(car.envs) == {"NVIDIA_VISIBLE_DEVICES": ",".join(i.mig_uuid for i in insts)}
    assert not car.mounts  # no HAMi-core injection in MIG mode
    recorded = decode_mig_allocations(ann(kube, "p1")[keys.VGPU_MIG_ALLOCATIONS])
    assert [(r.mig_uuid, r.gpu_instance_id, r.compute_instance_id) for r in recorded] == [
        (i.mig_uuid, i.gpu_instance_id, 0) for i in insts
    ]
    assert ann(kube, "p1")[keys.BIND_PHASE] == keys.BIND_PHASE_SUCCESS


async def test_mig_failure_leaves_no_instances(tmp_path: Path) -> None:
    kube = MemoryKube(
        [node(f"{LOCK_TIME},default,p1")], [mig_pod("p1", [(A, "1g.5gb", 0, 1), (B, "1g.5gb", 0, 1)])]
    )
    alloc, src = make(kube, tmp_path, operating_mode="mig")
    src.fail_mig_create.add(B)
    with pytest.raises(AllocationError, match="injected MIG creation failure"):
        await alloc.allocate(request(2))
    assert src.list_mig_instances() == []
    assert ann(kube, "p1")[keys.BIND_PHASE] == keys.BIND_PHASE_FAILED
    assert lock_of(kube) is None


async def test_mig_reconcile_destroys_instances_of_gone_pods(tmp_path: Path) -> None:
    kube = MemoryKube([node(f"{LOCK_TIME},default,p1")], [mig_pod("p1", [(A, "1g.5gb", 0, 1)])])
    alloc, src = make(kube, tmp_path, operating_mode="mig")
    await alloc.allocate(request(1))
    orphan = src.create_mig_instance(B, "1g.5gb", MigPlacement(3, 1))  # no pod references it
    assert await alloc.reconcile_mig() == []  # first sighting: grace
    assert await alloc.reconcile_mig() == [orphan]
    assert len(src.list_mig_instances()) == 1  # p1's instance kept
    kube.delete_pod("default", "p1")
    await alloc.reconcile_mig()
    await alloc.reconcile_mig()
    assert src.list_mig_instances() == []


async def test_commit_retries_on_unrelated_pod_update(tmp_path: Path) -> None:
    kube = MemoryKube([node(f"{LOCK_TIME},default,p1")], [pod("p1", f"{A},NVIDIA,1000,0:;")])
    alloc, _ = make(kube, tmp_path)
    original = kube.patch_pod
    bumped = []

    async def racing_patch(
        ns: str, name: str, patch: dict[str, Any], *, resource_version: str | None = None
    ) -> Any:
        if not bumped:  # the kubelet updates the pod status in between
            bumped.append(1)
            await original(ns, name, {"status": {"conditions": []}})
        return await original(ns, name, patch, resource_version=resource_version)

    kube.patch_pod = racing_patch  # type: ignore[method-assign]
    await alloc.allocate(request(1))
    assert ann(kube, "p1")[keys.BIND_PHASE] == keys.BIND_PHASE_SUCCESS


async def test_preferred_cards_are_the_schedulers(tmp_path: Path) -> None:
    kube = MemoryKube(
        [node(f"{LOCK_TIME},default,p1")], [pod("p1", f";{C},NVIDIA,1000,0:{A},NVIDIA,1000,0:;")]
    )
    alloc, _ = make(kube, tmp_path)
    assert await alloc.preferred_cards(2) == [C, A]


async def test_multi_vendor_pod_leaves_phase_and_lock_to_the_last_plugin(tmp_path: Path) -> None:
    p = pod(
        "p1",
        f"{A},NVIDIA,1000,0:;",
        extra={"hami.io/cambricon-mlu-devices-to-allocate": "mlu-0,MLU,256,10:;"},
    )
    kube = MemoryKube([node(f"{LOCK_TIME},default,p1")], [p])
    alloc, _ = make(kube, tmp_path)
    await alloc.allocate(request(1))
    assert ann(kube, "p1")[keys.BIND_PHASE] == keys.BIND_PHASE_ALLOCATING
    assert ann(kube, "p1")[keys.VGPU_DEVICES_TO_ALLOCATE] == ";"
    assert lock_of(kube) is not None


async def test_a_simulated_driver_reaches_the_container_like_a_real_one(tmp_path: Path) -> None:
    """With the fake source's ``driver`` set, the container also gets the fake driver's libraries
    where the NVIDIA runtime puts the real ones, and the fake driver's description of its cards;
    hami's own variables win over anything the driver section would set."""
    spec = {**SPEC, "driver": {"root": "/sandbox/driver"}}
    kube = MemoryKube(
        [node(f"{LOCK_TIME},default,p1")], [pod("p1", f"{A},NVIDIA,3000,30:{C},NVIDIA,4000,30:;")]
    )
    alloc, _ = make(kube, tmp_path, source=FakeSource(spec))
    car = (await alloc.allocate(request(2))).container_responses[0]
    env = dict(car.envs)
    assert (env["FAKECUDA_DEVICES"], env["FAKECUDA_TOTAL_MEM"]) == ("2", "15360m")  # the smaller card
    # one device state per container, shared by its fake CUDA and NVML (what the limiter measures)
    assert env["FAKECUDA_STATE"] == "/tmp/.hami-fake-gpu.state"
    assert env["CUDA_DEVICE_MEMORY_LIMIT_0"] == "3000m"
    mounts = [(m.container_path, m.host_path, m.read_only) for m in car.mounts]
    assert mounts[-2:] == [
        ("/usr/lib/x86_64-linux-gnu/libcuda.so.1", "/sandbox/driver/libcuda.so.1", True),
        ("/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1", "/sandbox/driver/libnvidia-ml.so.1", True),
    ]
    # without a driver section (and on NVML nodes) the container runtime provides the driver
    plain, _ = make(
        MemoryKube([node(f"{LOCK_TIME},default,p1")], [pod("p1", f"{A},NVIDIA,3000,30:;")]), tmp_path
    )
    car = (await plain.allocate(request(1))).container_responses[0]
    assert not any(k.startswith("FAKECUDA") for k in car.envs)
    assert not any("libcuda" in m.container_path for m in car.mounts)


@pytest.mark.parametrize("reassign_on_last", [False, True])
async def test_commit_gives_up_after_five_conflicting_patches(tmp_path: Path, reassign_on_last: bool) -> None:
    """Five patches, each beaten by another write; the pod read after the last one decides the
    message: the cards were reassigned, or the conflicts simply did not stop."""
    kube = MemoryKube([node(f"{LOCK_TIME},default,p1")], [pod("p1", f"{A},NVIDIA,1000,0:;")])
    alloc, _ = make(kube, tmp_path)
    original = kube.patch_pod
    tries = []

    async def always_beaten(
        ns: str, name: str, patch: dict[str, Any], *, resource_version: str | None = None
    ) -> Any:
        if resource_version is not None:  # the commit's compare-and-swap, not mark_failed
            tries.append(1)
            late = (
                {keys.VGPU_DEVICES_TO_ALLOCATE: f"{B},NVIDIA,1000,0:;"}
                if reassign_on_last and len(tries) == 5
                else {}
            )
            await original(ns, name, {"metadata": {"labels": {"n": str(len(tries))}, "annotations": late}})
        return await original(ns, name, patch, resource_version=resource_version)

    kube.patch_pod = always_beaten  # type: ignore[method-assign]
    message = (
        "changed during allocation" if reassign_on_last else r"could not update annotations \(conflicts\)"
    )
    with pytest.raises(AllocationError, match=message):
        await alloc.allocate(request(1))
    assert len(tries) == 5
    assert ann(kube, "p1")[keys.BIND_PHASE] == keys.BIND_PHASE_FAILED
