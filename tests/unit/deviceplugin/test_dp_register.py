"""Node registration annotations: HAMi JSON, pair scores, patch only on change."""

from __future__ import annotations

import orjson

from hami.deviceplugin.register import NodeRegistrar, register_annotations
from hami.deviceplugin.settings import MigAllowRule, NodeSettings, build_inventory
from hami.deviceplugin.sources import FakeSource
from hami.protocol import keys
from hami.protocol.node import decode_node_devices, decode_pair_scores
from hami.testing.memkube import MemoryKube

SPEC = {
    "cards": [
        {
            "uuid": "GPU-a",
            "index": 0,
            "model": "NVIDIA A100-SXM4-40GB",
            "memory": 40960,
            "mig": True,
            "mig_profiles": "p",
        },
        {"uuid": "GPU-b", "index": 1, "model": "Tesla T4", "memory": 15360, "numa": 1},
        {"uuid": "GPU-c", "index": 2, "model": "Tesla T4", "memory": 15360, "numa": 1},
    ],
    "links": [
        {"a": "GPU-a", "b": "GPU-b", "type": "SameCPU"},
        {"a": "GPU-b", "b": "GPU-c", "type": "SameBoard", "nvlinks": 2},
    ],
    "mig_profile_sets": {
        "p": [
            {
                "name": "1g.5gb",
                "memory": 4864,
                "core": 13,
                "slices": 1,
                "instances": 7,
                "placements": [[0, 1], [1, 1]],
            }
        ]
    },
}


def test_register_json_is_hami_compatible() -> None:
    src = FakeSource(SPEC)
    inv = build_inventory(src, NodeSettings(split_count=10, filter_uuids=frozenset({"GPU-c"})))
    value = register_annotations(inv)[keys.NODE_NVIDIA_REGISTER]
    assert orjson.loads(value) == [
        {
            "id": "GPU-a",
            "count": 10,
            "devmem": 40960,
            "devcore": 100,
            "type": "NVIDIA A100-SXM4-40GB",
            "mode": "hami-core",
            "health": True,
        },
        {
            "id": "GPU-b",
            "index": 1,
            "count": 10,
            "devmem": 15360,
            "devcore": 100,
            "type": "NVIDIA-Tesla T4",
            "numa": 1,
            "mode": "hami-core",
            "health": True,
        },
    ]
    decoded = decode_node_devices(value)
    assert [(d.id, d.count, d.devmem, d.type, d.numa, d.health) for d in decoded] == [
        (d.uuid, d.count, d.devmem, d.type, d.card.numa, d.healthy) for d in inv
    ]


def test_mig_profiles_and_unhealthy_card_are_registered() -> None:
    src = FakeSource(SPEC)
    src.inject_health("GPU-b", False, xid=79)
    s = NodeSettings(operating_mode="mig", mig_allowlist=(MigAllowRule(("A100",), ("1g.5gb",)),))
    decoded = decode_node_devices(register_annotations(build_inventory(src, s))[keys.NODE_NVIDIA_REGISTER])
    a, b = decoded[0], decoded[1]
    assert (a.mode, a.count, a.mig_profiles[0].name, len(a.mig_profiles[0].placements)) == (
        "mig",
        7,
        "1g.5gb",
        2,
    )
    assert not b.health


def test_pair_scores_only_between_registered_cards() -> None:
    src = FakeSource(SPEC)
    inv = build_inventory(src, NodeSettings(filter_uuids=frozenset({"GPU-c"})))
    value = register_annotations(inv, src.pair_scores())[keys.NODE_NVIDIA_SCORE]
    assert decode_pair_scores(value) == {"GPU-a": {"GPU-b": 20}, "GPU-b": {"GPU-a": 20}}


async def test_registrar_patches_only_on_change() -> None:
    src = FakeSource(SPEC)
    s = NodeSettings(node_name="n1")
    kube = MemoryKube([{"metadata": {"name": "n1", "annotations": {"other": "x"}}}])
    reg = NodeRegistrar(kube, "n1", lambda: build_inventory(src, s), pair_scores=src.pair_scores)
    assert await reg.sync()
    ann = kube.nodes["n1"]["metadata"]["annotations"]
    assert set(ann) == {"other", keys.NODE_NVIDIA_REGISTER, keys.NODE_NVIDIA_SCORE}
    assert not await reg.sync()
    src.inject_health("GPU-a", False, xid=48)
    assert await reg.sync()
    assert not decode_node_devices(kube.nodes["n1"]["metadata"]["annotations"][keys.NODE_NVIDIA_REGISTER])[
        0
    ].health
    # someone deletes the annotation: restored on the next pass
    await kube.patch_node("n1", {"metadata": {"annotations": {keys.NODE_NVIDIA_REGISTER: None}}})
    assert await reg.sync()
    assert reg.patches == 3


async def test_allocation_mode_annotation() -> None:
    kube = MemoryKube([{"metadata": {"name": "n1", "annotations": {}}}])

    def registrar(mode: str) -> NodeRegistrar:
        return NodeRegistrar(kube, "n1", lambda: [], allocation_mode=mode)

    def mode() -> str | None:
        ann: dict[str, str] = kube.nodes["n1"]["metadata"]["annotations"]
        return ann.get(keys.NODE_ALLOCATION_MODE)

    await registrar("lock").sync()
    assert mode() is None  # a node that never ran lock-free gets no annotation
    await registrar("cdi").sync()
    assert mode() == keys.ALLOCATION_MODE_CDI
    kube.nodes["n1"]["metadata"]["annotations"][keys.NODE_ALLOCATION_MODE] = "lock"
    await registrar("cdi").sync()  # kept equal by the registration loop
    assert mode() == keys.ALLOCATION_MODE_CDI
    await registrar("lock").sync()  # back in lock mode
    assert mode() == keys.ALLOCATION_MODE_LOCK


async def test_withdraw_removes_only_this_plugins_annotations() -> None:
    """A node switched to DRA mode: the old registration goes, other annotations stay."""
    src = FakeSource(SPEC)
    s = NodeSettings(node_name="n1")
    kube = MemoryKube([{"metadata": {"name": "n1", "annotations": {"other": "x"}}}])
    reg = NodeRegistrar(
        kube, "n1", lambda: build_inventory(src, s), pair_scores=src.pair_scores, allocation_mode="cdi"
    )
    assert await reg.sync()
    assert await reg.withdraw()
    assert kube.nodes["n1"]["metadata"]["annotations"] == {"other": "x"}
    assert not await reg.withdraw()  # nothing left: no patch
