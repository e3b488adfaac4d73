"""Per-node device plugin settings and the inventory they produce from a device source.

`NodeSettings` is the resolved view of device-config.yaml (`nvidia` section) merged with the
node's entry of the plugin's config.json (`nodeconfig[]`, HAMi §5.2). `build_inventory` applies
it to the source's cards the way HAMi's plugin does (`register.go: getAPIDevices`).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hami.deviceplugin.sources.base import Card, DeviceSource, MigProfile

HAMI_CORE = "hami-core"
MIG = "mig"
MPS = "mps"
OPERATING_MODES = (HAMI_CORE, MIG, MPS)


@dataclass(frozen=True)
class MigAllowRule:
    """`migProfileAllowlist` entry: profiles allowed on cards whose model contains one of `models`."""

    models: tuple[str, ...]
    profiles: tuple[str, ...]


@dataclass(frozen=True)
class NodeSettings:
    node_name: str = ""
    resource_name: str = "nvidia.com/gpu"
    operating_mode: str = HAMI_CORE
    split_count: int = 10
    memory_scaling: float = 1.0
    core_scaling: float = 1.0
    preconfigured_memory: int = 0  # MiB; > 0 replaces the card's memory
    enable_numa_topology: bool = False
    enable_preferred_allocation: bool = False
    filter_uuids: frozenset[str] = frozenset()
    filter_indexes: frozenset[int] = frozenset()
    libcuda_log_level: str = "1"
    disable_core_limit: bool = False
    gpu_core_policy: str = "default"
    mig_allowlist: tuple[MigAllowRule, ...] = ()
    #: Namespaces whose containers may set CUDA_DISABLE_CONTROL (hami.enforcementOptOutNamespaces).
    enforcement_opt_out_namespaces: frozenset[str] = frozenset()
    #: HAMi's HOOK_PATH: libvgpu.so, ld.so.preload and container cache dirs live under <hook>/vgpu.
    hook_path: str = "/usr/local"
    topology_score: bool = False

    def __post_init__(self) -> None:
        if self.operating_mode not in OPERATING_MODES:
            raise ValueError(f"operatingmode: expected one of {OPERATING_MODES}, got {self.operating_mode!r}")
        if self.split_count < 1:
            raise ValueError(f"devicesplitcount: must be >= 1, got {self.split_count}")
        if self.memory_scaling <= 0 or self.core_scaling <= 0:
            raise ValueError("devicememoryscaling / devicecorescaling must be > 0")

    def filtered(self, card: Card) -> bool:
        """True when `filterdevices` hides this card."""
        return card.uuid in self.filter_uuids or card.index in self.filter_indexes


@dataclass(frozen=True)
class PhysicalDevice:
    """A card as registered: HAMi's DeviceInfo before encoding."""

    card: Card
    count: int
    devmem: int
    devcore: int
    type: str
    mode: str
    mig_profiles: tuple[MigProfile, ...] = field(default=())

    @property
    def uuid(self) -> str:
        return self.card.uuid

    @property
    def healthy(self) -> bool:
        return self.card.healthy


def device_type(model: str) -> str:
    """HAMi's registered type: the driver name, prefixed `NVIDIA-` unless it starts with NVIDIA."""
    return model if model.startswith("NVIDIA") else f"NVIDIA-{model}"


def allowed_mig_profiles(
    card_model: str, profiles: list[MigProfile], rules: tuple[MigAllowRule, ...]
) -> list[MigProfile]:
    """Profiles permitted by the allowlist (all of them when no rule matches the model)."""
    matching = [r for r in rules if any(m.lower() in card_model.lower() for m in r.models)]
    if not matching:
        return profiles
    names = {p for r in matching for p in r.profiles}
    return [p for p in profiles if p.name in names]


def physical_device(card: Card, settings: NodeSettings, profiles: list[MigProfile]) -> PhysicalDevice:
    if settings.operating_mode == MIG:
        allowed = allowed_mig_profiles(card.model, profiles, settings.mig_allowlist)
        return PhysicalDevice(
            card=card,
            count=max((p.instance_count for p in allowed), default=0),
            devmem=card.memory_mib,
            devcore=100,
            type=device_type(card.model),
            mode=MIG,
            mig_profiles=tuple(allowed),
        )
    devmem = card.memory_mib
    if settings.memory_scaling != 1:
        devmem = int(devmem * settings.memory_scaling)
    if settings.preconfigured_memory > 0:
        devmem = settings.preconfigured_memory
    return PhysicalDevice(
        card=card,
        count=settings.split_count,
        devmem=devmem,
        devcore=int(settings.core_scaling * 100),
        type=device_type(card.model),
        mode=settings.operating_mode,
    )


def build_inventory(source: DeviceSource, settings: NodeSettings) -> list[PhysicalDevice]:
    """The node's registered devices: filtered, scaled, in index order. Blocking (reads the source)."""
    out = []
    for card in source.cards():
        if settings.filtered(card):
            continue
        profiles = source.mig_profiles(card.uuid) if settings.operating_mode == MIG else []
        out.append(physical_device(card, settings, profiles))
    return out


def _read_structured(path: str) -> Any:
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as e:
        raise SettingsError(f"{path}: cannot read: {e}") from e
    try:
        return json.loads(text) if p.suffix == ".json" else yaml.safe_load(text)
    except (json.JSONDecodeError, yaml.YAMLError) as e:
        raise SettingsError(f"{path}: invalid {'JSON' if p.suffix == '.json' else 'YAML'}: {e}") from e


class SettingsError(ValueError):
    """A configuration file is invalid; the message names the file, key and value."""


def _typed(source: str, key: str, value: Any, typ: type) -> Any:
    if typ is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if typ is str and isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    if typ is int and isinstance(value, bool):
        raise SettingsError(f"{source}: {key}: expected an integer, got {value!r}")
    if not isinstance(value, typ):
        raise SettingsError(f"{source}: {key}: expected {typ.__name__}, got {value!r}")
    return value


#: device-config.yaml `nvidia.<key>` -> (NodeSettings field, type)
_DEVICE_KEYS: dict[str, tuple[str, type]] = {
    "resourceCountName": ("resource_name", str),
    "deviceSplitCount": ("split_count", int),
    "deviceMemoryScaling": ("memory_scaling", float),
    "deviceCoreScaling": ("core_scaling", float),
    "preConfiguredDeviceMemory": ("preconfigured_memory", int),
    "libCudaLogLevel": ("libcuda_log_level", str),
    "enableNumaTopology": ("enable_numa_topology", bool),
    "disableCoreLimit": ("disable_core_limit", bool),
    "gpuCorePolicy": ("gpu_core_policy", str),
}
#: config.json `nodeconfig[].<key>` -> (NodeSettings field, type)
_NODE_KEYS: dict[str, tuple[str, type]] = {
    "operatingmode": ("operating_mode", str),
    "devicesplitcount": ("split_count", int),
    "devicememoryscaling": ("memory_scaling", float),
    "devicecorescaling": ("core_scaling", float),
    "preconfigureddevicememory": ("preconfigured_memory", int),
    "libcudaloglevel": ("libcuda_log_level", str),
    "enablenumatopology": ("enable_numa_topology", bool),
    "enablegetpreferredallocation": ("enable_preferred_allocation", bool),
}


def load_settings(
    *,
    node_name: str,
    device_config_file: str | None = None,
    node_config_file: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> NodeSettings:
    """Resolve NodeSettings: defaults < device-config.yaml `nvidia` < config.json node entry < overrides."""
    values: dict[str, Any] = {"node_name": node_name}
    if device_config_file:
        doc = _read_structured(device_config_file) or {}
        if not isinstance(doc, dict):
            raise SettingsError(f"{device_config_file}: expected a mapping at the top level")
        nv = doc.get("nvidia") or {}
        if not isinstance(nv, dict):
            raise SettingsError(f"{device_config_file}: nvidia: expected a mapping, got {nv!r}")
        for key, (attr, typ) in _DEVICE_KEYS.items():
            if nv.get(key) is not None:
                values[attr] = _typed(device_config_file, f"nvidia.{key}", nv[key], typ)
        rules = []
        for i, rule in enumerate(nv.get("migProfileAllowlist") or []):
            if not isinstance(rule, dict):
                raise SettingsError(
                    f"{device_config_file}: nvidia.migProfileAllowlist[{i}]: expected a mapping"
                )
            rules.append(
                MigAllowRule(
                    tuple(str(m) for m in rule.get("models") or ()),
                    tuple(str(p) for p in rule.get("profiles") or ()),
                )
            )
        values["mig_allowlist"] = tuple(rules)
        hami = doc.get("hami") or {}
        if isinstance(hami, dict) and hami.get("enforcementOptOutNamespaces"):
            values["enforcement_opt_out_namespaces"] = frozenset(
                str(n) for n in hami["enforcementOptOutNamespaces"]
            )
    if node_config_file:
        doc = _read_structured(node_config_file) or {}
        entries = doc.get("nodeconfig") if isinstance(doc, dict) else None
        if entries is not None and not isinstance(entries, list):
            raise SettingsError(f"{node_config_file}: nodeconfig: expected a list, got {entries!r}")
        for i, entry in enumerate(entries or []):
            if not isinstance(entry, dict) or entry.get("name") != node_name:
                continue
            where = f"nodeconfig[{i}]"
            for key, (attr, typ) in _NODE_KEYS.items():
                if entry.get(key) is not None and entry.get(key) != "":
                    values[attr] = _typed(node_config_file, f"{where}.{key}", entry[key], typ)
            filt = entry.get("filterdevices") or {}
            if not isinstance(filt, dict):
                raise SettingsError(f"{node_config_file}: {where}.filterdevices: expected a mapping")
            values["filter_uuids"] = frozenset(str(u) for u in filt.get("uuid") or ())
            try:
                values["filter_indexes"] = frozenset(int(x) for x in filt.get("index") or ())
            except (TypeError, ValueError):
                raise SettingsError(
                    f"{node_config_file}: {where}.filterdevices.index: expected integers, got {filt.get('index')!r}"
                ) from None
    values.update({k: v for k, v in (overrides or {}).items() if v is not None})
    try:
        return NodeSettings(**values)
    except ValueError as e:
        raise SettingsError(f"{node_config_file or device_config_file or 'settings'}: {e}") from None
