"""``device-config.yaml``: the per-vendor device configuration shared by scheduler and device plugin.

Mirrors HAMi v2.10's ``pkg/scheduler/config/config.go: Config`` (and the chart's
``templates/scheduler/device-configmap.yaml``) key for key, plus a ``hami:`` section for settings
HAMi lacks. Missing keys take HAMi's chart defaults (HAMi itself would leave them as Go zero
values, i.e. empty resource names); see ``docs/configuration.md``.
"""

from __future__ import annotations

import os
from typing import Any

import yaml
from pydantic import AliasChoices, Field, model_validator

from hami.config._base import ConfigModel, clean, load_yaml, validate_model
from hami.config._types import (
    Bool,
    DNSSubdomain,
    GPUCorePolicyField,
    GPUSchedulerPolicyField,
    LogLevel,
    MigProfile,
    MigStrategyField,
    Namespace,
    NodeSchedulerPolicyField,
    NonEmptyStr,
    NonNegInt,
    OptionalDNSSubdomain,
    Percent,
    PositiveFloat,
    PositiveInt,
    ResourceName,
    cross_error,
)
from hami.config.errors import ConfigError

__all__ = [
    "AMDConfig",
    "AWSNeuronConfig",
    "AscendConfig",
    "AscendTemplate",
    "BirenConfig",
    "CambriconConfig",
    "DeviceConfig",
    "EnflameConfig",
    "HamiSection",
    "HygonConfig",
    "IluvatarConfig",
    "KunlunConfig",
    "MetaxConfig",
    "MigProfileAllow",
    "MthreadsConfig",
    "NvidiaConfig",
    "SchedulerConfig",
    "VNPUConfig",
    "VastaiConfig",
    "load_device_config",
    "parse_device_config",
]


# -------------------------------------------------------------------------------------------- NVIDIA


class MigProfileAllow(ConfigModel):
    """One ``migProfileAllowlist`` entry: the MIG profiles allowed on GPUs whose model name contains
    one of ``models``."""

    models: list[NonEmptyStr]
    profiles: list[MigProfile]

    @model_validator(mode="after")
    def _non_empty(self) -> MigProfileAllow:
        if not self.models:
            raise cross_error("models", self.models, "must list at least one GPU model")
        if not self.profiles:
            raise cross_error("profiles", self.profiles, "must list at least one MIG profile")
        return self


def _default_mig_allowlist() -> list[MigProfileAllow]:
    table = [
        (["A30"], ["1g.6gb", "2g.12gb", "4g.24gb"]),
        (["A100-SXM4-40GB", "A100-40GB-PCIe", "A100-PCIE-40GB"], ["1g.5gb", "2g.10gb", "3g.20gb", "7g.40gb"]),
        (
            ["A100-SXM4-80GB", "A100-80GB-PCIe", "A100-PCIE-80GB"],
            ["1g.10gb", "2g.20gb", "3g.40gb", "7g.79gb"],
        ),
        (["H100-PCIE-80GB", "H100-SXM5-80GB"], ["1g.10gb", "2g.20gb", "3g.40gb", "7g.80gb"]),
        (["H100-PCIE-94GB", "H100-SXM5-94GB"], ["1g.12gb", "2g.24gb", "3g.47gb", "7g.94gb"]),
        (["H20", "H100 on GH200"], ["1g.12gb", "2g.24gb", "3g.48gb", "7g.96gb"]),
        (["H200 NVL", "H200-SXM5"], ["1g.18gb", "2g.35gb", "3g.71gb", "7g.141gb"]),
        (["B200"], ["1g.23gb", "2g.45gb", "3g.90gb", "7g.180gb"]),
        (["RTX PRO 6000 Blackwell Server Edition"], ["1g.24gb", "2g.48gb", "4g.96gb"]),
    ]
    return [MigProfileAllow(models=m, profiles=p) for m, p in table]


class NvidiaConfig(ConfigModel):
    """``nvidia:`` — HAMi ``nvidia.NvidiaConfig`` plus its inline node defaults."""

    resource_count_name: ResourceName = Field(
        default="nvidia.com/gpu",
        validation_alias="resourceCountName",
        serialization_alias="resourceCountName",
    )
    resource_memory_name: ResourceName = Field(
        default="nvidia.com/gpumem",
        validation_alias="resourceMemoryName",
        serialization_alias="resourceMemoryName",
    )
    resource_memory_percentage_name: ResourceName = Field(
        default="nvidia.com/gpumem-percentage",
        validation_alias="resourceMemoryPercentageName",
        serialization_alias="resourceMemoryPercentageName",
    )
    resource_core_name: ResourceName = Field(
        default="nvidia.com/gpucores",
        validation_alias="resourceCoreName",
        serialization_alias="resourceCoreName",
    )
    resource_priority_name: ResourceName = Field(
        default="nvidia.com/priority",
        validation_alias="resourcePriorityName",
        serialization_alias="resourcePriorityName",
    )
    overwrite_env: Bool = Field(
        default=False, validation_alias="overwriteEnv", serialization_alias="overwriteEnv"
    )
    default_memory: NonNegInt = Field(
        default=0,
        validation_alias=AliasChoices("defaultMemory", "defaultMem"),
        serialization_alias="defaultMemory",
    )
    default_cores: Percent = Field(
        default=0, validation_alias="defaultCores", serialization_alias="defaultCores"
    )
    default_gpu_num: NonNegInt = Field(
        default=1, validation_alias="defaultGPUNum", serialization_alias="defaultGPUNum"
    )
    memory_factor: PositiveInt = Field(
        default=1, validation_alias="memoryFactor", serialization_alias="memoryFactor"
    )
    disable_core_limit: Bool = Field(
        default=False,
        validation_alias=AliasChoices("disableCoreLimit", "disablecorelimit"),
        serialization_alias="disableCoreLimit",
    )
    gpu_core_policy: GPUCorePolicyField = Field(
        default="default", validation_alias="gpuCorePolicy", serialization_alias="gpuCorePolicy"
    )
    runtime_class_name: OptionalDNSSubdomain = Field(
        default="", validation_alias="runtimeClassName", serialization_alias="runtimeClassName"
    )
    mig_profile_allowlist: list[MigProfileAllow] = Field(
        default_factory=_default_mig_allowlist,
        validation_alias="migProfileAllowlist",
        serialization_alias="migProfileAllowlist",
    )
    # Inline node defaults (HAMi ``NodeDefaultConfig``); config.json entries override them per node.
    device_split_count: PositiveInt = Field(
        default=10, validation_alias="deviceSplitCount", serialization_alias="deviceSplitCount"
    )
    device_memory_scaling: PositiveFloat = Field(
        default=1.0, validation_alias="deviceMemoryScaling", serialization_alias="deviceMemoryScaling"
    )
    device_core_scaling: PositiveFloat = Field(
        default=1.0, validation_alias="deviceCoreScaling", serialization_alias="deviceCoreScaling"
    )
    pre_configured_device_memory: NonNegInt = Field(
        default=0,
        validation_alias="preConfiguredDeviceMemory",
        serialization_alias="preConfiguredDeviceMemory",
    )
    lib_cuda_log_level: LogLevel = Field(
        default=1, validation_alias="libCudaLogLevel", serialization_alias="libCudaLogLevel"
    )
    enable_numa_topology: Bool = Field(
        default=False, validation_alias="enableNumaTopology", serialization_alias="enableNumaTopology"
    )
    mig_strategy: MigStrategyField = Field(
        default="none", validation_alias="migStrategy", serialization_alias="migStrategy"
    )

    def resource_names(self) -> dict[str, str]:
        """File key -> resource name, for every resource this vendor answers to (empty ones left out)."""
        return _resource_names(self)


# ----------------------------------------------------------------------------------- other vendors


class CambriconConfig(ConfigModel):
    """``cambricon:`` — MLU (memory in units of 256 MiB, vcore 100 per card)."""

    resource_count_name: ResourceName = Field(
        default="cambricon.com/vmlu",
        validation_alias="resourceCountName",
        serialization_alias="resourceCountName",
    )
    resource_memory_name: ResourceName = Field(
        default="cambricon.com/mlu.smlu.vmemory",
        validation_alias="resourceMemoryName",
        serialization_alias="resourceMemoryName",
    )
    resource_core_name: ResourceName = Field(
        default="cambricon.com/mlu.smlu.vcore",
        validation_alias="resourceCoreName",
        serialization_alias="resourceCoreName",
    )


class HygonConfig(ConfigModel):
    """``hygon:`` — DCU."""

    resource_count_name: ResourceName = Field(
        default="hygon.com/dcunum",
        validation_alias="resourceCountName",
        serialization_alias="resourceCountName",
    )
    resource_memory_name: ResourceName = Field(
        default="hygon.com/dcumem",
        validation_alias="resourceMemoryName",
        serialization_alias="resourceMemoryName",
    )
    resource_core_name: ResourceName = Field(
        default="hygon.com/dcucores",
        validation_alias="resourceCoreName",
        serialization_alias="resourceCoreName",
    )
    memory_factor: PositiveInt = Field(
        default=1, validation_alias="memoryFactor", serialization_alias="memoryFactor"
    )


class MetaxConfig(ConfigModel):
    """``metax:`` — whole GPUs (``resourceCountName``) and sGPU slices (``resourceV*``)."""

    resource_count_name: ResourceName = Field(
        default="metax-tech.com/gpu",
        validation_alias="resourceCountName",
        serialization_alias="resourceCountName",
    )
    resource_vcount_name: ResourceName = Field(
        default="metax-tech.com/sgpu",
        validation_alias="resourceVCountName",
        serialization_alias="resourceVCountName",
    )
    resource_vmemory_name: ResourceName = Field(
        default="metax-tech.com/vmemory",
        validation_alias="resourceVMemoryName",
        serialization_alias="resourceVMemoryName",
    )
    resource_vcore_name: ResourceName = Field(
        default="metax-tech.com/vcore",
        validation_alias="resourceVCoreName",
        serialization_alias="resourceVCoreName",
    )
    sgpu_topology_aware: Bool = Field(
        default=False, validation_alias="sgpuTopologyAware", serialization_alias="sgpuTopologyAware"
    )


class MthreadsConfig(ConfigModel):
    """``mthreads:`` — memory in units of 512 MiB, 16 cores per GPU."""

    resource_count_name: ResourceName = Field(
        default="mthreads.com/vgpu",
        validation_alias="resourceCountName",
        serialization_alias="resourceCountName",
    )
    resource_memory_name: ResourceName = Field(
        default="mthreads.com/sgpu-memory",
        validation_alias="resourceMemoryName",
        serialization_alias="resourceMemoryName",
    )
    resource_core_name: ResourceName = Field(
        default="mthreads.com/sgpu-core",
        validation_alias="resourceCoreName",
        serialization_alias="resourceCoreName",
    )
    # Memory units (512 MiB each) per card model present in the cluster; 96 = MTT S4000 (48 GiB).
    memory_per_card: list[PositiveInt] = Field(
        default_factory=lambda: [96], validation_alias="memoryPerCard", serialization_alias="memoryPerCard"
    )


class EnflameConfig(ConfigModel):
    """``enflame:`` — whole GCUs, DRS slices, and the legacy shared-GCU names."""

    resource_name_gcu: ResourceName = Field(
        default="enflame.com/gcu", validation_alias="resourceNameGCU", serialization_alias="resourceNameGCU"
    )
    resource_name_drs_gcu: ResourceName = Field(
        default="enflame.com/drs-gcu",
        validation_alias="resourceNameDRSGCU",
        serialization_alias="resourceNameDRSGCU",
    )
    resource_name_gcu_memory: ResourceName = Field(
        default="enflame.com/gcu-memory",
        validation_alias="resourceNameGCUMemory",
        serialization_alias="resourceNameGCUMemory",
    )
    resource_name_gcu_core: ResourceName = Field(
        default="enflame.com/gcu-core",
        validation_alias="resourceNameGCUCore",
        serialization_alias="resourceNameGCUCore",
    )
    resource_name_vgcu: ResourceName = Field(
        default="enflame.com/vgcu",
        validation_alias="resourceNameVGCU",
        serialization_alias="resourceNameVGCU",
    )
    resource_name_vgcu_percentage: ResourceName = Field(
        default="enflame.com/vgcu-percentage",
        validation_alias="resourceNameVGCUPercentage",
        serialization_alias="resourceNameVGCUPercentage",
    )


class KunlunConfig(ConfigModel):
    """``kunlun:`` — whole XPUs and vXPU slices."""

    resource_count_name: ResourceName = Field(
        default="kunlunxin.com/xpu",
        validation_alias="resourceCountName",
        serialization_alias="resourceCountName",
    )
    resource_vcount_name: ResourceName = Field(
        default="kunlunxin.com/vxpu",
        validation_alias="resourceVCountName",
        serialization_alias="resourceVCountName",
    )
    resource_vmemory_name: ResourceName = Field(
        default="kunlunxin.com/vxpu-memory",
        validation_alias="resourceVMemoryName",
        serialization_alias="resourceVMemoryName",
    )


class AWSNeuronConfig(ConfigModel):
    """``awsneuron:`` — whole Neuron devices or NeuronCores."""

    resource_count_name: ResourceName = Field(
        default="aws.amazon.com/neuron",
        validation_alias="resourceCountName",
        serialization_alias="resourceCountName",
    )
    resource_core_name: ResourceName = Field(
        default="aws.amazon.com/neuroncore",
        validation_alias="resourceCoreName",
        serialization_alias="resourceCoreName",
    )


class AMDConfig(ConfigModel):
    """``amd:`` — memory in MiB, cores in percent."""

    resource_count_name: ResourceName = Field(
        default="amd.com/gpu", validation_alias="resourceCountName", serialization_alias="resourceCountName"
    )
    resource_memory_name: ResourceName = Field(
        default="amd.com/gpumem",
        validation_alias="resourceMemoryName",
        serialization_alias="resourceMemoryName",
    )
    resource_core_name: ResourceName = Field(
        default="amd.com/gpucores",
        validation_alias="resourceCoreName",
        serialization_alias="resourceCoreName",
    )


class VastaiConfig(ConfigModel):
    """``vastai:`` — whole devices."""

    resource_count_name: ResourceName = Field(
        default="vastaitech.com/va",
        validation_alias="resourceCountName",
        serialization_alias="resourceCountName",
    )


class BirenConfig(ConfigModel):
    """``biren:`` — whole devices."""

    resource_count_name: ResourceName = Field(
        default="birentech.com/gpu",
        validation_alias="resourceCountName",
        serialization_alias="resourceCountName",
    )


def _fill(data: Any, defaults: dict[tuple[str, str], str]) -> Any:
    """Before-validator helper: fill derived defaults for keys given neither by alias nor by name."""
    if not isinstance(data, dict):
        return data
    out = dict(data)
    for (alias, name), value in defaults.items():
        if alias not in out and name not in out:
            out[alias] = value
    return out


def _get(data: dict[str, Any], alias: str, name: str) -> Any:
    return data.get(alias, data.get(name))


class IluvatarConfig(ConfigModel):
    """One ``iluvatars:`` entry. Only ``chipName`` is required; the rest default from it the way the
    HAMi chart spells them (``iluvatar.ai/<chip>-vgpu``, ``.vMem``, ``.vCore``)."""

    chip_name: NonEmptyStr = Field(validation_alias="chipName", serialization_alias="chipName")
    common_word: NonEmptyStr = Field(
        default="", validation_alias="commonWord", serialization_alias="commonWord"
    )
    resource_count_name: ResourceName = Field(
        default="", validation_alias="resourceCountName", serialization_alias="resourceCountName"
    )
    resource_memory_name: ResourceName = Field(
        default="", validation_alias="resourceMemoryName", serialization_alias="resourceMemoryName"
    )
    resource_core_name: ResourceName = Field(
        default="", validation_alias="resourceCoreName", serialization_alias="resourceCoreName"
    )

    @model_validator(mode="before")
    @classmethod
    def _derive(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        chip = _get(data, "chipName", "chip_name")
        if not isinstance(chip, str | int) or isinstance(chip, bool) or str(chip).strip() == "":
            return data  # chipName is missing or bad: reported by its validator
        chip = str(chip)
        return _fill(
            data,
            {
                ("commonWord", "common_word"): chip,
                ("resourceCountName", "resource_count_name"): f"iluvatar.ai/{chip}-vgpu",
                ("resourceMemoryName", "resource_memory_name"): f"iluvatar.ai/{chip}.vMem",
                ("resourceCoreName", "resource_core_name"): f"iluvatar.ai/{chip}.vCore",
            },
        )


def _default_iluvatars() -> list[IluvatarConfig]:
    return [IluvatarConfig(chip_name=c) for c in ("MR-V100", "MR-V50", "BI-V150", "BI-V100")]


class AscendTemplate(ConfigModel):
    """A vNPU template (``vir02``, ``vir05_1c_16g``, ...): memory in MiB, AI cores and AI CPUs."""

    name: NonEmptyStr
    memory: PositiveInt
    ai_core: NonNegInt = Field(default=0, validation_alias="aiCore", serialization_alias="aiCore")
    ai_cpu: NonNegInt = Field(default=0, validation_alias="aiCPU", serialization_alias="aiCPU")


class VNPUConfig(ConfigModel):
    """One ``vnpus.configs`` entry (one Ascend chip type). ``chipName`` and ``commonWord`` are
    required; resource names default to ``huawei.com/<commonWord>`` (``-memory``, ``-core``)."""

    chip_name: NonEmptyStr = Field(validation_alias="chipName", serialization_alias="chipName")
    common_word: NonEmptyStr = Field(validation_alias="commonWord", serialization_alias="commonWord")
    resource_name: ResourceName = Field(
        default="", validation_alias="resourceName", serialization_alias="resourceName"
    )
    resource_memory_name: ResourceName = Field(
        default="", validation_alias="resourceMemoryName", serialization_alias="resourceMemoryName"
    )
    resource_core_name: ResourceName = Field(
        default="", validation_alias="resourceCoreName", serialization_alias="resourceCoreName"
    )
    memory_allocatable: NonNegInt = Field(
        default=0, validation_alias="memoryAllocatable", serialization_alias="memoryAllocatable"
    )
    memory_capacity: NonNegInt = Field(
        default=0, validation_alias="memoryCapacity", serialization_alias="memoryCapacity"
    )
    memory_factor: PositiveInt = Field(
        default=1, validation_alias="memoryFactor", serialization_alias="memoryFactor"
    )
    ai_core: NonNegInt = Field(default=0, validation_alias="aiCore", serialization_alias="aiCore")
    ai_cpu: NonNegInt = Field(default=0, validation_alias="aiCPU", serialization_alias="aiCPU")
    runtime_class_name: OptionalDNSSubdomain = Field(
        default="", validation_alias="runtimeClassName", serialization_alias="runtimeClassName"
    )
    overwrite_env: Bool = Field(
        default=False, validation_alias="overwriteEnv", serialization_alias="overwriteEnv"
    )
    super_pod: Bool = Field(default=False, validation_alias="superPod", serialization_alias="superPod")
    templates: list[AscendTemplate] = Field(default_factory=list)

    @model_validator(mode="before")
    @classmethod
    def _derive(cls, data: Any) -> Any:
        if not isinstance(data, dict):
            return data
        word = _get(data, "commonWord", "common_word")
        if not isinstance(word, str) or not word.strip():
            return data  # commonWord is missing or bad: reported by its validator
        res = _get(data, "resourceName", "resource_name")
        res = res if isinstance(res, str) and res else f"huawei.com/{word}"
        return _fill(
            data,
            {
                ("resourceName", "resource_name"): res,
                ("resourceMemoryName", "resource_memory_name"): f"{res}-memory",
                ("resourceCoreName", "resource_core_name"): f"{res}-core",
            },
        )

    @model_validator(mode="after")
    def _consistent(self) -> VNPUConfig:
        if self.memory_capacity and self.memory_allocatable > self.memory_capacity:
            raise cross_error(
                "memoryAllocatable",
                self.memory_allocatable,
                f"must be <= memoryCapacity ({self.memory_capacity})",
            )
        first: dict[str, int] = {}
        for i, t in enumerate(self.templates):
            if t.name in first:
                raise cross_error(
                    f"templates[{i}].name",
                    t.name,
                    f"template names must be unique (also templates[{first[t.name]}])",
                )
            first[t.name] = i
            if self.memory_capacity and t.memory > self.memory_capacity:
                raise cross_error(
                    f"templates[{i}].memory", t.memory, f"must be <= memoryCapacity ({self.memory_capacity})"
                )
        return self


def _vnpu(
    chip: str,
    word: str,
    alloc: int,
    cap: int,
    ai_core: int,
    ai_cpu: int,
    templates: list[tuple[str, int, int, int]],
    *,
    super_pod: bool = False,
) -> VNPUConfig:
    return VNPUConfig(
        chip_name=chip,
        common_word=word,
        memory_allocatable=alloc,
        memory_capacity=cap,
        ai_core=ai_core,
        ai_cpu=ai_cpu,
        super_pod=super_pod,
        templates=[AscendTemplate(name=n, memory=m, ai_core=c, ai_cpu=p) for n, m, c, p in templates],
    )


def _default_vnpus() -> list[VNPUConfig]:
    return [
        _vnpu(
            "910A",
            "Ascend910A",
            32768,
            32768,
            30,
            0,
            [("vir02", 2184, 2, 0), ("vir04", 4369, 4, 0), ("vir08", 8738, 8, 0), ("vir16", 17476, 16, 0)],
        ),
        _vnpu(
            "910B2",
            "Ascend910B2",
            65536,
            65536,
            24,
            6,
            [("vir03_1c_8g", 8192, 3, 1), ("vir06_1c_16g", 16384, 6, 1), ("vir12_3c_32g", 32768, 12, 3)],
        ),
        _vnpu(
            "910B3",
            "Ascend910B3",
            65536,
            65536,
            20,
            7,
            [("vir05_1c_16g", 16384, 5, 1), ("vir10_3c_32g", 32768, 10, 3)],
        ),
        _vnpu(
            "910B4-1",
            "Ascend910B4-1",
            65536,
            65536,
            20,
            7,
            [("vir05_1c_16g", 16384, 5, 1), ("vir10_3c_32g", 32768, 10, 3)],
        ),
        _vnpu(
            "910B4",
            "Ascend910B4",
            32768,
            32768,
            20,
            7,
            [("vir05_1c_8g", 8192, 5, 1), ("vir10_3c_16g", 16384, 10, 3)],
        ),
        _vnpu(
            "310P3",
            "Ascend310P",
            21527,
            24576,
            8,
            7,
            [("vir01", 3072, 1, 1), ("vir02", 6144, 2, 2), ("vir04", 12288, 4, 4)],
        ),
        _vnpu(
            "Ascend910",
            "Ascend910C",
            65536,
            65536,
            20,
            7,
            [("vir05_1c_16g", 16384, 5, 1), ("vir10_3c_32g", 32768, 10, 3)],
            super_pod=True,
        ),
    ]


class AscendConfig(ConfigModel):
    """``vnpus:`` — Huawei Ascend. HAMi releases before the ``{hamiVnpuCore, configs}`` form took a
    bare list of chip configs; that form is accepted too."""

    hami_vnpu_core: Bool = Field(
        default=False, validation_alias="hamiVnpuCore", serialization_alias="hamiVnpuCore"
    )
    configs: list[VNPUConfig] = Field(default_factory=_default_vnpus)

    @classmethod
    def file_shape(cls, data: Any) -> Any:
        return {"configs": data} if isinstance(data, list) else data

    @model_validator(mode="before")
    @classmethod
    def _legacy_list(cls, data: Any) -> Any:
        return cls.file_shape(data)

    @model_validator(mode="after")
    def _unique(self) -> AscendConfig:
        first: dict[str, int] = {}
        for i, c in enumerate(self.configs):
            if c.common_word in first:
                raise cross_error(
                    f"configs[{i}].commonWord",
                    c.common_word,
                    f"commonWord must be unique (also configs[{first[c.common_word]}])",
                )
            first[c.common_word] = i
        return self


# ------------------------------------------------------------------------------------ hami section


class SchedulerConfig(ConfigModel):
    """``hami.scheduler:`` — scheduler defaults (HAMi has these only as command-line flags)."""

    node_scheduler_policy: NodeSchedulerPolicyField = Field(
        default="binpack", validation_alias="nodeSchedulerPolicy", serialization_alias="nodeSchedulerPolicy"
    )
    gpu_scheduler_policy: GPUSchedulerPolicyField = Field(
        default="spread", validation_alias="gpuSchedulerPolicy", serialization_alias="gpuSchedulerPolicy"
    )
    # HAMi's node lock expires after 5 minutes (--node-lock-timeout); a crashed binder then blocks
    # a node for that long. hami expires it sooner; raise it if binds legitimately take longer.
    node_lock_timeout_seconds: PositiveInt = Field(
        default=60, validation_alias="nodeLockTimeoutSeconds", serialization_alias="nodeLockTimeoutSeconds"
    )


class HamiSection(ConfigModel):
    """``hami:`` — settings HAMi does not have. HAMi ignores this section."""

    enforcement_opt_out_namespaces: list[Namespace] = Field(
        default_factory=list,
        validation_alias="enforcementOptOutNamespaces",
        serialization_alias="enforcementOptOutNamespaces",
    )
    scheduler_name: DNSSubdomain = Field(
        default="hami-scheduler", validation_alias="schedulerName", serialization_alias="schedulerName"
    )
    scheduler: SchedulerConfig = Field(default_factory=lambda: SchedulerConfig())

    def may_opt_out(self, namespace: str) -> bool:
        """True when pods in ``namespace`` may switch enforcement off (``CUDA_DISABLE_CONTROL``,
        ``GPU_CORE_UTILIZATION_POLICY=disable``)."""
        return namespace in self.enforcement_opt_out_namespaces


# ------------------------------------------------------------------------------------ DeviceConfig


class DeviceConfig(ConfigModel):
    """The whole ``device-config.yaml``. Every section is optional and defaults to HAMi's chart."""

    nvidia: NvidiaConfig = Field(default_factory=lambda: NvidiaConfig())
    cambricon: CambriconConfig = Field(default_factory=lambda: CambriconConfig())
    hygon: HygonConfig = Field(default_factory=lambda: HygonConfig())
    metax: MetaxConfig = Field(default_factory=lambda: MetaxConfig())
    mthreads: MthreadsConfig = Field(default_factory=lambda: MthreadsConfig())
    enflame: EnflameConfig = Field(default_factory=lambda: EnflameConfig())
    kunlun: KunlunConfig = Field(default_factory=lambda: KunlunConfig())
    iluvatars: list[IluvatarConfig] = Field(default_factory=_default_iluvatars)
    amd: AMDConfig = Field(default_factory=lambda: AMDConfig())
    awsneuron: AWSNeuronConfig = Field(default_factory=lambda: AWSNeuronConfig())
    vastai: VastaiConfig = Field(default_factory=lambda: VastaiConfig())
    biren: BirenConfig = Field(default_factory=lambda: BirenConfig())
    ascend: AscendConfig = Field(
        default_factory=AscendConfig, validation_alias="vnpus", serialization_alias="vnpus"
    )
    hami: HamiSection = Field(default_factory=lambda: HamiSection())

    @classmethod
    def default(cls) -> DeviceConfig:
        """HAMi's chart defaults (``charts/hami/templates/scheduler/device-configmap.yaml``)."""
        return cls()

    def sections(self) -> dict[str, Any]:
        """Every vendor section by attribute name (list-valued sections as lists), for the registry."""
        return {name: getattr(self, name) for name in type(self).model_fields if name != "hami"}

    @property
    def vnpus(self) -> AscendConfig:
        """The ``vnpus:`` section under its HAMi name (same object as ``ascend``)."""
        return self.ascend

    @property
    def iluvatar(self) -> list[IluvatarConfig]:
        return self.iluvatars

    @model_validator(mode="after")
    def _distinct_resources(self) -> DeviceConfig:
        first: dict[str, int] = {}
        for i, il in enumerate(self.iluvatars):
            if il.common_word in first:
                raise cross_error(
                    f"iluvatars[{i}].commonWord",
                    il.common_word,
                    f"commonWord must be unique (also iluvatars[{first[il.common_word]}])",
                )
            first[il.common_word] = i
        owner: dict[str, str] = {}
        for path, name in self.resource_names():
            if name in owner:
                raise cross_error(path, name, f"resource name is already used by {owner[name]}")
            owner[name] = path
        return self

    def resource_names(self) -> list[tuple[str, str]]:
        """``(key path, resource name)`` for every non-empty resource name, in file order."""
        out: list[tuple[str, str]] = []
        for section in (
            "nvidia",
            "cambricon",
            "hygon",
            "metax",
            "mthreads",
            "enflame",
            "kunlun",
            "amd",
            "awsneuron",
            "vastai",
            "biren",
        ):
            model = getattr(self, section)
            out += [(f"{section}.{k}", v) for k, v in _resource_names(model).items()]
        for i, il in enumerate(self.iluvatars):
            out += [(f"iluvatars[{i}].{k}", v) for k, v in _resource_names(il).items()]
        for i, vc in enumerate(self.ascend.configs):
            out += [(f"vnpus.configs[{i}].{k}", v) for k, v in _resource_names(vc).items()]
        return out

    def to_dict(self) -> dict[str, Any]:
        """Plain data with HAMi's file keys (what :meth:`to_yaml` writes)."""
        return self.model_dump(mode="json", by_alias=True)

    def to_yaml(self) -> str:
        """A complete ``device-config.yaml`` that :func:`parse_device_config` reads back unchanged."""
        return yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=False, allow_unicode=True)


def _resource_names(model: ConfigModel) -> dict[str, str]:
    out: dict[str, str] = {}
    for name, info in type(model).model_fields.items():
        if name.startswith("resource_"):
            value = getattr(model, name)
            if isinstance(value, str) and value:
                out[info.serialization_alias or info.alias or name] = value
    return out


# ------------------------------------------------------------------------------------------ parsing


def parse_device_config(text: str, *, source: str = "<string>") -> tuple[DeviceConfig, list[str]]:
    """Parse and validate a ``device-config.yaml``.

    Returns ``(config, warnings)``; every unknown key (and every null value, which means "default")
    gets one warning naming the file and key path. Raises :class:`ConfigError` listing every
    problem in the file when it is not valid YAML, empty, or breaks a rule.
    """
    data = load_yaml(text, source)
    if data is None or data == {}:
        # HAMi: validateConfig -> "all configurations are empty".
        raise ConfigError(
            [f"{source}: all configurations are empty (the file has no sections; expected nvidia:, ...)"],
            source=source,
        )
    if not isinstance(data, dict):
        raise ConfigError(
            [f"{source}: top level must be a mapping of vendor sections, not a {_kind(data)}"], source=source
        )
    warnings: list[str] = []
    errors: list[str] = []
    cleaned = clean(DeviceConfig, data, (), source, warnings, errors)
    if not cleaned and not errors:
        # Only unknown keys (or nulls): HAMi would see every section empty, too.
        raise ConfigError(
            [f"{source}: all configurations are empty (no known section; see the warnings)"],
            source=source,
            warnings=warnings,
        )
    config, invalid = validate_model(DeviceConfig, cleaned, source)
    errors += invalid
    if errors or config is None:
        raise ConfigError(errors, source=source, warnings=warnings)
    return config, warnings


def load_device_config(path: str | os.PathLike[str]) -> tuple[DeviceConfig, list[str]]:
    """Read and parse ``path`` (see :func:`parse_device_config`); the file is named in every message."""
    source = os.fspath(path)
    return parse_device_config(_read(source), source=source)


def _read(source: str) -> str:
    try:
        with open(source, encoding="utf-8") as f:
            return f.read()
    except UnicodeDecodeError as exc:
        raise ConfigError(
            [f"{source}: not UTF-8 text ({exc.reason} at byte {exc.start})"], source=source
        ) from exc
    except OSError as exc:
        raise ConfigError([f"{source}: cannot read: {exc.strerror or exc}"], source=source) from exc


def _kind(value: Any) -> str:
    if isinstance(value, list):
        return "list"
    if isinstance(value, str):
        return "string"
    return type(value).__name__
