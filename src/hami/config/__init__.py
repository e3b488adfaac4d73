"""hami configuration: ``device-config.yaml``, the per-node ``config.json``, and their validation.

Pure: no I/O except the explicit ``load_*`` file readers. Every model is a frozen pydantic model
with snake_case attributes and HAMi's camelCase file keys as aliases. A bad file raises
:class:`ConfigError` naming the file, the key path, the value and the rule broken; unknown keys
are returned as warnings, never silently dropped.
"""

from hami.config.device import (
    AMDConfig,
    AscendConfig,
    AscendTemplate,
    AWSNeuronConfig,
    BirenConfig,
    CambriconConfig,
    DeviceConfig,
    EnflameConfig,
    HamiSection,
    HygonConfig,
    IluvatarConfig,
    KunlunConfig,
    MetaxConfig,
    MigProfileAllow,
    MthreadsConfig,
    NvidiaConfig,
    SchedulerConfig,
    VastaiConfig,
    VNPUConfig,
    load_device_config,
    parse_device_config,
)
from hami.config.errors import ConfigError
from hami.config.node import (
    EffectiveNodeConfig,
    FilterDevices,
    NodeConfig,
    NodeConfigFile,
    effective_node_config,
    load_node_config_file,
    parse_node_config_file,
)

__all__ = [
    "AMDConfig",
    "AWSNeuronConfig",
    "AscendConfig",
    "AscendTemplate",
    "BirenConfig",
    "CambriconConfig",
    "ConfigError",
    "DeviceConfig",
    "EffectiveNodeConfig",
    "EnflameConfig",
    "FilterDevices",
    "HamiSection",
    "HygonConfig",
    "IluvatarConfig",
    "KunlunConfig",
    "MetaxConfig",
    "MigProfileAllow",
    "MthreadsConfig",
    "NodeConfig",
    "NodeConfigFile",
    "NvidiaConfig",
    "SchedulerConfig",
    "VNPUConfig",
    "VastaiConfig",
    "effective_node_config",
    "load_device_config",
    "load_node_config_file",
    "parse_device_config",
    "parse_node_config_file",
]
