"""The lock-free allocation mode over real unix sockets: a kubelet-side harness (Registration,
Allocate, PreStartContainer), a PodResources server the test fills as the kubelet would at
Allocate, the plugin's NodeAgent in `cdi` mode, MemoryKube for the API and CDI spec files on disk."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import pytest

from hami.deviceplugin.agent import NodeAgent
from hami.deviceplugin.cdi import CDI_KIND, SpecStore, device_name, qualified_name
from hami.deviceplugin.settings import NodeSettings
from hami.deviceplugin.sources.fake import FakeSource
from hami.kube.poll import poll_until
from hami.protocol import keys
from hami.protocol.pod import (
    ContainerDevice,
    MigAllocation,
    decode_mig_allocations,
    encode_mig_allocations,
    encode_pod_devices,
)
from hami.testing.kubelet import FakeKubelet
from hami.testing.memkube import MemoryKube
from hami.testing.podresources import FakePodResources

RES = "nvidia.com/gpu"
A, B, C = "GPU-aaaa", "GPU-bbbb", "GPU-cccc"
NS = "default"


def dev(uuid: str, mem: int, cores: int) -> ContainerDevice:
    return ContainerDevice(uuid, "NVIDIA", mem, cores)


def gpu_ctr(name: str, count: int) -> dict[str, Any]:
    return {"name": name, "resources": {"limits": {RES: str(count)}}}


def bound_pod(
    name: str,
    containers: list[dict[str, Any]],
    allocated: list[tuple[ContainerDevice, ...]],
    *,
    init: list[dict[str, Any]] | None = None,
    phase: str = keys.BIND_PHASE_SUCCESS,
) -> dict[str, Any]:
    """A pod the extender bound lock-free: decision in vgpu-devices-allocated, to-allocate empty."""
    return {
        "metadata": {
            "name": name,
            "namespace": NS,
            "uid": f"uid-{name}",
            "annotations": {
                keys.VGPU_NODE: "n1",
                keys.BIND_PHASE: phase,
                keys.VGPU_DEVICES_ALLOCATED: encode_pod_devices(allocated),
                keys.VGPU_DEVICES_TO_ALLOCATE: encode_pod_devices([() for _ in allocated]),
            },
        },
        "spec": {"nodeName": "n1", "initContainers": init or [], "containers": containers},
        "status": {"phase": "Pending"},
    }


@dataclass
class Env:
    dir: Path
    kubelet: FakeKubelet
    pr: FakePodResources
    kube: MemoryKube
    source: FakeSource
    settings: NodeSettings
    agent: NodeAgent

    @property
    def cdi(self) -> Path:
        return self.dir / "cdi"

    def spec(self, ids: list[str]) -> dict[str, Any]:
        """The CDI spec file of the allocation holding `ids` (parsed)."""
        data: dict[str, Any] = json.loads(SpecStore(self.cdi).path(device_name(ids)).read_text())
        return data

    def env_of(self, ids: list[str]) -> dict[str, str]:
        spec = self.spec(ids)
        assert spec["kind"] == CDI_KIND
        [device] = spec["devices"]
        assert device["name"] == device_name(ids)
        return dict(e.split("=", 1) for e in device["containerEdits"]["env"])

    def annotations(self, pod: str) -> dict[str, str]:
        out: dict[str, str] = self.kube.pods[(NS, pod)]["metadata"]["annotations"]
        return out

    async def new_agent(self) -> NodeAgent:
        agent = NodeAgent(self.source, self.settings, kube=self.kube, plugin_dir=self.dir, watch_interval=0.1)
        assert agent.lockfree is not None
        agent.lockfree.status_wait = 3.0
        agent.lockfree.poll = 0.05
        await agent.start()
        return agent


@pytest.fixture
def workdir() -> Iterator[Path]:
    d = Path(tempfile.mkdtemp(prefix="hlf", dir="/tmp"))
    yield d
    shutil.rmtree(d, ignore_errors=True)


CARDS: dict[str, Any] = {
    "cards": [
        {"uuid": A, "memory": 40960},
        {"uuid": B, "memory": 40960, "index": 1},
        {"uuid": C, "memory": 15360, "index": 2},
    ]
}


@contextlib.asynccontextmanager
async def lock_free_node(workdir: Path, cards: dict[str, Any], **settings: Any) -> AsyncIterator[Env]:
    """The kubelet harness, a PodResources server and the plugin in `cdi` mode on node n1."""
    kube = MemoryKube([{"metadata": {"name": "n1", "annotations": {}}}])
    source = FakeSource(cards, poll_interval=0.05)
    node = NodeSettings(
        node_name="n1",
        split_count=4,
        hook_path=str(workdir / "hook"),
        allocation_mode="cdi",
        cdi_spec_dir=str(workdir / "cdi"),
        pod_resources_socket=str(workdir / "pod-resources" / "kubelet.sock"),
        **settings,
    )
    kubelet = FakeKubelet(workdir)
    await kubelet.start()
    pr = FakePodResources(Path(node.pod_resources_socket))
    await pr.start()
    e = Env(workdir, kubelet, pr, kube, source, node, None)  # type: ignore[arg-type]
    e.agent = await e.new_agent()
    try:
        await kubelet.wait_registrations(1)
        yield e
    finally:
        await e.agent.stop()
        await pr.stop()
        await kubelet.stop()


@pytest.fixture
async def env(workdir: Path) -> AsyncIterator[Env]:
    async with lock_free_node(workdir, CARDS) as e:
        await e.kubelet.wait_for(lambda: len(e.kubelet.devices.get(RES, {})) == 12)
        yield e


async def test_registers_pre_start_and_marks_the_node_cdi(env: Env) -> None:
    options = env.kubelet.options(RES)
    assert options is not None and options.pre_start_required
    await env.kubelet.wait_for(
        lambda: (
            env.kube.nodes["n1"]["metadata"]["annotations"].get(keys.NODE_ALLOCATION_MODE)
            == keys.ALLOCATION_MODE_CDI
        )
    )


async def test_allocate_answers_cdi_names_without_the_api(env: Env) -> None:
    before = list(env.kube.calls)
    resp = await env.kubelet.client(RES).allocate([f"{A}-0"], [f"{C}-1", f"{B}-2"])
    names = [[d.name for d in car.cdi_devices] for car in resp.container_responses]
    assert names == [[qualified_name([f"{A}-0"])], [qualified_name([f"{B}-2", f"{C}-1"])]]
    assert all(not car.envs and not car.mounts for car in resp.container_responses)
    # no pod read, no lock: Allocate only hashes the IDs (the registrar may read the node meanwhile)
    assert [c for c in env.kube.calls[len(before) :] if "pod" in c or c.startswith("patch node")] == []


async def test_prestart_writes_each_containers_spec(env: Env) -> None:
    # p1: two GPU containers, the second with two cards; p2 shares card A with p1
    env.kube.add_pod(
        bound_pod(
            "p1",
            [gpu_ctr("a", 1), gpu_ctr("b", 2)],
            [(dev(A, 3000, 30),), (dev(B, 2000, 20), dev(C, 1000, 10))],
        )
    )
    env.kube.add_pod(bound_pod("p2", [gpu_ctr("main", 1)], [(dev(A, 5000, 50),)]))
    p1a, p1b, p2 = [f"{A}-0"], [f"{B}-1", f"{C}-3"], [f"{A}-1"]
    client = env.kubelet.client(RES)
    await client.allocate(p1a, p1b)
    await client.allocate(p2)
    env.pr.hold(NS, "p1", "a", RES, p1a)
    env.pr.hold(NS, "p1", "b", RES, p1b)
    env.pr.hold(NS, "p2", "main", RES, p2)
    rv = {p: env.kube.pods[(NS, p)]["metadata"]["resourceVersion"] for p in ("p1", "p2")}
    await asyncio.gather(client.pre_start(p2), client.pre_start(list(reversed(p1b))), client.pre_start(p1a))

    a = env.env_of(p1a)
    assert (a["NVIDIA_VISIBLE_DEVICES"], a["CUDA_DEVICE_MEMORY_LIMIT_0"], a["CUDA_DEVICE_SM_LIMIT_0"]) == (
        A,
        "3000m",
        "30",
    )
    b = env.env_of(p1b)
    assert b["NVIDIA_VISIBLE_DEVICES"] == f"{B},{C}"
    assert (b["CUDA_DEVICE_MEMORY_LIMIT_0"], b["CUDA_DEVICE_MEMORY_LIMIT_1"]) == ("2000m", "1000m")
    assert (b["CUDA_DEVICE_SM_LIMIT_0"], b["CUDA_DEVICE_SM_LIMIT_1"]) == ("20", "10")
    assert a["CUDA_DEVICE_MEMORY_SHARED_CACHE"].endswith(f"/vgpu/{device_name(p1a)}.cache")
    m = env.env_of(p2)
    assert (m["NVIDIA_VISIBLE_DEVICES"], m["CUDA_DEVICE_MEMORY_LIMIT_0"]) == (A, "5000m")
    # the same ContainerEdits as the Allocate path: the library, the preload and the limits file
    mounts = {mt["containerPath"]: mt for mt in env.spec(p1a)["devices"][0]["containerEdits"]["mounts"]}
    assert {"/etc/ld.so.preload", "/etc/hami/vgpu.conf", f"{env.settings.hook_path}/vgpu/libvgpu.so"} <= set(
        mounts
    )
    conf = Path(mounts["/etc/hami/vgpu.conf"]["hostPath"]).read_text()
    assert "CUDA_DEVICE_MEMORY_LIMIT_0=3000m" in conf
    # success needs no API write
    assert {p: env.kube.pods[(NS, p)]["metadata"]["resourceVersion"] for p in ("p1", "p2")} == rv
    assert env.kube.events == []


async def test_init_container_ids_reused_by_the_app_container(env: Env) -> None:
    # the init container and the app container hold the same IDs (kubelet reuse); PodResources
    # lists only the app container; the pod's status tells which one is starting
    env.kube.add_pod(
        bound_pod(
            "p3",
            [gpu_ctr("app", 1)],
            [(), (dev(A, 500, 5),), (dev(B, 2000, 20),)],  # init containers first
            init=[{"name": "setup"}, gpu_ctr("warm", 1)],
        )
    )
    ids = [f"{C}-0"]
    env.pr.hold(NS, "p3", "app", RES, ids)
    client = env.kubelet.client(RES)
    env.kube.pods[(NS, "p3")]["status"]["initContainerStatuses"] = [
        {"name": "setup", "state": {"terminated": {"exitCode": 0}}},
        {"name": "warm", "state": {"waiting": {"reason": "PodInitializing"}}},
    ]
    await client.pre_start(ids)
    assert env.env_of(ids)["NVIDIA_VISIBLE_DEVICES"] == A  # the init container's card

    # the app container starts while the status still shows the init container running: the
    # plugin waits for the status to catch up instead of guessing
    def status(state: dict[str, Any]) -> None:
        env.kube.pods[(NS, "p3")]["status"]["initContainerStatuses"][1]["state"] = state

    status({"running": {}})
    started = asyncio.create_task(client.pre_start(ids, timeout=10))
    calls = env.pr.list_calls

    async def polled_twice() -> bool:
        return env.pr.list_calls >= calls + 2

    await poll_until(polled_twice, timeout=5, interval=0.02)
    assert not started.done()
    status({"terminated": {"exitCode": 0}})
    await started
    assert env.env_of(ids)["NVIDIA_VISIBLE_DEVICES"] == B
    assert env.annotations("p3")[keys.BIND_PHASE] == keys.BIND_PHASE_SUCCESS


def write_checkpoint(env: Env, *entries: tuple[str, str, list[str]]) -> None:
    """The kubelet's device checkpoint in the plugin directory, shaped as kubelet v1.34 writes it:
    (pod UID, container, IDs) of RES, the IDs under NUMA node -1 (no topology)."""
    data = {
        "Data": {
            "PodDeviceEntries": [
                {
                    "PodUID": uid,
                    "ContainerName": c,
                    "ResourceName": RES,
                    "DeviceIDs": {"-1": ids},
                    "AllocResp": "",
                }
                for uid, c, ids in entries
            ],
            "RegisteredDevices": {RES: []},
        },
        "Checksum": 1,
    }
    (env.dir / "kubelet_internal_checkpoint").write_text(json.dumps(data))


async def test_gpu_init_container_before_non_gpu_app_containers(env: Env) -> None:
    # only the init container asks for a GPU: PodResources lists nothing holding its IDs (the
    # kubelet lists app containers and sidecars only); its device checkpoint names the pod's UID
    env.kube.add_pod(bound_pod("p4", [{"name": "app"}], [(dev(A, 700, 7),), ()], init=[gpu_ctr("warm", 1)]))
    env.kube.add_pod(bound_pod("other", [gpu_ctr("a", 1)], [(dev(B, 900, 9),)]))
    env.pr.hold(NS, "other", "a", RES, [f"{B}-0"])
    ids = [f"{C}-2"]
    client = env.kubelet.client(RES)
    await expect_failure(env, ids, f"{C}-2", "no pod holds them", "nor in its device checkpoint")
    write_checkpoint(env, ("uid-other", "a", [f"{B}-0"]), ("uid-p4", "warm", ids))
    await client.pre_start(ids)
    e = env.env_of(ids)
    assert (e["NVIDIA_VISIBLE_DEVICES"], e["CUDA_DEVICE_MEMORY_LIMIT_0"]) == (A, "700m")
    assert env.annotations("p4")[keys.BIND_PHASE] == keys.BIND_PHASE_SUCCESS
    # the collector keeps the spec while the checkpoint records the allocation, then removes it
    assert env.agent.lockfree is not None
    assert await env.agent.lockfree.collect() == []
    # the kubelet rewrites its checkpoint only when it allocates: an entry of a pod that is gone
    # from the API (or finished) keeps nothing
    env.kube.pods[(NS, "p4")]["status"]["phase"] = "Succeeded"
    assert await env.agent.lockfree.collect() == [device_name(ids)]
    # an unreadable checkpoint skips collection instead of removing what may still be needed
    await client.pre_start([f"{B}-0"])
    env.pr.forget(NS, "other")
    (env.dir / "kubelet_internal_checkpoint").write_text("{not json")
    assert await env.agent.lockfree.collect() == []
    assert device_name([f"{B}-0"]) in SpecStore(env.cdi).names()


async def test_prestart_reads_the_pod_from_the_node_cache_when_the_kubelet_vouches(env: Env) -> None:
    # the node's pod cache serves the pod without a request when the kubelet's checkpoint records the
    # IDs for that copy's UID; a copy of another pod of the same name (recreated, cache behind) is
    # never used: the API is read instead
    env.kube.add_pod(bound_pod("p7", [gpu_ctr("a", 1)], [(dev(A, 1200, 12),)]))
    ids = [f"{A}-3"]
    env.pr.hold(NS, "p7", "a", RES, ids)
    write_checkpoint(env, ("uid-p7", "a", ids))
    before = list(env.kube.calls)
    await env.kubelet.client(RES).pre_start(ids)
    assert env.env_of(ids)["CUDA_DEVICE_MEMORY_LIMIT_0"] == "1200m"
    assert [c for c in env.kube.calls[len(before) :] if c.startswith("get pod")] == []

    stale = bound_pod("p7", [gpu_ctr("a", 1)], [(dev(B, 9000, 90),)])
    stale["metadata"]["uid"] = "uid-old-p7"
    env.kube.cached_pod = lambda namespace, name: stale  # type: ignore[method-assign]
    before = list(env.kube.calls)
    await env.kubelet.client(RES).pre_start(ids)
    assert env.env_of(ids)["CUDA_DEVICE_MEMORY_LIMIT_0"] == "1200m"  # the API's pod, not the stale copy
    assert f"get pod {NS}/p7" in env.kube.calls[len(before) :]


async def test_checkpoint_failures_are_named(env: Env) -> None:
    ids = [f"{C}-1"]
    for p in ("p5", "p6"):
        env.kube.add_pod(bound_pod(p, [{"name": "app"}], [(dev(A, 700, 7),), ()], init=[gpu_ctr("warm", 1)]))
    write_checkpoint(env, ("uid-p5", "warm", ids), ("uid-p6", "warm", ids))
    await expect_failure(env, ids, "held by 2 pods in the kubelet's device checkpoint", "uid-p5", "uid-p6")
    write_checkpoint(env, ("uid-gone", "warm", ids))
    await expect_failure(env, ids, "pod UIDs ['uid-gone']", "none of them a live pod of node n1")
    (env.dir / "kubelet_internal_checkpoint").write_text(
        json.dumps({"Data": {"PodDeviceEntries": [{"PodUID": "u", "ContainerName": 3}]}})
    )
    await expect_failure(env, ids, "kubelet_internal_checkpoint", "PodDeviceEntries[0].ContainerName")
    assert not SpecStore(env.cdi).names()


async def expect_failure(env: Env, ids: list[str], *fragments: str) -> str:
    with pytest.raises(grpc.aio.AioRpcError) as err:
        await env.kubelet.client(RES).pre_start(ids, timeout=10)
    assert err.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    details = err.value.details() or ""
    for f in fragments:
        assert f in details, details
    return details


async def test_missing_mapping_fails_naming_the_ids(env: Env) -> None:
    env.kube.add_pod(bound_pod("p1", [gpu_ctr("a", 1)], [(dev(A, 3000, 30),)]))
    env.pr.hold(NS, "p1", "a", RES, [f"{A}-0"])
    await expect_failure(env, [f"{B}-3"], f"{B}-3", "no pod holds them", f"{NS}/p1/a: ['{A}-0']")
    assert not SpecStore(env.cdi).names()
    env.pr.fail_with = grpc.StatusCode.UNAVAILABLE
    await expect_failure(env, [f"{A}-0"], "PodResources API", "UNAVAILABLE")


async def test_two_pods_holding_the_ids_fail_both(env: Env) -> None:
    for p in ("p1", "p2"):
        env.kube.add_pod(bound_pod(p, [gpu_ctr("a", 1)], [(dev(A, 3000, 30),)]))
        env.pr.hold(NS, p, "a", RES, [f"{A}-0"])
    await expect_failure(env, [f"{A}-0"], "held by 2 pods", f"{NS}/p1", f"{NS}/p2", "refusing to guess")
    for p in ("p1", "p2"):
        assert env.annotations(p)[keys.BIND_PHASE] == keys.BIND_PHASE_FAILED
    assert {reason for _, reason, _ in env.kube.events} == {"GPUAllocationFailed"}


async def test_bad_decisions_fail_the_pod(env: Env) -> None:
    # the decision names a card this node does not have
    env.kube.add_pod(bound_pod("p1", [gpu_ctr("a", 1)], [(dev("GPU-gone", 3000, 30),)]))
    env.pr.hold(NS, "p1", "a", RES, [f"{A}-0"])
    await expect_failure(env, [f"{A}-0"], "default/p1", "card GPU-gone is not on node n1")
    assert env.annotations("p1")[keys.BIND_PHASE] == keys.BIND_PHASE_FAILED
    # replica IDs of a card the plugin does not serve
    env.kube.add_pod(bound_pod("p2", [gpu_ctr("a", 1)], [(dev(A, 3000, 30),)]))
    env.pr.hold(NS, "p2", "a", RES, ["GPU-zzzz-0"])
    await expect_failure(env, ["GPU-zzzz-0"], "unknown device IDs ['GPU-zzzz-0']")
    assert env.annotations("p2")[keys.BIND_PHASE] == keys.BIND_PHASE_FAILED
    # no decision at all
    pod = bound_pod("p4", [gpu_ctr("a", 1)], [(dev(A, 3000, 30),)])
    del pod["metadata"]["annotations"][keys.VGPU_DEVICES_ALLOCATED]
    env.kube.add_pod(pod)
    env.pr.hold(NS, "p4", "a", RES, [f"{B}-0"])
    await expect_failure(env, [f"{B}-0"], f"no {keys.VGPU_DEVICES_ALLOCATED} annotation", "'a'")
    assert env.annotations("p4")[keys.BIND_PHASE] == keys.BIND_PHASE_FAILED
    # two app containers holding the same IDs: nothing in the pod can tell them apart
    env.kube.add_pod(bound_pod("p5", [gpu_ctr("x", 1), gpu_ctr("y", 1)], [(dev(C, 1, 1),), (dev(C, 1, 1),)]))
    env.pr.hold(NS, "p5", "x", RES, [f"{C}-0"])
    env.pr.hold(NS, "p5", "y", RES, [f"{C}-0"])
    await expect_failure(env, [f"{C}-0"], "cannot tell which container", "['x', 'y']")
    assert not SpecStore(env.cdi).names()


async def test_a_restarted_plugin_serves_prestart_for_the_old_allocate(env: Env) -> None:
    env.kube.add_pod(bound_pod("p1", [gpu_ctr("a", 1)], [(dev(B, 7000, 70),)]))
    ids = [f"{B}-2"]
    resp = await env.kubelet.client(RES).allocate(ids)
    env.pr.hold(NS, "p1", "a", RES, ids)
    registered = len(env.kubelet.registrations)
    await env.agent.stop()
    env.agent = await env.new_agent()
    await env.kubelet.wait_registrations(registered + 1)
    await env.kubelet.client(RES).pre_start(ids)
    assert qualified_name(ids) == resp.container_responses[0].cdi_devices[0].name
    assert env.env_of(ids)["CUDA_DEVICE_MEMORY_LIMIT_0"] == "7000m"


async def test_a_lock_mode_bind_completes_at_prestart(env: Env) -> None:
    pod = bound_pod("p1", [gpu_ctr("a", 1)], [(dev(A, 3000, 30),)], phase=keys.BIND_PHASE_ALLOCATING)
    pod["metadata"]["annotations"][keys.VGPU_DEVICES_TO_ALLOCATE] = f"{A},NVIDIA,3000,30:;"
    env.kube.add_pod(pod)
    await env.kube.patch_node(
        "n1", {"metadata": {"annotations": {keys.NODE_LOCK: "2026-12-07T17:00:00Z,default,p1"}}}
    )
    ids = [f"{A}-0"]
    await env.kubelet.client(RES).allocate(ids)
    assert keys.NODE_LOCK in env.kube.nodes["n1"]["metadata"]["annotations"]  # Allocate never touches it
    env.pr.hold(NS, "p1", "a", RES, ids)
    await env.kubelet.client(RES).pre_start(ids)
    ann = env.annotations("p1")
    assert ann[keys.BIND_PHASE] == keys.BIND_PHASE_SUCCESS
    assert ann[keys.VGPU_DEVICES_TO_ALLOCATE] == ";"
    assert keys.NODE_LOCK not in env.kube.nodes["n1"]["metadata"]["annotations"]
    assert env.env_of(ids)["CUDA_DEVICE_MEMORY_LIMIT_0"] == "3000m"


async def test_specs_of_gone_allocations_are_collected(env: Env) -> None:
    for p, card in (("p1", A), ("p2", B)):
        env.kube.add_pod(bound_pod(p, [gpu_ctr("a", 1)], [(dev(card, 1000, 10),)]))
        env.pr.hold(NS, p, "a", RES, [f"{card}-0"])
        await env.kubelet.client(RES).pre_start([f"{card}-0"])
    store = SpecStore(env.cdi)
    assert set(store.names()) == {device_name([f"{A}-0"]), device_name([f"{B}-0"])}
    foreign = env.cdi / "vendor.com-gpu.json"
    foreign.write_text("{}")
    env.pr.forget(NS, "p1")
    assert env.agent.lockfree is not None
    assert await env.agent.lockfree.collect() == [device_name([f"{A}-0"])]
    assert set(store.names()) == {device_name([f"{B}-0"])}
    assert foreign.exists()  # never another vendor's spec


MIG_CARD: dict[str, Any] = {
    "cards": [
        {"uuid": A, "model": "NVIDIA A100-SXM4-40GB", "memory": 40960, "mig": True, "mig_profiles": "p"}
    ],
    "mig_profile_sets": {
        "p": [
            {
                "name": "1g.5gb",
                "memory": 4864,
                "core": 13,
                "slices": 1,
                "placements": [[i, 1] for i in range(7)],
            }
        ]
    },
}


async def test_mig_instances_are_created_at_prestart(workdir: Path) -> None:
    async with lock_free_node(workdir, MIG_CARD, operating_mode="mig") as env:
        alloc = MigAllocation(0, 0, A, "1g.5gb", 2, 1)
        pod = bound_pod("p1", [gpu_ctr("a", 1)], [(dev(A, 4864, 13),)])
        pod["metadata"]["annotations"][keys.VGPU_MIG_ALLOCATIONS] = encode_mig_allocations([alloc])
        env.kube.add_pod(pod)
        ids = [f"{A}-0"]
        env.pr.hold(NS, "p1", "a", RES, ids)
        await env.kubelet.client(RES).pre_start(ids)
        [inst] = env.source.list_mig_instances()
        assert env.env_of(ids) == {"NVIDIA_VISIBLE_DEVICES": inst.mig_uuid}
        [recorded] = decode_mig_allocations(env.annotations("p1")[keys.VGPU_MIG_ALLOCATIONS])
        assert (recorded.mig_uuid, recorded.gpu_instance_id) == (inst.mig_uuid, inst.gpu_instance_id)
        # the container restarts: the recorded instance is reused, not created again
        await env.kubelet.client(RES).pre_start(ids)
        assert env.source.list_mig_instances() == [inst]
