"""``device-config.yaml``: the per-vendor device configuration shared by scheduler and device plugin.

Mirrors HAMi v2.10's ``pkg/scheduler/config/config.go: Config`` (and the chart's
``templates/scheduler/device-configmap.yaml``) key for key, plus a ``hami:`` section for settings
HAMi lacks. Missing keys take HAMi's chart defaults (HAMi itself would leave them as Go zero
values, i.e. empty resource names); see ``docs/configuration.md``.

A vendor with a backend keeps its section next to it (``nvidia:`` is
:mod:`hami.devices.nvidia_config`); :class:`DeviceConfig` composes the sections. Every file key
comes from one alias generator (:func:`hami.config._base.file_key`); a field names its own aliases
only where HAMi accepts a second spelling.
"""

from __future__ import annotations

import os
from typing import Any

import yaml
from pydantic import Field, model_validator

from hami.config._base import SectionModel, clean, load_yaml, validate_model
from hami.config._base import fill_defaults as _fill
from hami.config._base import key_value as _get
from hami.config._base import resource_names as _resource_names
from hami.config._types import (
    DNSSubdomain,
    GPUSchedulerPolicyField,
    Namespace,
    NodeSchedulerPolicyField,
    NonEmptyStr,
    PositiveInt,
    ResourceName,
    cross_error,
    require_unique,
)
from hami.config.errors import ConfigError
from hami.devices.amd_config import AMDConfig
from hami.devices.ascend_config import AscendConfig, AscendTemplate, VNPUConfig
from hami.devices.awsneuron_config import AWSNeuronConfig
from hami.devices.biren_config import BirenConfig
from hami.devices.cambricon_config import CambriconConfig
from hami.devices.enflame_config import EnflameConfig
from hami.devices.hygon_config import HygonConfig
from hami.devices.kunlun_config import KunlunConfig
from hami.devices.metax_config import MetaxConfig
from hami.devices.mthreads_config import MthreadsConfig
from hami.devices.nvidia_config import MigProfileAllow, NvidiaConfig
from hami.devices.vastai_config import VastaiConfig

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


# ----------------------------------------------------------------------------------- other vendors


class IluvatarConfig(SectionModel):
    """One ``iluvatars:`` entry. Only ``chipName`` is required; the rest default from it the way the
    HAMi chart spells them (``iluvatar.ai/<chip>-vgpu``, ``.vMem``, ``.vCore``)."""

    chip_name: NonEmptyStr
    common_word: NonEmptyStr = ""
    resource_count_name: ResourceName = ""
    resource_memory_name: ResourceName = ""
    resource_core_name: ResourceName = ""

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


class SchedulerConfig(SectionModel):
    """``hami.scheduler:`` — scheduler defaults (HAMi has these only as command-line flags)."""

    node_scheduler_policy: NodeSchedulerPolicyField = "binpack"
    gpu_scheduler_policy: GPUSchedulerPolicyField = "spread"
    # HAMi's node lock expires after 5 minutes (--node-lock-timeout); a crashed binder then blocks
    # a node for that long. hami expires it sooner; raise it if binds legitimately take longer.
    node_lock_timeout_seconds: PositiveInt = 60


class HamiSection(SectionModel):
    """``hami:`` — settings HAMi does not have. HAMi ignores this section."""

    enforcement_opt_out_namespaces: list[Namespace] = Field(default_factory=list)
    scheduler_name: DNSSubdomain = "hami-scheduler"
    scheduler: SchedulerConfig = Field(default_factory=lambda: SchedulerConfig())

    def may_opt_out(self, namespace: str) -> bool:
        """True when pods in ``namespace`` may switch enforcement off (``CUDA_DISABLE_CONTROL``,
        ``GPU_CORE_UTILIZATION_POLICY=disable``)."""
        return namespace in self.enforcement_opt_out_namespaces


# ------------------------------------------------------------------------------------ DeviceConfig


class DeviceConfig(SectionModel):
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
        """The configured vendor sections by attribute name (list-valued sections as lists), for the
        registry: ``nvidia`` always (as HAMi), every other vendor only when its section is in the file."""
        return {
            name: getattr(self, name)
            for name in type(self).model_fields
            if name != "hami" and (name == "nvidia" or name in self.model_fields_set)
        }

    def file_key(self, name: str) -> str:
        """The section's key in the file (``ascend`` is ``vnpus``)."""
        alias = type(self).model_fields[name].serialization_alias
        return alias or name

    @property
    def vnpus(self) -> AscendConfig:
        """The ``vnpus:`` section under its HAMi name (same object as ``ascend``)."""
        return self.ascend

    @property
    def iluvatar(self) -> list[IluvatarConfig]:
        return self.iluvatars

    @model_validator(mode="after")
    def _distinct_resources(self) -> DeviceConfig:
        require_unique(
            (il.common_word for il in self.iluvatars), "iluvatars[{}].commonWord", "commonWord must be unique"
        )
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
