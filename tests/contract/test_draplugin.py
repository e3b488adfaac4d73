"""The DRA kubelet plugin over real unix sockets: a kubelet-side harness registers it through the
plugins_registry socket and calls NodePrepareResources / NodeUnprepareResources as kubelet 1.34
does; the API is an in-memory store (MemoryDraKube) holding the node, the claims and the slice."""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hami.deviceplugin.modes import VGPU_CONF_PATH
from hami.deviceplugin.settings import NodeSettings
from hami.deviceplugin.sources.fake import FakeSource
from hami.draplugin.checkpoint import CheckpointError
from hami.draplugin.prepare import CDI_KIND
from hami.draplugin.runner import DraNodePlugin
from hami.draplugin.slices import slice_name
from hami.protocol import keys
from hami.testing.dra import mig_fake_source_spec, serving
from hami.testing.drakubelet import DraKubelet
from hami.testing.memkube import MemoryDraKube

A, B = "GPU-aaaa", "GPU-bbbb"
NODE = "n1"


def claim(name: str, *results: dict[str, Any], uid: str | None = None) -> dict[str, Any]:
    body: dict[str, Any] = {
        "metadata": {"name": name, "namespace": "ns", "uid": uid or f"uid-{name}"},
        "spec": {"devices": {"requests": [{"name": "gpu"}]}},
    }
    if results:
        body["status"] = {"allocation": {"devices": {"results": list(results)}}}
    return body


def result(
    device: str, memory: str | None = None, cores: str | None = None, request: str = "gpu"
) -> dict[str, Any]:
    r: dict[str, Any] = {"request": request, "driver": keys.DRA_DRIVER, "pool": NODE, "device": device}
    consumed = {k: v for k, v in (("memory", memory), ("cores", cores)) if v is not None}
    if consumed:
        r["consumedCapacity"] = consumed
    return r


@dataclass
class Node:
    root: Path
    kube: MemoryDraKube
    source: FakeSource
    settings: NodeSettings

    def plugin(self) -> DraNodePlugin:
        return DraNodePlugin(
            self.source,
            self.settings,
            self.kube,
            plugin_dir=self.root / "plugins",
            registry_dir=self.root / "registry",
            cdi_dir=str(self.root / "cdi"),
            state_dir=self.root / "state",
        )

    def kubelet(self) -> DraKubelet:
        return DraKubelet(self.root / "registry", keys.DRA_DRIVER)


def make_node(root: Path, *, mig: bool = False) -> Node:
    """Node n1 with card A (an A100, MIG-capable with the sandbox's A100 profiles when `mig`) and
    card B (a T4), each with a device node under `root`."""
    (root / "dev").mkdir()
    for name in ("nvidia0", "nvidia1"):
        (root / "dev" / name).touch()
    kube = MemoryDraKube([{"metadata": {"name": NODE, "uid": "node-uid"}}])
    card_a: dict[str, Any] = {"uuid": A, "memory": 40960, "device_node": str(root / "dev/nvidia0")}
    spec: dict[str, Any] = {
        "cards": [
            card_a,
            {
                "uuid": B,
                "memory": 15360,
                "model": "Tesla T4",
                "numa": 1,
                "device_node": str(root / "dev/nvidia1"),
            },
        ],
        "links": [{"a": A, "b": B, "type": "SameBoard", "nvlinks": 4}],
    }
    if mig:
        geometry = mig_fake_source_spec(A)
        spec["mig_profile_sets"] = geometry["mig_profile_sets"]
        card_a.update(geometry["cards"][0])
    source = FakeSource(spec, poll_interval=0.05)
    settings = NodeSettings(node_name=NODE, operating_mode="dra", hook_path=str(root / "hook"))
    return Node(root, kube, source, settings)


@pytest.fixture
def node() -> Iterator[Node]:
    root = Path(tempfile.mkdtemp(prefix="hdra", dir="/tmp"))
    yield make_node(root)
    shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
async def running(node: Node) -> AsyncIterator[tuple[DraNodePlugin, DraKubelet]]:
    plugin = node.plugin()
    await plugin.start()
    kubelet = node.kubelet()
    await kubelet.register()
    try:
        yield plugin, kubelet
    finally:
        await plugin.stop()


async def test_registration_as_kubelet_1_34_sees_it(
    node: Node, running: tuple[DraNodePlugin, DraKubelet]
) -> None:
    plugin, kubelet = running
    assert kubelet.service == "v1.DRAPlugin"
    assert kubelet.endpoint == str(node.root / "plugins" / "dra.sock")
    await asyncio.wait_for(plugin.server.registered.wait(), 10)
    assert (node.root / "registry" / f"{keys.DRA_DRIVER}-reg.sock").is_socket()


async def test_slice_published_with_the_contract(
    node: Node, running: tuple[DraNodePlugin, DraKubelet]
) -> None:
    stored = node.kube.slices[slice_name(NODE)]
    assert stored["metadata"]["ownerReferences"][0] == {
        "apiVersion": "v1",
        "kind": "Node",
        "name": NODE,
        "uid": "node-uid",
        "controller": True,
    }
    spec = stored["spec"]
    assert (spec["driver"], spec["nodeName"], spec["pool"]) == (
        keys.DRA_DRIVER,
        NODE,
        {"name": NODE, "generation": 1, "resourceSliceCount": 1},
    )
    gpu0, gpu1 = spec["devices"]
    assert gpu1["name"] == "gpu-1"
    assert gpu1["attributes"] == {
        "productName": {"string": "NVIDIA-Tesla T4"},
        "uuid": {"string": B},
        "index": {"int": 1},
        "numaNode": {"int": 1},
        "type": {"string": "gpu"},
        "nvlinkGroup": {"int": 0},
    }
    assert gpu0["capacity"] == {
        "memory": {
            "value": "40Gi",
            "requestPolicy": {"default": "40Gi", "validRange": {"min": "1Mi", "step": "1Mi"}},
        },
        "cores": {
            "value": "100",
            "requestPolicy": {"default": "0", "validRange": {"min": "0", "max": "100", "step": "1"}},
        },
    }
    assert gpu0["allowMultipleAllocations"] is True


async def test_unhealthy_card_leaves_the_slice_and_returns(
    node: Node, running: tuple[DraNodePlugin, DraKubelet]
) -> None:
    def names() -> list[str]:
        return [d["name"] for d in node.kube.slices[slice_name(NODE)]["spec"]["devices"]]

    async def until(want: list[str]) -> None:
        while names() != want:
            await asyncio.sleep(0.02)

    node.source.inject_health(A, False, xid=79)
    await asyncio.wait_for(until(["gpu-1"]), 10)
    assert node.kube.slices[slice_name(NODE)]["spec"]["pool"]["generation"] == 2
    node.source.inject_health(A, True)
    await asyncio.wait_for(until(["gpu-0", "gpu-1"]), 10)


def cdi_file(node: Node, uid: str) -> Path:
    return node.root / "cdi" / f"{keys.DRA_DRIVER}-{uid}.json"


async def test_prepare_writes_the_cdi_spec_with_limits(
    node: Node, running: tuple[DraNodePlugin, DraKubelet]
) -> None:
    _, kubelet = running
    node.kube.add_claim(claim("c1", result("gpu-1", memory="3000Mi", cores="30")))
    resp = await kubelet.prepare(("ns", "uid-c1", "c1"))
    out = resp.claims["uid-c1"]
    assert out.error == ""
    (dev,) = out.devices
    assert (list(dev.request_names), dev.pool_name, dev.device_name) == (["gpu"], NODE, "gpu-1")
    assert list(dev.cdi_device_ids) == [f"{CDI_KIND}=uid-c1-gpu"]

    spec = json.loads(cdi_file(node, "uid-c1").read_text())
    assert (spec["kind"], [d["name"] for d in spec["devices"]]) == (CDI_KIND, ["uid-c1-gpu"])
    edits = spec["devices"][0]["containerEdits"]
    env = dict(e.split("=", 1) for e in edits["env"])
    assert env[keys.ENV_VISIBLE_DEVICES] == B
    assert env[f"{keys.ENV_MEMORY_LIMIT}_0"] == "3000m"
    assert env[keys.ENV_SM_LIMIT] == "30"
    assert env[keys.ENV_DISABLE_CONTROL] == "false"
    assert edits["deviceNodes"] == [{"path": str(node.root / "dev/nvidia1"), "permissions": "rw"}]
    vgpu = f"{node.root}/hook/vgpu"
    mounts = {m["containerPath"]: m for m in edits["mounts"]}
    assert mounts[f"{vgpu}/libvgpu.so"]["options"][0] == "ro"
    assert mounts["/etc/ld.so.preload"]["hostPath"] == f"{vgpu}/ld.so.preload"
    conf = mounts[VGPU_CONF_PATH]
    assert conf["options"][0] == "ro"
    text = Path(conf["hostPath"]).read_text()
    assert f"{keys.ENV_MEMORY_LIMIT}_0=3000m\n" in text and f"{keys.ENV_SM_LIMIT}=30\n" in text
    assert Path(mounts[vgpu]["hostPath"]).is_dir()


async def test_whole_device_without_consumed_capacity_gets_the_card(
    node: Node, running: tuple[DraNodePlugin, DraKubelet]
) -> None:
    _, kubelet = running
    node.kube.add_claim(claim("whole", result("gpu-0")))
    resp = await kubelet.prepare(("ns", "uid-whole", "whole"))
    assert resp.claims["uid-whole"].error == ""
    env = json.loads(cdi_file(node, "uid-whole").read_text())["devices"][0]["containerEdits"]["env"]
    assert f"{keys.ENV_MEMORY_LIMIT}_0=40960m" in env and f"{keys.ENV_SM_LIMIT}=0" in env


async def test_prepare_is_idempotent(node: Node, running: tuple[DraNodePlugin, DraKubelet]) -> None:
    _, kubelet = running
    node.kube.add_claim(claim("c1", result("gpu-0", memory="1Gi", cores="10")))
    first = await kubelet.prepare(("ns", "uid-c1", "c1"))
    before = cdi_file(node, "uid-c1").stat()
    reads = node.kube.calls.count("get claim ns/c1")
    again = await kubelet.prepare(("ns", "uid-c1", "c1"))
    assert again == first
    assert node.kube.calls.count("get claim ns/c1") == reads  # served from the checkpoint
    after = cdi_file(node, "uid-c1").stat()
    assert (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


async def test_unprepare_removes_spec_dirs_and_checkpoint(
    node: Node, running: tuple[DraNodePlugin, DraKubelet]
) -> None:
    plugin, kubelet = running
    node.kube.add_claim(claim("c1", result("gpu-0", memory="1Gi")))
    await kubelet.prepare(("ns", "uid-c1", "c1"))
    (cache_dir,) = plugin.checkpoint.get("uid-c1").cache_dirs  # type: ignore[union-attr]
    resp = await kubelet.unprepare(("ns", "uid-c1", "c1"))
    assert resp.claims["uid-c1"].error == ""
    assert not cdi_file(node, "uid-c1").exists()
    assert not Path(cache_dir).exists() and not Path(f"{cache_dir}.conf").exists()
    assert plugin.checkpoint.get("uid-c1") is None
    assert "uid-c1" not in json.loads((node.root / "state" / "checkpoint.json").read_text())["claims"]
    # unknown (or already unprepared) claims are fine
    again = await kubelet.unprepare(("ns", "uid-c1", "c1"), ("ns", "uid-never", "never"))
    assert [again.claims[u].error for u in ("uid-c1", "uid-never")] == ["", ""]


async def test_checkpoint_survives_a_restart(node: Node) -> None:
    node.kube.add_claim(claim("c1", result("gpu-0", memory="2Gi", cores="20")))
    first = node.plugin()
    await first.start()
    kubelet = node.kubelet()
    await kubelet.register()
    prepared = await kubelet.prepare(("ns", "uid-c1", "c1"))
    await first.stop()
    # the claim is gone from the API (deleted while the plugin was down): the new plugin still
    # answers prepare from its checkpoint, and unprepare cleans up what the old one made
    del node.kube.claims[("ns", "c1")]
    second = node.plugin()
    await second.start()
    try:
        kubelet = node.kubelet()
        await kubelet.register()
        assert await kubelet.prepare(("ns", "uid-c1", "c1")) == prepared
        resp = await kubelet.unprepare(("ns", "uid-c1", "c1"))
        assert resp.claims["uid-c1"].error == ""
        assert not cdi_file(node, "uid-c1").exists()
    finally:
        await second.stop()


async def test_bad_claims_fail_alone_with_the_reason(
    node: Node, running: tuple[DraNodePlugin, DraKubelet]
) -> None:
    _, kubelet = running
    node.kube.add_claim(claim("good", result("gpu-0", memory="1Gi")))
    node.kube.add_claim(claim("pending"))
    node.kube.add_claim(claim("elsewhere", result("gpu-7", memory="1Gi")))
    node.kube.add_claim(claim("badmem", result("gpu-0", memory="lots")))
    node.kube.add_claim(claim("zeromem", result("gpu-0", memory="0")))  # 0 is never "unlimited"
    node.kube.add_claim(claim("replaced", result("gpu-0"), uid="uid-new"))
    resp = await kubelet.prepare(
        ("ns", "uid-good", "good"),
        ("ns", "uid-missing", "missing"),
        ("ns", "uid-pending", "pending"),
        ("ns", "uid-elsewhere", "elsewhere"),
        ("ns", "uid-badmem", "badmem"),
        ("ns", "uid-zeromem", "zeromem"),
        ("ns", "uid-replaced", "replaced"),
    )
    errors = {uid: c.error for uid, c in resp.claims.items()}
    assert errors["uid-good"] == ""
    assert errors["uid-missing"] == "claim ns/missing (uid-missing): not found"
    assert (
        errors["uid-pending"]
        == "claim ns/pending (uid-pending): status.allocation: the claim is not allocated"
    )
    assert errors["uid-elsewhere"] == "claim ns/elsewhere (uid-elsewhere): device gpu-7 is not on node n1"
    assert errors["uid-badmem"].startswith(
        "claim ns/badmem (uid-badmem): status.allocation.devices.results[0].consumedCapacity.memory: "
    )
    assert (
        errors["uid-zeromem"] == "claim ns/zeromem (uid-zeromem): device gpu-0: refusing a 0-MiB memory share"
    )
    assert "the API has UID 'uid-new'" in errors["uid-replaced"]
    # failures leave nothing behind
    leftovers = sorted(p.name for p in (node.root / "cdi").iterdir())
    assert leftovers == [f"{keys.DRA_DRIVER}-uid-good.json"]


async def test_unhealthy_card_is_refused(node: Node, running: tuple[DraNodePlugin, DraKubelet]) -> None:
    plugin, kubelet = running
    node.kube.add_claim(claim("c1", result("gpu-0", memory="1Gi")))
    node.source.inject_health(A, False, xid=79)
    while any(d.healthy for d in plugin.devices if d.uuid == A):
        await asyncio.sleep(0.02)
    resp = await kubelet.prepare(("ns", "uid-c1", "c1"))
    assert resp.claims["uid-c1"].error == f"claim ns/c1 (uid-c1): device gpu-0 ({A}) is unhealthy"


def test_corrupt_checkpoint_names_the_file(node: Node) -> None:
    (node.root / "state").mkdir()
    (node.root / "state" / "checkpoint.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=r"checkpoint .*/state/checkpoint.json: cannot read"):
        node.plugin()


async def test_node_not_in_dra_mode_serves_nothing(node: Node) -> None:
    from dataclasses import replace

    plugin = DraNodePlugin(
        node.source,
        replace(node.settings, operating_mode="hami-core"),
        node.kube,
        plugin_dir=node.root / "plugins",
        registry_dir=node.root / "registry",
        cdi_dir=str(node.root / "cdi"),
    )
    stop = asyncio.Event()
    task = asyncio.create_task(plugin.run(stop))
    await asyncio.sleep(0)
    stop.set()
    await task
    assert not (node.root / "registry").exists() and node.kube.slices == {}


async def test_device_plugin_on_a_dra_node_serves_nothing(node: Node) -> None:
    """operatingmode dra: the device plugin opens no socket, never registers nvidia.com/gpu, and
    removes the registration a device plugin left on the node before the switch (others' stay)."""
    from hami.deviceplugin.agent import NodeAgent
    from hami.testing.kubelet import FakeKubelet
    from hami.testing.memkube import MemoryKube

    plugin_dir = node.root / "device-plugins"
    kubelet = FakeKubelet(plugin_dir)
    await kubelet.start()
    stale = {keys.NODE_NVIDIA_REGISTER: "[]", keys.NODE_ALLOCATION_MODE: "cdi", "other": "x"}
    kube = MemoryKube([{"metadata": {"name": NODE, "annotations": stale}}])
    agent = NodeAgent(node.source, node.settings, kube=kube, plugin_dir=plugin_dir)
    stop = asyncio.Event()
    task = asyncio.create_task(agent.run(stop))
    try:
        for _ in range(20):
            await asyncio.sleep(0)
        assert sorted(p.name for p in plugin_dir.iterdir()) == ["kubelet.sock"]
    finally:
        stop.set()
        await task
        await kubelet.stop()
    assert kubelet.registrations == []
    assert kube.calls == [f"get node {NODE}", f"patch node {NODE}"]
    assert kube.nodes[NODE]["metadata"]["annotations"] == {"other": "x"}


# --- MIG-capable cards as partitionable devices ------------------------------------------------
@pytest.fixture
async def mig_running() -> AsyncIterator[tuple[Node, DraNodePlugin, DraKubelet]]:
    root = Path(tempfile.mkdtemp(prefix="hdra", dir="/tmp"))
    node = make_node(root, mig=True)
    async with serving(node.plugin(), root) as plugin:
        kubelet = node.kubelet()
        await kubelet.register()
        yield node, plugin, kubelet


async def test_mig_capable_card_publishes_counters_and_placements(
    mig_running: tuple[Node, DraNodePlugin, DraKubelet],
) -> None:
    node, _, _ = mig_running
    spec = node.kube.slices[slice_name(NODE)]["spec"]
    slices = {f"memory-slice-{k}": {"value": "1"} for k in range(8)}
    all_counters = {**slices, "compute-slices": {"value": "7"}}
    assert spec["sharedCounters"] == [{"name": "gpu-0-counters", "counters": all_counters}]
    by_name = {d["name"]: d for d in spec["devices"]}
    # whole cards first (index order), then card 0's placements: 7 + 4 + 3 + 2 + 1 + 1
    assert [d["name"] for d in spec["devices"][:2]] == ["gpu-0", "gpu-1"]
    assert len(spec["devices"]) == 2 + 18
    assert by_name["gpu-0"]["consumesCounters"] == [
        {"counterSet": "gpu-0-counters", "counters": all_counters}
    ]
    assert by_name["gpu-0"]["allowMultipleAllocations"] is True
    assert "consumesCounters" not in by_name["gpu-1"]  # not MIG-capable: no counters
    mig = by_name["gpu-0-mig-3g20gb-4"]
    assert mig["attributes"] == {
        "productName": {"string": "NVIDIA A100-SXM4-40GB"},
        "uuid": {"string": A},
        "index": {"int": 0},
        "numaNode": {"int": 0},
        "type": {"string": "mig"},
        "nvlinkGroup": {"int": 0},
        "profile": {"string": "3g.20gb"},
        "placementStart": {"int": 4},
        "placementSize": {"int": 4},
    }
    assert mig["capacity"] == {"memory": {"value": "19968Mi"}, "cores": {"value": "39"}}
    assert mig["consumesCounters"] == [
        {
            "counterSet": "gpu-0-counters",
            "counters": {
                **{f"memory-slice-{k}": {"value": "1"} for k in range(4, 8)},
                "compute-slices": {"value": "3"},
            },
        }
    ]
    assert "allowMultipleAllocations" not in mig  # a MIG instance is one claim's
    assert by_name["gpu-0-mig-1g10gb-6"]["consumesCounters"][0]["counters"] == {
        "memory-slice-6": {"value": "1"},
        "memory-slice-7": {"value": "1"},
        "compute-slices": {"value": "1"},
    }


async def test_prepare_of_a_mig_device_names_its_instance(
    mig_running: tuple[Node, DraNodePlugin, DraKubelet],
) -> None:
    node, plugin, kubelet = mig_running
    node.kube.add_claim(claim("m1", result("gpu-0-mig-2g10gb-2")))
    resp = await kubelet.prepare(("ns", "uid-m1", "m1"))
    assert resp.claims["uid-m1"].error == ""
    (inst,) = node.source.list_mig_instances(A)
    assert (inst.profile, inst.placement.start, inst.placement.size) == ("2g.10gb", 2, 2)
    spec = json.loads(cdi_file(node, "uid-m1").read_text())
    assert [d["name"] for d in spec["devices"]] == ["uid-m1-gpu"]
    edits = spec["devices"][0]["containerEdits"]
    env = dict(e.split("=", 1) for e in edits["env"])
    assert env[keys.ENV_VISIBLE_DEVICES] == inst.mig_uuid
    assert not any(k.startswith(keys.ENV_MEMORY_LIMIT) for k in env)  # the hardware enforces it
    assert edits["deviceNodes"] == [{"path": str(node.root / "dev/nvidia0"), "permissions": "rw"}]
    assert plugin.checkpoint.get("uid-m1").mig_instances == ((A, inst.gpu_instance_id),)  # type: ignore[union-attr]

    assert (await kubelet.unprepare(("ns", "uid-m1", "m1"))).claims["uid-m1"].error == ""
    assert node.source.list_mig_instances(A) == []
    assert not cdi_file(node, "uid-m1").exists()


async def test_a_card_is_either_shared_whole_or_split_on_the_node(
    mig_running: tuple[Node, DraNodePlugin, DraKubelet],
) -> None:
    """kube-scheduler v1.34 does not count a shared card's counters once its claim is allocated
    (docs/dra.md), so the plugin refuses the second kind on a card, naming the first claim."""
    node, plugin, kubelet = mig_running
    node.kube.add_claim(claim("share", result("gpu-0", memory="1Gi", cores="10")))
    node.kube.add_claim(claim("mig", result("gpu-0-mig-1g5gb-0")))
    node.kube.add_claim(claim("mig-b", result("gpu-0-mig-1g5gb-1")))
    assert (await kubelet.prepare(("ns", "uid-share", "share"))).claims["uid-share"].error == ""
    refused = (await kubelet.prepare(("ns", "uid-mig", "mig"))).claims["uid-mig"].error
    assert refused == (
        f"claim ns/mig (uid-mig): card {A} (gpu-0) already has a share of the whole card prepared for "
        "claim ns/share; a card is either shared whole or split into MIG instances"
    )
    assert node.source.list_mig_instances(A) == [] and plugin.checkpoint.get("uid-mig") is None
    # once the share is gone, MIG instances may be made; then a share is refused
    await kubelet.unprepare(("ns", "uid-share", "share"))
    assert (await kubelet.prepare(("ns", "uid-mig", "mig"))).claims["uid-mig"].error == ""
    assert (await kubelet.prepare(("ns", "uid-mig-b", "mig-b"))).claims["uid-mig-b"].error == ""
    refused = (await kubelet.prepare(("ns", "uid-share", "share"))).claims["uid-share"].error
    assert "already has a MIG instance prepared for claim ns/mig" in refused
    assert not cdi_file(node, "uid-share").exists()


async def test_failed_mig_creation_leaves_nothing(
    mig_running: tuple[Node, DraNodePlugin, DraKubelet],
) -> None:
    node, plugin, kubelet = mig_running
    node.source.fail_mig_create.add(A)
    node.kube.add_claim(claim("m1", result("gpu-0-mig-1g5gb-0")))
    error = (await kubelet.prepare(("ns", "uid-m1", "m1"))).claims["uid-m1"].error
    assert error == f"claim ns/m1 (uid-m1): injected MIG creation failure on {A}"
    assert node.source.list_mig_instances(A) == [] and plugin.checkpoint.get("uid-m1") is None
    assert not cdi_file(node, "uid-m1").exists()
