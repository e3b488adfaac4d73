"""``hami webhook``: serve the mutating admission webhook over HTTPS (see :mod:`hami.webhook.runner`)."""

from __future__ import annotations

import os
import ssl

import click

from hami import cliutil
from hami.cliutil import option


@click.command("webhook")
@cliutil.bind_option("0.0.0.0:9443", help="Listen address host:port.")
@cliutil.tls_options("Serving certificate (PEM).", "Private key (PEM).")
@option(
    "--self-signed-hosts",
    default=None,
    help="Comma-separated DNS names/IPs: make a CA and serving certificate in process instead of files.",
)
@option(
    "--webhook-config-name",
    default=None,
    help="MutatingWebhookConfiguration whose caBundle is set to the self-signed CA (needs --self-signed-hosts).",
)
@cliutil.device_config_options("device-config.yaml.")
@cliutil.kubeconfig_option("kubeconfig (default: in-cluster, then ~/.kube).")
@option(
    "--force-overwrite-default-scheduler/--no-force-overwrite-default-scheduler",
    default=True,
    show_default=True,
    help="Take over pods whose schedulerName is default-scheduler.",
)
@option(
    "--namespace-labels/--no-namespace-labels",
    "namespace_lookup",
    default=True,
    show_default=True,
    help="Look up namespace labels (hami.io/webhook=ignore) through the API.",
)
@option(
    "--ca-secret",
    default=None,
    help="namespace/name of a Secret holding the self-signed CA (created if missing); needed with several replicas.",
)
@option("--write-ca", type=click.Path(dir_okay=False), help="Also write the self-signed CA (PEM) here.")
@option("--cert-reload-interval", "reload_interval_s", type=float, default=10.0, show_default=True)
@option(
    "--dra",
    type=click.Choice(["off", "opt-in", "all"]),
    default="off",
    show_default=True,
    help="DRA mode: convert HAMi GPU requests into ResourceClaims for pods choosing hami.io/operating-mode=dra "
    "(opt-in), or for every pod not choosing device-plugin (all); docs/dra.md.",
)
@cliutil.log_level_option("INFO")
def webhook(
    bind: str,
    cert_file: str | None,
    key_file: str | None,
    self_signed_hosts: str | None,
    webhook_config_name: str | None,
    device_config: str | None,
    scheduler_name: str | None,
    kubeconfig: str | None,
    force_overwrite_default_scheduler: bool,
    namespace_lookup: bool,
    ca_secret: str | None,
    write_ca: str | None,
    reload_interval_s: float,
    dra: str,
    log_level: str,
) -> None:
    """Serve the mutating admission webhook (POST /webhook) over HTTPS."""
    from hami.kube.errors import KubeError
    from hami.webhook import runner

    cliutil.setup_logging(log_level)
    host, port = cliutil.parse_bind(bind)
    hosts = [h.strip() for h in (self_signed_hosts or "").split(",") if h.strip()]
    if bool(cert_file) != bool(key_file):
        raise click.UsageError("--cert-file and --key-file go together")
    if cert_file and hosts:
        raise click.UsageError("use either --cert-file/--key-file or --self-signed-hosts, not both")
    if not cert_file and not hosts:
        raise click.UsageError("TLS is required: give --cert-file/--key-file or --self-signed-hosts")
    if webhook_config_name and not hosts:
        raise click.UsageError(
            "--webhook-config-name needs --self-signed-hosts (with files, inject the CA yourself)"
        )
    secret: tuple[str, str] | None = None
    if ca_secret:
        ns, sep, name = ca_secret.partition("/")
        if not sep or not ns or not name:
            raise click.BadParameter(f"{ca_secret!r} is not namespace/name", param_hint="--ca-secret")
        if not hosts:
            raise click.UsageError("--ca-secret needs --self-signed-hosts")
        secret = (ns, name)
    settings = runner.WebhookSettings(
        host=host,
        port=port,
        cert_file=os.fspath(cert_file) if cert_file else None,
        key_file=os.fspath(key_file) if key_file else None,
        hosts=hosts,
        webhook_config_name=webhook_config_name,
        ca_secret=secret,
        write_ca=write_ca,
        kubeconfig=kubeconfig,
        namespace_lookup=namespace_lookup,
        reload_interval_s=reload_interval_s,
        device_config=cliutil.device_config(device_config, scheduler_name),
        force_overwrite_default_scheduler=force_overwrite_default_scheduler,
        dra=dra,
    )
    webhook = runner.Webhook(settings)
    cliutil.run_until_stopped(webhook.run_forever, errors=(OSError, ssl.SSLError, ValueError, KubeError))
