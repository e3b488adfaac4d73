"""Per-node NVIDIA device-plugin configuration (HAMi's ``/config/config.json``).

``{"nodeconfig": [{"name": "<node>", "operatingmode": "hami-core", "devicesplitcount": 10, ...}]}``
— the entry whose ``name`` is the plugin's ``NODE_NAME`` overrides the ``nvidia:`` node defaults
of ``device-config.yaml``. JSON (as HAMi's chart writes it) or YAML is accepted.
"""

from __future__ import annotations

import os
from typing import Any

from pydantic import Field, model_validator

from hami.config._base import ConfigModel, clean, load_json_or_yaml, validate_model
from hami.config._types import (
    AllocationMode,
    AllocationModeField,
    Bool,
    LogLevel,
    MigStrategy,
    MigStrategyField,
    NonEmptyStr,
    NonNegInt,
    OperatingMode,
    OperatingModeField,
    PositiveFloat,
    PositiveInt,
    Str,
    require_unique,
)
from hami.config.device import DeviceConfig, _read
from hami.config.errors import ConfigError

__all__ = [
    "EffectiveNodeConfig",
    "FilterDevices",
    "NodeConfig",
    "NodeConfigFile",
    "effective_node_config",
    "load_node_config_file",
    "parse_node_config_file",
]


class FilterDevices(ConfigModel):
    """``filterdevices``: GPUs (by UUID or by index) the device plugin must not register."""

    uuid: list[Str] = Field(default_factory=list)
    index: list[NonNegInt] = Field(default_factory=list)

    def hides(self, uuid: str | None = None, index: int | None = None) -> bool:
        """True when the GPU with this UUID or index is filtered out (HAMi ``FilterDeviceToRegister``)."""
        return (uuid is not None and uuid in self.uuid) or (index is not None and index in self.index)

    def is_empty(self) -> bool:
        return not self.uuid and not self.index


class NodeConfig(ConfigModel):
    """One ``nodeconfig`` entry. Fields left out are ``None`` and do not override the defaults."""

    name: NonEmptyStr
    operatingmode: OperatingModeField | None = None
    devicememoryscaling: PositiveFloat | None = None
    devicecorescaling: PositiveFloat | None = None
    devicesplitcount: PositiveInt | None = None
    preconfigureddevicememory: NonNegInt | None = None
    libcudaloglevel: LogLevel | None = None
    enablenumatopology: Bool | None = None
    migstrategy: MigStrategyField | None = None
    filterdevices: FilterDevices | None = None
    enablegetpreferredallocation: Bool | None = None
    #: ``lock`` (HAMi's node lock) or ``cdi`` (lock-free: CDI + PodResources); overrides the
    #: plugin's ``--allocation-mode`` on this node.
    allocationmode: AllocationModeField | None = None

    def to_dict(self) -> dict[str, Any]:
        """The entry as HAMi writes it, unset fields left out (``libcudaloglevel`` as a string)."""
        out = self.model_dump(mode="json", exclude_none=True)
        if "libcudaloglevel" in out:
            out["libcudaloglevel"] = str(out["libcudaloglevel"])
        return out


class NodeConfigFile(ConfigModel):
    """The whole ``config.json``. ``warnings`` (not part of the file) lists unknown/null keys."""

    nodeconfig: list[NodeConfig] = Field(default_factory=list)
    warnings: list[str] = Field(default_factory=list, exclude=True)

    @model_validator(mode="after")
    def _unique_names(self) -> NodeConfigFile:
        require_unique((e.name for e in self.nodeconfig), "nodeconfig[{}].name", "duplicate node name")
        return self

    def for_node(self, node_name: str) -> NodeConfig | None:
        """The entry for ``node_name``, or None."""
        return next((n for n in self.nodeconfig if n.name == node_name), None)

    def to_dict(self) -> dict[str, Any]:
        return {"nodeconfig": [n.to_dict() for n in self.nodeconfig]}


class EffectiveNodeConfig(ConfigModel):
    """What the device plugin on one node runs with: ``nvidia:`` defaults overridden by its entry."""

    node_name: str
    matched: bool  # an entry for this node was found in the node config file
    operating_mode: OperatingMode = "hami-core"
    device_split_count: int
    device_memory_scaling: float
    device_core_scaling: float
    pre_configured_device_memory: int
    lib_cuda_log_level: int
    enable_numa_topology: bool
    mig_strategy: MigStrategy
    disable_core_limit: bool
    filter_devices: FilterDevices = Field(default_factory=FilterDevices)
    enable_get_preferred_allocation: bool = False
    #: None: the entry does not say (the plugin's flag decides).
    allocation_mode: AllocationMode | None = None

    def hides(self, uuid: str | None = None, index: int | None = None) -> bool:
        """True when this GPU must not be registered (``filterdevices``)."""
        return self.filter_devices.hides(uuid, index)


def effective_node_config(
    device_config: DeviceConfig, node_name: str, node_config_file: NodeConfigFile | None = None
) -> EffectiveNodeConfig:
    """Merge the ``nvidia:`` node defaults with the ``node_config_file`` entry named ``node_name``.

    Only fields set in the entry override; unlike HAMi's ``mergo.WithOverride`` an explicitly set
    ``false``/``0`` does override (HAMi silently ignores zero values).
    """
    nv = device_config.nvidia
    entry = node_config_file.for_node(node_name) if node_config_file is not None else None
    base: dict[str, Any] = {
        "node_name": node_name,
        "matched": entry is not None,
        "operating_mode": "hami-core",
        "device_split_count": nv.device_split_count,
        "device_memory_scaling": nv.device_memory_scaling,
        "device_core_scaling": nv.device_core_scaling,
        "pre_configured_device_memory": nv.pre_configured_device_memory,
        "lib_cuda_log_level": nv.lib_cuda_log_level,
        "enable_numa_topology": nv.enable_numa_topology,
        "mig_strategy": nv.mig_strategy,
        "disable_core_limit": nv.disable_core_limit,
        "filter_devices": FilterDevices(),
        "enable_get_preferred_allocation": False,
    }
    if entry is not None:
        overrides = {
            "operating_mode": entry.operatingmode,
            "device_split_count": entry.devicesplitcount,
            "device_memory_scaling": entry.devicememoryscaling,
            "device_core_scaling": entry.devicecorescaling,
            "pre_configured_device_memory": entry.preconfigureddevicememory,
            "lib_cuda_log_level": entry.libcudaloglevel,
            "enable_numa_topology": entry.enablenumatopology,
            "mig_strategy": entry.migstrategy,
            "filter_devices": entry.filterdevices,
            "enable_get_preferred_allocation": entry.enablegetpreferredallocation,
            "allocation_mode": entry.allocationmode,
        }
        base.update({k: v for k, v in overrides.items() if v is not None})
    return EffectiveNodeConfig(**base)


def parse_node_config_file(text: str, *, source: str = "<string>") -> NodeConfigFile:
    """Parse and validate a node config file (JSON or YAML). An empty file means no entries.

    Unknown keys are reported in ``result.warnings``; problems raise :class:`ConfigError` naming
    the file, key path (``nodeconfig[1].devicesplitcount``), value and rule.
    """
    data = load_json_or_yaml(text, source) if text.strip() else None
    if data is None:
        return NodeConfigFile()
    if not isinstance(data, dict):
        raise ConfigError(
            [
                f'{source}: top level must be a mapping like {{"nodeconfig": [...]}}, not a {type(data).__name__}'
            ],
            source=source,
        )
    warnings: list[str] = []
    errors: list[str] = []
    cleaned = clean(NodeConfigFile, data, (), source, warnings, errors)
    parsed, invalid = validate_model(NodeConfigFile, cleaned, source)
    errors += invalid
    if errors or parsed is None:
        raise ConfigError(errors, source=source, warnings=warnings)
    return parsed.model_copy(update={"warnings": warnings})


def load_node_config_file(path: str | os.PathLike[str]) -> NodeConfigFile:
    """Read and parse ``path`` (see :func:`parse_node_config_file`)."""
    source = os.fspath(path)
    return parse_node_config_file(_read(source), source=source)
