"""The HTTPS admission server: ``POST /webhook`` (alias ``/mutate``), ``GET /healthz``, ``GET /readyz``.

Start it in-process (tests, ``hami webhook``)::

    policy = WebhookPolicy.from_config(DeviceConfig.default())
    runner = await start_webhook(policy, host="127.0.0.1", port=0, ssl_context=ctx)
    port = runner_port(runner)
    ...
    await runner.cleanup()

A body that is not an AdmissionReview gets HTTP 400 with a message saying what is wrong; a valid
review always gets HTTP 200 with an AdmissionReview of the same apiVersion, the uid echoed, and
either ``allowed: true`` (with a base64 ``JSONPatch`` when the pod changes) or ``allowed: false``
with ``status.message``. An unexpected error inside the decision denies the pod (code 500) and is
logged; the server never crashes on input.
"""

from __future__ import annotations

import asyncio
import logging
import ssl
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any, Protocol

import orjson
from aiohttp import web

from hami.protocol import bodies
from hami.protocol.errors import ProtocolError
from hami.protocol.shape import check_pod
from hami.webhook.admission import AdmissionRequest, ReviewError, parse_review, review_response
from hami.webhook.claimrefs import ObjectGetter, hami_claim_refs
from hami.webhook.mutate import AdmissionDecision, WebhookPolicy, mutate_pod
from hami.webhook.quota import QuotaCheck

__all__ = [
    "NamespaceLabelCache",
    "NamespaceLabels",
    "ObjectCreator",
    "WebhookState",
    "decide",
    "make_app",
    "runner_port",
    "set_ready",
    "start_webhook",
]

log = logging.getLogger(__name__)

#: Looks up a namespace's labels; None when unknown (lookups must not raise, but are guarded anyway).
NamespaceLabels = Callable[[str], Awaitable[Mapping[str, Any] | None]]
#: Creates one object a decision needs (DRA mode: a ResourceClaimTemplate); "already exists" is
#: success, any other failure raises (the pod is then denied, naming the object and the error).
ObjectCreator = Callable[[Mapping[str, Any]], Awaitable[None]]


@dataclass(slots=True)
class WebhookState:
    """What the handlers share (``app[STATE_KEY]``)."""

    policy: WebhookPolicy
    namespace_labels: NamespaceLabels | None = None
    create_object: ObjectCreator | None = None
    ready: bool = True
    why: str = ""
    quota: QuotaCheck | None = None
    claim_lookup: ObjectGetter | None = None


STATE_KEY = web.AppKey("hami_webhook_state", WebhookState)

MAX_BODY = 16 * 1024 * 1024


class _GetClient(Protocol):
    async def get(self, path: str) -> dict[str, Any]: ...


class NamespaceLabelCache:
    """Namespace labels through the API (``GET /api/v1/namespaces/<ns>``), cached for ``ttl_s``.

    Concurrent lookups of one namespace share one request. A failed lookup returns the last known
    labels (or None): the registration's ``namespaceSelector`` already keeps ignored namespaces
    away, so this is a second line, never a reason to fail a pod.
    """

    def __init__(
        self, client: _GetClient, *, ttl_s: float = 30.0, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._client = client
        self._ttl = ttl_s
        self._clock = clock
        self._cache: dict[str, tuple[float, Mapping[str, Any] | None]] = {}
        self._inflight: dict[str, asyncio.Future[Mapping[str, Any] | None]] = {}

    async def __call__(self, namespace: str) -> Mapping[str, Any] | None:
        hit = self._cache.get(namespace)
        if hit is not None and self._clock() - hit[0] < self._ttl:
            return hit[1]
        pending = self._inflight.get(namespace)
        if pending is not None:
            return await asyncio.shield(pending)
        fut: asyncio.Future[Mapping[str, Any] | None] = asyncio.get_running_loop().create_future()
        self._inflight[namespace] = fut
        try:
            labels = await self._fetch(namespace, hit[1] if hit is not None else None)
            fut.set_result(labels)
            return labels
        except BaseException as exc:  # cancellation: wake the waiters, then propagate
            fut.set_exception(exc)
            fut.exception()  # mark retrieved
            raise
        finally:
            del self._inflight[namespace]

    async def _fetch(self, namespace: str, stale: Mapping[str, Any] | None) -> Mapping[str, Any] | None:
        from urllib.parse import quote

        try:
            ns = await self._client.get(f"/api/v1/namespaces/{quote(namespace, safe='')}")
        except Exception as exc:
            log.warning("webhook: cannot read namespace %r labels: %s", namespace, exc)
            return stale
        labels = bodies.labels(ns)
        labels = labels if isinstance(labels, Mapping) else {}
        self._cache[namespace] = (self._clock(), labels)
        return labels


async def decide(
    request: AdmissionRequest,
    policy: WebhookPolicy,
    namespace_labels: NamespaceLabels | None = None,
    *,
    quota: QuotaCheck | None = None,
    create_object: ObjectCreator | None = None,
    claim_lookup: ObjectGetter | None = None,
) -> AdmissionDecision:
    """The decision for one parsed review (never raises). With ``quota``, a GPU pod the mutation
    allows is denied (403) when it can never fit its namespace's device quota. With DRA mode on and
    ``claim_lookup``, the pod's ResourceClaims and templates are read to find those asking hami's
    DeviceClasses (mutation rule 9).

    Objects the decision needs are created before the answer (not on a dry run): a pod is only
    admitted once the templates its claims name exist."""
    if request.kind and request.kind != "Pod":
        return AdmissionDecision.skip(f"not a Pod ({request.kind})")
    if request.operation and request.operation != "CREATE":
        return AdmissionDecision.skip(f"operation {request.operation} is not CREATE")
    pod = request.object
    if not isinstance(pod, dict):
        return AdmissionDecision.deny(["request.object is missing or not a Pod object"], code=400)
    try:
        check_pod(pod)
    except ProtocolError as exc:
        return AdmissionDecision.deny([f"request.object.{exc}"], code=400)
    labels: Mapping[str, Any] | None = None
    if namespace_labels is not None and request.namespace:
        try:
            labels = await namespace_labels(request.namespace)
        except Exception as exc:
            log.warning("webhook: namespace label lookup for %r failed: %s", request.namespace, exc)
    hami_claims: frozenset[str] = frozenset()
    if policy.dra is not None and claim_lookup is not None and request.namespace:
        hami_claims = await hami_claim_refs(pod, request.namespace, claim_lookup)
    try:
        decision = mutate_pod(
            pod, namespace=request.namespace, namespace_labels=labels, policy=policy, hami_claims=hami_claims
        )
        if quota is not None and decision.allowed and decision.managed:
            over = quota(pod, request.namespace)
            if over:
                return AdmissionDecision.deny(over, code=403)
    except Exception as exc:
        log.exception("webhook: internal error deciding on pod %s/%s", request.namespace, request.name)
        return AdmissionDecision.deny([f"hami webhook internal error: {type(exc).__name__}: {exc}"], code=500)
    if decision.allowed and decision.objects and not request.dry_run:
        return await _create_objects(decision, create_object)
    return decision


async def _create_objects(
    decision: AdmissionDecision, create_object: ObjectCreator | None
) -> AdmissionDecision:
    for obj in decision.objects:
        kind, name = obj.get("kind", "object"), bodies.name(obj)
        if create_object is None:
            return AdmissionDecision.deny(
                [f"pod: the {kind} {name!r} it needs cannot be created: this webhook has no API access"],
                code=500,
            )
        try:
            await create_object(obj)
        except Exception as exc:
            log.warning("webhook: creating %s %s/%s failed: %s", kind, bodies.namespace(obj), name, exc)
            return AdmissionDecision.deny(
                [f"pod: creating the {kind} {name!r} it needs failed: {type(exc).__name__}: {exc}"], code=500
            )
    return decision


def _pod_name(request: AdmissionRequest) -> str:
    pod = request.object if isinstance(request.object, dict) else {}
    meta = bodies.meta(pod)
    name = request.name or meta.get("name") or (meta.get("generateName") or "") + "*"
    return f"{request.namespace}/{name}"


async def _handle_review(req: web.Request) -> web.Response:
    body = await req.read()
    try:
        areq = parse_review(body)
    except ReviewError as exc:
        log.info("webhook: bad AdmissionReview from %s: %s", req.remote, exc)
        return web.json_response({"code": 400, "message": f"bad AdmissionReview: {exc}"}, status=400)
    state = req.app[STATE_KEY]
    decision = await decide(
        areq,
        state.policy,
        state.namespace_labels,
        quota=state.quota,
        create_object=state.create_object,
        claim_lookup=state.claim_lookup,
    )
    if not decision.allowed:
        log.info("webhook: denied %s: %s", _pod_name(areq), decision.message)
    elif decision.patch:
        log.debug("webhook: mutated %s: %d patch operations", _pod_name(areq), len(decision.patch))
    out = review_response(areq, decision)
    return web.Response(body=orjson.dumps(out), content_type="application/json")


async def _healthz(req: web.Request) -> web.Response:
    return web.Response(text="ok\n")


async def _readyz(req: web.Request) -> web.Response:
    state = req.app[STATE_KEY]
    if state.ready:
        return web.Response(text="ok\n")
    return web.Response(status=503, text=f"not ready: {state.why or 'starting'}\n")


def make_app(
    policy: WebhookPolicy,
    *,
    namespace_labels: NamespaceLabels | None = None,
    create_object: ObjectCreator | None = None,
    ready: bool = True,
    quota: QuotaCheck | None = None,
    claim_lookup: ObjectGetter | None = None,
) -> web.Application:
    """The aiohttp application (see :func:`set_ready` for ``/readyz``)."""
    app = web.Application(client_max_size=MAX_BODY)
    app[STATE_KEY] = WebhookState(
        policy=policy,
        namespace_labels=namespace_labels,
        create_object=create_object,
        ready=ready,
        why="starting",
        quota=quota,
        claim_lookup=claim_lookup,
    )
    app.router.add_post("/webhook", _handle_review)
    app.router.add_post("/mutate", _handle_review)
    app.router.add_get("/healthz", _healthz)
    app.router.add_get("/readyz", _readyz)
    return app


async def start_webhook(
    policy: WebhookPolicy,
    *,
    host: str = "127.0.0.1",
    port: int = 0,
    ssl_context: ssl.SSLContext | None = None,
    namespace_labels: NamespaceLabels | None = None,
    create_object: ObjectCreator | None = None,
    ready: bool = True,
    quota: QuotaCheck | None = None,
    claim_lookup: ObjectGetter | None = None,
) -> web.AppRunner:
    """Serve on ``host:port`` (0 = any free port, see :func:`runner_port`); HTTPS when
    ``ssl_context`` is given (always in production: the API server only calls HTTPS webhooks).
    Stop with ``await runner.cleanup()``."""
    app = make_app(
        policy,
        namespace_labels=namespace_labels,
        create_object=create_object,
        ready=ready,
        quota=quota,
        claim_lookup=claim_lookup,
    )
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, ssl_context=ssl_context)
    await site.start()
    return runner


def runner_port(runner: web.AppRunner) -> int:
    """The TCP port the runner's first site listens on."""
    for addr in runner.addresses:
        if isinstance(addr, tuple) and len(addr) >= 2:
            return int(addr[1])
    raise RuntimeError("the webhook runner has no TCP site")


def set_ready(runner: web.AppRunner, ready: bool, why: str = "") -> None:
    """Flip ``/readyz`` (e.g. after the caBundle has been injected)."""
    state = runner.app[STATE_KEY]
    state.ready = ready
    state.why = why
