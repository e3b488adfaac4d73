"""The node's ResourceSlice body (`hami.draplugin.slices`): the contract in docs/dra.md."""

from __future__ import annotations

import pytest

from hami.deviceplugin.settings import NodeSettings, physical_device
from hami.deviceplugin.sources.base import LinkType, PairLink, SourceCard
from hami.draplugin.slices import MAX_DEVICES_PER_SLICE, nvlink_groups, resource_slice, slice_devices


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
    assert dev["capacity"]["memory"]["value"] == "61440Mi"
    assert dev["capacity"]["memory"]["requestPolicy"]["default"] == "61440Mi"
    assert dev["capacity"]["cores"]["value"] == "200"
    assert dev["capacity"]["cores"]["requestPolicy"]["validRange"]["max"] == "200"


def test_unhealthy_cards_are_left_out_in_index_order() -> None:
    settings = NodeSettings()
    devices = [physical_device(c, settings, []) for c in (card(2), card(0, healthy=False), card(1))]
    assert [d["name"] for d in slice_devices(devices, [])] == ["gpu-1", "gpu-2"]


def test_a_slice_holds_at_most_128_devices() -> None:
    with pytest.raises(ValueError, match="129 cards, more than the 128"):
        resource_slice("n1", "uid", 1, [{}] * (MAX_DEVICES_PER_SLICE + 1))
