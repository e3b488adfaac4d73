"""The node's ResourceSlice body (`hami.draplugin.slices`): the contract in docs/dra.md."""

from __future__ import annotations

import pytest

from hami.deviceplugin.settings import MigAllowRule, NodeSettings, physical_device
from hami.deviceplugin.sources.base import LinkType, PairLink, SourceCard, SourceMigProfile
from hami.deviceplugin.sources.fake import FakeSource
from hami.draplugin import partitions
from hami.draplugin.slices import (
    MAX_DEVICES_PER_SLICE,
    nvlink_groups,
    resource_slice,
    shared_counters,
    slice_devices,
)
from hami.protocol import keys
from hami.testing.dra import mig_fake_source_spec


def card(i: int, healthy: bool = True) -> SourceCard:
    return SourceCard(
        uuid=f"GPU-{i}", index=i, model="NVIDIA A100-SXM4-40GB", memory_mib=40960, healthy=healthy
    )


def test_nvlink_groups_are_connected_components_named_by_their_lowest_index() -> None:
    uuids = {i: f"GPU-{i}" for i in range(5)}
    links = [
        PairLink("GPU-3", "GPU-1", LinkType.SAME_BOARD, nvlinks=4),
        PairLink("GPU-4", "GPU-3", LinkType.SAME_BOARD, nvlinks=2),
        PairLink("GPU-0", "GPU-2", LinkType.SINGLE_SWITCH),  # PCIe only
    ]
    assert nvlink_groups(uuids, links) == {"GPU-0": 0, "GPU-1": 1, "GPU-2": 2, "GPU-3": 1, "GPU-4": 1}


def test_memory_scaling_and_core_scaling_reach_the_capacity() -> None:
    settings = NodeSettings(memory_scaling=1.5, core_scaling=2)
    (dev,) = slice_devices([physical_device(card(0), settings, [])], [])
    assert dev["capacity"]["memory"]["value"] == "60Gi"
    assert dev["capacity"]["memory"]["requestPolicy"]["default"] == "60Gi"
    assert dev["capacity"]["cores"]["value"] == "200"
    assert dev["capacity"]["cores"]["requestPolicy"]["validRange"]["max"] == "200"


def test_unhealthy_cards_are_left_out_in_index_order() -> None:
    settings = NodeSettings()
    devices = [physical_device(c, settings, []) for c in (card(2), card(0, healthy=False), card(1))]
    assert [d["name"] for d in slice_devices(devices, [])] == ["gpu-1", "gpu-2"]


def test_a_slice_holds_at_most_128_devices() -> None:
    with pytest.raises(ValueError, match="129 devices, more than the 128"):
        resource_slice("n1", "uid", 1, [{}] * (MAX_DEVICES_PER_SLICE + 1))


def mig_card(i: int) -> SourceCard:
    return SourceCard(
        uuid=f"GPU-{i}",
        index=i,
        model="NVIDIA A100-SXM4-40GB",
        memory_mib=40960,
        mig_capable=True,
        sm_count=108,
    )


def a100_profiles() -> list[SourceMigProfile]:
    """The sandbox's A100-40GB profiles (examples/fake-sandbox.yaml), through the fake source."""
    source = FakeSource(mig_fake_source_spec("GPU-x"))
    return source.mig_profiles("GPU-x")


def test_mig_capable_cards_are_partitioned_while_the_counters_fit_one_slice() -> None:
    settings = NodeSettings(operating_mode=keys.OPERATING_MODE_DRA)
    devices = [physical_device(mig_card(i), settings, a100_profiles()) for i in range(4)]
    assert partitions.partitioned_indexes(devices) == {0, 1, 2}  # 3 x 9 counters; a 4th would be 36
    counters = shared_counters(devices)
    assert sum(len(c["counters"]) for c in counters) <= partitions.MAX_SHARED_COUNTERS
    body = slice_devices(devices, [])
    assert [d["name"] for d in body[:4]] == ["gpu-0", "gpu-1", "gpu-2", "gpu-3"]
    assert "consumesCounters" not in body[3]  # published whole only
    assert len(body) == 4 + 3 * 18 <= MAX_DEVICES_PER_SLICE
    # the API's limit on counters consumed by all devices of a slice (resource.k8s.io/v1: 1024)
    assert sum(len(c["counters"]) for d in body for c in d.get("consumesCounters", [])) <= 1024


def test_the_mig_allowlist_decides_the_placements() -> None:
    allow = (MigAllowRule(("A100-SXM4-40GB",), ("1g.5gb", "7g.40gb")),)
    settings = NodeSettings(operating_mode=keys.OPERATING_MODE_DRA, mig_allowlist=allow)
    dev = physical_device(mig_card(0), settings, a100_profiles())
    assert [m.name for m in partitions.mig_devices(dev)] == [
        *(f"gpu-0-mig-1g5gb-{k}" for k in range(7)),
        "gpu-0-mig-7g40gb-0",
    ]
    # outside DRA mode a hami-core card keeps no profiles (the device plugin's MIG mode has its own)
    assert physical_device(mig_card(0), NodeSettings(), a100_profiles()).mig_profiles == ()
