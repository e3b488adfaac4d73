"""An in-process admission webhook registered with a real kube-apiserver, and waiting for the API
server to start calling it."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import yaml

from hami.kube.client import KubeClient
from hami.kube.errors import ApiError
from hami.webhook.claimrefs import MATCH_CONDITION
from hami.webhook.mutate import WebhookPolicy
from hami.webhook.runner import api_getter
from hami.webhook.server import NamespaceLabelCache, ObjectCreator, runner_port, start_webhook
from hami.webhook.tls import generate_self_signed, inject_ca_bundle, server_context_from_pem

#: the shipped MutatingWebhookConfiguration (the chart's, rendered)
DEPLOY = Path(__file__).resolve().parents[3] / "deploy" / "webhook.yaml"
MWC = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations"


@asynccontextmanager
async def served_webhook(
    client: KubeClient,
    policy: WebhookPolicy,
    namespace: str,
    *,
    create_object: ObjectCreator | None = None,
    every_pod: bool = False,
) -> AsyncIterator[str]:
    """Serve ``policy`` over HTTPS (a self-signed CA) and register it with ``deploy/webhook.yaml``
    narrowed to ``namespace``; yields the configuration's name, removes both on exit. The API
    server picks the registration up asynchronously: create through
    :func:`create_until_admitted_by_webhook`. ``every_pod``: without the file's matchConditions
    (which name NVIDIA's resources only; the chart generates them from the configured vendors)."""
    certs = generate_self_signed(["127.0.0.1"])
    runner = await start_webhook(
        policy,
        ssl_context=server_context_from_pem(certs.cert_pem, certs.key_pem),
        namespace_labels=NamespaceLabelCache(client),
        create_object=create_object,
        claim_lookup=api_getter(client) if policy.dra is not None else None,
    )
    doc = yaml.safe_load(DEPLOY.read_text())
    doc["metadata"]["name"] = f"hami-webhook-{uuid.uuid4().hex[:6]}"
    hook = doc["webhooks"][0]
    hook["clientConfig"] = {"url": f"https://127.0.0.1:{runner_port(runner)}/webhook"}
    if every_pod:
        hook.pop("matchConditions", None)
    elif policy.dra is not None:  # as the chart renders it with dra.enabled
        for cond in hook["matchConditions"]:
            cond["expression"] += f" || {MATCH_CONDITION}"
    hook["namespaceSelector"]["matchExpressions"].append(
        {"key": "kubernetes.io/metadata.name", "operator": "In", "values": [namespace]}
    )
    try:
        await client.create(MWC, doc)
        try:
            assert await inject_ca_bundle(client, doc["metadata"]["name"], certs.ca_bundle) == 1
            yield str(doc["metadata"]["name"])
        finally:
            await client.delete(f"{MWC}/{doc['metadata']['name']}")
    finally:
        await runner.cleanup()


#: what the API server answers while it still holds the configuration from before the CA bundle
#: was injected (failurePolicy Fail turns the failed TLS verification into a refusal)
UNKNOWN_CA = "certificate signed by unknown authority"


async def create_until_admitted_by_webhook(
    create: Callable[[int], Awaitable[dict[str, Any]]],
    mutated: Callable[[dict[str, Any]], bool],
    *,
    discard: Callable[[dict[str, Any]], Awaitable[None]] | None = None,
    attempts: int = 50,
    interval: float = 0.2,
) -> dict[str, Any]:
    """Create objects (``create(attempt)``) until one comes back ``mutated`` by the webhook.

    The API server picks webhook configurations up asynchronously: first none (the object is
    admitted unmutated; ``discard`` removes it), possibly the configuration as created before its
    caBundle was injected (the call fails TLS verification and is refused), then the final one.
    Any other refusal is raised. Raises AssertionError when no attempt was mutated.
    """
    last: dict[str, Any] | None = None
    for attempt in range(attempts):
        try:
            last = await create(attempt)
        except ApiError as exc:
            if UNKNOWN_CA not in str(exc):
                raise
            last = None
        if last is not None:
            if mutated(last):
                return last
            if discard is not None:
                await discard(last)
        await asyncio.sleep(interval)
    raise AssertionError(f"the webhook never mutated a created object within {attempts} attempts: {last!r}")
