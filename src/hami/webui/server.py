"""The web UI's HTTP side: pages rendered from a :class:`~hami.webui.views.Snapshot`, read-only.

Guarantees:

* **Read-only**: only GET/HEAD routes exist (anything else is 405); nothing is written anywhere.
* **Escaped**: every template is rendered with Jinja2's autoescape on, and no template marks a
  value safe, so a name, label, annotation or card type a tenant or a node controls is shown as
  text. Pages carry a strict Content-Security-Policy (``default-src 'self'``, no inline script or
  style), ``X-Content-Type-Options: nosniff``, ``Referrer-Policy: no-referrer`` and
  ``frame-ancestors 'none'``; no asset comes from elsewhere.
* **Works without JavaScript**: every page is complete HTML; ``static/webui.js`` only refreshes
  the ``#live`` region from ``?fragment=1`` (the same page's content, without the frame) every
  :data:`REFRESH_MS` milliseconds.
* A bad query parameter (``page=abc``) is answered 400 naming the parameter.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from typing import Any

import jinja2
from aiohttp import web

from hami.protocol import bodies
from hami.webui import views
from hami.webui.views import Snapshot

REFRESH_MS = 2000
PER_PAGE = 200
CSP = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; "
    "object-src 'none'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
SECURITY_HEADERS = {
    "Content-Security-Policy": CSP,
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}
STATIC_TYPES = {"webui.js": "text/javascript", "webui.css": "text/css", "favicon.svg": "image/svg+xml"}


@dataclass(frozen=True, slots=True)
class Page:
    path: str
    name: str
    title: str

    @property
    def href(self) -> str:
        """The link to the page relative to any other page: every link and asset is relative, so
        the pages also work under a path prefix (``kubectl proxy``, the API server's service proxy)."""
        return self.path.lstrip("/") or "./"


PAGES = (
    Page("/", "overview", "Overview"),
    Page("/nodes", "nodes", "Nodes"),
    Page("/cards", "cards", "Cards"),
    Page("/workloads", "workloads", "Workloads"),
    Page("/namespaces", "namespaces", "Namespaces"),
)


class QueryError(ValueError):
    """A query parameter that cannot be used; the message names it."""


@dataclass(frozen=True, slots=True)
class Query:
    page: int = 1
    q: str = ""
    fragment: bool = False

    @classmethod
    def parse(cls, params: Mapping[str, str]) -> Query:
        raw = params.get("page", "1")
        try:
            page = int(raw)
        except ValueError:
            raise QueryError(f"query parameter 'page': {raw[:40]!r} is not a whole number") from None
        if page < 1:
            raise QueryError(f"query parameter 'page': {page} is less than 1")
        q = params.get("q", "")
        if len(q) > 200:
            raise QueryError("query parameter 'q': longer than 200 characters")
        return cls(page=page, q=q.strip(), fragment=params.get("fragment") == "1")


def environment() -> jinja2.Environment:
    """The templates (package data ``hami/webui/templates``), autoescaped whatever the file name."""
    env = jinja2.Environment(
        loader=jinja2.PackageLoader("hami.webui", "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["mib"] = _mib
    env.filters["bytes_mib"] = lambda v: "—" if v is None else _mib(round(v / views.MiB))
    env.filters["pct"] = lambda v: "—" if v is None else f"{round(v)} %"
    return env


def _mib(v: int) -> str:
    return f"{v / 1024:.1f} GiB" if v >= 10 * 1024 else f"{v} MiB"


class Renderer:
    """Renders one page from a snapshot; pure apart from the snapshot it is given."""

    def __init__(self) -> None:
        self.env = environment()
        self.macros = self.env.get_template("_macros.html").module

    def context(self, page: Page, snap: Snapshot, query: Query) -> dict[str, Any]:
        ctx: dict[str, Any] = {"q": query.q, "page": query.page, "pages": 1}
        if page.name == "overview":
            ctx["ov"] = views.overview(snap, len(views.pending_pods(snap)))
        elif page.name == "nodes":
            nodes = [r for r in views.node_rows(snap) if views.matches(query.q, r.name, r.models)]
            self._page_of(ctx, nodes, query)
        elif page.name == "cards":
            lookup = snap.pod_lookup or {bodies.pod_key(p): p for p in snap.pods}.get
            self._page_of(ctx, views.card_entries(snap, query.q), query)
            ctx["rows"] = views.card_rows(snap, ctx["rows"], lookup)
        elif page.name == "workloads":
            pending = views.pending_rows(snap)
            ctx["pending"] = [r for r in pending if views.matches(query.q, r.namespace, r.name)]
            self._page_of(ctx, views.running_allocations(snap, query.q), query)
            ctx["rows"] = views.running_rows(snap, ctx["rows"])
            ctx["max_explained"] = views.MAX_EXPLAINED
        elif page.name == "namespaces":
            ctx["rows"] = [r for r in views.namespace_rows(snap) if views.matches(query.q, r.name)]
        ctx["usage_errors"] = sorted(snap.usage.errors.values())
        ctx["usage_sources"] = len(snap.usage.sources)
        return ctx

    @staticmethod
    def _page_of(ctx: dict[str, Any], rows: Sequence[Any], query: Query) -> None:
        ctx["rows"], ctx["page"], ctx["pages"] = views.paginate(rows, query.page, PER_PAGE)
        ctx["total"] = len(rows)

    def render(self, page: Page, snap: Snapshot, query: Query) -> str:
        ctx = self.context(page, snap, query)
        # the macros as a context value: a block rendered alone (a fragment) sees no template imports
        ctx.update(current=page, pages_nav=PAGES, refresh_ms=REFRESH_MS, m=self.macros)
        template = self.env.get_template(f"{page.name}.html")
        if query.fragment:
            return "".join(template.blocks["live"](template.new_context(ctx)))
        return template.render(ctx)


def _static(name: str) -> bytes:
    return resources.files("hami.webui").joinpath("static", name).read_bytes()


def make_app(
    snapshot: Callable[[], Snapshot], *, ready: Callable[[], bool] = lambda: True
) -> web.Application:
    """The aiohttp application; ``snapshot()`` is called once per page view."""
    renderer = Renderer()
    statics = {name: _static(name) for name in STATIC_TYPES}

    @web.middleware
    async def headers(request: web.Request, handler: Any) -> web.StreamResponse:
        try:
            response: web.StreamResponse = await handler(request)
        except web.HTTPException as exc:  # 404, 405: the same headers
            exc.headers.update(SECURITY_HEADERS)
            raise
        response.headers.update(SECURITY_HEADERS)
        return response

    def page_handler(page: Page) -> Callable[[web.Request], Any]:
        async def handle(request: web.Request) -> web.Response:
            try:
                query = Query.parse(request.query)
            except QueryError as exc:
                return web.Response(status=400, text=str(exc))
            if not ready():
                return web.Response(status=503, text="the web UI is still reading the cluster; retry shortly")
            started = time.perf_counter()
            html = renderer.render(page, snapshot(), query)
            resp = web.Response(text=html, content_type="text/html", charset="utf-8")
            resp.headers["Server-Timing"] = f"render;dur={(time.perf_counter() - started) * 1000:.1f}"
            return resp

        return handle

    async def static(request: web.Request) -> web.Response:
        name = request.match_info["name"]
        if name not in statics:
            raise web.HTTPNotFound()
        return web.Response(body=statics[name], content_type=STATIC_TYPES[name], charset="utf-8")

    async def healthz(_request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def readyz(_request: web.Request) -> web.Response:
        return web.Response(text="ok" if ready() else "syncing", status=200 if ready() else 503)

    app = web.Application(middlewares=[headers])
    for page in PAGES:
        app.router.add_get(page.path, page_handler(page))
    app.router.add_get("/static/{name}", static)
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/readyz", readyz)
    return app
