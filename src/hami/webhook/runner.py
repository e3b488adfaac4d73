"""Assembles the admission webhook: TLS (files with hot reload, or a self-signed CA), namespace
labels, the HTTPS server, and the caBundle of its MutatingWebhookConfiguration.

With a self-signed certificate and ``webhook_config_name``, ``/readyz`` answers 503 until the CA
is in the MutatingWebhookConfiguration (retried until it is): the API server cannot call the
webhook before that.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import ssl
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web

from hami.config import DeviceConfig
from hami.kube.client import KubeClient
from hami.kube.errors import AlreadyExistsError, NotFoundError
from hami.kube.informer import Informer
from hami.kube.paths import api_path
from hami.protocol import bodies, keys
from hami.protocol.dra import RESOURCE_API
from hami.webhook.claimrefs import ObjectGetter
from hami.webhook.dra import DraPolicy
from hami.webhook.mutate import WebhookPolicy
from hami.webhook.quota import QuotaGate
from hami.webhook.server import (
    NamespaceLabelCache,
    NamespaceLabels,
    ObjectCreator,
    set_ready,
    start_webhook,
)
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
class WebhookSettings:
    """What ``hami webhook`` was asked to do; TLS is either files or ``hosts`` (self-signed)."""

    device_config: DeviceConfig = field(default_factory=DeviceConfig.default)
    force_overwrite_default_scheduler: bool = True
    host: str = "0.0.0.0"
    port: int = 9443
    #: a self-signed CA and certificate made in process for these DNS names / IPs ...
    hosts: list[str] = field(default_factory=list)
    #: ... or serving certificate and key files (reloaded when they change)
    cert_file: str | None = None
    key_file: str | None = None
    #: MutatingWebhookConfiguration whose caBundle gets the self-signed CA
    webhook_config_name: str | None = None
    #: (namespace, name) of a Secret holding the self-signed CA, shared by replicas
    ca_secret: tuple[str, str] | None = None
    #: also write the self-signed CA (PEM) to this file
    write_ca: str | None = None
    kubeconfig: str | None = None
    #: look up namespace labels (``hami.io/webhook=ignore``) through the API
    namespace_lookup: bool = True
    #: watch ResourceQuotas and deny a GPU pod that can never fit its namespace's device quota
    quota_lookup: bool = True
    reload_interval_s: float = 10.0
    #: DRA mode: ``off``; ``opt-in`` (pods or namespaces choose ``hami.io/operating-mode: dra``);
    #: ``all`` (every HAMi pod converted unless it chooses ``device-plugin``)
    dra: str = "off"

    def policy(self) -> WebhookPolicy:
        return WebhookPolicy.from_config(
            self.device_config,
            force_overwrite_default_scheduler=self.force_overwrite_default_scheduler,
            dra=dra_policy(self.dra),
        )


DRA_SETTINGS = ("off", "opt-in", "all")


def dra_policy(setting: str) -> DraPolicy | None:
    """The webhook's DRA policy for ``--dra``; raises ValueError naming a bad value."""
    if setting == "off":
        return None
    if setting == "opt-in":
        return DraPolicy(default_mode=keys.OPERATING_MODE_DEVICE_PLUGIN)
    if setting == "all":
        return DraPolicy(default_mode=keys.OPERATING_MODE_DRA)
    raise ValueError(f"--dra: {setting!r} is not one of {', '.join(DRA_SETTINGS)}")


_PLURALS = {"ResourceClaimTemplate": "resourceclaimtemplates"}


def api_creator(client: KubeClient) -> ObjectCreator:
    """Creates a decision's objects through the API; an object that already exists is success
    (templates are named by their content, so the existing one is the same)."""

    async def create(obj: Mapping[str, Any]) -> None:
        kind = str(obj.get("kind"))
        plural = _PLURALS.get(kind)
        if plural is None:
            raise ValueError(f"the webhook does not create {kind} objects")
        path = api_path(str(obj.get("apiVersion")), plural, namespace=bodies.namespace(obj))
        with contextlib.suppress(AlreadyExistsError):
            await client.create(path, dict(obj))

    return create


def api_getter(client: KubeClient) -> ObjectGetter:
    """Reads a namespaced ``resource.k8s.io`` object (ResourceClaim, ResourceClaimTemplate) through
    the API; None when it does not exist."""

    async def get(plural: str, namespace: str, name: str) -> Mapping[str, Any] | None:
        try:
            found: Mapping[str, Any] = await client.get(
                api_path(RESOURCE_API, plural, namespace=namespace, name=name)
            )
        except NotFoundError:
            return None
        return found

    return get


def _kube_client(kubeconfig: str | None, required: bool) -> KubeClient | None:
    """A ``hami.kube`` client, or None when no cluster credentials are found and none are required."""
    from hami.kube.config import load_config

    try:
        return KubeClient(load_config(kubeconfig))
    except Exception as exc:
        if required:
            raise ValueError(f"cannot load Kubernetes credentials: {exc}") from exc
        log.warning("no Kubernetes credentials (%s): namespace labels will not be looked up", exc)
        return None


class Webhook:
    """The running webhook. ``await start()``; ``await stop()`` to shut down; or ``run_forever()``."""

    def __init__(self, settings: WebhookSettings) -> None:
        self.settings = settings
        self.policy = settings.policy()
        self.client: KubeClient | None = None
        #: the ResourceQuota cache behind :attr:`quota` (None without credentials or quota_lookup)
        self.quotas: Informer | None = None
        self.quota: QuotaGate | None = None
        self._runner: web.AppRunner | None = None
        self._self_signed: SelfSigned | None = None
        self._tasks: list[asyncio.Task[Any]] = []

    async def _tls(self) -> ssl.SSLContext:
        s = self.settings
        if s.cert_file and s.key_file:
            reloader = CertReloader(s.cert_file, s.key_file)
            self._tasks.append(asyncio.create_task(reloader.watch(s.reload_interval_s)))
            return reloader.context
        ca = await shared_ca(self.client, *s.ca_secret) if s.ca_secret and self.client is not None else None
        self._self_signed = generate_self_signed(s.hosts, ca=ca)
        if s.write_ca:
            with open(s.write_ca, "wb") as f:
                f.write(self._self_signed.ca_pem)
        return server_context_from_pem(self._self_signed.cert_pem, self._self_signed.key_pem)

    async def start(self) -> None:
        s = self.settings
        dra = self.policy.dra is not None
        if s.webhook_config_name or s.ca_secret or s.namespace_lookup or s.quota_lookup or dra:
            self.client = _kube_client(
                s.kubeconfig, required=bool(s.webhook_config_name or s.ca_secret or dra)
            )
        ctx = await self._tls()
        client = self.client
        labels: NamespaceLabels | None = (
            NamespaceLabelCache(client) if client and s.namespace_lookup else None
        )
        if client is not None and s.quota_lookup:
            self._watch_quotas(client)
        self._runner = await start_webhook(
            self.policy,
            host=s.host,
            port=s.port,
            ssl_context=ctx,
            namespace_labels=labels,
            create_object=api_creator(client) if client is not None and dra else None,
            ready=not s.webhook_config_name,
            quota=self.quota.denials if self.quota is not None else None,
            claim_lookup=api_getter(client) if client is not None and dra else None,
        )
        log.info(
            "hami webhook listening on https://%s:%d/webhook (scheduler %s)",
            s.host,
            s.port,
            self.policy.scheduler_name,
        )

    def _watch_quotas(self, client: KubeClient) -> None:
        """Start the ResourceQuota informer (not waited for: until it syncs nothing is denied for quota)."""
        informer = Informer(client, api_path("v1", "resourcequotas"), name="resourcequotas")
        gate = QuotaGate(self.policy.registry, synced=lambda: informer.has_synced)
        informer.add_handlers(
            on_add=gate.quota_changed,
            on_update=lambda _old, new: gate.quota_changed(new),
            on_delete=gate.quota_deleted,
        )
        informer.start()
        self.quotas, self.quota = informer, gate

    async def publish_ca(self) -> None:
        """Put the self-signed CA in the MutatingWebhookConfiguration (retried), then report ready."""
        name = self.settings.webhook_config_name
        client, self_signed, runner = self.client, self._self_signed, self._runner
        if not name or self_signed is None or client is None or runner is None:
            return
        bundle = self_signed.ca_bundle
        n = await inject_with_retry(lambda: inject_ca_bundle(client, name, bundle), attempts=None)
        log.info("caBundle of MutatingWebhookConfiguration %s set (%d webhooks changed)", name, n)
        set_ready(runner, True)

    async def stop(self) -> None:
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await t
        self._tasks.clear()
        if self.quotas is not None:
            await self.quotas.stop()
            self.quotas = self.quota = None
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self.client is not None:
            await self.client.close()
            self.client = None

    async def run_forever(self) -> None:
        """Start, publish the CA, serve until cancelled; everything started is stopped."""
        try:
            await self.start()
            await self.publish_ca()
            await asyncio.Event().wait()
        finally:
            await self.stop()
