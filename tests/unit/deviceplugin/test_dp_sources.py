"""FakeSource parsing, health injection and MIG simulation; pair scores; XID policy; NVML errors."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import pytest

from hami.deviceplugin.sources import (
    APPLICATION_XIDS,
    DeviceSourceError,
    FakeSource,
    FakeSpecError,
    LinkType,
    MigPlacement,
    PairLink,
    pair_score,
    parse_link_type,
    xid_is_critical,
)

ROOT = Path(__file__).resolve().parents[3]


def two_cards(**extra: Any) -> dict[str, Any]:
    return {
        "cards": [
            {
                "uuid": "GPU-a",
                "model": "NVIDIA A100-SXM4-40GB",
                "memory": 40960,
                "mig": True,
                "mig_profiles": "p",
            },
            {"uuid": "GPU-b", "model": "Tesla T4", "memory": 15360, "numa": 1},
        ],
        "mig_profile_sets": {
            "p": [
                {"name": "1g.5gb", "memory": 4864, "core": 13, "slices": 1, "placements": [[0, 1], [1, 1]]},
                {"name": "3g.20gb", "memory": 19968, "core": 39, "slices": 3, "placements": [[0, 4], [4, 4]]},
            ]
        },
        **extra,
    }


def test_example_file_loads() -> None:
    src = FakeSource.from_file(ROOT / "examples" / "fake-node.yaml")
    cards = src.cards()
    assert [c.index for c in cards] == [0, 1, 2, 3]
    assert {c.numa for c in cards} == {0, 1}
    scores = src.pair_scores()
    a, b, c = (cards[i].uuid for i in range(3))
    assert scores[a][b] == 50 + 1200 and scores[b][a] == 1250
    assert scores[a][c] == 10 + 1200
    assert [p.name for p in src.mig_profiles(a)][:2] == ["1g.5gb", "1g.10gb"]


def test_small_example_generates_per_node_uuids() -> None:
    src = FakeSource.from_file(ROOT / "examples" / "fake-node-small.yaml", node_name="w1")
    assert [c.uuid for c in src.cards()] == ["GPU-fake-w1-0", "GPU-fake-w1-1"]
    assert src.links() == []


def test_one_file_describes_every_node_of_the_sandbox() -> None:
    """``nodes.<name>`` replaces the top-level keys on that node; other nodes get the top level."""
    path = ROOT / "examples" / "fake-sandbox.yaml"
    node1 = FakeSource.from_file(path, node_name="node1")
    assert [c.model for c in node1.cards()] == ["NVIDIA A100-SXM4-40GB"] * 4
    assert {c.numa for c in node1.cards()} == {0, 1}
    assert [c.mig_capable for c in node1.cards()] == [True, True, False, False]
    assert node1.pair_scores()["GPU-fake-node1-0"]["GPU-fake-node1-1"] > 1000
    node2 = FakeSource.from_file(path, node_name="node2")
    assert [(c.uuid, c.model, c.memory_mib) for c in node2.cards()] == [
        ("GPU-fake-node2-0", "Tesla T4", 15360),
        ("GPU-fake-node2-1", "Tesla T4", 15360),
        ("GPU-fake-node2-2", "NVIDIA L4", 23034),
    ]
    assert node2.links() == []
    other = FakeSource.from_file(path, node_name="node3")
    assert [c.model for c in other.cards()] == ["Tesla T4"]
    with pytest.raises(FakeSpecError, match="'nodes' must map node names"):
        FakeSource({"cards": [{}], "nodes": ["node1"]})


def test_defaults_and_generated_uuids() -> None:
    src = FakeSource({"cards": [{}, {"model": "Tesla T4"}]}, node_name="n7")
    c0, c1 = src.cards()
    assert (c0.uuid, c0.index, c0.memory_mib, c0.healthy) == ("GPU-fake-n7-0", 0, 40960, True)
    assert c1.uuid == "GPU-fake-n7-1" and c1.model == "Tesla T4"


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"cards": [{}], "driver": "dir"}, "driver: expected a mapping"),
        ({"cards": [{}], "driver": {"root": "relative"}}, "driver.root: must be an absolute path"),
        (
            {"cards": [{}], "driver": {"root": "/d", "libdir": "lib"}},
            "driver.libdir: must be an absolute path",
        ),
        ({}, "'cards' must be a non-empty list"),
        ({"cards": [{"memory": "lots"}]}, "cards[0].memory: expected int, got 'lots'"),
        ({"cards": [{"uuid": "GPU-x"}, {"uuid": "GPU-x"}]}, "duplicate card 'GPU-x'"),
        ({"cards": [{"uuid": "GPU-x", "mig_profiles": "nope"}]}, "unknown profile set 'nope'"),
        (
            {"cards": [{"uuid": "GPU-x"}], "links": [{"a": "GPU-x", "b": "GPU-y", "type": "PIX"}]},
            "unknown card",
        ),
        (
            {
                "cards": [{"uuid": "GPU-x"}, {"uuid": "GPU-y"}],
                "links": [{"a": "GPU-x", "b": "GPU-y", "type": "Wormhole"}],
            },
            "links[0].type: unknown link type 'Wormhole'",
        ),
        (
            {"cards": [{"uuid": "GPU-x"}], "failures": [{"uuid": "GPU-z"}]},
            "failures[0].uuid: unknown card 'GPU-z'",
        ),
    ],
)
def test_spec_errors_name_key_and_value(spec: dict[str, Any], message: str) -> None:
    with pytest.raises(FakeSpecError) as err:
        FakeSource(spec, origin="node.yaml")
    assert message in str(err.value)
    assert str(err.value).startswith("node.yaml")


def test_file_errors(tmp_path: Path) -> None:
    with pytest.raises(FakeSpecError, match="cannot read"):
        FakeSource.from_file(tmp_path / "missing.yaml")
    bad = tmp_path / "bad.yaml"
    bad.write_text("cards: [\n")
    with pytest.raises(FakeSpecError, match="invalid YAML"):
        FakeSource.from_file(bad)


def test_injected_and_scheduled_failures() -> None:
    now = [0.0]
    src = FakeSource(
        two_cards(failures=[{"uuid": "GPU-b", "after_seconds": 5, "xid": 79}, {"uuid": "GPU-a", "xid": 13}]),
        clock=lambda: now[0],
    )
    assert all(c.healthy for c in src.cards())  # XID 13 is an application error
    now[0] = 5.0
    assert {c.uuid: c.healthy for c in src.cards()} == {"GPU-a": True, "GPU-b": False}
    src.inject_health("GPU-b", True)
    src.inject_health("GPU-a", False, xid=31)  # application XID: ignored
    assert all(c.healthy for c in src.cards())
    src.inject_health("GPU-a", False, xid=94)
    assert not src.cards()[0].healthy
    with pytest.raises(DeviceSourceError):
        src.inject_health("GPU-zzz", False)


def test_health_file(tmp_path: Path) -> None:
    health = tmp_path / "h.txt"
    src = FakeSource(two_cards(health_file="h.txt"), base_dir=tmp_path)
    assert src.health_file == health
    health.write_text("GPU-a 79  # fell off the bus\nGPU-unknown\nGPU-b 43\n")
    assert {c.uuid: c.healthy for c in src.cards()} == {"GPU-a": False, "GPU-b": True}
    health.write_text("# all fine\n")
    assert all(c.healthy for c in src.cards())


async def test_health_events_stream() -> None:
    src = FakeSource(two_cards(), poll_interval=0.01)
    events = src.health_events()
    src.inject_health("GPU-b", False, xid=79)
    ev = await asyncio.wait_for(anext(events), 2)
    assert (ev.uuid, ev.healthy, ev.xid, ev.reason) == ("GPU-b", False, 79, "XID 79")
    src.inject_health("GPU-b", True)
    ev = await asyncio.wait_for(anext(events), 2)
    assert (ev.uuid, ev.healthy) == ("GPU-b", True)
    await events.aclose()


def test_mig_simulation() -> None:
    src = FakeSource(two_cards())
    assert src.mig_profiles("GPU-b") == []
    a = src.create_mig_instance("GPU-a", "3g.20gb", MigPlacement(4, 4))
    assert (a.gpu_instance_id, a.compute_instance_id, a.profile) == (1, 0, "3g.20gb")
    assert a.mig_uuid.startswith("MIG-")
    b = src.create_mig_instance("GPU-a", "1g.5gb", MigPlacement(0, 1))
    assert b.gpu_instance_id == 2
    with pytest.raises(DeviceSourceError, match="overlaps"):
        src.create_mig_instance("GPU-a", "3g.20gb", MigPlacement(0, 4))
    with pytest.raises(DeviceSourceError, match="not legal"):
        src.create_mig_instance("GPU-a", "1g.5gb", MigPlacement(5, 1))
    with pytest.raises(DeviceSourceError, match="no MIG profile"):
        src.create_mig_instance("GPU-a", "7g.40gb", MigPlacement(0, 8))
    with pytest.raises(DeviceSourceError, match="not MIG capable"):
        src.create_mig_instance("GPU-b", "1g.5gb", MigPlacement(0, 1))
    assert [i.gpu_instance_id for i in src.list_mig_instances("GPU-a")] == [1, 2]
    src.destroy_mig_instance("GPU-a", 1)
    assert src.list_mig_instances() == [b]
    with pytest.raises(DeviceSourceError, match="no GPU instance 1"):
        src.destroy_mig_instance("GPU-a", 1)
    again = src.create_mig_instance("GPU-a", "3g.20gb", MigPlacement(4, 4))
    assert again.gpu_instance_id == 1 and again.mig_uuid != a.mig_uuid
    src.fail_mig_create.add("GPU-a")
    with pytest.raises(DeviceSourceError, match="injected"):
        src.create_mig_instance("GPU-a", "1g.5gb", MigPlacement(1, 1))


def test_pair_scores_and_link_types() -> None:
    assert [int(t) for t in LinkType] == [10, 20, 30, 40, 50, 60]
    assert pair_score(LinkType.SAME_BOARD, 4) == 460
    assert PairLink("a", "b", LinkType.SAME_CPU, 2, asymmetric=True).score == 0
    assert parse_link_type("single_switch") is LinkType.SINGLE_SWITCH
    assert parse_link_type("SYS") is LinkType.CROSS_CPU
    with pytest.raises(ValueError, match="expected one of"):
        parse_link_type("nvlink")


def test_xid_policy() -> None:
    assert {13, 31, 43, 45, 68, 109} == APPLICATION_XIDS
    assert xid_is_critical(79) and xid_is_critical(48)
    assert not xid_is_critical(13)
    assert not xid_is_critical(79, skipped=frozenset({79}))
    assert xid_is_critical(13, forced=frozenset({13}))


def test_nvml_source_without_driver_is_a_clear_error() -> None:
    from hami.deviceplugin.sources.nvml import NvmlSource, _topology_link

    with pytest.raises(DeviceSourceError, match="cannot initialise NVML"):
        NvmlSource()
    assert _topology_link(0) is LinkType.SAME_BOARD
    assert _topology_link(10) is LinkType.SINGLE_SWITCH
    assert _topology_link(40) is LinkType.SAME_CPU
    assert _topology_link(50) is LinkType.CROSS_CPU


def test_nvml_env_xids(monkeypatch: pytest.MonkeyPatch) -> None:
    from hami.deviceplugin.sources.nvml import _env_xids

    monkeypatch.setenv("DP_DISABLE_HEALTHCHECKS", "48, 79")
    assert _env_xids("DP_DISABLE_HEALTHCHECKS") == (False, frozenset({48, 79}))
    monkeypatch.setenv("DP_DISABLE_HEALTHCHECKS", "all")
    assert _env_xids("DP_DISABLE_HEALTHCHECKS")[0]
