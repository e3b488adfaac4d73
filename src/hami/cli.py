"""The `hami` command line: one group, one subcommand per service or tool.

Each service is a ``runner`` module (what runs) and a thin ``cli`` module (its flags); the flags
every service shares are declared once in :mod:`hami.cliutil`. Subcommands are registered in one
place, :data:`COMMANDS`; no subcommand module imports this one.
"""

from __future__ import annotations

import json
import sys
import time

import click

from hami import cliutil
from hami.deviceplugin.cli import device_plugin
from hami.deviceplugin.install_cli import install_host_command
from hami.draplugin.cli import dra_plugin
from hami.extender.cli import scheduler_command
from hami.manifests import ManifestError, load_manifests
from hami.monitor.cli import monitor
from hami.sandbox.cli import sandbox_command
from hami.webhook.cli import webhook
from hami.webui.cli import webui_command


@click.group()
@click.version_option(package_name="hami", prog_name="hami", message="%(prog)s %(version)s")
def main() -> None:
    """hami: share accelerators between Kubernetes containers safely."""


@main.command()
@click.option(
    "--nodes", "nodes_path", required=True, type=click.Path(dir_okay=False), help="Node manifests (YAML)."
)
@click.option(
    "--pods", "pods_path", required=True, type=click.Path(dir_okay=False), help="Pod manifests (YAML)."
)
@cliutil.device_config_option("config_path", shown="--config")
@cliutil.policy_options(
    "--node-policy", "--gpu-policy", help=("Node policy (default: config).", "Card policy.")
)
@click.option("--output", type=click.Choice(["table", "json"]), default="table", show_default=True)
@click.option("--now", type=int, default=None, help="Unix time written as hami.io/vgpu-time (default: now).")
def simulate(
    nodes_path: str,
    pods_path: str,
    config_path: str | None,
    node_policy: str | None,
    gpu_policy: str | None,
    output: str,
    now: int | None,
) -> None:
    """Schedule PODS onto NODES offline with the real scheduling core and print the placements."""
    from hami.devices.registry import default_registry
    from hami.simulate import render_table
    from hami.simulate import simulate as run

    config = cliutil.device_config(config_path, error=cliutil.InputError)
    try:
        nodes = load_manifests(nodes_path, kind="Node")
        pods = load_manifests(pods_path, kind="Pod")
    except ManifestError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    sched_cfg = config.hami.scheduler
    result = run(
        nodes,
        pods,
        registry=default_registry(config),
        node_policy=node_policy or sched_cfg.node_scheduler_policy,
        gpu_policy=gpu_policy or sched_cfg.gpu_scheduler_policy,
        now=int(time.time()) if now is None else now,
    )
    for w in result.warnings:
        click.echo(f"warning: {w}", err=True)
    if output == "json":
        click.echo(json.dumps(result.as_json(), indent=2, sort_keys=False))
    else:
        click.echo(render_table(result))


@main.command()
def version() -> None:
    """Print hami's version."""
    from importlib.metadata import version as package_version

    click.echo(f"hami {package_version('hami')}")


#: every subcommand besides the two above, in ``hami --help`` order
COMMANDS: tuple[click.Command, ...] = (
    scheduler_command,
    webhook,
    device_plugin,
    dra_plugin,
    install_host_command,
    sandbox_command,
    monitor,
    webui_command,
)
for _command in COMMANDS:
    main.add_command(_command)
