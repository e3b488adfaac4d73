"""``hami scheduler``: run the kube-scheduler extender."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import signal

import click


@click.command("scheduler")
@click.option(
    "--bind",
    "bind",
    default="127.0.0.1:8080",
    show_default=True,
    help="host:port for /filter and /bind (kube-scheduler in the same pod calls it)",
)
@click.option(
    "--metrics-bind",
    default="0.0.0.0:9395",
    show_default=True,
    help="host:port for /metrics, /healthz and /readyz only (HAMi's 9395); '' serves them on --bind alone",
)
@click.option("--cert-file", type=click.Path(exists=True, dir_okay=False), help="TLS certificate (HTTPS)")
@click.option("--key-file", type=click.Path(exists=True, dir_okay=False), help="TLS key (HTTPS)")
@click.option(
    "--kubeconfig", type=click.Path(dir_okay=False), help="kubeconfig (default: in-cluster/KUBECONFIG)"
)
@click.option("--device-config", "device_config", type=click.Path(dir_okay=False), help="device-config.yaml")
@click.option("--node-scheduler-policy", type=click.Choice(["binpack", "spread"]), help="default node policy")
@click.option(
    "--gpu-scheduler-policy",
    type=click.Choice(["binpack", "spread", "topology-aware"]),
    help="default card policy",
)
@click.option("--node-lock-timeout", type=float, help="seconds after which a node lock expires")
@click.option(
    "--bind-lock-wait",
    type=float,
    default=20.0,
    show_default=True,
    help="seconds a bind waits for another pod's node lock",
)
@click.option(
    "--annotate-at-filter/--annotate-at-bind",
    "annotate_at_filter",
    default=True,
    show_default=True,
    help="write the decision annotations on the pod at filter time (HAMi), or only through the Binding",
)
@click.option(
    "--bind-queue-limit",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="try a node after all others once this many of its pods wait for allocation (0: off)",
)
@click.option(
    "--leader-elect/--no-leader-elect",
    default=False,
    show_default=True,
    help="run a Lease election among extender replicas",
)
@click.option(
    "--follow-scheduler-lease",
    is_flag=True,
    help="lead while the kube-scheduler in this pod (identity <hostname>_...) holds its Lease",
)
@click.option(
    "--lease-namespace",
    envvar="POD_NAMESPACE",
    default="kube-system",
    show_default=True,
    help="namespace of the Lease (env POD_NAMESPACE: the pod's own, set from the downward API)",
)
@click.option(
    "--lease-name",
    default=None,
    help="Lease name (default: hami-scheduler-extender; with --follow-scheduler-lease: hami-scheduler)",
)
@click.option("-v", "--verbose", count=True)
def scheduler_command(
    bind: str,
    metrics_bind: str,
    cert_file: str | None,
    key_file: str | None,
    kubeconfig: str | None,
    device_config: str | None,
    node_scheduler_policy: str | None,
    gpu_scheduler_policy: str | None,
    node_lock_timeout: float | None,
    bind_lock_wait: float,
    annotate_at_filter: bool,
    bind_queue_limit: int,
    leader_elect: bool,
    follow_scheduler_lease: bool,
    lease_namespace: str,
    lease_name: str | None,
    verbose: int,
) -> None:
    """Serve /filter and /bind for kube-scheduler (see deploy/scheduler-config.yaml)."""
    from hami.cli import load_config_or_exit
    from hami.cliutil import parse_bind
    from hami.kube.config import KubeConfigError, load_config
    from hami.kube.errors import KubeError
    from hami.scheduler.runner import Extender, ExtenderSettings, default_identity

    logging.basicConfig(
        level=logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if leader_elect and follow_scheduler_lease:
        raise click.UsageError("--leader-elect and --follow-scheduler-lease are exclusive")
    if lease_name is None:
        lease_name = "hami-scheduler" if follow_scheduler_lease else "hami-scheduler-extender"
    host, port = parse_bind(bind)
    metrics_host, metrics_port = parse_bind(metrics_bind, "--metrics-bind") if metrics_bind else (None, None)
    settings = ExtenderSettings(
        host=host,
        port=port,
        metrics_host=metrics_host,
        metrics_port=metrics_port,
        cert_file=cert_file,
        key_file=key_file,
        device_config=load_config_or_exit(device_config),
        node_policy=node_scheduler_policy,
        gpu_policy=gpu_scheduler_policy,
        node_lock_expiry=node_lock_timeout,
        bind_lock_wait=bind_lock_wait,
        leader_elect=leader_elect,
        follow_scheduler_lease=follow_scheduler_lease,
        lease_namespace=lease_namespace,
        lease_name=lease_name,
        identity=default_identity(),
        annotate_at_filter=annotate_at_filter,
        bind_queue_limit=bind_queue_limit,
    )
    try:
        kube_config = load_config(kubeconfig)
    except KubeConfigError as exc:
        raise click.ClickException(f"cannot reach the Kubernetes API: {exc}") from exc
    extender = Extender(kube_config, settings)

    async def main() -> None:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, task.cancel)
        with contextlib.suppress(asyncio.CancelledError):
            await extender.run_forever()

    try:
        asyncio.run(main())
    except (OSError, TimeoutError, KubeError) as exc:
        # a port in use, an API server that never answered the first list, a refused credential
        raise click.ClickException(str(exc) or type(exc).__name__) from exc
