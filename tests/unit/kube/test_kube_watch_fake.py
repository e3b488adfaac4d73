"""WatchStream and Informer against a scripted in-process HTTP server (faults a real server won't make
on demand: HTTP 410 on watch, events split across chunks, multi-MB events, dropped streams)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import orjson
import pytest
from aiohttp import web

from hami.kube.client import KubeClient
from hami.kube.config import KubeConfig
from hami.kube.errors import ApiError, GoneError, TransportError
from hami.kube.informer import Informer

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def pod(name: str, uid: str, rv: str) -> dict[str, Any]:
    return {"metadata": {"namespace": "ns", "name": name, "uid": uid, "resourceVersion": rv}}


def line(etype: str, obj: dict[str, Any]) -> bytes:
    return orjson.dumps({"type": etype, "object": obj}) + b"\n"


@pytest.fixture
async def serve() -> AsyncIterator[Callable[[Handler], Awaitable[KubeClient]]]:
    runners: list[web.AppRunner] = []
    clients: list[KubeClient] = []

    async def start(handler: Handler) -> KubeClient:
        app = web.Application()
        app.router.add_route("*", "/{tail:.*}", handler)
        runner = web.AppRunner(app)
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        runners.append(runner)
        port = runner.addresses[0][1]
        kc = KubeClient(KubeConfig(server=f"http://127.0.0.1:{port}", token="t"))
        clients.append(kc)
        return kc

    yield start
    for kc in clients:
        await kc.close()
    for r in runners:
        await r.cleanup()


async def test_watch_stream_chunking_big_events_and_errors(serve: Any) -> None:
    big = pod("big", "u-big", "3")
    big["data"] = "x" * (8 * 2**20)  # 8 MiB in one line: larger than any line buffer
    body = line("ADDED", pod("a", "u-a", "2")) + line("BOOKMARK", {"metadata": {"resourceVersion": "2"}})
    body += line("MODIFIED", big)
    seen_params: list[dict[str, str]] = []

    async def handler(request: web.Request) -> web.StreamResponse:
        seen_params.append(dict(request.query))
        assert request.headers["Authorization"] == "Bearer t"
        resp = web.StreamResponse()
        await resp.prepare(request)
        for i in range(0, len(body), 7919):  # odd chunk sizes split lines anywhere
            await resp.write(body[i : i + 7919])
        await resp.write(line("DELETED", pod("a", "u-a", "4"))[:-1])  # final line without newline
        await resp.write_eof()
        return resp

    kc = await serve(handler)
    async with kc.watch("/api/v1/pods", resource_version="1", label_selector="a=b", timeout_seconds=9) as s:
        events = [(e["type"], e["object"]["metadata"].get("name")) async for e in s]
    assert events == [("ADDED", "a"), ("BOOKMARK", None), ("MODIFIED", "big"), ("DELETED", "a")]
    assert seen_params[0] == {
        "watch": "true",
        "resourceVersion": "1",
        "labelSelector": "a=b",
        "allowWatchBookmarks": "true",
        "timeoutSeconds": "9",
    }


async def test_watch_http_410_and_error_events(serve: Any) -> None:
    mode = {"n": 0}

    async def handler(request: web.Request) -> web.StreamResponse:
        mode["n"] += 1
        if mode["n"] == 1:
            return web.json_response(
                {"kind": "Status", "code": 410, "reason": "Expired", "message": "too old"}, status=410
            )
        resp = web.StreamResponse()
        await resp.prepare(request)
        code = 410 if mode["n"] == 2 else 500
        await resp.write(line("ERROR", {"kind": "Status", "code": code, "reason": "X", "message": "m"}))
        return resp

    kc = await serve(handler)
    with pytest.raises(GoneError):
        async with kc.watch("/api/v1/pods", resource_version="1"):
            pass
    with pytest.raises(GoneError):
        async for _ in kc.watch("/api/v1/pods", resource_version="1"):
            pass
    with pytest.raises(ApiError) as exc:
        async for _ in kc.watch("/api/v1/pods", resource_version="1"):
            pass
    assert exc.value.status == 500


async def test_transport_error_when_server_is_gone() -> None:
    async with KubeClient(KubeConfig(server="http://127.0.0.1:9"), timeout=2) as kc:
        with pytest.raises(TransportError):
            await kc.get("/version")
        with pytest.raises(TransportError):
            async with kc.watch("/api/v1/pods"):
                pass


async def test_informer_relists_on_http_410_and_fires_synthetic_deletes(serve: Any) -> None:
    state: dict[str, Any] = {"lists": 0, "watches": 0}
    listed_second = asyncio.Event()

    async def handler(request: web.Request) -> web.StreamResponse:
        if request.query.get("watch") != "true":
            state["lists"] += 1
            if state["lists"] == 1:
                items = [pod("a", "u-a", "5"), pod("b", "u-b", "6"), pod("c", "u-c", "7")]
                rv = "10"
            else:  # a deleted, b changed, c recreated, d new — all while we were "away"
                items = [pod("b", "u-b", "20"), pod("c", "u-c2", "21"), pod("d", "u-d", "22")]
                rv = "30"
                listed_second.set()
            return web.json_response(
                {"kind": "PodList", "apiVersion": "v1", "metadata": {"resourceVersion": rv}, "items": items}
            )
        state["watches"] += 1
        state.setdefault("watch_rvs", []).append(request.query.get("resourceVersion"))
        if state["watches"] == 1:  # a normal event, then the stream drops
            resp = web.StreamResponse()
            await resp.prepare(request)
            await resp.write(line("MODIFIED", pod("a", "u-a", "11")))
            return resp
        if state["watches"] == 2:
            return web.json_response({"kind": "Status", "code": 410, "reason": "Expired"}, status=410)
        resp = web.StreamResponse()
        await resp.prepare(request)
        while not state.get("stop"):
            await asyncio.sleep(0.05)
        return resp

    kc = await serve(handler)
    events: list[tuple[str, str, str]] = []
    inf = Informer(
        kc,
        "/api/v1/pods",
        on_add=lambda o: events.append(("add", o["metadata"]["name"], o["metadata"]["uid"])),
        on_update=lambda old, new: events.append(("update", new["metadata"]["name"], new["metadata"]["uid"])),
        on_delete=lambda o: events.append(("delete", o["metadata"]["name"], o["metadata"]["uid"])),
        backoff_initial=0.01,
    )
    inf.start()
    try:
        await inf.wait_synced(1)
        await asyncio.wait_for(listed_second.wait(), 5)
        for _ in range(100):
            if inf.list_count == 2:
                break
            await asyncio.sleep(0.01)
    finally:
        await inf.stop()
        state["stop"] = True
    assert state["watch_rvs"][:2] == ["10", "11"]  # resumed from the last event's RV
    assert events[:4] == [
        ("add", "a", "u-a"),
        ("add", "b", "u-b"),
        ("add", "c", "u-c"),
        ("update", "a", "u-a"),
    ]
    assert sorted(events[4:]) == sorted(
        [
            ("delete", "a", "u-a"),
            ("delete", "c", "u-c"),
            ("add", "c", "u-c2"),
            ("update", "b", "u-b"),
            ("add", "d", "u-d"),
        ]
    )
    assert sorted(inf.keys()) == ["ns/b", "ns/c", "ns/d"]
    assert inf.resource_version == "30" and isinstance(inf.last_error, GoneError)
    assert inf.get("ns/d") == {**pod("d", "u-d", "22"), "kind": "Pod", "apiVersion": "v1"}
