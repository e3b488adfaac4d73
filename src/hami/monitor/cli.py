"""`hami monitor`: the node monitor (container regions and cards -> Prometheus metrics).

Flags are spelled as the other services' (``--metrics-bind`` with HAMi's ``--metrics-bind-address``
accepted, ``--kubeconfig``, ``--log-level``), but declared here: :mod:`hami.cliutil` loads the
device-config models (pydantic, ~14 MB resident) that the monitor never needs, and the monitor's
budget is 60 MB (``python -m hami.monitor`` loads this module alone).
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
from urllib.parse import urlsplit

import click

from hami.monitor.cards import LIBRARY
from hami.monitor.runner import Monitor, MonitorSettings


def _host_port(value: str) -> tuple[str, int]:
    """``host:port``, ``:port`` (all interfaces) or ``[v6]:port``."""
    try:
        where = urlsplit("//" + value)
        port = where.port
    except ValueError:
        port = None
    if port is None:
        raise click.BadParameter(f"{value!r} is not host:port", param_hint="--metrics-bind")
    return where.hostname or "0.0.0.0", port


async def _run(settings: MonitorSettings, kubeconfig: str | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    if kubeconfig == "":
        await Monitor(settings, None).run(stop)
        return
    from hami.kube.client import KubeClient
    from hami.kube.config import load_config

    async with KubeClient(load_config(kubeconfig)) as client:
        await Monitor(settings, client).run(stop)


@click.command("monitor")
@click.option(
    "--hook-path",
    envvar="HOOK_PATH",
    default="/usr/local",
    show_default=True,
    help="HAMi's HOOK_PATH; the container regions are under <hook-path>/vgpu/containers.",
)
@click.option("--node-name", envvar="NODE_NAME", default=lambda: os.uname().nodename, show_default="hostname")
@click.option(
    "--metrics-bind",
    "--metrics-bind-address",
    "metrics_bind",
    default="0.0.0.0:9394",
    show_default=True,
    help="host:port of /metrics and /healthz (HAMi's 9394).",
)
@click.option(
    "--kubeconfig", default=None, help="kubeconfig (default: in-cluster/KUBECONFIG); '' runs without the API."
)
@click.option(
    "--gc-grace",
    type=float,
    default=300.0,
    show_default=True,
    help="Seconds a directory whose pod is gone is kept (absent from the pod list and unchanged).",
)
@click.option("--gc-interval", type=float, default=30.0, show_default=True)
@click.option("--no-nvml", is_flag=True, help="Do not read the cards through NVML (no host metrics).")
@click.option(
    "--nvml-library",
    envvar="NVML_LIBRARY",
    default=LIBRARY,
    show_default=True,
    help="NVML: a soname looked up the usual way, or the path of the library (e.g. a host driver "
    "directory mounted into the pod).",
)
@click.option(
    "--feedback-interval",
    type=float,
    default=0.5,
    show_default=True,
    help="Seconds between priority-feedback passes (holds, core-limit switch); 0 turns it off.",
)
@click.option("--legacy-metrics", is_flag=True, help="Also export HAMi's pre-2.10 metric names.")
@click.option(
    "--log-level",
    type=click.Choice(["DEBUG", "INFO", "WARNING", "WARN", "ERROR", "CRITICAL"], case_sensitive=False),
    default="INFO",
    show_default=True,
)
def monitor(
    node_name: str,
    hook_path: str,
    metrics_bind: str,
    kubeconfig: str | None,
    gc_grace: float,
    gc_interval: float,
    no_nvml: bool,
    nvml_library: str,
    feedback_interval: float,
    legacy_metrics: bool,
    log_level: str,
) -> None:
    """Serve per-container GPU usage (HAMi's metric names) and collect regions of deleted pods."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    host, port = _host_port(metrics_bind)
    settings = MonitorSettings(
        node_name=node_name,
        hook_path=hook_path,
        metrics_host=host,
        metrics_port=port,
        gc_grace=gc_grace,
        gc_interval=gc_interval,
        nvml=not no_nvml,
        nvml_library=nvml_library,
        feedback_interval=feedback_interval or None,
        legacy_metrics=legacy_metrics,
    )
    asyncio.run(_run(settings, kubeconfig))
