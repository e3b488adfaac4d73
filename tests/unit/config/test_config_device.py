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


@pytest.mark.parametrize(
    ("yaml_text", "expected"),
    [
        # integers
        ("nvidia:\n  deviceSplitCount: 1.5\n", "nvidia.deviceSplitCount = 1.5: must be an integer >= 1"),
        ("nvidia:\n  deviceSplitCount: true\n", "nvidia.deviceSplitCount = true: must be an integer >= 1"),
        ("nvidia:\n  defaultMemory: -1\n", "nvidia.defaultMemory = -1: must be an integer >= 0"),
        ("nvidia:\n  defaultCores: 101\n", "nvidia.defaultCores = 101: must be an integer between 0 and 100"),
        ("nvidia:\n  defaultGPUNum: -2\n", "nvidia.defaultGPUNum = -2: must be an integer >= 0"),
        ("nvidia:\n  memoryFactor: 0\n", "nvidia.memoryFactor = 0: must be an integer >= 1"),
        (
            "nvidia:\n  preConfiguredDeviceMemory: -5\n",
            "nvidia.preConfiguredDeviceMemory = -5: must be an integer >= 0",
        ),
        ("nvidia:\n  libCudaLogLevel: 5\n", "nvidia.libCudaLogLevel = 5: must be an integer between 0 and 4"),
        (
            "nvidia:\n  libCudaLogLevel: high\n",
            'nvidia.libCudaLogLevel = "high": must be an integer between 0 and 4',
        ),
        # floats
        ("nvidia:\n  deviceMemoryScaling: 0\n", "nvidia.deviceMemoryScaling = 0: must be a number > 0"),
        ("nvidia:\n  deviceCoreScaling: -1.5\n", "nvidia.deviceCoreScaling = -1.5: must be a number > 0"),
        ("nvidia:\n  deviceMemoryScaling: .nan\n", "nvidia.deviceMemoryScaling = nan: must be a number > 0"),
        (
            "nvidia:\n  deviceMemoryScaling: lots\n",
            'nvidia.deviceMemoryScaling = "lots": must be a number > 0',
        ),
        # booleans
        ("nvidia:\n  overwriteEnv: maybe\n", 'nvidia.overwriteEnv = "maybe": must be true or false'),
        ("nvidia:\n  disablecorelimit: 1\n", "nvidia.disablecorelimit = 1: must be true or false"),
        ("metax:\n  sgpuTopologyAware: [true]\n", "metax.sgpuTopologyAware = [true]: must be true or false"),
        # enums
        (
            "nvidia:\n  gpuCorePolicy: Force\n",
            'nvidia.gpuCorePolicy = "Force": must be one of: default, force, disable',
        ),
        ("nvidia:\n  migStrategy: all\n", 'nvidia.migStrategy = "all": must be one of: none, single, mixed'),
        (
            "hami:\n  scheduler:\n    nodeSchedulerPolicy: topology-aware\n",
            'hami.scheduler.nodeSchedulerPolicy = "topology-aware": must be one of: binpack, spread',
        ),
        (
            "hami:\n  scheduler:\n    gpuSchedulerPolicy: random\n",
            'hami.scheduler.gpuSchedulerPolicy = "random": must be one of: binpack, spread, topology-aware',
        ),
        (
            "hami:\n  scheduler:\n    nodeLockTimeoutSeconds: 0\n",
            "hami.scheduler.nodeLockTimeoutSeconds = 0: must be an integer >= 1",
        ),
        # strings and names
        (
            "nvidia:\n  resourceCountName: nvidia.com/my gpu\n",
            'nvidia.resourceCountName = "nvidia.com/my gpu": must be a Kubernetes resource name such as'
            " vendor.com/name (or empty to leave it unused)",
        ),
        (
            "nvidia:\n  runtimeClassName: Nvidia_Runtime\n",
            'nvidia.runtimeClassName = "Nvidia_Runtime": must be empty or a DNS subdomain'
            " (lower-case letters, digits, '-', '.')",
        ),
        (
            "hami:\n  schedulerName: ''\n",
            "hami.schedulerName = \"\": must be a DNS subdomain (lower-case letters, digits, '-', '.')",
        ),
        (
            "hami:\n  enforcementOptOutNamespaces: [ml-team, Kube_System]\n",
            'hami.enforcementOptOutNamespaces[1] = "Kube_System": must be a Kubernetes namespace name'
            " (DNS label: lower-case letters, digits, '-')",
        ),
        (
            "cambricon:\n  resourceCountName: {a: 1}\n",
            'cambricon.resourceCountName = {"a": 1}: must be a string',
        ),
        # MIG allowlist
        (
            "nvidia:\n  migProfileAllowlist:\n  - models: [A30]\n    profiles: [1g.6gb, 6gb]\n",
            'nvidia.migProfileAllowlist[0].profiles[1] = "6gb": must be a MIG profile of the form'
            " <n>g.<memory> such as 1g.10gb",
        ),
        (
            "nvidia:\n  migProfileAllowlist:\n  - models: []\n    profiles: [1g.6gb]\n",
            "nvidia.migProfileAllowlist[0].models = []: must list at least one GPU model",
        ),
        (
            "nvidia:\n  migProfileAllowlist:\n  - models: [A30]\n",
            "nvidia.migProfileAllowlist[0].profiles: is required",
        ),
        ("nvidia:\n  migProfileAllowlist: A30\n", 'nvidia.migProfileAllowlist = "A30": must be a list'),
        # shapes
        ("nvidia: 5\n", "nvidia = 5: must be a mapping"),
        ("iluvatars: {chipName: X}\n", 'iluvatars = {"chipName": "X"}: must be a list'),
        ("mthreads:\n  memoryPerCard: [96, 0]\n", "mthreads.memoryPerCard[1] = 0: must be an integer >= 1"),
        # list entries
        ("iluvatars:\n- commonWord: X\n", "iluvatars[0].chipName: is required"),
        ("vnpus:\n  configs:\n  - chipName: 910A\n", "vnpus.configs[0].commonWord: is required"),
        (
            "vnpus:\n  configs:\n  - {chipName: a, commonWord: A, templates: [{name: t, memory: 0}]}\n",
            "vnpus.configs[0].templates[0].memory = 0: must be an integer >= 1",
        ),
        (
            "vnpus:\n  configs:\n  - {chipName: a, commonWord: A, memoryCapacity: 10, memoryAllocatable: 20}\n",
            "vnpus.configs[0].memoryAllocatable = 20: must be <= memoryCapacity (10)",
        ),
        (
            "vnpus:\n  configs:\n  - {chipName: a, commonWord: A, memoryCapacity: 10, templates: [{name: t, memory: 11}]}\n",
            "vnpus.configs[0].templates[0].memory = 11: must be <= memoryCapacity (10)",
        ),
        (
            "vnpus:\n  configs:\n  - {chipName: a, commonWord: A, templates: [{name: t, memory: 1}, {name: t, memory: 2}]}\n",
            'vnpus.configs[0].templates[1].name = "t": template names must be unique (also templates[0])',
        ),
        (
            "vnpus:\n  configs:\n  - {chipName: a, commonWord: A}\n  - {chipName: b, commonWord: A}\n",
            'vnpus.configs[1].commonWord = "A": commonWord must be unique (also configs[0])',
        ),
        (
            "iluvatars:\n- {chipName: X}\n- {chipName: Y, commonWord: X}\n",
            'iluvatars[1].commonWord = "X": commonWord must be unique (also iluvatars[0])',
        ),
        # the same resource name used twice
        (
            "hygon:\n  resourceCountName: nvidia.com/gpu\n",
            'hygon.resourceCountName = "nvidia.com/gpu": resource name is already used by nvidia.resourceCountName',
        ),
        # one option under two spellings
        (
            "nvidia:\n  disableCoreLimit: true\n  disablecorelimit: false\n",
            "nvidia.disablecorelimit = false: 'disablecorelimit' and 'disableCoreLimit' are two spellings of"
            " the same option; give only one",
        ),
        ("- nvidia\n", "top level must be a mapping of vendor sections, not a list"),
    ],
)
def test_each_rule_has_a_precise_message(yaml_text: str, expected: str) -> None:
    errs = errors_of(yaml_text)
    assert f"{SRC}: {expected}" in errs, errs


def test_duplicate_yaml_key_is_an_error_with_both_lines() -> None:
    (msg,) = errors_of("nvidia:\n  deviceSplitCount: 4\n  deviceSplitCount: 5\n")
    assert msg == (
        "device-config.yaml:3:3: invalid YAML: found duplicate key 'deviceSplitCount' (first given on line 2)"
    )


def test_unknown_only_file_is_empty() -> None:
    with pytest.raises(ConfigError) as info:
        parse("nvida:\n  deviceSplitCount: 3\n")
    assert info.value.errors[0].startswith("device-config.yaml: all configurations are empty")
    assert info.value.warnings == ["device-config.yaml: nvida: unknown key, ignored (did you mean 'nvidia'?)"]


def test_warnings_survive_an_error() -> None:
    with pytest.raises(ConfigError) as info:
        parse("nvidia:\n  deviceSplitCount: 0\n  typo: 1\n")
    assert info.value.warnings == ["device-config.yaml: nvidia.typo: unknown key, ignored"]


def test_null_values_take_the_default_with_a_warning() -> None:
    config, warnings = parse("nvidia:\n  runtimeClassName:\n  deviceSplitCount: 3\ncambricon:\n")
    assert config.nvidia.runtime_class_name == ""
    assert config.cambricon == DeviceConfig.default().cambricon
    assert warnings == [
        "device-config.yaml: nvidia.runtimeClassName: null value, the default is used",
        "device-config.yaml: cambricon: null value, the default is used",
    ]


def test_snake_case_keys_are_not_file_keys() -> None:
    config, warnings = parse("nvidia:\n  device_split_count: 3\n")
    assert config.nvidia.device_split_count == 10
    assert warnings == [
        "device-config.yaml: nvidia.device_split_count: unknown key, ignored (did you mean 'deviceSplitCount'?)"
    ]


# ----------------------------------------------------------------------------- HAMi compatibility


def test_hami_spellings_and_quoted_values_are_accepted() -> None:
    config, warnings = parse(
        "nvidia:\n"
        "  defaultMem: 5000\n"  # the key HAMi's docs use
        "  disablecorelimit: 'true'\n"  # the chart writes it lower-case and quoted
        "  libCudaLogLevel: '3'\n"  # written as a string in config.json
        "  deviceMemoryScaling: '1.5'\n"
        "  deviceSplitCount: 4.0\n"
        "iluvatars:\n- chipName: 910\n"  # an unquoted number is a string, as in Go's yaml.v2
    )
    assert warnings == []
    nv = config.nvidia
    assert (nv.default_memory, nv.disable_core_limit, nv.lib_cuda_log_level) == (5000, True, 3)
    assert (nv.device_memory_scaling, nv.device_split_count) == (1.5, 4)
    assert config.iluvatars[0].chip_name == "910"
    assert config.iluvatars[0].resource_count_name == "iluvatar.ai/910-vgpu"


def test_written_keys_are_hamis() -> None:
    data = DeviceConfig.default().to_dict()
    assert list(data) == [
        "nvidia",
        "cambricon",
        "hygon",
        "metax",
        "mthreads",
        "enflame",
        "kunlun",
        "iluvatars",
        "amd",
        "awsneuron",
        "vastai",
        "biren",
        "vnpus",
        "hami",
    ]
    assert "disableCoreLimit" in data["nvidia"] and "defaultMemory" in data["nvidia"]
    assert data["nvidia"]["defaultGPUNum"] == 1
    assert data["vnpus"]["configs"][0]["templates"][0] == {
        "name": "vir02",
        "memory": 2184,
        "aiCore": 2,
        "aiCPU": 0,
    }


def test_legacy_vnpus_list_form() -> None:
    config, warnings = parse(
        "vnpus:\n- chipName: 910B3\n  commonWord: Ascend910B3\n  aiCore: 20\n  aicore: 3\n"
    )
    assert warnings == [
        "device-config.yaml: vnpus.configs[0].aicore: unknown key, ignored (did you mean 'aiCore'?)"
    ]
    (only,) = config.ascend.configs
    assert only.resource_name == "huawei.com/Ascend910B3"
    assert only.resource_memory_name == "huawei.com/Ascend910B3-memory"
    assert only.resource_core_name == "huawei.com/Ascend910B3-core"


def test_empty_resource_name_means_unused() -> None:
    config, _ = parse("amd:\n  resourceMemoryName: ''\n")
    assert config.amd.resource_memory_name == ""
    assert ("amd.resourceMemoryName", "") not in config.resource_names()


def test_round_trip_full_file() -> None:
    text = EXAMPLE.read_text()
    config, _ = parse(text)
    custom = config.model_copy(
        update={
            "nvidia": config.nvidia.model_copy(
                update={"device_split_count": 3, "gpu_core_policy": "force", "device_memory_scaling": 2.5}
            )
        }
    )
    again, warnings = parse(custom.to_yaml())
    assert warnings == []
    assert again == custom
    assert again.to_yaml() == custom.to_yaml()


def test_enforcement_opt_out() -> None:
    config, _ = parse("hami:\n  enforcementOptOutNamespaces: [ml-research]\n")
    assert config.hami.may_opt_out("ml-research")
    assert not config.hami.may_opt_out("default")


# -------------------------------------------------------------------------------------------- files


def test_load_missing_file(tmp_path: Path) -> None:
    path = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as info:
        load_device_config(path)
    assert info.value.errors == [f"{path}: cannot read: No such file or directory"]


def test_load_names_the_path(tmp_path: Path) -> None:
    path = tmp_path / "device-config.yaml"
    path.write_text("nvidia:\n  deviceSplitCount: zero\n")
    with pytest.raises(ConfigError) as info:
        load_device_config(path)
    assert str(info.value) == f'{path}: nvidia.deviceSplitCount = "zero": must be an integer >= 1'


def test_load_non_utf8(tmp_path: Path) -> None:
    path = tmp_path / "device-config.yaml"
    path.write_bytes(b"nvidia:\n  runtimeClassName: \xff\n")
    with pytest.raises(ConfigError) as info:
        load_device_config(path)
    assert info.value.errors[0].startswith(f"{path}: not UTF-8 text")


def test_config_error_is_a_value_error() -> None:
    assert issubclass(ConfigError, ValueError)
