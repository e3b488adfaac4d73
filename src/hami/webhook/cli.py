"""`hami webhook`: serve the mutating admission webhook over HTTPS."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import ssl
import sys
from dataclasses import dataclass
from typing import Any

import click

from hami.cliutil import parse_bind
from hami.config import ConfigError, DeviceConfig, load_device_config
from hami.kube.errors import KubeError
from hami.webhook.mutate import WebhookPolicy
from hami.webhook.server import NamespaceLabelCache, NamespaceLabels, set_ready, start_webhook
from hami.webhook.tls import (
    CertReloader,
    SelfSigned,
    generate_self_signed,
    inject_ca_bundle,
    inject_with_retry,
    server_context_from_pem,
    shared_ca,
)

log = logging.getLogger("hami.webhook")


@dataclass
class _Options:
    host: str
    port: int
    cert_file: str | None
    key_file: str | None
    hosts: list[str]
    webhook_config_name: str | None
    kubeconfig: str | None
    write_ca: str | None
    namespace_lookup: bool
    reload_interval_s: float
    ca_secret: tuple[str, str] | None = None


def _kube_client(kubeconfig: str | None, required: bool) -> Any:
    """A ``hami.kube`` client, or None when no cluster credentials are found and none are required."""
    from hami.kube.client import KubeClient
    from hami.kube.config import load_config

    try:
        return KubeClient(load_config(kubeconfig))
    except Exception as exc:
        if required:
            raise click.ClickException(f"cannot load Kubernetes credentials: {exc}") from exc
        log.warning("no Kubernetes credentials (%s): namespace labels will not be looked up", exc)
        return None


async def _serve(policy: WebhookPolicy, o: _Options) -> None:
    client = None
    if o.webhook_config_name or o.ca_secret or o.namespace_lookup:
        client = _kube_client(o.kubeconfig, required=bool(o.webhook_config_name or o.ca_secret))

    reloader: CertReloader | None = None
    self_signed: SelfSigned | None = None
    if o.cert_file and o.key_file:
        reloader = CertReloader(o.cert_file, o.key_file)
        ctx: ssl.SSLContext = reloader.context
    else:
        ca = await shared_ca(client, *o.ca_secret) if o.ca_secret and client is not None else None
        self_signed = generate_self_signed(o.hosts, ca=ca)
        ctx = server_context_from_pem(self_signed.cert_pem, self_signed.key_pem)
        if o.write_ca:
            with open(o.write_ca, "wb") as f:
                f.write(self_signed.ca_pem)
    labels: NamespaceLabels | None = NamespaceLabelCache(client) if client and o.namespace_lookup else None

    runner = await start_webhook(
        policy,
        host=o.host,
        port=o.port,
        ssl_context=ctx,
        namespace_labels=labels,
        ready=not o.webhook_config_name,
    )
    log.info(
        "hami webhook listening on https://%s:%d/webhook (scheduler %s)",
        o.host,
        o.port,
        policy.scheduler_name,
    )
    tasks: list[asyncio.Task[Any]] = []
    if reloader is not None:
        tasks.append(asyncio.create_task(reloader.watch(o.reload_interval_s)))
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        if o.webhook_config_name and self_signed is not None and client is not None:
            name, bundle = o.webhook_config_name, self_signed.ca_bundle
            n = await inject_with_retry(lambda: inject_ca_bundle(client, name, bundle), attempts=None)
            log.info("caBundle of MutatingWebhookConfiguration %s set (%d webhooks changed)", name, n)
            set_ready(runner, True)
        await stop.wait()
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        await runner.cleanup()
        if client is not None:
            await client.close()


@click.command("webhook")
@click.option("--bind", default="0.0.0.0:9443", show_default=True, help="Listen address host:port.")
@click.option("--cert-file", type=click.Path(exists=True, dir_okay=False), help="Serving certificate (PEM).")
@click.option("--key-file", type=click.Path(exists=True, dir_okay=False), help="Private key (PEM).")
@click.option(
    "--self-signed-hosts",
    default=None,
    help="Comma-separated DNS names/IPs: make a CA and serving certificate in process instead of files.",
)
@click.option(
    "--webhook-config-name",
    default=None,
    help="MutatingWebhookConfiguration whose caBundle is set to the self-signed CA (needs --self-signed-hosts).",
)
@click.option("--device-config", type=click.Path(dir_okay=False), help="device-config.yaml.")
@click.option(
    "--kubeconfig", type=click.Path(dir_okay=False), help="kubeconfig (default: in-cluster, then ~/.kube)."
)
@click.option(
    "--force-overwrite-default-scheduler/--no-force-overwrite-default-scheduler",
    default=True,
    show_default=True,
    help="Take over pods whose schedulerName is default-scheduler.",
)
@click.option(
    "--namespace-labels/--no-namespace-labels",
    "namespace_lookup",
    default=True,
    show_default=True,
    help="Look up namespace labels (hami.io/webhook=ignore) through the API.",
)
@click.option(
    "--ca-secret",
    default=None,
    help="namespace/name of a Secret holding the self-signed CA (created if missing); needed with several replicas.",
)
@click.option("--write-ca", type=click.Path(dir_okay=False), help="Also write the self-signed CA (PEM) here.")
@click.option("--cert-reload-interval", "reload_interval_s", type=float, default=10.0, show_default=True)
@click.option("--log-level", default="INFO", show_default=True)
def webhook(
    bind: str,
    cert_file: str | None,
    key_file: str | None,
    self_signed_hosts: str | None,
    webhook_config_name: str | None,
    device_config: str | None,
    kubeconfig: str | None,
    force_overwrite_default_scheduler: bool,
    namespace_lookup: bool,
    ca_secret: str | None,
    write_ca: str | None,
    reload_interval_s: float,
    log_level: str,
) -> None:
    """Serve the mutating admission webhook (POST /webhook) over HTTPS."""
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    host, port = parse_bind(bind)
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
    config = DeviceConfig.default()
    if device_config:
        try:
            config, warnings = load_device_config(device_config)
        except ConfigError as exc:
            raise click.ClickException(str(exc)) from exc
        for w in warnings:
            click.echo(f"warning: {w}", err=True)
    policy = WebhookPolicy.from_config(
        config, force_overwrite_default_scheduler=force_overwrite_default_scheduler
    )
    options = _Options(
        host=host,
        port=port,
        cert_file=os.fspath(cert_file) if cert_file else None,
        key_file=os.fspath(key_file) if key_file else None,
        hosts=hosts,
        webhook_config_name=webhook_config_name,
        kubeconfig=kubeconfig,
        write_ca=write_ca,
        namespace_lookup=namespace_lookup,
        reload_interval_s=reload_interval_s,
        ca_secret=secret,
    )
    try:
        asyncio.run(_serve(policy, options))
    except (OSError, ssl.SSLError, ValueError, KubeError) as exc:
        click.echo(f"error: {exc}", err=True)
        sys.exit(1)
