"""Node settings resolution and the registered inventory built from a source."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hami.config import ConfigError
from hami.deviceplugin.settings import (
    MigAllowRule,
    NodeSettings,
    SettingsError,
    allowed_mig_profiles,
    build_inventory,
    device_type,
    load_settings,
)
from hami.deviceplugin.sources import FakeSource, SourceMigProfile

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
        {"uuid": "GPU-b", "index": 1, "model": "Tesla V100-PCIE-32GB", "memory": 32768, "numa": 1},
        {"uuid": "GPU-c", "index": 2, "model": "NVIDIA A100-SXM4-40GB", "memory": 40960},
    ],
    "mig_profile_sets": {
        "p": [
            {"name": "1g.5gb", "memory": 4864, "slices": 1, "instances": 7},
            {"name": "2g.10gb", "memory": 9856, "slices": 2, "instances": 3},
            {"name": "4g.20gb", "memory": 19968, "slices": 4, "instances": 1},
        ]
    },
}


def test_device_type_prefix() -> None:
    assert device_type("NVIDIA A100-SXM4-40GB") == "NVIDIA A100-SXM4-40GB"
    assert device_type("Tesla V100-PCIE-32GB") == "NVIDIA-Tesla V100-PCIE-32GB"


def test_hami_core_inventory_scaling_and_filter() -> None:
    s = NodeSettings(split_count=4, memory_scaling=1.5, core_scaling=2, filter_indexes=frozenset({2}))
    inv = build_inventory(FakeSource(SPEC), s)
    assert [(d.uuid, d.count, d.devmem, d.devcore, d.type, d.mode) for d in inv] == [
        ("GPU-a", 4, 61440, 200, "NVIDIA A100-SXM4-40GB", "hami-core"),
        ("GPU-b", 4, 49152, 200, "NVIDIA-Tesla V100-PCIE-32GB", "hami-core"),
    ]
    inv = build_inventory(
        FakeSource(SPEC), NodeSettings(preconfigured_memory=1000, filter_uuids=frozenset({"GPU-a"}))
    )
    assert [(d.uuid, d.devmem) for d in inv] == [("GPU-b", 1000), ("GPU-c", 1000)]


def test_mig_inventory() -> None:
    rules = (MigAllowRule(("A100-SXM4-40GB",), ("1g.5gb", "4g.20gb")),)
    inv = build_inventory(
        FakeSource(SPEC), NodeSettings(operating_mode="mig", mig_allowlist=rules, split_count=10)
    )
    a = inv[0]
    assert (a.mode, a.count, a.devcore, a.devmem) == ("mig", 7, 100, 40960)
    assert [p.name for p in a.mig_profiles] == ["1g.5gb", "4g.20gb"]
    assert inv[1].count == 0 and inv[1].mig_profiles == ()  # not MIG capable


def test_allowlist_without_matching_rule_keeps_all() -> None:
    profs = [SourceMigProfile("1g.5gb", 4864, 13, 1)]
    assert allowed_mig_profiles("H100", profs, (MigAllowRule(("A30",), ("1g.6gb",)),)) == profs


def test_settings_validation() -> None:
    with pytest.raises(ValueError, match="operatingmode"):
        NodeSettings(operating_mode="turbo")
    with pytest.raises(ValueError, match="devicesplitcount"):
        NodeSettings(split_count=0)


def test_load_settings_merges_files_and_overrides(tmp_path: Path) -> None:
    dc = tmp_path / "device-config.yaml"
    dc.write_text(
        "nvidia:\n  deviceSplitCount: 5\n  deviceMemoryScaling: 2\n  libCudaLogLevel: 3\n"
        "hami:\n  enforcementOptOutNamespaces: [trusted]\n"
    )
    nc = tmp_path / "config.json"
    nc.write_text(
        json.dumps(
            {
                "nodeconfig": [
                    {"name": "other", "devicesplitcount": 99},
                    {
                        "name": "n1",
                        "operatingmode": "mps",
                        "devicesplitcount": 7,
                        "filterdevices": {"uuid": ["GPU-x"], "index": [3]},
                        "enablegetpreferredallocation": True,
                    },
                ]
            }
        )
    )
    s = load_settings(node_name="n1", device_config_file=str(dc), node_config_file=str(nc))
    assert (s.split_count, s.memory_scaling, s.operating_mode, s.libcuda_log_level) == (7, 2.0, "mps", "3")
    assert s.filter_uuids == {"GPU-x"} and s.filter_indexes == {3}
    assert s.enable_preferred_allocation
    assert s.enforcement_opt_out_namespaces == {"trusted"}
    s2 = load_settings(
        node_name="n2", device_config_file=str(dc), overrides={"split_count": 3, "hook_path": None}
    )
    assert (s2.split_count, s2.operating_mode, s2.hook_path) == (3, "hami-core", "/usr/local")
    with pytest.raises(SettingsError):
        load_settings(node_name="n2", overrides={"split_count": 0})
    assert load_settings(node_name="n").split_count == 10  # chart default


def test_load_settings_bad_file_names_it(tmp_path: Path) -> None:
    nc = tmp_path / "config.json"
    nc.write_text('{"nodeconfig": [{"name": "n1", "devicesplitcount": -1}]}')
    with pytest.raises(ConfigError) as err:
        load_settings(node_name="n1", node_config_file=str(nc))
    assert "config.json" in str(err.value) and "devicesplitcount" in str(err.value)


def test_allocation_mode_flag_and_node_entry(tmp_path: Path) -> None:
    nc = tmp_path / "config.json"
    nc.write_text(json.dumps({"nodeconfig": [{"name": "n1", "allocationmode": "cdi"}, {"name": "n2"}]}))
    # the node's entry wins over the flag (the cluster default); without one the flag decides
    for node, flag, expected in (
        ("n1", None, "cdi"),
        ("n1", "lock", "cdi"),
        ("n2", "cdi", "cdi"),
        ("n2", None, "lock"),
        ("n3", None, "lock"),
    ):
        s = load_settings(node_name=node, node_config_file=str(nc), overrides={"allocation_mode": flag})
        assert s.allocation_mode == expected, (node, flag)
    with pytest.raises(SettingsError, match="allocationmode: expected one of"):
        load_settings(node_name="n3", overrides={"allocation_mode": "dra"})
