"""`hami dra-plugin`: publish the node's GPUs as DRA devices and prepare their claims."""

from __future__ import annotations

import asyncio
from typing import Any

import click

from hami import cliutil
from hami.deviceplugin.cli import hook_path_option, kubeconfig_option, load_node, node_options
from hami.deviceplugin.settings import NodeSettings
from hami.deviceplugin.sources.base import DeviceSource, DeviceSourceError
from hami.draplugin.api import PLUGINS_REGISTRY_DIR
from hami.draplugin.checkpoint import CheckpointError
from hami.draplugin.runner import DEFAULT_CDI_DIR, DEFAULT_PLUGIN_DIR, DraNodePlugin
from hami.kube.config import KubeConfigError


async def _run(source: DeviceSource, settings: NodeSettings, kubeconfig: str | None, **kw: Any) -> None:
    from hami.draplugin.kubeops import ClientDraKube
    from hami.kube.client import KubeClient
    from hami.kube.config import load_config

    stop = asyncio.Event()
    async with KubeClient(load_config(kubeconfig)) as client:
        plugin = DraNodePlugin(source, settings, ClientDraKube(client), **kw)
        cliutil.on_stop_signals(stop.set)
        await plugin.run(stop)


@click.command("dra-plugin")
@node_options
@click.option("--plugin-dir", default=DEFAULT_PLUGIN_DIR, show_default=True, help="Holds dra.sock.")
@click.option(
    "--registry-dir", default=PLUGINS_REGISTRY_DIR, show_default=True, help="The kubelet's plugins_registry."
)
@click.option("--cdi-dir", default=DEFAULT_CDI_DIR, show_default=True, help="Where CDI specs are written.")
@click.option("--state-dir", default=None, help="Holds checkpoint.json (default: --plugin-dir).")
@click.option("--operating-mode", default=None, help="Override the node's operatingmode (e.g. dra).")
@click.option("--device-memory-scaling", "memory_scaling", type=float, default=None)
@hook_path_option
@kubeconfig_option
@cliutil.log_level_option("INFO")
def dra_plugin(
    node_name: str,
    fake_node: str | None,
    device_config_file: str | None,
    node_config_file: str | None,
    plugin_dir: str,
    registry_dir: str,
    cdi_dir: str,
    state_dir: str | None,
    kubeconfig: str | None,
    log_level: str,
    **overrides: Any,
) -> None:
    """Publish this node's GPUs as DRA devices with consumable memory and cores (driver
    hami-core-gpu.project-hami.io) and prepare their claims as CDI devices."""
    cliutil.setup_logging(log_level)
    settings, source = load_node(node_name, fake_node, device_config_file, node_config_file, overrides)
    try:
        asyncio.run(
            _run(
                source,
                settings,
                kubeconfig,
                plugin_dir=plugin_dir,
                registry_dir=registry_dir,
                cdi_dir=cdi_dir,
                state_dir=state_dir,
            )
        )
    except (KubeConfigError, CheckpointError, DeviceSourceError) as e:
        raise click.ClickException(str(e)) from e
