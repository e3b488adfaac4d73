"""The probes and ``/metrics`` on their own port: up before the caches sync, nothing else served there.

The extender runs for real against an API server address where nothing listens, so its informers
never sync; the ops port must still answer (liveness 200, readiness 503), and stopping it mid-start
must release both ports.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
from pathlib import Path

import aiohttp

from hami.extender.runner import Extender, ExtenderSettings
from hami.kube.config import load_kubeconfig

KUBECONFIG = """
apiVersion: v1
kind: Config
clusters: [{name: c, cluster: {server: "https://127.0.0.1:%d"}}]
users: [{name: u, user: {token: t}}]
contexts: [{name: x, context: {cluster: c, user: u}}]
current-context: x
"""


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def _get(session: aiohttp.ClientSession, url: str, method: str = "GET") -> tuple[int, str]:
    async with session.request(method, url) as r:
        return r.status, await r.text()


async def test_ops_port_answers_before_sync_and_serves_nothing_else(tmp_path: Path) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text(KUBECONFIG % _closed_port())
    settings = ExtenderSettings(port=0, metrics_host="127.0.0.1", metrics_port=0, sync_timeout=60)
    extender = Extender(load_kubeconfig(str(path)), settings)
    task = asyncio.create_task(extender.run_forever())
    try:
        for _ in range(200):
            if extender.metrics_port:
                break
            await asyncio.sleep(0.05)
        assert extender.metrics_port, "the ops port never opened"
        base = f"http://127.0.0.1:{extender.metrics_port}"
        async with aiohttp.ClientSession() as session:
            assert await _get(session, f"{base}/healthz") == (200, "ok")
            assert await _get(session, f"{base}/readyz") == (503, "cache not synced")
            status, body = await _get(session, f"{base}/metrics")
            assert status == 200 and "hami_" in body
            for verb in ("filter", "bind"):
                assert (await _get(session, f"{base}/{verb}", "POST"))[0] == 404
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await task
    port = extender.metrics_port
    with socket.socket() as s:  # released: the port can be bound again
        s.bind(("127.0.0.1", port))


async def test_without_a_metrics_port_none_is_opened(tmp_path: Path) -> None:
    path = tmp_path / "kubeconfig"
    path.write_text(KUBECONFIG % _closed_port())
    extender = Extender(load_kubeconfig(str(path)), ExtenderSettings(port=0))
    task = asyncio.create_task(extender.run_forever())
    await asyncio.sleep(0.3)
    assert extender.metrics_port is None and extender._ops_runner is None
    task.cancel()
    with contextlib.suppress(asyncio.CancelledError):
        await task
