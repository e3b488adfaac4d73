"""Per-node device plugin settings and the inventory they produce from a device source.

`NodeSettings` is the resolved view of device-config.yaml (`nvidia` section) merged with the
node's entry of the plugin's config.json (`nodeconfig[]`, HAMi §5.2). `build_inventory` applies
it to the source's cards the way HAMi's plugin does (`register.go: getAPIDevices`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field, replace
from typing import Any

from hami.config import (
    DeviceConfig,
    EffectiveNodeConfig,
    effective_node_config,
    load_device_config,
    load_node_config_file,
)
from hami.deviceplugin.podresources_api import POD_RESOURCES_SOCKET
from hami.deviceplugin.sources.base import DeviceSource, SourceCard, SourceMigProfile
from hami.protocol import keys

log = logging.getLogger(__name__)

HAMI_CORE = "hami-core"
MIG = "mig"
MPS = "mps"
#: The node runs `hami dra-plugin` (hami-core cards published as DRA devices) instead of the
#: device plugin, which then advertises nothing (docs/dra.md, "Per-node mode").
DRA = keys.OPERATING_MODE_DRA
OPERATING_MODES = (HAMI_CORE, MIG, MPS, DRA)
#: Allocation modes: HAMi's node lock, or lock-free (CDI + PodResources at PreStartContainer).
LOCK = "lock"
CDI = "cdi"
ALLOCATION_MODES = (LOCK, CDI)
#: Where CDI spec files go by default (containerd's and CRI-O's default `cdi_spec_dirs` include it).
DEFAULT_CDI_SPEC_DIR = "/var/run/cdi"


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
    #: Container resource whose limit becomes CUDA_TASK_PRIORITY.
    priority_resource_name: str = "nvidia.com/priority"
    #: MPS control daemon directories on the host (mps operating mode).
    mps_pipe_dir: str = "/tmp/nvidia-mps"
    mps_log_dir: str = "/tmp/nvidia-log"
    #: `lock` (HAMi's node lock at Allocate) or `cdi` (lock-free, see `hami.deviceplugin.lockfree`).
    allocation_mode: str = LOCK
    #: Directory the lock-free mode writes its CDI spec files into (the runtime's CDI spec dir).
    cdi_spec_dir: str = DEFAULT_CDI_SPEC_DIR
    #: The kubelet's PodResources socket (lock-free mode).
    pod_resources_socket: str = POD_RESOURCES_SOCKET

    def __post_init__(self) -> None:
        if self.operating_mode not in OPERATING_MODES:
            raise ValueError(f"operatingmode: expected one of {OPERATING_MODES}, got {self.operating_mode!r}")
        if self.allocation_mode not in ALLOCATION_MODES:
            raise ValueError(
                f"allocationmode: expected one of {ALLOCATION_MODES}, got {self.allocation_mode!r}"
            )
        if self.split_count < 1:
            raise ValueError(f"devicesplitcount: must be >= 1, got {self.split_count}")
        if self.memory_scaling <= 0 or self.core_scaling <= 0:
            raise ValueError("devicememoryscaling / devicecorescaling must be > 0")

    def filtered(self, card: SourceCard) -> bool:
        """True when `filterdevices` hides this card."""
        return card.uuid in self.filter_uuids or card.index in self.filter_indexes


@dataclass(frozen=True)
class PhysicalDevice:
    """A card as registered: HAMi's DeviceInfo before encoding."""

    card: SourceCard
    count: int
    devmem: int
    devcore: int
    type: str
    mode: str
    mig_profiles: tuple[SourceMigProfile, ...] = field(default=())

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
    card_model: str, profiles: list[SourceMigProfile], rules: tuple[MigAllowRule, ...]
) -> list[SourceMigProfile]:
    """Profiles permitted by the allowlist (all of them when no rule matches the model)."""
    matching = [r for r in rules if any(m.lower() in card_model.lower() for m in r.models)]
    if not matching:
        return profiles
    names = {p for r in matching for p in r.profiles}
    return [p for p in profiles if p.name in names]


def physical_device(
    card: SourceCard, settings: NodeSettings, profiles: list[SourceMigProfile]
) -> PhysicalDevice:
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
    if devmem <= 0:
        # registered as is: the scheduler never places a slice on a 0-MiB card (0 is not "unlimited")
        log.warning(
            "card %s: %d MiB x devicememoryscaling %g is %d MiB; it is registered without memory and gets no pods",
            card.uuid,
            card.memory_mib,
            settings.memory_scaling,
            devmem,
        )
    return PhysicalDevice(
        card=card,
        count=settings.split_count,
        devmem=devmem,
        devcore=int(settings.core_scaling * 100),
        type=device_type(card.model),
        mode=settings.operating_mode,
        # a DRA node publishes a MIG-capable card's allowed profiles as partitionable devices
        mig_profiles=tuple(allowed_mig_profiles(card.model, profiles, settings.mig_allowlist))
        if settings.operating_mode == DRA
        else (),
    )


def build_inventory(source: DeviceSource, settings: NodeSettings) -> list[PhysicalDevice]:
    """The node's registered devices: filtered, scaled, in index order. Blocking (reads the source)."""
    out = []
    for card in source.cards():
        if settings.filtered(card):
            continue
        profiles = source.mig_profiles(card.uuid) if settings.operating_mode in (MIG, DRA) else []
        out.append(physical_device(card, settings, profiles))
    return out


class SettingsError(ValueError):
    """The resolved settings are invalid (e.g. a bad command-line override)."""


def settings_from_config(
    device_config: DeviceConfig,
    node: EffectiveNodeConfig,
    *,
    hook_path: str = "/usr/local",
    topology_score: bool = False,
) -> NodeSettings:
    """NodeSettings from the validated device-config.yaml and the node's effective config."""
    nv = device_config.nvidia
    mode = {} if node.allocation_mode is None else {"allocation_mode": node.allocation_mode}
    return NodeSettings(
        **mode,
        node_name=node.node_name,
        resource_name=nv.resource_count_name,
        priority_resource_name=nv.resource_priority_name,
        operating_mode=node.operating_mode,
        split_count=node.device_split_count,
        memory_scaling=node.device_memory_scaling,
        core_scaling=node.device_core_scaling,
        preconfigured_memory=node.pre_configured_device_memory,
        enable_numa_topology=node.enable_numa_topology,
        enable_preferred_allocation=node.enable_get_preferred_allocation,
        filter_uuids=frozenset(node.filter_devices.uuid),
        filter_indexes=frozenset(node.filter_devices.index),
        libcuda_log_level=str(node.lib_cuda_log_level),
        disable_core_limit=node.disable_core_limit,
        gpu_core_policy=str(nv.gpu_core_policy),
        mig_allowlist=tuple(
            MigAllowRule(tuple(r.models), tuple(str(p) for p in r.profiles)) for r in nv.mig_profile_allowlist
        ),
        enforcement_opt_out_namespaces=frozenset(device_config.hami.enforcement_opt_out_namespaces),
        hook_path=hook_path,
        topology_score=topology_score,
    )


def load_settings(
    *,
    node_name: str,
    device_config_file: str | None = None,
    node_config_file: str | None = None,
    overrides: dict[str, Any] | None = None,
) -> NodeSettings:
    """Resolve NodeSettings: chart defaults < device-config.yaml `nvidia` < config.json node entry
    < non-None `overrides` (NodeSettings field names), except that a node entry's `allocationmode`
    beats the `allocation_mode` override (the flag is the cluster default, the entry the node's
    own). Raises ConfigError for bad files."""
    if device_config_file:
        device_config, warnings = load_device_config(device_config_file)
        for w in warnings:
            log.warning("%s", w)
    else:
        device_config = DeviceConfig.default()
    node_file = load_node_config_file(node_config_file) if node_config_file else None
    for w in node_file.warnings if node_file is not None else ():
        log.warning("%s", w)
    node = effective_node_config(device_config, node_name, node_file)
    settings = settings_from_config(device_config, node)
    changes = {k: v for k, v in (overrides or {}).items() if v is not None}
    if node.allocation_mode is not None:
        changes.pop("allocation_mode", None)
    try:
        return replace(settings, **changes)
    except (TypeError, ValueError) as e:
        raise SettingsError(f"invalid device plugin setting: {e}") from None
