"""Per-node config.json: parsing, validation, merge with the nvidia node defaults, filterdevices."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from hami.config import (
    ConfigError,
    DeviceConfig,
    FilterDevices,
    NodeConfig,
    NodeConfigFile,
    effective_node_config,
    load_node_config_file,
    parse_device_config,
    parse_node_config_file,
)

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "node-config.json"
SRC = "config.json"

HAMI_CHART_EXAMPLE = """{
  "nodeconfig": [
    {
      "name": "your-node-name",
      "operatingmode": "hami-core",
      "devicememoryscaling": 1,
      "devicesplitcount": 10,
      "preconfigureddevicememory": 0,
      "enablenumatopology": false,
      "migstrategy": "none",
      "filterdevices": {
        "uuid": [],
        "index": []
      },
      "enablegetpreferredallocation": false
    }
  ]
}"""


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_node_config_file(text, source=SRC)
    return info.value.errors


def test_hami_chart_example_parses() -> None:
    f = parse_node_config_file(HAMI_CHART_EXAMPLE, source=SRC)
    assert f.warnings == []
    (entry,) = f.nodeconfig
    assert entry.name == "your-node-name"
    assert entry.operatingmode == "hami-core"
    assert entry.devicesplitcount == 10
    assert entry.devicecorescaling is None  # not given: does not override
    assert entry.filterdevices == FilterDevices()


def test_example_file() -> None:
    f = load_node_config_file(EXAMPLE)
    assert f.warnings == []
    assert [n.name for n in f.nodeconfig] == ["gpu-node-1", "gpu-node-2"]
    assert f.nodeconfig[0].libcudaloglevel == 1  # written as the string "1", as HAMi does


def test_yaml_is_accepted_too() -> None:
    f = parse_node_config_file("nodeconfig:\n- name: n1\n  devicesplitcount: 3\n", source="config.yaml")
    assert f.nodeconfig == [NodeConfig(name="n1", devicesplitcount=3)]


def test_empty_file_has_no_entries() -> None:
    assert parse_node_config_file("", source=SRC) == NodeConfigFile()
    assert parse_node_config_file("{}", source=SRC).nodeconfig == []


def test_unknown_keys_are_warned() -> None:
    f = parse_node_config_file(
        '{"nodeconfig": [{"name": "n1", "devicesplitCount": 2, "filterdevices": {"uuids": []}}], "version": 1}',
        source=SRC,
    )
    assert f.warnings == [
        "config.json: nodeconfig[0].devicesplitCount: unknown key, ignored (did you mean 'devicesplitcount'?)",
        "config.json: nodeconfig[0].filterdevices.uuids: unknown key, ignored (did you mean 'uuid'?)",
        "config.json: version: unknown key, ignored",
    ]
    assert "warnings" not in f.to_dict()


@pytest.mark.parametrize(
    ("entry", "expected"),
    [
        ({"devicesplitcount": 0}, "nodeconfig[0].devicesplitcount = 0: must be an integer >= 1"),
        ({"devicememoryscaling": 0}, "nodeconfig[0].devicememoryscaling = 0: must be a number > 0"),
        ({"devicecorescaling": -1}, "nodeconfig[0].devicecorescaling = -1: must be a number > 0"),
        (
            {"preconfigureddevicememory": -1},
            "nodeconfig[0].preconfigureddevicememory = -1: must be an integer >= 0",
        ),
        ({"libcudaloglevel": "9"}, 'nodeconfig[0].libcudaloglevel = "9": must be an integer between 0 and 4'),
        (
            {"operatingmode": "vgpu"},
            'nodeconfig[0].operatingmode = "vgpu": must be one of: hami-core, mig, mps',
        ),
        ({"migstrategy": "auto"}, 'nodeconfig[0].migstrategy = "auto": must be one of: none, single, mixed'),
        ({"allocationmode": "dra"}, 'nodeconfig[0].allocationmode = "dra": must be one of: lock, cdi'),
        ({"enablenumatopology": "yes"}, 'nodeconfig[0].enablenumatopology = "yes": must be true or false'),
        (
            {"enablegetpreferredallocation": 2},
            "nodeconfig[0].enablegetpreferredallocation = 2: must be true or false",
        ),
        (
            {"filterdevices": {"index": [-1]}},
            "nodeconfig[0].filterdevices.index[0] = -1: must be an integer >= 0",
        ),
        ({"filterdevices": {"uuid": "GPU-1"}}, 'nodeconfig[0].filterdevices.uuid = "GPU-1": must be a list'),
        ({"name": ""}, 'nodeconfig[0].name = "": must be a non-empty string'),
    ],
)
def test_each_rule_has_a_precise_message(entry: dict[str, object], expected: str) -> None:
    doc = {"nodeconfig": [{"name": "n1", **entry}]}
    assert f"{SRC}: {expected}" in errors_of(json.dumps(doc))


def test_name_is_required() -> None:
    assert errors_of('{"nodeconfig": [{"devicesplitcount": 2}]}') == [
        "config.json: nodeconfig[0].name: is required"
    ]


def test_duplicate_node_names_are_an_error() -> None:
    assert errors_of('{"nodeconfig": [{"name": "a"}, {"name": "b"}, {"name": "a"}]}') == [
        'config.json: nodeconfig[2].name = "a": duplicate node name (also nodeconfig[0])'
    ]


def test_json_syntax_error_has_line_and_column() -> None:
    (msg,) = errors_of('{\n  "nodeconfig": [\n    {"name": "a"}\n  \n')
    assert msg.startswith("config.json:") and "invalid JSON" in msg


def test_json_duplicate_key_is_an_error() -> None:
    (msg,) = errors_of('{"nodeconfig": [{"name": "a", "name": "b"}]}')
    assert msg == "config.json: invalid JSON: duplicate key 'name'"


def test_top_level_must_be_a_mapping() -> None:
    (msg,) = errors_of("[1, 2]")
    assert msg.startswith("config.json: top level must be a mapping")


# ------------------------------------------------------------------------------------------- merge


def test_no_entry_gives_the_nvidia_defaults() -> None:
    device, _ = parse_device_config(
        "nvidia:\n  deviceSplitCount: 4\n  deviceMemoryScaling: 2\n  disablecorelimit: true\n",
        source="d.yaml",
    )
    eff = effective_node_config(device, "node-x", None)
    assert not eff.matched
    assert eff.operating_mode == "hami-core"
    assert (eff.device_split_count, eff.device_memory_scaling, eff.device_core_scaling) == (4, 2.0, 1.0)
    assert eff.disable_core_limit is True
    assert eff.filter_devices.is_empty()
    assert effective_node_config(device, "node-x", NodeConfigFile()) == eff


def test_entry_overrides_only_what_it_sets() -> None:
    device, _ = parse_device_config(
        "nvidia:\n  deviceSplitCount: 4\n  deviceCoreScaling: 1.5\n  enableNumaTopology: true\n"
        "  libCudaLogLevel: 2\n  migStrategy: single\n",
        source="d.yaml",
    )
    nodes = parse_node_config_file(
        '{"nodeconfig": [{"name": "other", "devicesplitcount": 9},'
        ' {"name": "n1", "operatingmode": "mig", "devicesplitcount": 7, "devicememoryscaling": 1.25,'
        ' "libcudaloglevel": "0", "enablenumatopology": false, "enablegetpreferredallocation": true}]}',
        source=SRC,
    )
    eff = effective_node_config(device, "n1", nodes)
    assert eff.matched
    assert eff.operating_mode == "mig"
    assert eff.device_split_count == 7
    assert eff.device_memory_scaling == 1.25
    assert eff.device_core_scaling == 1.5  # not in the entry: the nvidia default stays
    assert eff.lib_cuda_log_level == 0  # explicit zero overrides (HAMi's mergo would ignore it)
    assert eff.enable_numa_topology is False  # explicit false overrides
    assert eff.mig_strategy == "single"
    assert eff.enable_get_preferred_allocation is True


def test_filterdevices() -> None:
    nodes = load_node_config_file(EXAMPLE)
    eff = effective_node_config(DeviceConfig.default(), "gpu-node-1", nodes)
    assert eff.hides(uuid="GPU-6b6a4bb3-2f1c-4a0e-9f53-3c1a3f8f1d21")
    assert eff.hides(index=7)
    assert eff.hides(uuid="GPU-other", index=7)
    assert not eff.hides(uuid="GPU-other", index=0)
    assert not eff.hides()
    other = effective_node_config(DeviceConfig.default(), "gpu-node-2", nodes)
    assert other.operating_mode == "mig" and other.mig_strategy == "mixed"
    assert not other.hides(index=7)


def test_node_entry_written_as_hami_does() -> None:
    f = load_node_config_file(EXAMPLE)
    data = f.to_dict()
    assert data["nodeconfig"][0]["libcudaloglevel"] == "1"
    assert data["nodeconfig"][1] == {"name": "gpu-node-2", "operatingmode": "mig", "migstrategy": "mixed"}
    assert parse_node_config_file(json.dumps(data), source=SRC) == f
