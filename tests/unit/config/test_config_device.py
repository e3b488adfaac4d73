"""device-config.yaml: defaults, parsing, validation messages, unknown-key warnings."""

from __future__ import annotations

from pathlib import Path

import pytest

from hami.config import (
    ConfigError,
    DeviceConfig,
    NvidiaConfig,
    load_device_config,
    parse_device_config,
)

EXAMPLE = Path(__file__).resolve().parents[3] / "examples" / "device-config.yaml"
SRC = "device-config.yaml"


def parse(text: str) -> tuple[DeviceConfig, list[str]]:
    return parse_device_config(text, source=SRC)


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse(text)
    return info.value.errors


# ----------------------------------------------------------------------------------------- defaults


def test_nvidia_defaults_equal_hami_chart() -> None:
    nv = DeviceConfig.default().nvidia
    assert nv.resource_count_name == "nvidia.com/gpu"
    assert nv.resource_memory_name == "nvidia.com/gpumem"
    assert nv.resource_memory_percentage_name == "nvidia.com/gpumem-percentage"
    assert nv.resource_core_name == "nvidia.com/gpucores"
    assert nv.resource_priority_name == "nvidia.com/priority"
    assert nv.overwrite_env is False
    assert (nv.default_memory, nv.default_cores, nv.default_gpu_num, nv.memory_factor) == (0, 0, 1, 1)
    assert nv.disable_core_limit is False
    assert nv.gpu_core_policy == "default"
    assert nv.runtime_class_name == ""
    assert nv.device_split_count == 10
    assert nv.device_memory_scaling == 1.0
    assert nv.device_core_scaling == 1.0
    assert nv.pre_configured_device_memory == 0
    assert nv.lib_cuda_log_level == 1
    assert nv.enable_numa_topology is False
    assert nv.mig_strategy == "none"
    a30 = nv.mig_profile_allowlist[0]
    assert a30.models == ["A30"] and a30.profiles == ["1g.6gb", "2g.12gb", "4g.24gb"]
    assert len(nv.mig_profile_allowlist) == 9


def test_vendor_defaults_equal_hami() -> None:
    d = DeviceConfig.default()
    assert (
        d.cambricon.resource_count_name,
        d.cambricon.resource_memory_name,
        d.cambricon.resource_core_name,
    ) == (
        "cambricon.com/vmlu",
        "cambricon.com/mlu.smlu.vmemory",
        "cambricon.com/mlu.smlu.vcore",
    )
    assert (d.hygon.resource_count_name, d.hygon.resource_memory_name, d.hygon.resource_core_name) == (
        "hygon.com/dcunum",
        "hygon.com/dcumem",
        "hygon.com/dcucores",
    )
    assert d.hygon.memory_factor == 1
    assert (
        d.metax.resource_count_name,
        d.metax.resource_vcount_name,
        d.metax.resource_vcore_name,
        d.metax.resource_vmemory_name,
    ) == ("metax-tech.com/gpu", "metax-tech.com/sgpu", "metax-tech.com/vcore", "metax-tech.com/vmemory")
    assert d.metax.sgpu_topology_aware is False
    assert (
        d.mthreads.resource_count_name,
        d.mthreads.resource_memory_name,
        d.mthreads.resource_core_name,
    ) == (
        "mthreads.com/vgpu",
        "mthreads.com/sgpu-memory",
        "mthreads.com/sgpu-core",
    )
    assert d.enflame.resource_name_gcu == "enflame.com/gcu"
    assert d.enflame.resource_name_drs_gcu == "enflame.com/drs-gcu"
    assert d.enflame.resource_name_gcu_memory == "enflame.com/gcu-memory"
    assert d.enflame.resource_name_gcu_core == "enflame.com/gcu-core"
    assert (d.kunlun.resource_count_name, d.kunlun.resource_vcount_name, d.kunlun.resource_vmemory_name) == (
        "kunlunxin.com/xpu",
        "kunlunxin.com/vxpu",
        "kunlunxin.com/vxpu-memory",
    )
    assert (d.awsneuron.resource_count_name, d.awsneuron.resource_core_name) == (
        "aws.amazon.com/neuron",
        "aws.amazon.com/neuroncore",
    )
    assert (d.amd.resource_count_name, d.amd.resource_memory_name, d.amd.resource_core_name) == (
        "amd.com/gpu",
        "amd.com/gpumem",
        "amd.com/gpucores",
    )
    assert d.vastai.resource_count_name == "vastaitech.com/va"
    assert d.biren.resource_count_name == "birentech.com/gpu"
    assert [i.chip_name for i in d.iluvatars] == ["MR-V100", "MR-V50", "BI-V150", "BI-V100"]
    assert d.iluvatars[3].resource_memory_name == "iluvatar.ai/BI-V100.vMem"
    assert d.ascend is d.vnpus
    assert d.ascend.hami_vnpu_core is False
    assert [c.common_word for c in d.ascend.configs] == [
        "Ascend910A",
        "Ascend910B2",
        "Ascend910B3",
        "Ascend910B4-1",
        "Ascend910B4",
        "Ascend310P",
        "Ascend910C",
    ]
    p310 = d.ascend.configs[5]
    assert (p310.chip_name, p310.memory_allocatable, p310.memory_capacity, p310.ai_core, p310.ai_cpu) == (
        "310P3",
        21527,
        24576,
        8,
        7,
    )
    assert p310.resource_name == "huawei.com/Ascend310P"
    assert p310.resource_core_name == "huawei.com/Ascend310P-core"
    assert d.ascend.configs[6].super_pod is True


def test_hami_section_defaults() -> None:
    h = DeviceConfig.default().hami
    assert h.enforcement_opt_out_namespaces == []
    assert not h.may_opt_out("default")
    assert h.scheduler_name == "hami-scheduler"
    assert h.scheduler.node_scheduler_policy == "binpack"
    assert h.scheduler.gpu_scheduler_policy == "spread"
    assert h.scheduler.node_lock_timeout_seconds == 60


def test_example_file_is_the_chart_defaults_without_warnings() -> None:
    config, warnings = load_device_config(EXAMPLE)
    assert warnings == []
    assert config == DeviceConfig.default()


def test_only_given_keys_change() -> None:
    config, warnings = parse("nvidia:\n  deviceSplitCount: 4\n")
    assert warnings == []
    assert config.nvidia.device_split_count == 4
    assert config == DeviceConfig.default().model_copy(update={"nvidia": NvidiaConfig(device_split_count=4)})


# ------------------------------------------------------------------------------------------ errors


def test_error_names_file_key_value_and_rule() -> None:
    assert errors_of("nvidia:\n  deviceSplitCount: -1\n") == [
        "device-config.yaml: nvidia.deviceSplitCount = -1: must be an integer >= 1"
    ]


def test_empty_file_is_an_error() -> None:
    for text in ("", "   \n", "# only a comment\n", "{}\n"):
        (msg,) = errors_of(text)
        assert msg.startswith("device-config.yaml: all configurations are empty")


def test_yaml_syntax_error_has_line_and_column() -> None:
    (msg,) = errors_of("nvidia:\n  deviceSplitCount: 4\n  bad: [1, 2\n")
    assert msg.startswith("device-config.yaml:4:1: invalid YAML: ")


def test_all_errors_of_a_file_are_collected() -> None:
    errs = errors_of("nvidia:\n  deviceSplitCount: 0\n  gpuCorePolicy: fast\nhygon:\n  memoryFactor: 0\n")
    assert errs == [
        'device-config.yaml: nvidia.gpuCorePolicy = "fast": must be one of: default, force, disable',
        "device-config.yaml: nvidia.deviceSplitCount = 0: must be an integer >= 1",
        "device-config.yaml: hygon.memoryFactor = 0: must be an integer >= 1",
    ]


# ---------------------------------------------------------------------------------------- warnings


def test_unknown_keys_are_warned_at_every_level() -> None:
    text = (
        "nvidiaa:\n  x: 1\n"
        "nvidia:\n  devicesplitcount: 3\n  migProfileAllowlist:\n  - models: [A30]\n    profiles: [1g.6gb]\n"
        "    colour: red\n"
        "iluvatars:\n- chipName: BI-V100\n  vendor: x\n"
    )
    config, warnings = parse(text)
    assert warnings == [
        "device-config.yaml: nvidiaa: unknown key, ignored (did you mean 'nvidia'?)",
        "device-config.yaml: nvidia.devicesplitcount: unknown key, ignored (did you mean 'deviceSplitCount'?)",
        "device-config.yaml: nvidia.migProfileAllowlist[0].colour: unknown key, ignored",
        "device-config.yaml: iluvatars[0].vendor: unknown key, ignored",
    ]
    assert config.nvidia.device_split_count == 10
