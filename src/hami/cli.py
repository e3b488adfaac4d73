"""The `hami` command line: thin entry points that parse flags, build objects and run them."""

from __future__ import annotations

import json
import sys
import time

import click

from hami.config import ConfigError, DeviceConfig, load_device_config
from hami.manifests import ManifestError, load_manifests


@click.group()
@click.version_option(package_name="hami", prog_name="hami", message="%(prog)s %(version)s")
def main() -> None:
    """hami: share accelerators between Kubernetes containers safely."""


def load_config_or_exit(path: str | None) -> DeviceConfig:
    """Load device-config.yaml (or the defaults), printing warnings; exit 2 with the error on bad input."""
    if path is None:
        return DeviceConfig.default()
    try:
        config, warnings = load_device_config(path)
    except ConfigError as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(2)
    for w in warnings:
        click.echo(f"warning: {w}", err=True)
    return config


@main.command()
@click.option(
    "--nodes", "nodes_path", required=True, type=click.Path(dir_okay=False), help="Node manifests (YAML)."
)
@click.option(
    "--pods", "pods_path", required=True, type=click.Path(dir_okay=False), help="Pod manifests (YAML)."
)
@click.option("--config", "config_path", type=click.Path(dir_okay=False), help="device-config.yaml")
@click.option(
    "--node-policy", type=click.Choice(["binpack", "spread"]), help="Node policy (default: config)."
)
@click.option("--gpu-policy", type=click.Choice(["binpack", "spread", "topology-aware"]), help="Card policy.")
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
    from hami.sandbox.simulate import render_table
    from hami.sandbox.simulate import simulate as run

    config = load_config_or_exit(config_path)
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


def _register_subcommands() -> None:
    from hami.scheduler.cli import scheduler_command

    main.add_command(scheduler_command)


_register_subcommands()
main.add_command(__import__("hami.webhook.cli", fromlist=["webhook"]).webhook)
main.add_command(__import__("hami.deviceplugin.cli", fromlist=["device_plugin"]).device_plugin)
main.add_command(
    __import__("hami.deviceplugin.install_cli", fromlist=["install_host_command"]).install_host_command
)
main.add_command(__import__("hami.sandbox.cli", fromlist=["sandbox_command"]).sandbox_command)
main.add_command(__import__("hami.monitor.cli", fromlist=["monitor"]).monitor)
