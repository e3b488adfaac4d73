"""``nvidia:`` — the NVIDIA section of ``device-config.yaml``, next to its backend (:mod:`hami.devices.nvidia`).

HAMi v2.10 ``nvidia.NvidiaConfig`` plus its inline node defaults; composed into
:class:`hami.config.DeviceConfig`. File keys come from the shared alias generator
(:class:`hami.config._base.SectionModel`); only the keys HAMi accepts under two spellings name them.
"""

from __future__ import annotations

from pydantic import AliasChoices, Field, model_validator

from hami.config._base import SectionModel, resource_names
from hami.config._types import (
    Bool,
    GPUCorePolicyField,
    LogLevel,
    MigProfile,
    MigStrategyField,
    NonEmptyStr,
    NonNegInt,
    OptionalDNSSubdomain,
    Percent,
    PositiveFloat,
    PositiveInt,
    ResourceName,
    cross_error,
)

__all__ = ["MigProfileAllow", "NvidiaConfig"]


class MigProfileAllow(SectionModel):
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


class NvidiaConfig(SectionModel):
    """``nvidia:`` — HAMi ``nvidia.NvidiaConfig`` plus its inline node defaults."""

    resource_count_name: ResourceName = "nvidia.com/gpu"
    resource_memory_name: ResourceName = "nvidia.com/gpumem"
    resource_memory_percentage_name: ResourceName = "nvidia.com/gpumem-percentage"
    resource_core_name: ResourceName = "nvidia.com/gpucores"
    resource_priority_name: ResourceName = "nvidia.com/priority"
    overwrite_env: Bool = False
    default_memory: NonNegInt = Field(
        default=0,
        validation_alias=AliasChoices("defaultMemory", "defaultMem"),
        serialization_alias="defaultMemory",
    )
    default_cores: Percent = 0
    default_gpu_num: NonNegInt = 1
    memory_factor: PositiveInt = 1
    disable_core_limit: Bool = Field(
        default=False,
        validation_alias=AliasChoices("disableCoreLimit", "disablecorelimit"),
        serialization_alias="disableCoreLimit",
    )
    gpu_core_policy: GPUCorePolicyField = "default"
    runtime_class_name: OptionalDNSSubdomain = ""
    mig_profile_allowlist: list[MigProfileAllow] = Field(default_factory=_default_mig_allowlist)
    # Inline node defaults (HAMi ``NodeDefaultConfig``); config.json entries override them per node.
    device_split_count: PositiveInt = 10
    device_memory_scaling: PositiveFloat = 1.0
    device_core_scaling: PositiveFloat = 1.0
    pre_configured_device_memory: NonNegInt = 0
    lib_cuda_log_level: LogLevel = 1
    enable_numa_topology: Bool = False
    mig_strategy: MigStrategyField = "none"

    def resource_names(self) -> dict[str, str]:
        """File key -> resource name, for every resource this vendor answers to (empty ones left out)."""
        return resource_names(self)
