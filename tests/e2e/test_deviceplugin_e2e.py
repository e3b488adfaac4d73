"""The device plugin against the real control plane: registration -> scheduling -> kubelet Allocate.

A fake GPU node is registered by the device plugin itself (NodeAgent over a FakeSource YAML, writing
``hami.io/node-nvidia-register`` through the API server); the hami extender behind a real
kube-scheduler places pods on it, *without* the AllocationCompleter, so pods stay in bind-phase
``allocating`` holding the node lock until the test — playing the kubelet through
:class:`hami.testing.pluginnode.PluginNode` — calls GetPreferredAllocation and Allocate over the
plugin's unix socket. Everything asserted is read back from the API server.
"""

from __future__ import annotations

import asyncio
import os
import re
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import grpc
import pytest
import yaml

from hami.deviceplugin.kubeops import ClientKubeOps, KubeOps
from hami.kube.client import KubeClient
from hami.kube.config import KubeConfig
from hami.kube.paths import api_path
from hami.protocol import bodies, keys
from hami.protocol.node import decode_node_devices
from hami.protocol.nodelock import NodeLock, decode_node_lock, encode_node_lock
from hami.protocol.pod import ContainerDevice as Dev
from hami.protocol.pod import decode_pod_devices, encode_pod_devices
from hami.testing.controlplane import SchedulerHandle
from hami.testing.gpucluster import gpu_pod
from hami.testing.pluginnode import Admission, PluginNode
from hami.testing.stack import Stack, wait_for

# HAMi's lock value: Go time.RFC3339 (seconds, Z or +hh:mm), namespace, pod name
LOCK_RE = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(Z|[+-]\d\d:\d\d),(?P<ns>[^,]+),(?P<name>[^,]+)$")


def card_uuid(node: str, i: int) -> str:
    return f"GPU-{node}-{i}"


def replica_card(replica_id: str) -> str:
    """`<GPU-UUID>-<i>` -> `<GPU-UUID>`."""
    return replica_id.rsplit("-", 1)[0]


def write_fake_node(path: Path, node: str, cards: int, memory: int) -> Path:
    spec = {
        "cards": [
            {"uuid": card_uuid(node, i), "index": i, "model": "NVIDIA A100-SXM4-40GB", "memory": memory}
            for i in range(cards)
        ]
    }
    path.write_text(yaml.safe_dump(spec))
    return path


def plugin_node(
    client: KubeClient, namespace: str, tmp_path: Path, kube: KubeOps | None = None
) -> PluginNode:
    """3 cards x 16384 MiB, split 4, registered by the device plugin; pods pin to it by label."""
    name = f"{namespace}-dp"
    fake = write_fake_node(tmp_path / "fake-node.yaml", name, cards=3, memory=16384)
    return PluginNode(
        client,
        name,
        fake,
        labels={"hami-test": namespace},
        kube=kube,
        split_count=4,
        libcuda_log_level="2",
    )


@pytest.fixture
async def gpu_node(kube_client: KubeClient, namespace: str, tmp_path: Path) -> AsyncIterator[PluginNode]:
    async with plugin_node(kube_client, namespace, tmp_path) as node:
        yield node


def pinned(pod: dict[str, Any], namespace: str) -> dict[str, Any]:
    pod["spec"]["nodeSelector"] = {"hami-test": namespace}
    return pod


async def get_pod(client: KubeClient, ns: str, name: str) -> dict[str, Any]:
    pod: dict[str, Any] = await client.get(api_path("v1", "pods", namespace=ns, name=name))
    return pod


ann = bodies.annotations


async def wait_bound(client: KubeClient, ns: str, name: str, timeout: float = 30) -> dict[str, Any]:
    async def bound() -> dict[str, Any] | None:
        p = await get_pod(client, ns, name)
        return p if bodies.node_name(p) else None

    pod: dict[str, Any] = await wait_for(bound, timeout=timeout, interval=0.1)
    return pod


def card_uuids(adm: Admission) -> list[str]:
    return adm.envs[keys.ENV_VISIBLE_DEVICES].split(",")


async def events(client: KubeClient, ns: str, reason: str) -> list[dict[str, Any]]:
    out = await client.get(api_path("v1", "events", namespace=ns))
    return [e for e in out.get("items") or [] if e.get("reason") == reason]


def assert_hami_core_response(adm: Admission, node: PluginNode, pod: dict[str, Any], devs: list[Dev]) -> None:
    """Env and mounts of one container, as HAMi's plugin builds them (hami-core mode)."""
    env = adm.envs
    vgpu = f"{node.hook_path}/vgpu"
    assert card_uuids(adm) == [d.uuid for d in devs]
    for i, d in enumerate(devs):
        assert env[f"{keys.ENV_MEMORY_LIMIT}_{i}"] == f"{d.usedmem}m"
    assert f"{keys.ENV_MEMORY_LIMIT}_{len(devs)}" not in env
    assert env[keys.ENV_SM_LIMIT] == str(devs[0].usedcores)
    assert env[keys.ENV_LOG_LEVEL] == "2"
    assert env[keys.ENV_CORE_POLICY] == "default"
    assert env[keys.ENV_DISABLE_CONTROL] == "false"
    assert keys.ENV_OVERSUBSCRIBE not in env
    mounts = adm.mounts
    private = f"{vgpu}/containers/{pod['metadata']['uid']}_{adm.container}"
    assert mounts[vgpu] == (private, False)  # private per-container dir at <hook>/vgpu
    assert os.path.isdir(private) and os.stat(private).st_mode & 0o777 == 0o777
    cache = env[keys.ENV_SHARED_CACHE]
    assert re.fullmatch(re.escape(vgpu) + r"/[0-9a-f-]{36}\.cache", cache), cache
    assert os.path.dirname(cache) == vgpu  # i.e. inside the private mount
    assert mounts[f"{vgpu}/libvgpu.so"] == (f"{vgpu}/libvgpu.so", True)
    assert mounts["/etc/ld.so.preload"] == (f"{vgpu}/ld.so.preload", True)
    assert mounts["/tmp/vgpulock"] == ("/tmp/vgpulock", False)


async def test_full_path_register_schedule_allocate(
    kube_config: KubeConfig,
    kube_client: KubeClient,
    namespace: str,
    start_scheduler: Callable[..., SchedulerHandle],
    gpu_node: PluginNode,
) -> None:
    # the plugin's registration, read back from the API server, is exactly the node's inventory
    node_ann = await gpu_node.annotations()
    registered = decode_node_devices(node_ann[keys.NODE_NVIDIA_REGISTER])
    assert [(d.id, d.index, d.count, d.devmem, d.devcore, d.health) for d in registered] == [
        (card_uuid(gpu_node.name, i), i, 4, 16384, 100, True) for i in range(3)
    ]
    assert {d.type for d in registered} == {"NVIDIA A100-SXM4-40GB"}
    node_obj = await gpu_node.node()
    assert node_obj["status"]["allocatable"]["nvidia.com/gpu"] == "12"

    async with Stack(kube_config, start_scheduler, completer=False):
        pod = gpu_pod("infer", gpus=2, mem=3000, cores=30, init=[{"name": "setup", "image": "busybox"}])
        pod["spec"]["containers"].append({"name": "sidecar", "image": "busybox"})
        await kube_client.create(api_path("v1", "pods", namespace=namespace), pinned(pod, namespace))
        bound = await wait_bound(kube_client, namespace, "infer")
        a = ann(bound)
        assert bound["spec"]["nodeName"] == gpu_node.name
        assert a[keys.BIND_PHASE] == keys.BIND_PHASE_ALLOCATING  # no completer: waits for Allocate
        # the extender's lock, in HAMi's format, names this pod
        lock = (await gpu_node.annotations())[keys.NODE_LOCK]
        m = LOCK_RE.match(lock)
        assert m and (m["ns"], m["name"]) == (namespace, "infer"), lock
        devices = decode_pod_devices(a[keys.VGPU_DEVICES_TO_ALLOCATE])
        assert [len(c) for c in devices] == [0, 2, 0]  # init, main, sidecar
        assigned = list(devices[1])

        # kubelet: GetPreferredAllocation, then Allocate over the unix socket
        admissions = await gpu_node.admit(namespace, "infer")
        assert [x.container for x in admissions] == ["main"]
        adm = admissions[0]
        assert adm.preferred is not None and adm.device_ids == adm.preferred
        assert sorted(replica_card(i) for i in adm.preferred) == sorted(d.uuid for d in assigned)
        assert_hami_core_response(adm, gpu_node, bound, assigned)

        after = await get_pod(kube_client, namespace, "infer")
        a = ann(after)
        assert a[keys.BIND_PHASE] == keys.BIND_PHASE_SUCCESS
        assert not any(decode_pod_devices(a[keys.VGPU_DEVICES_TO_ALLOCATE]))  # consumed
        assert decode_pod_devices(a[keys.VGPU_DEVICES_ALLOCATED])[1] == tuple(assigned)  # kept
        assert keys.NODE_LOCK not in await gpu_node.annotations()  # released


async def test_two_pods_on_one_node_never_get_each_others_cards(
    kube_config: KubeConfig,
    kube_client: KubeClient,
    namespace: str,
    start_scheduler: Callable[..., SchedulerHandle],
    gpu_node: PluginNode,
) -> None:
    # 12000 MiB of a 16384 MiB card: no two of these containers can share a card
    async with Stack(kube_config, start_scheduler, completer=False) as stack:
        for name, gpus in (("one", 1), ("two", 2)):
            p = pinned(gpu_pod(name, gpus=gpus, mem=12000, cores=20), namespace)
            await kube_client.create(api_path("v1", "pods", namespace=namespace), p)

        async def first_bound() -> str | None:
            for name in ("one", "two"):
                if bodies.node_name(await get_pod(kube_client, namespace, name)):
                    return name
            return None

        first = await wait_for(first_bound, timeout=30, interval=0.1)
        second = "two" if first == "one" else "one"
        lock = decode_node_lock((await gpu_node.annotations())[keys.NODE_LOCK])
        assert lock.owned_by(namespace, first)

        # the second pod has been placed on this node by the extender and its bind is waiting on
        # the node lock: it stays unbound for as long as the first pod's Allocate has not run
        assert stack.extender is not None
        ext = stack.extender

        async def second_in_bind() -> bool:
            return any(
                a.namespace == namespace and a.name == second and a.node == gpu_node.name
                for a in ext.scheduler.state.pods.values()
            )

        await wait_for(second_in_bind, timeout=30, interval=0.1)

        async def bind_waits_on_lock() -> bool:
            return bool(ext.locker._waiters.get(gpu_node.name))

        await wait_for(bind_waits_on_lock, timeout=30, interval=0.05)
        await asyncio.sleep(1.0)
        waiting = await get_pod(kube_client, namespace, second)
        assert not waiting["spec"].get("nodeName"), "second pod bound while the node lock was held"
        assert decode_node_lock((await gpu_node.annotations())[keys.NODE_LOCK]).owned_by(namespace, first)

        first_pod = await get_pod(kube_client, namespace, first)
        (adm1,) = await gpu_node.admit(namespace, first)
        allocated_at = time.monotonic()
        first_cards = [d.uuid for d in decode_pod_devices(ann(first_pod)[keys.VGPU_DEVICES_TO_ALLOCATE])[0]]
        assert card_uuids(adm1) == first_cards

        second_pod = await wait_bound(kube_client, namespace, second)
        bound_after = time.monotonic() - allocated_at
        assert ann(second_pod)[keys.BIND_PHASE] == keys.BIND_PHASE_ALLOCATING
        assert decode_node_lock((await gpu_node.annotations())[keys.NODE_LOCK]).owned_by(namespace, second)
        (adm2,) = await gpu_node.admit(namespace, second)
        second_cards = [d.uuid for d in decode_pod_devices(ann(second_pod)[keys.VGPU_DEVICES_TO_ALLOCATE])[0]]
        assert card_uuids(adm2) == second_cards
        assert len(first_cards) + len(second_cards) == 3
        assert not set(first_cards) & set(second_cards)
        # the kubelet's replica IDs were steered to each pod's own cards
        assert {replica_card(i) for i in adm1.device_ids} == set(first_cards)
        assert {replica_card(i) for i in adm2.device_ids} == set(second_cards)
        for name in (first, second):
            assert ann(await get_pod(kube_client, namespace, name))[keys.BIND_PHASE] == "success"
        assert keys.NODE_LOCK not in await gpu_node.annotations()
        assert bound_after < 20


# ---- pods constructed through the API (no scheduler): identification, failures, the lock ----


def pending_pod(
    node: str,
    name: str,
    to_allocate: str,
    *,
    gpus: int = 1,
    env: list[dict[str, str]] | None = None,
    phase: str = keys.BIND_PHASE_ALLOCATING,
) -> dict[str, Any]:
    """A pod as the extender's bind leaves it: on the node, bind-phase allocating, cards annotated."""
    ctr: dict[str, Any] = {
        "name": "main",
        "image": "registry.invalid/cuda:12",
        "resources": {"limits": {"nvidia.com/gpu": gpus}},
    }
    if env:
        ctr["env"] = env
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "annotations": {
                keys.VGPU_NODE: node,
                keys.BIND_PHASE: phase,
                keys.BIND_TIME: str(int(time.time())),
                keys.VGPU_DEVICES_TO_ALLOCATE: to_allocate,
                keys.VGPU_DEVICES_ALLOCATED: to_allocate,
            },
        },
        "spec": {
            "nodeName": node,
            "schedulerName": "nobody",
            "containers": [ctr],
            "terminationGracePeriodSeconds": 0,
        },
    }


def one_card(node: PluginNode, i: int, mem: int = 2000, cores: int = 10) -> str:
    return encode_pod_devices([(Dev(card_uuid(node.name, i), "NVIDIA", mem, cores),)])


async def set_lock(client: KubeClient, node: str, value: str | None) -> None:
    await client.merge_patch(
        api_path("v1", "nodes", name=node), {"metadata": {"annotations": {keys.NODE_LOCK: value}}}
    )


def hami_lock(ns: str, name: str, *, tz: timezone = UTC) -> str:
    return encode_node_lock(NodeLock(datetime.now(tz), ns, name))


async def test_two_pending_pods_without_a_lock_are_never_guessed(
    kube_client: KubeClient, namespace: str, gpu_node: PluginNode
) -> None:
    pods = api_path("v1", "pods", namespace=namespace)
    values = {"p1": one_card(gpu_node, 0), "p2": one_card(gpu_node, 1)}
    for name, value in values.items():
        await kube_client.create(pods, pending_pod(gpu_node.name, name, value))
    assert keys.NODE_LOCK not in await gpu_node.annotations()

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await gpu_node.allocate(1)
    msg = err.value.details() or ""
    assert f"{namespace}/p1" in msg and f"{namespace}/p2" in msg and "refusing to guess" in msg
    for name, value in values.items():  # nothing half-allocated, nothing failed
        a = ann(await get_pod(kube_client, namespace, name))
        assert a[keys.BIND_PHASE] == keys.BIND_PHASE_ALLOCATING
        assert a[keys.VGPU_DEVICES_TO_ALLOCATE] == value
    assert keys.NODE_LOCK not in await gpu_node.annotations()

    # the lock owner is allocated first, then the single remaining pod
    await set_lock(kube_client, gpu_node.name, hami_lock(namespace, "p2"))
    adm = await gpu_node.allocate(1)
    assert card_uuids(adm) == [card_uuid(gpu_node.name, 1)]
    assert keys.NODE_LOCK not in await gpu_node.annotations()
    assert ann(await get_pod(kube_client, namespace, "p1"))[keys.BIND_PHASE] == keys.BIND_PHASE_ALLOCATING
    adm = await gpu_node.allocate(1)
    assert card_uuids(adm) == [card_uuid(gpu_node.name, 0)]
    for name in values:
        a = ann(await get_pod(kube_client, namespace, name))
        assert a[keys.BIND_PHASE] == keys.BIND_PHASE_SUCCESS
        assert not any(decode_pod_devices(a[keys.VGPU_DEVICES_TO_ALLOCATE]))


@pytest.mark.parametrize(
    ("case", "to_allocate", "kubelet_ids", "error"),
    [
        ("corrupt", "GPU-x,NVIDIA,notanumber,10:;", 1, "bad hami.io/vgpu-devices-to-allocate annotation"),
        (
            "count",
            "<card0>",
            2,
            "device number not matched: the kubelet asked for 2, the scheduler assigned 1",
        ),
        ("foreign", "GPU-elsewhere,NVIDIA,1000,10:;", 1, "card GPU-elsewhere is not on node"),
    ],
)
async def test_failed_allocation_marks_failed_and_releases_the_lock(
    kube_client: KubeClient,
    namespace: str,
    gpu_node: PluginNode,
    case: str,
    to_allocate: str,
    kubelet_ids: int,
    error: str,
) -> None:
    value = one_card(gpu_node, 0) if to_allocate == "<card0>" else to_allocate
    await kube_client.create(
        api_path("v1", "pods", namespace=namespace), pending_pod(gpu_node.name, case, value)
    )
    await set_lock(kube_client, gpu_node.name, hami_lock(namespace, case))

    with pytest.raises(grpc.aio.AioRpcError) as err:
        await gpu_node.allocate(kubelet_ids)
    assert error in (err.value.details() or "")
    assert f"{namespace}/{case}" in (err.value.details() or "")
    a = ann(await get_pod(kube_client, namespace, case))
    assert a[keys.BIND_PHASE] == keys.BIND_PHASE_FAILED
    assert a[keys.VGPU_DEVICES_TO_ALLOCATE] == value  # untouched: never half-allocated
    assert keys.NODE_LOCK not in await gpu_node.annotations()
    (ev,) = await events(kube_client, namespace, "GPUAllocationFailed")
    assert ev["type"] == "Warning" and error in ev["message"]
    assert ev["involvedObject"]["name"] == case
    # a failed pod is not a candidate any more
    with pytest.raises(grpc.aio.AioRpcError, match="no pod on node"):
        await gpu_node.allocate(1)


async def test_lock_is_released_only_by_its_owner(
    kube_client: KubeClient, namespace: str, gpu_node: PluginNode
) -> None:
    pods = api_path("v1", "pods", namespace=namespace)
    # another pod holds the lock but is not waiting for an allocation (already succeeded)
    await kube_client.create(pods, pending_pod(gpu_node.name, "holder", ";", phase=keys.BIND_PHASE_SUCCESS))
    foreign = hami_lock(namespace, "holder")
    await set_lock(kube_client, gpu_node.name, foreign)
    # the single waiting pod is identified by the fallback and allocated; the lock stays
    tenant_env = [{"name": keys.ENV_DISABLE_CONTROL, "value": "1"}]
    await kube_client.create(pods, pending_pod(gpu_node.name, "p", one_card(gpu_node, 2), env=tenant_env))
    adm = await gpu_node.allocate(1)
    assert card_uuids(adm) == [card_uuid(gpu_node.name, 2)]
    assert (await gpu_node.annotations())[keys.NODE_LOCK] == foreign
    assert ann(await get_pod(kube_client, namespace, "p"))[keys.BIND_PHASE] == keys.BIND_PHASE_SUCCESS
    # and the tenant's CUDA_DISABLE_CONTROL=1 (namespace not opted out) was not honoured
    assert "/etc/ld.so.preload" in adm.mounts and adm.envs[keys.ENV_DISABLE_CONTROL] == "false"
    (denied,) = await events(kube_client, namespace, "EnforcementOptOutDenied")
    assert denied["involvedObject"]["name"] == "p" and keys.ENV_DISABLE_CONTROL in denied["message"]

    # a failure of a non-owner does not release the owner's lock either
    await kube_client.create(pods, pending_pod(gpu_node.name, "q", one_card(gpu_node, 1)))
    with pytest.raises(grpc.aio.AioRpcError, match="device number not matched"):
        await gpu_node.allocate(2)
    assert ann(await get_pod(kube_client, namespace, "q"))[keys.BIND_PHASE] == keys.BIND_PHASE_FAILED
    assert (await gpu_node.annotations())[keys.NODE_LOCK] == foreign

    # HAMi values the owner releases: a lock stamped in a non-UTC zone (Go RFC3339 "+08:00") ...
    await kube_client.create(pods, pending_pod(gpu_node.name, "r", one_card(gpu_node, 1)))
    owned = hami_lock(namespace, "r", tz=timezone(timedelta(hours=8)))
    assert LOCK_RE.match(owned) and "+08:00," in owned
    await set_lock(kube_client, gpu_node.name, owned)
    assert card_uuids(await gpu_node.allocate(1)) == [card_uuid(gpu_node.name, 1)]
    assert keys.NODE_LOCK not in await gpu_node.annotations()
    # ... and a legacy ownerless value (bare RFC3339, HAMi < v2.4) is released by the allocation
    await kube_client.create(pods, pending_pod(gpu_node.name, "s", one_card(gpu_node, 0)))
    await set_lock(kube_client, gpu_node.name, datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"))
    assert card_uuids(await gpu_node.allocate(1)) == [card_uuid(gpu_node.name, 0)]
    assert keys.NODE_LOCK not in await gpu_node.annotations()


@pytest.mark.parametrize("impostor", ["terminating", "running", "bound-elsewhere"])
async def test_a_lock_owner_the_kubelet_cannot_be_admitting_is_passed_over(
    kube_client: KubeClient, namespace: str, gpu_node: PluginNode, impostor: str
) -> None:
    """A pod holding this node's lock, annotated for this node with cards left to allocate, that is
    being deleted, is past Pending, or is bound to another node is not the pod whose container the
    kubelet is admitting here: its cards must not go to that container. Allocate passes it over
    and serves the single pod that is waiting."""
    pods = api_path("v1", "pods", namespace=namespace)
    path = api_path("v1", "pods", namespace=namespace, name="impostor")
    body = pending_pod(gpu_node.name, "impostor", one_card(gpu_node, 0))
    if impostor == "terminating":
        body["metadata"]["finalizers"] = ["hami.io/test-hold"]
    if impostor == "bound-elsewhere":
        body["spec"]["nodeName"] = f"{gpu_node.name}-other"
    await kube_client.create(pods, body)
    try:
        if impostor == "terminating":
            await kube_client.delete(path)
            assert (await kube_client.get(path))["metadata"].get("deletionTimestamp")
        if impostor == "running":
            status = api_path("v1", "pods", namespace=namespace, name="impostor", subresource="status")
            await kube_client.merge_patch(status, {"status": {"phase": "Running"}})
        await set_lock(kube_client, gpu_node.name, hami_lock(namespace, "impostor"))
        await kube_client.create(pods, pending_pod(gpu_node.name, "waiting", one_card(gpu_node, 1)))

        adm = await gpu_node.allocate(1)
        assert card_uuids(adm) == [card_uuid(gpu_node.name, 1)]
        assert (
            ann(await get_pod(kube_client, namespace, "waiting"))[keys.BIND_PHASE] == keys.BIND_PHASE_SUCCESS
        )
        left = ann(await get_pod(kube_client, namespace, "impostor"))
        assert left[keys.BIND_PHASE] == keys.BIND_PHASE_ALLOCATING
        assert left[keys.VGPU_DEVICES_TO_ALLOCATE] == one_card(gpu_node, 0)
    finally:
        if impostor == "terminating":
            await kube_client.merge_patch(path, {"metadata": {"finalizers": None}})


class WriterInBetween(ClientKubeOps):
    """The device plugin's API access, unchanged — except that another client's write lands on the
    pod between Allocate's read of it and Allocate's final annotation write (the patch that erases
    the container's entry of hami.io/vgpu-devices-to-allocate)."""

    def __init__(self, client: KubeClient, host: str, write: Callable[[str, str], Awaitable[object]]) -> None:
        super().__init__(client, host=host)
        self._write: Callable[[str, str], Awaitable[object]] | None = write

    async def patch_pod(
        self, namespace: str, name: str, patch: dict[str, Any], *, resource_version: str | None = None
    ) -> dict[str, Any]:
        annotations = bodies.annotations(patch)
        if self._write is not None and keys.VGPU_DEVICES_TO_ALLOCATE in annotations:
            write, self._write = self._write, None
            await write(namespace, name)
        return await super().patch_pod(namespace, name, patch, resource_version=resource_version)


@pytest.mark.parametrize("writer", ["unrelated", "reassigns-cards"])
async def test_allocates_final_write_is_a_compare_and_swap(
    kube_client: KubeClient, namespace: str, tmp_path: Path, writer: str
) -> None:
    """Allocate writes its result with the resourceVersion it read. An unrelated concurrent update
    (a label, the kubelet's status) costs a retry and is kept; a concurrent change of the cards to
    allocate is never overwritten with the erased old value: the allocation is refused."""
    name = f"{namespace}-dp"
    reassigned = encode_pod_devices([(Dev(card_uuid(name, 2), "NVIDIA", 2000, 10),)])

    async def write(ns: str, pod: str) -> None:
        path = api_path("v1", "pods", namespace=ns, name=pod)
        if writer == "unrelated":
            await kube_client.merge_patch(path, {"metadata": {"labels": {"team": "vision"}}})
        else:
            await kube_client.merge_patch(
                path, {"metadata": {"annotations": {keys.VGPU_DEVICES_TO_ALLOCATE: reassigned}}}
            )

    kube = WriterInBetween(kube_client, name, write)
    async with plugin_node(kube_client, namespace, tmp_path, kube=kube) as node:
        pods = api_path("v1", "pods", namespace=namespace)
        await kube_client.create(pods, pending_pod(node.name, "p", one_card(node, 0)))
        await set_lock(kube_client, node.name, hami_lock(namespace, "p"))
        if writer == "unrelated":
            adm = await node.allocate(1)
            assert card_uuids(adm) == [card_uuid(node.name, 0)]
            after = await get_pod(kube_client, namespace, "p")
            assert after["metadata"]["labels"]["team"] == "vision"  # the other write is kept
            assert ann(after)[keys.BIND_PHASE] == keys.BIND_PHASE_SUCCESS
            assert not any(decode_pod_devices(ann(after)[keys.VGPU_DEVICES_TO_ALLOCATE]))
        else:
            with pytest.raises(grpc.aio.AioRpcError) as err:
                await node.allocate(1)
            assert "changed during allocation" in (err.value.details() or "")
            after = await get_pod(kube_client, namespace, "p")
            assert ann(after)[keys.VGPU_DEVICES_TO_ALLOCATE] == reassigned  # not overwritten
            assert ann(after)[keys.BIND_PHASE] == keys.BIND_PHASE_FAILED
        assert keys.NODE_LOCK not in await node.annotations()


def gpu_container(name: str, gpus: int, *, sidecar: bool = False) -> dict[str, Any]:
    limits = {"nvidia.com/gpu": gpus, "nvidia.com/gpumem": 2000, "nvidia.com/gpucores": 20}
    ctr: dict[str, Any] = {"name": name, "image": "registry.invalid/cuda:12", "resources": {"limits": limits}}
    if sidecar:
        ctr["restartPolicy"] = "Always"
    return ctr


@pytest.mark.parametrize(
    ("init", "apps"),
    [
        ([gpu_container("setup", 1)], [gpu_container("main", 1), gpu_container("app1", 1)]),
        ([gpu_container("setup", 1)], [gpu_container("main", 2)]),
        ([gpu_container("setup", 1), gpu_container("sidecar", 1, sidecar=True)], [gpu_container("main", 1)]),
    ],
    ids=["two-app-containers", "app-container-with-2-gpus", "native-sidecar"],
)
async def test_init_containers_device_ids_are_reused_by_the_next_container(
    kube_config: KubeConfig,
    kube_client: KubeClient,
    namespace: str,
    start_scheduler: Callable[..., SchedulerHandle],
    gpu_node: PluginNode,
    init: list[dict[str, Any]],
    apps: list[dict[str, Any]],
) -> None:
    """The kubelet hands a finished GPU init container's device IDs on to the next container that
    asks for GPUs (its device manager's devicesToReuse), and only to that one (an app container or
    a native sidecar keeps them), so that container's Allocate carries IDs of the init container's
    card. Every container still gets the cards the scheduler chose for it."""
    pod = gpu_pod("reuse", init=init)
    pod["spec"]["containers"] = apps
    async with Stack(kube_config, start_scheduler, completer=False):
        await kube_client.create(api_path("v1", "pods", namespace=namespace), pinned(pod, namespace))
        bound = await wait_bound(kube_client, namespace, "reuse")
        devices = decode_pod_devices(ann(bound)[keys.VGPU_DEVICES_TO_ALLOCATE])
        wanted = [c["resources"]["limits"]["nvidia.com/gpu"] for c in init + apps]
        assert [len(c) for c in devices] == wanted

        admissions = await gpu_node.admit(namespace, "reuse")
        assert [a.container for a in admissions] == [c["name"] for c in init + apps]
        setup, following, *rest = admissions
        # the kubelet: the init container's ID goes on to the next container (which must include
        # it in a preferred allocation when it needs more), and only to that one
        assert set(setup.device_ids) <= set(following.device_ids)
        if len(following.device_ids) == 1:
            assert following.preferred is None  # nothing left to choose
        else:
            assert following.preferred is not None and set(setup.device_ids) <= set(following.preferred)
        for later in rest:
            assert not set(later.device_ids) & set(setup.device_ids)
        # hami: each container gets its own cards, whatever the IDs
        for adm, devs in zip(admissions, devices, strict=True):
            assert_hami_core_response(adm, gpu_node, bound, list(devs))
        after = ann(await get_pod(kube_client, namespace, "reuse"))
        assert after[keys.BIND_PHASE] == keys.BIND_PHASE_SUCCESS
        assert keys.NODE_LOCK not in await gpu_node.annotations()
