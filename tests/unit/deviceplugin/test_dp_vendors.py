"""The fake source's ``vendors:`` section: other vendors' register annotations, written by the node
agent in each vendor's HAMi format and read back by that vendor's backend in the scheduling core."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import pytest

from hami.config.device import parse_device_config
from hami.deviceplugin.agent import NodeAgent
from hami.deviceplugin.settings import NodeSettings
from hami.deviceplugin.sources import FakeSource
from hami.deviceplugin.sources.fake import FakeSpecError
from hami.devices.registry import default_registry
from hami.protocol import keys
from hami.scheduling.decide import Scheduler
from hami.testing.memkube import MemoryKube

HYGON = "hami.io/node-dcu-register"
ILUVATAR = "hami.io/node-BI-V100-register"
KUNLUN = "hami.io/node-register-xpu"
AMD = "hami.io/node-amd-register"

SPEC: dict[str, Any] = {
    "cards": [{"model": "Tesla T4", "memory": 15360}],
    "nodes": {
        "dcu": {
            "vendors": {
                "hygon": {"count": 2, "card": {"type": "DCU-Z100", "memory": 65520, "slots": 4}},
            }
        },
        "mixed": {
            "vendors": {
                "iluvatars": {
                    "config": {"chipName": "BI-V100"},
                    "cards": [{"uuid": "ILU-0", "type": "BI-V100", "memory": 32768, "numa": 1}],
                },
                "kunlun": {"count": 2, "card": {"type": "P800", "memory": 98304}},
                "amd": {"cards": [{"uuid": "AMD-0", "type": "MI300X", "memory": 196608, "cores": 304}]},
            }
        },
    },
}


async def registered(node: str, tmp_path: Path) -> dict[str, str]:
    """The annotations the node agent writes on ``node`` from SPEC (one registration pass)."""
    kube = MemoryKube([{"metadata": {"name": node}}])
    agent = NodeAgent(
        FakeSource(SPEC, node_name=node), NodeSettings(node_name=node), kube=kube, plugin_dir=tmp_path
    )
    assert agent.registrar is not None
    assert await agent.registrar.sync()
    annotations: dict[str, str] = kube.nodes[node]["metadata"]["annotations"]
    return annotations


async def test_hygon_is_registered_in_the_legacy_colon_form(tmp_path: Path) -> None:
    ann = await registered("dcu", tmp_path)
    assert ann[HYGON] == (
        "DCU-fake-dcu-0,4,65520,100,DCU-Z100,0,true,0,hami-core:"
        "DCU-fake-dcu-1,4,65520,100,DCU-Z100,0,true,1,hami-core:"
    )
    assert keys.NODE_NVIDIA_REGISTER in ann  # NVIDIA's own registration is untouched


async def test_iluvatar_kunlun_and_amd_in_their_formats(tmp_path: Path) -> None:
    ann = await registered("mixed", tmp_path)
    assert ann[ILUVATAR] == "ILU-0,10,32768,100,BI-V100,1,true,0,hami-core:"
    assert orjson.loads(ann[KUNLUN]) == [
        {
            "id": "XPU-fake-mixed-0",
            "count": 10,
            "devmem": 98304,
            "devcore": 100,
            "type": "P800",
            "health": True,
        },
        {
            "id": "XPU-fake-mixed-1",
            "index": 1,
            "count": 10,
            "devmem": 98304,
            "devcore": 100,
            "type": "P800",
            "health": True,
        },
    ]
    assert orjson.loads(ann[AMD]) == [
        {"id": "AMD-0", "count": 10, "devmem": 196608, "devcore": 304, "type": "MI300X", "health": True}
    ]
    assert HYGON not in ann


async def test_a_node_without_vendors_gets_nvidia_only(tmp_path: Path) -> None:
    ann = await registered("plain", tmp_path)
    assert set(ann) == {keys.NODE_NVIDIA_REGISTER}


def test_whole_card_vendors_have_one_slot() -> None:
    ann = FakeSource(
        {"cards": [{}], "vendors": {"biren": {}, "vastai": {"count": 2}}}, node_name="n"
    ).vendor_annotations()
    assert [d["count"] for d in orjson.loads(ann["hami.io/node-biren-register"])] == [1]
    assert [d["id"] for d in orjson.loads(ann["hami.io/node-va-register"])] == [
        "Vastai-fake-n-0",
        "Vastai-fake-n-1",
    ]


def test_a_metax_section_registers_sgpu_cards_in_metaxs_json() -> None:
    """Metax's whole GPUs come from capacity, its sGPU cards from ``node-gpu-devices``: the section
    gives the sGPU backend's annotation, with the Metax-only card fields."""
    ann = FakeSource(
        {
            "cards": [{}],
            "vendors": {"metax": {"count": 2, "card": {"memory": 65536, "custominfo": {"linkZone": 1}}}},
        },
        node_name="n",
    ).vendor_annotations()
    assert [
        (d["uuid"], d["totalVRam"], d["linkZone"])
        for d in orjson.loads(ann["metax-tech.com/node-gpu-devices"])
    ] == [
        ("Metax-SGPU-fake-n-0", 65536, 1),
        ("Metax-SGPU-fake-n-1", 65536, 1),
    ]
    with pytest.raises(
        FakeSpecError, match=r"vendors.metax: custominfo of card .*: field 'linkZone' must be int"
    ):
        FakeSource({"cards": [{}], "vendors": {"metax": {"card": {"custominfo": {"linkZone": "one"}}}}})
    with pytest.raises(
        FakeSpecError, match=r"unknown field 'NetworkID' \(one of qosPolicy, linkZone, model\)"
    ):
        FakeSource({"cards": [{}], "vendors": {"metax": {"card": {"custominfo": {"NetworkID": 1}}}}})


@pytest.mark.parametrize("section", ["cambricon", "mthreads", "enflame", "awsneuron"])
def test_capacity_vendors_without_resources_are_told_to_give_them(section: str) -> None:
    with pytest.raises(
        FakeSpecError,
        match=f"vendors.{section}: this vendor's inventory is the node's capacity, .*give it as resources:",
    ):
        FakeSource({"cards": [{}], "vendors": {section: {}}})


def test_capacity_vendors_give_resources_served_to_kubelet() -> None:
    """``resources:`` of a capacity vendor (names as its config spells them) is the capacity the
    node serves; it writes no annotation. Metax gives both kinds from one section."""
    source = FakeSource(
        {
            "cards": [{}],
            "vendors": {
                "mthreads": {"resources": {"mthreads.com/sgpu-core": 32, "mthreads.com/sgpu-memory": 192}},
                "cambricon": {
                    "config": {"resourceCoreName": "cambricon.com/mlu370.smlu.vcore"},
                    "resources": {"cambricon.com/mlu370.smlu.vcore": 200},
                },
                "metax": {"resources": {"metax-tech.com/gpu": 2}, "count": 1},
            },
        },
        node_name="n",
    )
    assert source.vendor_capacity() == {
        "mthreads.com/sgpu-core": 32,
        "mthreads.com/sgpu-memory": 192,
        "cambricon.com/mlu370.smlu.vcore": 200,
        "metax-tech.com/gpu": 2,
    }
    assert set(source.vendor_annotations()) == {"metax-tech.com/node-gpu-devices"}


@pytest.mark.parametrize(
    ("vendors", "message"),
    [
        (
            {"mthreads": {"resources": {"mthreads.com/gpu": 1}}},
            r"vendors.mthreads.resources.mthreads.com/gpu: not a capacity resource of this section "
            r"\(mthreads.com/vgpu, mthreads.com/sgpu-memory, mthreads.com/sgpu-core\)",
        ),
        (
            {"enflame": {"resources": {"enflame.com/gcu": 0}}},
            r"vendors.enflame.resources.enflame.com/gcu: expected a positive integer, got 0",
        ),
        ({"awsneuron": {"resources": []}}, r"vendors.awsneuron.resources: expected a non-empty mapping"),
        (
            {"hygon": {"resources": {"hygon.com/dcunum": 2}}},
            r"vendors.hygon.resources: this vendor's inventory is a register annotation",
        ),
    ],
)
def test_bad_capacity_resources_name_the_key(vendors: Any, message: str) -> None:
    with pytest.raises(FakeSpecError, match=message):
        FakeSource({"cards": [{}], "vendors": vendors})


@pytest.mark.parametrize(
    ("vendors", "message"),
    [
        ({"nvidia": {}}, "not another vendor's"),
        ({"hygon": {"count": 0}}, r"vendors.hygon.count: expected a positive integer"),
        ({"hygon": {"card": [1]}}, r"vendors.hygon.card: expected a mapping"),
        ({"iluvatars": {}}, r"vendors.iluvatars: .*chipName"),
        ({"hygon": {"cards": [{"memory": "lots"}]}}, r"vendors.hygon.cards\[0\].memory: expected int"),
        ({"hygon": {"cards": [{"type": "a:b"}]}}, "cannot hold"),
        ([], "expected a mapping"),
    ],
)
def test_bad_vendor_sections_name_the_key(vendors: Any, message: str) -> None:
    with pytest.raises(FakeSpecError, match=message):
        FakeSource({"cards": [{}], "vendors": vendors})


async def test_the_scheduling_core_places_a_vendor_pod_on_the_registered_node(tmp_path: Path) -> None:
    config, _ = parse_device_config("hygon: {}\niluvatars: [{chipName: BI-V100}]\nkunlun: {}\namd: {}\n")
    sched = Scheduler(default_registry(config))
    for name in ("dcu", "mixed", "plain"):
        node = {"metadata": {"name": name, "annotations": await registered(name, tmp_path)}}
        assert sched.observe_node(node) is None
    pod = {
        "metadata": {"name": "p", "namespace": "default", "uid": "u1"},
        "spec": {
            "containers": [
                {"name": "c", "resources": {"limits": {"hygon.com/dcunum": 1, "hygon.com/dcumem": 2000}}}
            ]
        },
    }
    d = sched.decide(pod)
    assert d.node == "dcu", d.reason
    # equal cards: the highest index first, as HAMi
    assert d.annotations["hami.io/dcu-devices-allocated"] == "DCU-fake-dcu-1,DCU,2000,100:;"
    assert d.annotations["hami.io/dcu-devices-to-allocate"] == "DCU-fake-dcu-1,DCU,2000,100:;"
    ilu = {
        "metadata": {"name": "q", "namespace": "default", "uid": "u2"},
        "spec": {"containers": [{"name": "c", "resources": {"limits": {"iluvatar.ai/BI-V100-vgpu": 1}}}]},
    }
    d = sched.decide(ilu)
    assert d.node == "mixed", d.reason
    assert d.annotations["hami.io/BI-V100-devices-allocated"] == "ILU-0,BI-V100,32768,0:;"


def test_the_sandbox_shows_a_hygon_node() -> None:
    path = Path(__file__).resolve().parents[3] / "examples" / "fake-sandbox.yaml"
    node2 = FakeSource.from_file(path, node_name="node2").vendor_annotations()
    assert node2 == {
        HYGON: "DCU-fake-node2-0,4,32768,100,DCU-Z100,0,true,0,hami-core:"
        "DCU-fake-node2-1,4,32768,100,DCU-Z100,0,true,1,hami-core:"
    }
    assert FakeSource.from_file(path, node_name="node1").vendor_annotations() == {}


async def test_a_vendor_taken_out_of_the_spec_is_withdrawn_from_the_node(tmp_path: Path) -> None:
    """The agent restarted with a spec without Kunlun: its register annotation goes, the others
    stay; with no vendors left the list of written keys goes too. Annotations the agent never
    wrote (a real vendor plugin's) are left alone."""
    kube = MemoryKube([{"metadata": {"name": "mixed", "annotations": {HYGON: "written-by-hygons-plugin"}}}])

    async def agent_pass(vendors: dict[str, Any]) -> dict[str, str]:
        spec = {**SPEC, "nodes": {"mixed": {"vendors": vendors}}}
        agent = NodeAgent(
            FakeSource(spec, node_name="mixed"),
            NodeSettings(node_name="mixed"),
            kube=kube,
            plugin_dir=tmp_path,
        )
        assert agent.registrar is not None
        await agent.registrar.sync()
        annotations: dict[str, str] = kube.nodes["mixed"]["metadata"]["annotations"]
        return annotations

    everything = SPEC["nodes"]["mixed"]["vendors"]
    ann = await agent_pass(everything)
    assert ann[keys.NODE_SIMULATED_VENDOR_KEYS] == ",".join(sorted((AMD, ILUVATAR, KUNLUN)))
    ann = await agent_pass({k: v for k, v in everything.items() if k != "kunlun"})
    assert KUNLUN not in ann
    assert {AMD, ILUVATAR} <= set(ann)
    assert ann[keys.NODE_SIMULATED_VENDOR_KEYS] == f"{ILUVATAR},{AMD}"
    # the scheduler sees no Kunlun vXPU on the node any more
    config, _ = parse_device_config("kunlun: {}\namd: {}\n")
    sched = Scheduler(default_registry(config))
    assert sched.observe_node(kube.nodes["mixed"]) is None
    assert "XPU" not in sched.state.nodes["mixed"].by_vendor
    ann = await agent_pass({})
    assert set(ann) == {keys.NODE_NVIDIA_REGISTER, HYGON}
    assert ann[HYGON] == "written-by-hygons-plugin"
