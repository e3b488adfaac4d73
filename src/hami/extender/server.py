"""The extender's HTTP(S) endpoints: ``/filter``, ``/bind``, ``/preempt``, ``/healthz``, ``/readyz``, ``/metrics``,
and with DRA mode ``/dra/filter`` and ``/dra/prioritize`` (:mod:`hami.extender.dra`).

Two applications: :func:`make_app` serves all five for kube-scheduler; :func:`make_ops_app` serves
only the probes and ``/metrics`` on a port of their own (HAMi's 9395), so Prometheus and the kubelet
never reach ``/filter`` or ``/bind``, and so the probes answer while the caches are still syncing
(``/healthz`` 200, ``/readyz`` 503 until synced).

Errors are answered the way kube-scheduler expects: HTTP 200 with ``Error`` set. A body that is not
an extender request gets HTTP 400 naming what is wrong; bodies over 1 MiB are refused.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TypeVar

import orjson
from aiohttp import web
from prometheus_client import CONTENT_TYPE_LATEST, Histogram, generate_latest

from hami.extender.dra import DraSteering
from hami.extender.metrics import Metrics
from hami.extender.service import BindRefused, Bound, ExtenderService, NotLeader
from hami.extender.wire import (
    BindingArgs,
    ExtenderArgs,
    PreemptionArgs,
    WireError,
    binding_result,
    filter_result,
    preemption_result,
    priority_result,
)
from hami.protocol import bodies

log = logging.getLogger(__name__)

MAX_BODY = 1 << 20
A = TypeVar("A")
R = TypeVar("R")
SERVICE_KEY = web.AppKey("service", ExtenderService)
METRICS_KEY = web.AppKey("metrics", Metrics)
DRA_KEY = web.AppKey("dra", DraSteering)


def json_response(data: object, status: int = 200) -> web.Response:
    return web.Response(body=orjson.dumps(data), status=status, content_type="application/json")


async def read_args(request: web.Request, parse: Callable[[object], A]) -> A:
    """The request body parsed as an extender request; HTTP 400 naming what is wrong otherwise."""
    raw = await request.read()
    try:
        return parse(orjson.loads(raw))
    except orjson.JSONDecodeError as exc:
        raise web.HTTPBadRequest(text=f"request body is not JSON: {exc}") from None
    except WireError as exc:
        raise web.HTTPBadRequest(text=str(exc)) from None


@dataclass(frozen=True, slots=True)
class _Failed:
    """A verb that did not run: this replica does not lead (yet), or a bug (``internal error``)."""

    label: str
    error: str


async def _run(verb: str, call: Awaitable[R], seconds: Histogram | None, started: float) -> R | _Failed:
    try:
        return await call
    except NotLeader as exc:
        return _Failed("not_leader", str(exc))
    except Exception as exc:  # a bug must not take the loop down: report it to kube-scheduler
        log.exception("%s failed", verb)
        return _Failed("error", f"internal error: {exc}")
    finally:
        if seconds is not None:
            seconds.observe(time.perf_counter() - started)


async def handle_filter(request: web.Request) -> web.Response:
    service, metrics = request.app[SERVICE_KEY], request.app[METRICS_KEY]
    started = time.perf_counter()
    args = await read_args(request, ExtenderArgs.parse)
    outcome = await _run("filter", service.filter(args), metrics.filter_seconds, started)
    if isinstance(outcome, _Failed):
        metrics.filter_results.labels(outcome.label).inc()
        return json_response(filter_result(node_names=None, error=outcome.error))
    result = "error" if outcome.error else ("scheduled" if outcome.node_names else "unschedulable")
    metrics.filter_results.labels(result).inc()
    nodes = None
    if args.nodes is not None:  # nodeCacheCapable: false -- kube-scheduler reads only Nodes
        chosen = set(outcome.node_names)
        nodes = [n for n in args.nodes if bodies.name(n) in chosen]
    return json_response(
        filter_result(node_names=outcome.node_names, failed=outcome.failed, error=outcome.error, nodes=nodes)
    )


async def handle_bind(request: web.Request) -> web.Response:
    service, metrics = request.app[SERVICE_KEY], request.app[METRICS_KEY]
    started = time.perf_counter()
    args = await read_args(request, BindingArgs.parse)
    result = await _run("bind", service.bind_pod(args), metrics.bind_seconds, started)
    match result:
        case Bound():
            error = ""
        case BindRefused(reason=error) | _Failed(error=error):
            pass
    metrics.bind_results.labels("error" if error else "bound").inc()
    return json_response(binding_result(error))


async def handle_preempt(request: web.Request) -> web.Response:
    """kube-scheduler's preemption verb: the proposed victims, kept only where they free the right cards.

    ``ExtenderPreemptionResult`` has no error field: a replica that does not lead answers HTTP 503,
    a bug HTTP 500, and kube-scheduler preempts nothing for the pod this cycle."""
    service = request.app[SERVICE_KEY]
    args = await read_args(request, PreemptionArgs.parse)
    outcome = await _run("preempt", service.preempt(args), None, time.perf_counter())
    if isinstance(outcome, _Failed):
        status = 503 if outcome.label == "not_leader" else 500
        return web.Response(status=status, text=outcome.error)
    return json_response(preemption_result(outcome, args.pdb_violations))


async def _dra_args(request: web.Request) -> tuple[DraSteering, ExtenderArgs]:
    args = await read_args(request, ExtenderArgs.parse)
    return request.app[DRA_KEY], args


async def handle_dra_filter(request: web.Request) -> web.Response:
    """DRA pods: every candidate but nodes where a device-plugin pod could be over-committed."""
    steering, args = await _dra_args(request)
    started = time.perf_counter()
    outcome = await _run("dra filter", _ready_then(request, lambda: steering.filter(args)), None, started)
    if isinstance(outcome, _Failed):
        return json_response(filter_result(node_names=None, error=outcome.error))
    return json_response(filter_result(node_names=outcome.node_names, failed=outcome.failed))


async def handle_dra_prioritize(request: web.Request) -> web.Response:
    """DRA pods: hami's node score (binpack/spread on the ledger); an error gives no scores."""
    steering, args = await _dra_args(request)
    outcome = await _run("dra prioritize", _ready_then(request, lambda: steering.prioritize(args)), None, 0.0)
    if isinstance(outcome, _Failed):
        return web.Response(status=503 if outcome.label == "not_leader" else 500, text=outcome.error)
    return json_response(priority_result(outcome))


async def _ready_then(request: web.Request, call: Callable[[], R]) -> R:
    request.app[SERVICE_KEY].check_ready()
    return call()


async def handle_healthz(request: web.Request) -> web.Response:
    return web.Response(text="ok")


async def handle_readyz(request: web.Request) -> web.Response:
    service = request.app[SERVICE_KEY]
    if not service.is_synced():
        return web.Response(status=503, text="cache not synced")
    return web.Response(text="ok" if service.is_leader() else "ok (follower)")


async def handle_metrics(request: web.Request) -> web.Response:
    body = generate_latest(request.app[METRICS_KEY].registry)
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE_LATEST})


def make_ops_app(service: ExtenderService, metrics: Metrics) -> web.Application:
    """``/healthz``, ``/readyz`` and ``/metrics`` only."""
    app = web.Application(client_max_size=MAX_BODY)
    app[SERVICE_KEY] = service
    app[METRICS_KEY] = metrics
    app.router.add_get("/healthz", handle_healthz)
    app.router.add_get("/readyz", handle_readyz)
    app.router.add_get("/metrics", handle_metrics)
    return app


def make_app(service: ExtenderService, metrics: Metrics, dra: DraSteering | None = None) -> web.Application:
    """What kube-scheduler calls (``/filter``, ``/bind``, and the DRA verbs when ``dra`` is given)
    plus the probes and ``/metrics``."""
    app = make_ops_app(service, metrics)
    app.router.add_post("/filter", handle_filter)
    app.router.add_post("/bind", handle_bind)
    app.router.add_post("/preempt", handle_preempt)
    if dra is not None:
        app[DRA_KEY] = dra
        app.router.add_post("/dra/filter", handle_dra_filter)
        app.router.add_post("/dra/prioritize", handle_dra_prioritize)
    return app
