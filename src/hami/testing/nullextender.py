"""The null extender: kube-scheduler's extender protocol at its cheapest, for benchmarks.

It serves ``/filter`` and ``/bind`` on the same HTTP stack as hami's extender (aiohttp, orjson, the
request parsers of :mod:`hami.extender.wire`, the same error answers) but keeps no state: no
informers, no ledger, no reservations. ``/filter`` answers every candidate it was sent, unchanged
(with ``first_only``, only the first one: kube-scheduler then has one feasible node and skips its
scoring, as after hami's filter, which answers the one node it chose); ``/bind`` posts the Binding kube-scheduler asks for, with the pod UID as precondition and no
annotation. So kube-scheduler + this extender costs what the protocol itself costs — two HTTP calls
per pod and the Binding posted by another process — and hami's extender beside it in the same run
shows what hami adds on top (``benchmarks/bench_e2e.py``, modes ``null`` and ``null-first``).

Guarantees: a body that is not an extender request gets HTTP 400 naming the field (as hami's
extender answers it); a Binding the API server refuses is answered with ``Error`` set (HTTP 200), so
kube-scheduler retries the pod; nothing is held between requests.
"""

from __future__ import annotations

from aiohttp import web

from hami.extender.server import MAX_BODY, json_response, read_args
from hami.extender.wire import BindingArgs, ExtenderArgs, binding_result, filter_result
from hami.kube.client import KubeClient
from hami.kube.config import KubeConfig
from hami.kube.errors import KubeError

CLIENT_KEY = web.AppKey("client", KubeClient)
FIRST_ONLY_KEY = web.AppKey("first_only", bool)


async def handle_filter(request: web.Request) -> web.Response:
    """Every candidate passes, or the first one only (with ``Nodes`` when kube-scheduler sent Node objects)."""
    args = await read_args(request, ExtenderArgs.parse)
    keep = 1 if request.app[FIRST_ONLY_KEY] else None
    nodes = None if args.nodes is None else args.nodes[:keep]
    return json_response(filter_result(node_names=args.node_names[:keep], nodes=nodes))


async def handle_bind(request: web.Request) -> web.Response:
    """Post the Binding; an API error is the answer's ``Error``."""
    args = await read_args(request, BindingArgs.parse)
    try:
        await request.app[CLIENT_KEY].bind_pod(
            args.pod_namespace, args.pod_name, uid=args.pod_uid, node=args.node
        )
    except KubeError as exc:
        return json_response(binding_result(f"binding pod {args.pod_namespace}/{args.pod_name}: {exc}"))
    return json_response(binding_result())


def make_null_app(client: KubeClient, *, first_only: bool = False) -> web.Application:
    app = web.Application(client_max_size=MAX_BODY)
    app[CLIENT_KEY] = client
    app[FIRST_ONLY_KEY] = first_only
    app.router.add_post("/filter", handle_filter)
    app.router.add_post("/bind", handle_bind)
    return app


class NullExtender:
    """``await start()``, then ``url``; ``await stop()``. Port 0 picks a free port."""

    def __init__(
        self, kube_config: KubeConfig, *, host: str = "127.0.0.1", port: int = 0, first_only: bool = False
    ) -> None:
        self.client = KubeClient(kube_config)
        self.first_only = first_only
        self.host = host
        self.port = port
        self._runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    async def start(self) -> None:
        self._runner = web.AppRunner(make_null_app(self.client, first_only=self.first_only), access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.host, self.port).start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.client.close()

    async def __aenter__(self) -> NullExtender:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
