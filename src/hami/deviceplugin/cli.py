"""`hami device-plugin`: serve the node's GPUs to the kubelet."""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from collections.abc import Callable
from typing import Any, TypeVar, cast

import click

from hami import cliutil
from hami.config import ConfigError
from hami.deviceplugin.agent import NodeAgent
from hami.deviceplugin.api import DEVICE_PLUGIN_PATH, KUBELET_SOCKET_NAME
from hami.deviceplugin.kubeops import ClientKubeOps
from hami.deviceplugin.server import DEFAULT_SOCKET_NAME
from hami.deviceplugin.settings import OPERATING_MODES, NodeSettings, SettingsError, load_settings
from hami.deviceplugin.sources.base import DeviceSource, DeviceSourceError
from hami.deviceplugin.sources.fake import FakeSource, FakeSpecError
from hami.kube.config import KubeConfigError

log = logging.getLogger("hami.deviceplugin")


def make_source(fake_node: str | None, node_name: str) -> DeviceSource:
    if fake_node:
        return FakeSource.from_file(fake_node, node_name=node_name)
    from hami.deviceplugin.sources.nvml import NvmlSource

    return NvmlSource()


F = TypeVar("F", bound=Callable[..., Any])


def node_options(f: F) -> F:
    """The options both node plugins (`device-plugin`, `dra-plugin`) read their node from:
    --node-name, --fake-node, --device-config-file, --node-config-file (for `load_node`)."""
    options: tuple[Callable[[Any], Any], ...] = (
        click.option(
            "--node-name",
            envvar="NODE_NAME",
            default=lambda: os.uname().nodename,
            show_default="hostname",
        ),
        click.option(
            "--fake-node",
            type=click.Path(exists=True, dir_okay=False),
            help="Use a fake device source described by this YAML file instead of NVML.",
        ),
        cliutil.device_config_option("device_config_file", help="device-config.yaml (nvidia section)."),
        click.option(
            "--node-config-file",
            type=click.Path(dir_okay=False),
            help="Plugin config.json with per-node `nodeconfig` (operatingmode `dra`: the DRA plugin "
            "serves the node, the device plugin does not).",
        ),
    )
    out: Any = f
    for option in reversed(options):
        out = option(out)
    return cast(F, out)


hook_path_option = click.option(
    "--hook-path", envvar="HOOK_PATH", default=None, help="Host path holding vgpu/ (HAMi HOOK_PATH)."
)
"""``--hook-path``: both node plugins read it (through their overrides)."""

kubeconfig_option = click.option(
    "--kubeconfig",
    envvar="KUBECONFIG",
    default=None,
    help="Kubeconfig for the API server (default: in-cluster, then ~/.kube/config).",
)
"""``--kubeconfig`` of both node plugins (the ``KUBECONFIG`` variable as its default)."""


def load_node(
    node_name: str,
    fake_node: str | None,
    device_config_file: str | None,
    node_config_file: str | None,
    overrides: dict[str, Any],
) -> tuple[NodeSettings, DeviceSource]:
    """The node's settings and device source, or a ClickException naming what is wrong."""
    try:
        settings = load_settings(
            node_name=node_name,
            device_config_file=device_config_file,
            node_config_file=node_config_file,
            overrides=overrides,
        )
        return settings, make_source(fake_node, node_name)
    except (ConfigError, SettingsError, FakeSpecError, DeviceSourceError) as e:
        raise click.ClickException(str(e)) from e


async def _run(source: DeviceSource, settings: NodeSettings, kubeconfig: str | None, **kw: Any) -> None:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    client = None
    kube = None
    if kubeconfig != "":
        from hami.kube.client import KubeClient
        from hami.kube.config import load_config

        client = KubeClient(load_config(kubeconfig))
        kube = ClientKubeOps(client, host=settings.node_name)
    agent = NodeAgent(source, settings, kube=kube, **kw)
    cliutil.on_stop_signals(stop.set)
    loop.add_signal_handler(signal.SIGHUP, lambda: asyncio.ensure_future(agent.server.restart()))
    try:
        await agent.run(stop)
    finally:
        if client is not None:
            await client.close()


@click.command("device-plugin")
@node_options
@click.option(
    "--plugin-dir", default=DEVICE_PLUGIN_PATH, show_default=True, help="Kubelet device-plugins dir."
)
@click.option("--socket-name", default=DEFAULT_SOCKET_NAME, show_default=True)
@click.option("--kubelet-socket", "kubelet_socket_name", default=KUBELET_SOCKET_NAME, show_default=True)
@click.option("--resource-name", default=None, help="Override the resource name (nvidia.com/gpu).")
@click.option("--device-split-count", "split_count", type=int, default=None)
@click.option("--device-memory-scaling", "memory_scaling", type=float, default=None)
@click.option("--device-cores-scaling", "core_scaling", type=float, default=None)
@click.option("--operating-mode", type=click.Choice(list(OPERATING_MODES)), default=None)
@click.option("--enable-numa-topology/--no-enable-numa-topology", default=None)
@click.option(
    "--allocation-mode",
    type=click.Choice(["lock", "cdi"]),
    default=None,
    help="lock: HAMi's node lock at Allocate (default); cdi: lock-free, the container is found at "
    "PreStartContainer through the kubelet's PodResources API and handed a CDI spec "
    "(a node's config.json entry `allocationmode` wins).",
)
@click.option(
    "--cdi-spec-dir", default=None, help="CDI spec directory of the runtime (cdi mode; /var/run/cdi)."
)
@click.option(
    "--pod-resources-socket",
    default=None,
    help="The kubelet's PodResources socket (cdi mode; /var/lib/kubelet/pod-resources/kubelet.sock).",
)
@hook_path_option
@kubeconfig_option
@click.option(
    "--standalone",
    is_flag=True,
    help="Run without the Kubernetes API: no node registration; Allocate answers an error.",
)
@cliutil.log_level_option("INFO")
def device_plugin(
    node_name: str,
    fake_node: str | None,
    device_config_file: str | None,
    node_config_file: str | None,
    plugin_dir: str,
    socket_name: str,
    kubelet_socket_name: str,
    kubeconfig: str | None,
    standalone: bool,
    log_level: str,
    **overrides: Any,
) -> None:
    """Serve the node's GPUs to the kubelet as nvidia.com/gpu slices."""
    cliutil.setup_logging(log_level)
    overrides["topology_score"] = os.environ.get("ENABLE_TOPOLOGY_SCORE", "").lower() == "true" or None
    settings, source = load_node(node_name, fake_node, device_config_file, node_config_file, overrides)
    try:
        asyncio.run(
            _run(
                source,
                settings,
                "" if standalone else kubeconfig,
                plugin_dir=plugin_dir,
                socket_name=socket_name,
                kubelet_socket_name=kubelet_socket_name,
            )
        )
    except KubeConfigError as e:
        raise click.ClickException(f"{e} (use --standalone to run without the Kubernetes API)") from e
    except DeviceSourceError as e:
        raise click.ClickException(str(e)) from e
