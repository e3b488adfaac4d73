"""The web UI's pages: what they show, what they never show, escaping, the HTTP side, bad input."""

from __future__ import annotations

import html
from typing import Any

import pytest
from aiohttp.test_utils import TestClient, TestServer
from click.testing import CliRunner

from hami.cli import main
from hami.protocol import keys
from hami.protocol.pod import ContainerDevice
from hami.testing import webuiseed as w
from hami.webui.server import CSP, PAGES, PER_PAGE, Query, QueryError, Renderer, make_app
from hami.webui.usage import CardUse, ContainerUse, LiveUsage
from hami.webui.views import Snapshot, overview

MiB = 1 << 20
HOSTILE = "<img src=x onerror=alert(1)>"
SECRET = "env-value-that-must-never-show"


def _cluster() -> Snapshot:
    cards = w.cards_of("n1", 2, mem=16384, type=f"NVIDIA-{HOSTILE}")
    train = w.running_pod("train", "team", "n1", [ContainerDevice(cards[0].id, "NVIDIA", 8000, 30)])
    train["metadata"]["annotations"]["hami.io/note"] = HOSTILE
    train["metadata"]["annotations"]["kubectl.kubernetes.io/last-applied-configuration"] = SECRET
    train["metadata"]["annotations"]["example.org/other"] = "not a scheduling annotation"
    train["spec"]["containers"][0]["env"] = [{"name": "TOKEN", "value": SECRET}]
    waits = w.pending_pod("waits", "team", gputype="A100")
    waits["metadata"]["annotations"]["hami.io/reason"] = HOSTILE
    waits["status"]["conditions"] = [
        {"type": "PodScheduled", "status": "False", "message": f"kube-scheduler: {HOSTILE}"}
    ]
    nodes, pods = [w.node("n1", cards)], [train, waits]
    usage = LiveUsage(
        containers={("team", "train", "main", cards[0].id): ContainerUse(3000 * MiB, 25.0)},
        cards={cards[0].id: CardUse(3500 * MiB, 40.0)},
        sources=["test"],
    )
    return Snapshot(w.ledger(nodes, pods).scheduler, pods, nodes, usage, w.SCHEDULER)


@pytest.fixture(scope="module")
def pages() -> dict[str, str]:
    snap, r = _cluster(), Renderer()
    return {p.name: r.render(p, snap, Query()) for p in PAGES}


def test_every_page_is_whole_html_with_its_title_and_nav(pages: dict[str, str]) -> None:
    for p in PAGES:
        out = pages[p.name]
        assert out.startswith("<!doctype html>") and f"<h1>{p.title}</h1>" in out
        assert 'class="skip" href="#main"' in out and 'aria-live="polite"' in out
        assert out.count('aria-current="page"') == 1
        assert "<script>" not in out and " style=" not in out  # nothing inline: the CSP forbids it
        # relative links only: the pages also work under a proxy's path prefix
        assert 'href="/' not in out and 'src="/' not in out and "http" not in out.split("<body>")[0]


def test_hostile_values_are_escaped_everywhere(pages: dict[str, str]) -> None:
    escaped = html.escape(HOSTILE, quote=False)
    for name, out in pages.items():
        assert HOSTILE not in out, name
    assert f"NVIDIA-{escaped}" in pages["cards"] and f"NVIDIA-{escaped}" in pages["overview"]
    work = pages["workloads"]
    assert escaped in work  # the annotation and kube-scheduler's message, as text
    assert f"kube-scheduler: {escaped}" in work


def test_secrets_env_and_other_annotations_are_never_shown(pages: dict[str, str]) -> None:
    for out in pages.values():
        assert SECRET not in out and "last-applied-configuration" not in out
        assert "TOKEN" not in out and "example.org/other" not in out
    assert "hami.io/note" in pages["workloads"] and keys.VGPU_DEVICES_ALLOCATED in pages["workloads"]


def test_limits_against_live_usage(pages: dict[str, str]) -> None:
    assert "team/train</a> / main: 8000 MiB, 30 % → 3000 MiB, 25 %" in pages["cards"]
    assert "3500 MiB" in pages["cards"]  # the card as the driver sees it
    assert "main: nvidia.com/gpumem=8000" in pages["workloads"]


def test_pending_pod_shows_the_cores_reason_in_plain_words(pages: dict[str, str]) -> None:
    out = pages["workloads"]
    assert "Waiting for a node (1)" in out
    assert "2/2 CardTypeMismatch" in out
    assert "the card&#39;s model or mode is not the one the pod&#39;s annotations ask for" in out


def test_fragment_is_only_the_live_region() -> None:
    snap, r = _cluster(), Renderer()
    for p in PAGES:
        frag = r.render(p, snap, Query(fragment=True))
        assert "<html" not in frag and "<h1>" not in frag and "<table" in frag, p.name
        assert HOSTILE not in frag


def test_rows_are_paged_and_filtered() -> None:
    nodes, pods = w.cluster(60, 8, busy=0.0)
    snap = Snapshot(w.ledger(nodes, pods).scheduler, pods, nodes, LiveUsage(), w.SCHEDULER)
    r, cards = Renderer(), PAGES[2]
    first = r.render(cards, snap, Query())
    assert f"Page 1 of {(480 + PER_PAGE - 1) // PER_PAGE}" in first and "GPU-node-0000-0" in first
    last = r.render(cards, snap, Query(page=99))  # clamped to the last page
    assert "GPU-node-0059-7" in last and "GPU-node-0000-0" not in last
    only = r.render(cards, snap, Query(q="node-0042"))
    assert "Cards (8)" in only and "GPU-node-0041-0" not in only


@pytest.mark.parametrize(
    ("params", "message"),
    [
        ({"page": "abc"}, "query parameter 'page': 'abc' is not a whole number"),
        ({"page": "0"}, "query parameter 'page': 0 is less than 1"),
        ({"q": "x" * 201}, "query parameter 'q': longer than 200 characters"),
    ],
)
def test_bad_query_parameters_are_named(params: dict[str, str], message: str) -> None:
    with pytest.raises(QueryError, match=message):
        Query.parse(params)


async def _client(ready: bool = True) -> TestClient[Any, Any]:
    snap = _cluster()
    client: TestClient[Any, Any] = TestClient(TestServer(make_app(lambda: snap, ready=lambda: ready)))
    await client.start_server()
    return client


async def test_http_read_only_with_strict_headers() -> None:
    client = await _client()
    try:
        for p in PAGES:
            resp = await client.get(p.path)
            assert resp.status == 200 and resp.content_type == "text/html"
            assert resp.headers["Content-Security-Policy"] == CSP
            assert resp.headers["X-Content-Type-Options"] == "nosniff"
            assert resp.headers["X-Frame-Options"] == "DENY"
            refused = await client.post(p.path)
            assert refused.status == 405 and refused.headers["Content-Security-Policy"] == CSP
        js = await client.get("/static/webui.js")
        assert js.status == 200 and js.content_type == "text/javascript"
        assert (await client.get("/static/../server.py")).status == 404
        assert (await client.get("/static/nope.js")).status == 404
        bad = await client.get("/cards?page=abc")
        assert bad.status == 400 and "'page'" in await bad.text()
        frag = await client.get("/workloads?fragment=1")
        assert "<html" not in await frag.text()
    finally:
        await client.close()


async def test_not_ready_until_the_caches_synced() -> None:
    client = await _client(ready=False)
    try:
        assert (await client.get("/")).status == 503
        assert (await client.get("/readyz")).status == 503
        assert (await client.get("/healthz")).status == 200
    finally:
        await client.close()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--monitor-selector", "app"], "--monitor-selector"),
        (["--prometheus-url", "prom:9090"], "'prom:9090' is not an http(s) URL"),
        (["--monitor-url", "ftp://x"], "--monitor-url"),
        (["--bind", "nowhere"], "--bind"),
        (["--usage-interval", "0.1"], "--usage-interval"),
    ],
)
def test_bad_flags_are_refused_naming_the_flag(args: list[str], message: str) -> None:
    result = CliRunner().invoke(main, ["webui", *args, "--kubeconfig", "/nonexistent"])
    assert result.exit_code == 2, result.output
    assert message in result.output


def test_no_kubeconfig_is_a_clean_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    for var in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    result = CliRunner().invoke(main, ["webui"])
    assert result.exit_code == 1
    assert result.output.startswith("Error: cannot reach the Kubernetes API:")


def test_the_search_text_is_reflected_escaped() -> None:
    snap, r = _cluster(), Renderer()
    out = r.render(PAGES[1], snap, Query(q='"><script>alert(3)</script>'))
    assert "<script>alert(3)" not in out
    assert 'value="&#34;&gt;&lt;script&gt;alert(3)&lt;/script&gt;"' in out


def test_overview_totals_by_model() -> None:
    ov = overview(_cluster(), pending=1)
    (model,) = ov.models
    assert (model.nodes, model.cards, model.mem_total, model.mem_alloc) == (1, 2, 32768, 8000)
    assert model.used_bytes == 3500 * MiB and model.util == 20.0  # the idle card counts as 0 %
    assert (ov.nodes, ov.cards, ov.running, ov.pending) == (1, 2, 1, 1)
    assert [f.pods for f in ov.fragmentation] == [1, 3, 6]
