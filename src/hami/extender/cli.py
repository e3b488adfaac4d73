"""``hami scheduler``: run the kube-scheduler extender (see :mod:`hami.extender.runner`)."""

from __future__ import annotations

import logging

import click

from hami import cliutil
from hami.cliutil import option


@click.command("scheduler")
@cliutil.bind_option(
    "127.0.0.1:8080", help="host:port for /filter and /bind (kube-scheduler in the same pod calls it)"
)
@cliutil.metrics_bind_option(
    "0.0.0.0:9395",
    help="host:port for /metrics, /healthz and /readyz only (HAMi's 9395); '' serves them on --bind alone",
)
@cliutil.tls_options("TLS certificate (HTTPS)", "TLS key (HTTPS)")
@cliutil.kubeconfig_option("kubeconfig (default: in-cluster/KUBECONFIG)")
@cliutil.device_config_options()
@cliutil.policy_options(
    "--node-scheduler-policy",
    "--gpu-scheduler-policy",
    help=("default node policy", "default card policy"),
)
@option("--node-lock-timeout", type=float, help="seconds after which a node lock expires")
@option(
    "--bind-lock-wait",
    type=float,
    default=20.0,
    show_default=True,
    help="seconds a bind waits for another pod's node lock",
)
@option(
    "--annotate-at-filter/--annotate-at-bind",
    "annotate_at_filter",
    default=True,
    show_default=True,
    help="write the decision annotations on the pod at filter time (HAMi), or only through the Binding",
)
@option(
    "--bind-queue-limit",
    type=click.IntRange(min=0),
    default=0,
    show_default=True,
    help="try a node after all others once this many of its pods wait for allocation (0: off)",
)
@option(
    "--leader-elect/--no-leader-elect",
    default=False,
    show_default=True,
    help="run a Lease election among extender replicas",
)
@option(
    "--follow-scheduler-lease",
    is_flag=True,
    help="lead while the kube-scheduler in this pod (identity <hostname>_...) holds its Lease",
)
@option(
    "--lease-namespace",
    envvar="POD_NAMESPACE",
    default="kube-system",
    show_default=True,
    help="namespace of the Lease (env POD_NAMESPACE: the pod's own, set from the downward API)",
)
@option(
    "--lease-name",
    default=None,
    help="Lease name (default: hami-scheduler-extender; with --follow-scheduler-lease: hami-scheduler)",
)
@option(
    "--legacy-metrics",
    is_flag=True,
    help="also export HAMi's pre-2.10 scheduler metric names (GPUDeviceMemoryLimit, ...)",
)
@option(
    "--preemption/--no-preemption",
    default=True,
    show_default=True,
    help="preempt lower-priority pods when only card memory/cores/slots are short (Eviction API)",
)
@cliutil.log_level_option(None)
@option("-v", "--verbose", count=True, help="without --log-level: -v info, -vv debug (default: warnings)")
def scheduler_command(
    bind: str,
    metrics_bind: str,
    cert_file: str | None,
    key_file: str | None,
    kubeconfig: str | None,
    device_config: str | None,
    scheduler_name: str | None,
    node_policy: str | None,
    gpu_policy: str | None,
    node_lock_timeout: float | None,
    bind_lock_wait: float,
    annotate_at_filter: bool,
    bind_queue_limit: int,
    leader_elect: bool,
    follow_scheduler_lease: bool,
    lease_namespace: str,
    lease_name: str | None,
    legacy_metrics: bool,
    preemption: bool,
    log_level: str | None,
    verbose: int,
) -> None:
    """Serve /filter and /bind for kube-scheduler (see deploy/scheduler-config.yaml)."""
    import hami.kube.config
    from hami.extender import runner
    from hami.kube.errors import KubeError

    default_level = logging.DEBUG if verbose > 1 else logging.INFO if verbose else logging.WARNING
    cliutil.setup_logging(log_level or default_level)
    if leader_elect and follow_scheduler_lease:
        raise click.UsageError("--leader-elect and --follow-scheduler-lease are exclusive")
    if lease_name is None:
        lease_name = "hami-scheduler" if follow_scheduler_lease else "hami-scheduler-extender"
    host, port = cliutil.parse_bind(bind)
    metrics = cliutil.parse_bind(metrics_bind, "--metrics-bind") if metrics_bind else (None, None)
    settings = runner.ExtenderSettings(
        host=host,
        port=port,
        metrics_host=metrics[0],
        metrics_port=metrics[1],
        cert_file=cert_file,
        key_file=key_file,
        device_config=cliutil.device_config(device_config, scheduler_name, error=cliutil.InputError),
        node_policy=node_policy,
        gpu_policy=gpu_policy,
        node_lock_expiry=node_lock_timeout,
        bind_lock_wait=bind_lock_wait,
        leader_elect=leader_elect,
        follow_scheduler_lease=follow_scheduler_lease,
        lease_namespace=lease_namespace,
        lease_name=lease_name,
        identity=runner.default_identity(),
        annotate_at_filter=annotate_at_filter,
        bind_queue_limit=bind_queue_limit,
        legacy_metrics=legacy_metrics,
        device_preemption=preemption,
    )
    try:
        kube_config = hami.kube.config.load_config(kubeconfig)
    except hami.kube.config.KubeConfigError as exc:
        raise click.ClickException(f"cannot reach the Kubernetes API: {exc}") from exc
    extender = runner.Extender(kube_config, settings)
    # a port in use, an API server that never answered the first list, a refused credential
    cliutil.run_until_stopped(extender.run_forever, errors=(OSError, TimeoutError, KubeError))
