"""Envelope parsing, the per-review decision wrapper, namespace-label cache and the CLI."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest
from click.testing import CliRunner

from hami.cliutil import parse_bind
from hami.webhook.admission import AdmissionRequest, ReviewError, parse_review, review_response
from hami.webhook.cli import webhook
from hami.webhook.mutate import AdmissionDecision, WebhookPolicy
from hami.webhook.server import NamespaceLabelCache, decide

POD = {
    "metadata": {"name": "p"},
    "spec": {"containers": [{"name": "c", "resources": {"limits": {"nvidia.com/gpu": 1}}}]},
}


def review(api_version: str = "admission.k8s.io/v1", **request: Any) -> bytes:
    req = {"uid": "u-1", "kind": {"group": "", "version": "v1", "kind": "Pod"}, "operation": "CREATE"}
    req.update(request)
    return json.dumps({"apiVersion": api_version, "kind": "AdmissionReview", "request": req}).encode()


def test_parse_review_fields() -> None:
    r = parse_review(review(namespace="ns", name="p", object=POD, dryRun=True))
    assert r == AdmissionRequest(
        api_version="admission.k8s.io/v1",
        uid="u-1",
        kind="Pod",
        operation="CREATE",
        namespace="ns",
        name="p",
        object=POD,
        dry_run=True,
    )


@pytest.mark.parametrize(
    "body",
    [b"\xff", b"1", b'{"apiVersion":"v1","kind":"AdmissionReview","request":{"uid":"x"}}', review(uid="")],
)
def test_parse_review_rejects(body: bytes) -> None:
    with pytest.raises(ReviewError):
        parse_review(body)


def test_review_response_shapes() -> None:
    req = parse_review(review("admission.k8s.io/v1beta1"))
    allowed = review_response(req, AdmissionDecision(allowed=True))
    assert allowed == {
        "apiVersion": "admission.k8s.io/v1beta1",
        "kind": "AdmissionReview",
        "response": {"uid": "u-1", "allowed": True},
    }
    ops = ({"op": "add", "path": "/spec/x", "value": 1},)
    patched = review_response(req, AdmissionDecision(allowed=True, patch=ops, warnings=("w",)))["response"]
    assert json.loads(base64.b64decode(patched["patch"])) == list(ops)
    assert patched["patchType"] == "JSONPatch" and patched["warnings"] == ["w"]
    denied = review_response(req, AdmissionDecision.deny(["a", "b"], code=403))["response"]
    assert denied["allowed"] is False
    assert denied["status"] == {"status": "Failure", "code": 403, "reason": "Forbidden", "message": "a; b"}


async def test_decide_guards_label_lookup_and_internal_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    req = parse_review(review(namespace="ns", object=POD))

    async def broken(ns: str) -> dict[str, str] | None:
        raise RuntimeError("api down")

    d = await decide(req, WebhookPolicy.default(), broken)
    assert d.allowed and d.patch  # lookup failure does not fail the pod

    def boom(*a: Any, **k: Any) -> AdmissionDecision:
        raise KeyError("bug")

    monkeypatch.setattr("hami.webhook.server.mutate_pod", boom)
    d = await decide(req, WebhookPolicy.default())
    assert not d.allowed and d.code == 500 and "internal error" in d.message


class FakeNs:
    def __init__(self) -> None:
        self.calls = 0
        self.fail = False

    async def get(self, path: str) -> dict[str, Any]:
        self.calls += 1
        await asyncio.sleep(0.01)
        if self.fail:
            raise RuntimeError("down")
        name = path.rsplit("/", 1)[1]
        return {"metadata": {"name": name, "labels": {"team": name}}}


async def test_namespace_label_cache() -> None:
    now = [0.0]
    api = FakeNs()
    cache = NamespaceLabelCache(api, ttl_s=30, clock=lambda: now[0])
    results = await asyncio.gather(*(cache("a") for _ in range(5)))
    assert results == [{"team": "a"}] * 5 and api.calls == 1  # concurrent lookups share one request
    assert await cache("a") == {"team": "a"} and api.calls == 1  # cached
    now[0] = 31.0
    api.fail = True
    assert await cache("a") == {"team": "a"} and api.calls == 2  # stale value on error
    assert await cache("b") is None  # unknown on error


def test_parse_bind() -> None:
    assert parse_bind("0.0.0.0:9443") == ("0.0.0.0", 9443)
    assert parse_bind(":443") == ("0.0.0.0", 443)
    assert parse_bind("[::1]:8443") == ("::1", 8443)


@pytest.mark.parametrize(
    ("args", "fragment"),
    [
        ([], "TLS is required"),
        (["--cert-file", __file__], "go together"),
        (["--webhook-config-name", "x", "--cert-file", __file__, "--key-file", __file__], "not both"),
        (["--bind", "nope", "--self-signed-hosts", "a"], "host:port"),
    ],
)
def test_cli_usage_errors(args: list[str], fragment: str) -> None:
    if "not both" in fragment:
        args = [*args, "--self-signed-hosts", "a"]
    r = CliRunner().invoke(webhook, args)
    assert r.exit_code == 2 and fragment in r.output


def test_cli_bad_device_config(tmp_path: Path) -> None:
    cfg = tmp_path / "dc.yaml"
    cfg.write_text("nvidia:\n  gpuCorePolicy: sometimes\n")
    r = CliRunner().invoke(webhook, ["--self-signed-hosts", "localhost", "--device-config", str(cfg)])
    assert r.exit_code == 1 and str(cfg) in r.output and "gpuCorePolicy" in r.output


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


async def test_cli_serves_self_signed(tmp_path: Path) -> None:
    port = _free_port()
    ca = tmp_path / "ca.pem"
    code = "from hami.webhook.cli import webhook; webhook()"
    args = [
        "--bind",
        f"127.0.0.1:{port}",
        "--self-signed-hosts",
        "localhost,127.0.0.1",
        "--write-ca",
        str(ca),
    ]
    proc = subprocess.Popen(
        [sys.executable, "-c", code, *args, "--no-namespace-labels"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env={**os.environ, "KUBECONFIG": "/nonexistent"},
    )
    try:
        deadline = time.monotonic() + 30
        while not ca.exists() or ca.stat().st_size == 0:
            assert proc.poll() is None, proc.stdout.read() if proc.stdout else ""
            assert time.monotonic() < deadline
            await asyncio.sleep(0.1)
        ctx = ssl.create_default_context(cafile=str(ca))
        async with aiohttp.ClientSession() as s:
            for _ in range(100):
                try:
                    r = await s.post(
                        f"https://127.0.0.1:{port}/webhook", data=review(namespace="x", object=POD), ssl=ctx
                    )
                    break
                except aiohttp.ClientConnectorError:
                    await asyncio.sleep(0.1)
            assert r.status == 200
            out = await r.json()
            assert out["response"]["allowed"] is True and out["response"]["patchType"] == "JSONPatch"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=15)
    assert proc.returncode == 0
