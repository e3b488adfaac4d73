"""The NVIDIA backend beyond requests: inventory, card selector, decision annotations, registry."""

from __future__ import annotations

from typing import Any

import pytest

from hami.config import DeviceConfig, NvidiaConfig
from hami.devices import BackendRegistry, CardSelector, default_registry
from hami.devices.nvidia import NvidiaBackend
from hami.devices.nvidia import NvidiaCard as Card
from hami.devices.nvidia import NvidiaPlacement as Placement
from hami.protocol import ProtocolError, keys
from hami.protocol.node import (
    DeviceInfo,
    MigPlacement,
    MigProfile,
    encode_node_devices,
    encode_node_devices_legacy,
    encode_pair_scores,
)
from hami.protocol.pod import ContainerDevice, MigAllocation, decode_mig_allocations


def node_manifest(annotations: dict[str, str]) -> dict[str, Any]:
    return {"metadata": {"name": "n1", "annotations": annotations}}


def card(uuid: str = "GPU-a", *, type: str = "NVIDIA-Tesla T4", mode: str = "hami-core") -> Card:
    return Card(uuid=uuid, vendor="NVIDIA", type=type, count=10, totalmem=16000, totalcores=100, mode=mode)


# --- inventory ---------------------------------------------------------------------------------

PROFILE = MigProfile("1g.5gb", 4864, 15, 1, (MigPlacement(0, 1), MigPlacement(1, 1)))
DEVICES = [
    DeviceInfo(id="GPU-a", count=10, devmem=16000, devcore=100, type="NVIDIA-Tesla T4", index=0, numa=0),
    DeviceInfo(
        id="GPU-b", count=4, devmem=40960, devcore=100, type="NVIDIA-A100", index=1, numa=1, health=False
    ),
    DeviceInfo(
        id="GPU-c",
        count=7,
        devmem=40960,
        devcore=100,
        type="NVIDIA-A100",
        index=2,
        mode="mig",
        mig_profiles=(PROFILE,),
    ),
]


def test_node_cards_from_json_registration() -> None:
    found = NvidiaBackend().node_cards(
        node_manifest({keys.NODE_NVIDIA_REGISTER: encode_node_devices(DEVICES)})
    )
    assert found is not None
    a, b, c = found.cards
    assert (
        a.uuid,
        a.vendor,
        a.type,
        a.count,
        a.totalmem,
        a.totalcores,
        a.index,
        a.numa,
        a.mode,
        a.health,
    ) == (
        "GPU-a",
        "NVIDIA",
        "NVIDIA-Tesla T4",
        10,
        16000,
        100,
        0,
        0,
        "hami-core",
        True,
    )
    assert (b.numa, b.index, b.health) == (1, 1, False)
    assert c.mode == "mig"
    assert c.mig_profiles == (PROFILE,)
    assert all((x.used, x.usedmem, x.usedcores, x.mig_in_use) == (0, 0, 0, []) for x in found.cards)
    assert found.pair_scores == {}


def test_node_cards_from_legacy_registration_default_mode() -> None:
    legacy = "GPU-x,10,32768,100,NVIDIA-Tesla V100-PCIE-32GB,0,true:"
    found = NvidiaBackend().node_cards(node_manifest({keys.NODE_NVIDIA_REGISTER: legacy}))
    assert found is not None
    (x,) = found.cards
    assert (x.uuid, x.totalmem, x.mode, x.health) == ("GPU-x", 32768, "hami-core", True)
    nine = encode_node_devices_legacy(DEVICES[:2])
    found = NvidiaBackend().node_cards(node_manifest({keys.NODE_NVIDIA_REGISTER: nine}))
    assert found is not None
    assert [c.uuid for c in found.cards] == ["GPU-a", "GPU-b"]


def test_card_registered_with_no_memory_is_never_a_candidate() -> None:
    legacy = "GPU-x,10,0,100,NVIDIA-Tesla T4,0,true:GPU-y,10,15360,100,NVIDIA-Tesla T4,0,true:"
    found = NvidiaBackend().node_cards(node_manifest({keys.NODE_NVIDIA_REGISTER: legacy}))
    assert found is not None
    assert [c.uuid for c in found.cards] == ["GPU-y"]


def test_node_cards_reads_pair_scores() -> None:
    scores = {"GPU-a": {"GPU-b": 400}, "GPU-b": {"GPU-a": 400}}
    found = NvidiaBackend().node_cards(
        node_manifest(
            {
                keys.NODE_NVIDIA_REGISTER: encode_node_devices(DEVICES[:2]),
                keys.NODE_NVIDIA_SCORE: encode_pair_scores(scores),
            }
        )
    )
    assert found is not None
    assert found.pair_scores == scores


def test_node_without_registration_has_no_cards() -> None:
    assert NvidiaBackend().node_cards({"metadata": {"name": "n"}}) is None
    assert NvidiaBackend().node_cards(node_manifest({keys.NODE_NVIDIA_REGISTER: ""})) is None


@pytest.mark.parametrize(
    "annotations",
    [
        {keys.NODE_NVIDIA_REGISTER: "[{"},
        {keys.NODE_NVIDIA_REGISTER: '[{"count":1}]'},
        {keys.NODE_NVIDIA_REGISTER: "GPU-a,1,2:"},
        {keys.NODE_NVIDIA_REGISTER: encode_node_devices(DEVICES[:1]), keys.NODE_NVIDIA_SCORE: "{"},
    ],
    ids=["bad-json", "no-id", "legacy-fields", "bad-scores"],
)
def test_corrupt_node_annotations_raise_protocol_error(annotations: dict[str, str]) -> None:
    with pytest.raises(ProtocolError):
        NvidiaBackend().node_cards(node_manifest(annotations))


# --- card selector ---------------------------------------------------------------------------------


def test_selector_reads_pod_annotations() -> None:
    sel = NvidiaBackend().selector(
        {
            keys.NVIDIA_USE_GPUTYPE: "A100, T4",
            keys.NVIDIA_NOUSE_GPUTYPE: "V100",
            keys.NVIDIA_USE_GPUUUID: "GPU-a,GPU-b",
            keys.NVIDIA_NOUSE_GPUUUID: "GPU-c",
            keys.NVIDIA_VGPU_MODE: " mig ",
        }
    )
    assert sel == CardSelector(
        use_types=("a100", "t4"),
        nouse_types=("v100",),
        use_uuids=frozenset({"GPU-a", "GPU-b"}),
        nouse_uuids=frozenset({"GPU-c"}),
        mode="mig",
    )
    assert NvidiaBackend().selector({}) == CardSelector()
    assert NvidiaBackend().selector({keys.NVIDIA_VGPU_MODE: "  "}).mode is None


def test_type_rules_are_case_insensitive_substrings() -> None:
    be = NvidiaBackend()
    t4 = card(type="NVIDIA-Tesla T4")
    assert be.selector({keys.NVIDIA_USE_GPUTYPE: "tesla t4"}).rejection(t4) is None
    assert be.selector({keys.NVIDIA_USE_GPUTYPE: "T4"}).rejection(t4) is None
    assert be.selector({keys.NVIDIA_USE_GPUTYPE: "A100,t4"}).rejection(t4) is None
    assert be.selector({keys.NVIDIA_USE_GPUTYPE: "A100"}).rejection(t4) == "CardTypeMismatch"
    assert be.selector({keys.NVIDIA_NOUSE_GPUTYPE: "TESLA"}).rejection(t4) == "CardTypeMismatch"
    assert be.selector({keys.NVIDIA_NOUSE_GPUTYPE: "A100"}).rejection(t4) is None


def test_uuid_rules_are_exact() -> None:
    be = NvidiaBackend()
    a = card("GPU-a")
    assert be.selector({keys.NVIDIA_USE_GPUUUID: "GPU-a"}).rejection(a) is None
    assert be.selector({keys.NVIDIA_USE_GPUUUID: "GPU-"}).rejection(a) == "CardUuidMismatch"
    assert be.selector({keys.NVIDIA_USE_GPUUUID: "gpu-a"}).rejection(a) == "CardUuidMismatch"
    assert be.selector({keys.NVIDIA_NOUSE_GPUUUID: "GPU-a"}).rejection(a) == "CardUuidMismatch"
    assert be.selector({keys.NVIDIA_NOUSE_GPUUUID: "GPU-ab"}).rejection(a) is None
    assert be.selector({keys.NVIDIA_USE_GPUUUID: ""}).rejection(a) is None


def test_vgpu_mode_must_contain_the_card_mode() -> None:
    be = NvidiaBackend()
    assert be.selector({keys.NVIDIA_VGPU_MODE: "mig"}).rejection(card(mode="hami-core")) == "CardTypeMismatch"
    assert be.selector({keys.NVIDIA_VGPU_MODE: "mig"}).rejection(card(mode="mig")) is None
    assert be.selector({keys.NVIDIA_VGPU_MODE: "hami-core"}).rejection(card(mode="hami-core")) is None
    assert be.selector({keys.NVIDIA_VGPU_MODE: "hami-core"}).rejection(card(mode="mig")) == "CardTypeMismatch"


def test_type_is_checked_before_uuid() -> None:
    sel = CardSelector(use_types=("a100",), nouse_uuids=frozenset({"GPU-a"}))
    assert sel.rejection(card("GPU-a")) == "CardTypeMismatch"


# --- decision annotations ---------------------------------------------------------------------------


def dev(uuid: str, mem: int, cores: int) -> Placement:
    return Placement(device=ContainerDevice(uuid=uuid, type="NVIDIA", usedmem=mem, usedcores=cores))


def test_decision_annotations_keep_one_entry_per_container() -> None:
    out = NvidiaBackend().decision_annotations([(), (dev("GPU-x", 3000, 30),), ()])
    assert out == {
        keys.VGPU_DEVICES_TO_ALLOCATE: ";GPU-x,NVIDIA,3000,30:;;",
        keys.VGPU_DEVICES_ALLOCATED: ";GPU-x,NVIDIA,3000,30:;;",
    }


def test_decode_allocation_restores_containers_and_mig() -> None:
    mig = MigAllocation(
        container_index=1,
        device_index=0,
        gpu_uuid="GPU-m",
        profile="1g.5gb",
        placement_start=6,
        placement_size=1,
    )
    containers: list[tuple[Placement, ...]] = [
        (),
        (Placement(device=ContainerDevice("GPU-m", "NVIDIA", 4864, 15), mig=mig), dev("GPU-y", 1, 2)),
    ]
    be = NvidiaBackend()
    ann = be.decision_annotations(containers)
    assert decode_mig_allocations(ann[keys.VGPU_MIG_ALLOCATIONS]) == [mig]
    assert be.decode_allocation(ann) == containers
    assert be.decode_allocation({}) is None


def test_registry_orders_and_rejects_duplicates() -> None:
    reg = BackendRegistry([NvidiaBackend()])
    assert len(reg) == 1
    assert reg.get("NVIDIA").vendor == "NVIDIA"
    assert reg.resource_names() == [
        "nvidia.com/gpu",
        "nvidia.com/gpumem",
        "nvidia.com/gpumem-percentage",
        "nvidia.com/gpucores",
        "nvidia.com/priority",
    ]
    with pytest.raises(ValueError, match="twice"):
        reg.register(NvidiaBackend())
    assert [b.vendor for b in default_registry()] == ["NVIDIA"]
    cfg = DeviceConfig.default().model_copy(
        update={"nvidia": NvidiaConfig(resource_count_name="example.com/vgpu")}
    )
    assert default_registry(cfg).resource_names()[0] == "example.com/vgpu"


def test_card_copy_is_independent() -> None:
    c = card()
    c.used, c.usedmem, c.usedcores = 1, 100, 10
    c.mig_in_use.append((0, 1))
    d = c.copy()
    assert (d.uuid, d.used, d.usedmem, d.usedcores, d.mig_in_use) == ("GPU-a", 1, 100, 10, [(0, 1)])
    d.used += 1
    d.mig_in_use.append((1, 1))
    assert (c.used, c.mig_in_use) == (1, [(0, 1)])


def test_node_whose_device_plugin_is_gone_has_no_cards() -> None:
    """kubelet still lists nvidia.com/gpu but none is allocatable: the registration is stale."""
    node = node_manifest({keys.NODE_NVIDIA_REGISTER: encode_node_devices(DEVICES)})
    node["status"] = {"capacity": {"nvidia.com/gpu": "30"}, "allocatable": {"nvidia.com/gpu": "0"}}
    assert NvidiaBackend().node_cards(node) is None
    node["status"]["allocatable"]["nvidia.com/gpu"] = "30"
    found = NvidiaBackend().node_cards(node)
    assert found is not None and len(found.cards) == len(DEVICES)
    # a node kubelet has not reported the resource for (simulated nodes, a fresh registration)
    del node["status"]["allocatable"]["nvidia.com/gpu"]
    assert NvidiaBackend().node_cards(node) is not None
