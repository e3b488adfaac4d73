"""``hami webui``: serve the read-only web UI (see :mod:`hami.webui.runner`)."""

from __future__ import annotations

import click

from hami import cliutil
from hami.cliutil import option


def _url(value: str | None, param: str) -> str | None:
    if value is None:
        return None
    if not value.startswith(("http://", "https://")) or len(value) <= len("http://"):
        raise click.BadParameter(f"{value!r} is not an http(s) URL", param_hint=param)
    return value


@click.command("webui")
@cliutil.bind_option("0.0.0.0:8090", help="host:port of the pages (in the cluster: reach it by port-forward)")
@cliutil.kubeconfig_option("kubeconfig (default: in-cluster/KUBECONFIG)")
@cliutil.device_config_options()
@option("--prometheus-url", default=None, help="read live usage from this Prometheus instead of the monitors")
@option(
    "--monitor-selector",
    default=None,
    help="label selector (k=v,...) of the monitor pods to scrape at <podIP>:--monitor-port",
)
@option("--monitor-port", type=click.IntRange(1, 65535), default=9394, show_default=True)
@option("--monitor-url", "monitor_urls", multiple=True, help="a monitor /metrics URL to scrape (repeatable)")
@option(
    "--usage-interval",
    type=click.FloatRange(min=0.5),
    default=5.0,
    show_default=True,
    help="seconds between live-usage reads",
)
@cliutil.log_level_option("INFO")
def webui_command(
    bind: str,
    kubeconfig: str | None,
    device_config: str | None,
    scheduler_name: str | None,
    prometheus_url: str | None,
    monitor_selector: str | None,
    monitor_port: int,
    monitor_urls: tuple[str, ...],
    usage_interval: float,
    log_level: str,
) -> None:
    """Serve the read-only web UI: cards, nodes, workloads, namespaces, and why pods wait."""
    from hami.webui import runner

    cliutil.setup_logging(log_level)
    host, port = cliutil.parse_bind(bind)
    if monitor_selector is not None:
        try:
            runner.parse_selector(monitor_selector)
        except ValueError as exc:
            raise click.BadParameter(str(exc), param_hint="--monitor-selector") from None
    settings = runner.WebUISettings(
        host=host,
        port=port,
        device_config=cliutil.device_config(device_config, scheduler_name, error=cliutil.InputError),
        prometheus_url=_url(prometheus_url, "--prometheus-url"),
        monitor_urls=tuple(u for u in (_url(m, "--monitor-url") for m in monitor_urls) if u),
        monitor_selector=monitor_selector,
        monitor_port=monitor_port,
        usage_interval=usage_interval,
    )
    cliutil.run_kube_service(kubeconfig, lambda kube_config: runner.WebUI(kube_config, settings))
