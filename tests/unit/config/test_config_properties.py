"""Property tests: round trips, and that no input makes the parsers fail other than with ConfigError."""

from __future__ import annotations

import contextlib
import json
from typing import Any

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from hami.config import (
    ConfigError,
    DeviceConfig,
    NodeConfig,
    NodeConfigFile,
    NvidiaConfig,
    effective_node_config,
    parse_device_config,
    parse_node_config_file,
)
from hami.config.errors import format_path

names = st.from_regex(
    r"[a-z]([a-z0-9-]{0,8}[a-z0-9])?\.(com|io)/[a-z]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True
)
scaling = st.floats(min_value=0.01, max_value=100, allow_nan=False, allow_infinity=False)

nvidia_configs = st.builds(
    NvidiaConfig,
    resource_count_name=names,
    default_memory=st.integers(0, 1 << 20),
    default_cores=st.integers(0, 100),
    default_gpu_num=st.integers(0, 8),
    memory_factor=st.integers(1, 1024),
    overwrite_env=st.booleans(),
    disable_core_limit=st.booleans(),
    gpu_core_policy=st.sampled_from(["default", "force", "disable"]),
    device_split_count=st.integers(1, 1000),
    device_memory_scaling=scaling,
    device_core_scaling=scaling,
    pre_configured_device_memory=st.integers(0, 1 << 20),
    lib_cuda_log_level=st.integers(0, 4),
    enable_numa_topology=st.booleans(),
    mig_strategy=st.sampled_from(["none", "single", "mixed"]),
)


@given(nvidia_configs)
@settings(max_examples=60, deadline=None)
def test_device_config_yaml_round_trip(nvidia: NvidiaConfig) -> None:
    config = DeviceConfig(nvidia=nvidia)
    again, warnings = parse_device_config(config.to_yaml(), source="p.yaml")
    assert warnings == []
    assert again == config


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
)
KNOWN_KEYS = [
    "nvidia",
    "hygon",
    "iluvatars",
    "vnpus",
    "configs",
    "templates",
    "hami",
    "scheduler",
    "migProfileAllowlist",
    "models",
    "profiles",
    "deviceSplitCount",
    "chipName",
    "commonWord",
    "memory",
    "name",
    "defaultMem",
    "defaultMemory",
    "memoryPerCard",
    "mthreads",
]
keys = st.one_of(st.sampled_from(KNOWN_KEYS), st.text(min_size=1, max_size=8))
junk = st.recursive(
    scalars,
    lambda children: st.one_of(st.lists(children, max_size=4), st.dictionaries(keys, children, max_size=5)),
    max_leaves=25,
)


@given(st.dictionaries(keys, junk, max_size=6))
@settings(max_examples=300, deadline=None)
def test_device_config_never_fails_with_anything_but_config_error(data: dict[str, Any]) -> None:
    text = yaml.safe_dump(data)
    try:
        _, warnings = parse_device_config(text, source="j.yaml")
    except ConfigError as exc:
        assert exc.errors and all(e.startswith("j.yaml") for e in exc.errors)
        return
    assert all(w.startswith("j.yaml: ") for w in warnings)
    for key in data:
        if key not in DeviceConfig.model_fields and key != "vnpus" and key != "ascend":
            assert any(w.startswith(f"j.yaml: {format_path([key])}: unknown key") for w in warnings)


@given(st.text(max_size=60))
@settings(max_examples=200, deadline=None)
def test_any_text_gives_config_or_config_error(text: str) -> None:
    for parser in (parse_device_config, parse_node_config_file):
        with contextlib.suppress(ConfigError):
            parser(text, source="t")


node_entries = st.builds(
    NodeConfig,
    name=st.from_regex(r"[a-z][a-z0-9-]{0,12}", fullmatch=True),
    operatingmode=st.none() | st.sampled_from(["hami-core", "mig", "mps"]),
    devicememoryscaling=st.none() | scaling,
    devicecorescaling=st.none() | scaling,
    devicesplitcount=st.none() | st.integers(1, 100),
    preconfigureddevicememory=st.none() | st.integers(0, 1 << 20),
    libcudaloglevel=st.none() | st.integers(0, 4),
    enablenumatopology=st.none() | st.booleans(),
    migstrategy=st.none() | st.sampled_from(["none", "single", "mixed"]),
    enablegetpreferredallocation=st.none() | st.booleans(),
    allocationmode=st.none() | st.sampled_from(["lock", "cdi"]),
)

FIELD_MAP = {
    "operatingmode": "operating_mode",
    "devicememoryscaling": "device_memory_scaling",
    "devicecorescaling": "device_core_scaling",
    "devicesplitcount": "device_split_count",
    "preconfigureddevicememory": "pre_configured_device_memory",
    "libcudaloglevel": "lib_cuda_log_level",
    "enablenumatopology": "enable_numa_topology",
    "migstrategy": "mig_strategy",
    "enablegetpreferredallocation": "enable_get_preferred_allocation",
    "allocationmode": "allocation_mode",
}


@given(st.lists(node_entries, max_size=5, unique_by=lambda n: n.name), nvidia_configs)
@settings(max_examples=60, deadline=None)
def test_node_config_round_trip_and_merge(entries: list[NodeConfig], nvidia: NvidiaConfig) -> None:
    file = NodeConfigFile(nodeconfig=entries)
    again = parse_node_config_file(json.dumps(file.to_dict()), source="n.json")
    assert again == file
    device = DeviceConfig(nvidia=nvidia)
    no_entry = effective_node_config(device, "not-a-node-name-x", file)
    for entry in entries:
        eff = effective_node_config(device, entry.name, file)
        assert eff.matched
        for key, attr in FIELD_MAP.items():
            given_value = getattr(entry, key)
            expected = getattr(no_entry, attr) if given_value is None else given_value
            assert getattr(eff, attr) == expected
