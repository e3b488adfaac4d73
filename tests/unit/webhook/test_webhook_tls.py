"""Self-signed CA + serving certificate, file reload, and caBundle injection."""

from __future__ import annotations

import asyncio
import base64
import ipaddress
import os
import ssl
from pathlib import Path
from typing import Any

import jsonpatch
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from hami.webhook.tls import (
    CertReloader,
    generate_ca,
    generate_self_signed,
    inject_ca_bundle,
    inject_with_retry,
    server_context_from_pem,
    shared_ca,
)


def test_self_signed_certificate_names_and_chain() -> None:
    s = generate_self_signed(["hami.hami-system.svc", "127.0.0.1", "::1"])
    ca = x509.load_pem_x509_certificate(s.ca_pem)
    cert = x509.load_pem_x509_certificate(s.cert_pem)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca is True
    assert cert.issuer == ca.subject
    cert.verify_directly_issued_by(ca)
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["hami.hami-system.svc"]
    assert san.get_values_for_type(x509.IPAddress) == [
        ipaddress.ip_address("127.0.0.1"),
        ipaddress.ip_address("::1"),
    ]
    assert base64.b64decode(s.ca_bundle) == s.ca_pem
    server_context_from_pem(s.cert_pem, s.key_pem)  # key matches certificate


def test_self_signed_needs_a_host() -> None:
    with pytest.raises(ValueError, match="at least one"):
        generate_self_signed([" ", ""])


def _write(d: Path, s: Any) -> tuple[str, str]:
    (d / "tls.crt").write_bytes(s.cert_pem)
    (d / "tls.key").write_bytes(s.key_pem)
    return str(d / "tls.crt"), str(d / "tls.key")


async def _peer_cert(port: int, ca_pem: bytes) -> bytes:
    ctx = ssl.create_default_context(cadata=ca_pem.decode())
    _, writer = await asyncio.open_connection("127.0.0.1", port, ssl=ctx, server_hostname="localhost")
    der = writer.get_extra_info("ssl_object").getpeercert(binary_form=True)
    writer.close()
    await writer.wait_closed()
    return bytes(der)


async def test_cert_reloader_serves_the_new_certificate(tmp_path: Path) -> None:
    first = generate_self_signed(["localhost"])
    cert_file, key_file = _write(tmp_path, first)
    reloader = CertReloader(cert_file, key_file)
    assert reloader.maybe_reload() is False

    async def handle(r: asyncio.StreamReader, w: asyncio.StreamWriter) -> None:
        w.close()

    srv = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=reloader.context)
    port = srv.sockets[0].getsockname()[1]
    try:
        der1 = await _peer_cert(port, first.ca_pem)
        assert der1 == x509.load_pem_x509_certificate(first.cert_pem).public_bytes(serialization.Encoding.DER)
        second = generate_self_signed(["localhost"])
        _write(tmp_path, second)
        st = os.stat(cert_file)
        os.utime(cert_file, (st.st_atime, st.st_mtime + 5))
        assert reloader.maybe_reload() is True
        der2 = await _peer_cert(port, second.ca_pem)
        assert der2 != der1
    finally:
        srv.close()
        await srv.wait_closed()


def test_cert_reloader_keeps_old_pair_on_bad_files(tmp_path: Path) -> None:
    cert_file, key_file = _write(tmp_path, generate_self_signed(["localhost"]))
    reloader = CertReloader(cert_file, key_file)
    Path(cert_file).write_text("garbage")
    assert reloader.maybe_reload() is False
    os.remove(key_file)
    assert reloader.maybe_reload() is False


class FakeApi:
    def __init__(self, obj: dict[str, Any], fail_times: int = 0) -> None:
        self.obj = obj
        self.patches: list[list[dict[str, Any]]] = []
        self.fail_times = fail_times

    async def get(self, path: str) -> dict[str, Any]:
        assert path == "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/hami-webhook"
        if self.fail_times:
            self.fail_times -= 1
            raise RuntimeError("404 not yet")
        return self.obj

    async def json_patch(self, path: str, ops: list[dict[str, Any]]) -> dict[str, Any]:
        self.patches.append(ops)
        self.obj = jsonpatch.apply_patch(self.obj, ops)
        return self.obj


def mwc() -> dict[str, Any]:
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": {"name": "hami-webhook"},
        "webhooks": [
            {
                "name": "vgpu.hami.io",
                "clientConfig": {"service": {"name": "hami", "namespace": "hami-system"}},
            },
            {"name": "other.hami.io", "clientConfig": {"url": "https://x/webhook", "caBundle": "b2xk"}},
        ],
    }


async def test_inject_ca_bundle_patches_every_webhook_once() -> None:
    api = FakeApi(mwc())
    assert await inject_ca_bundle(api, "hami-webhook", "Q0E=") == 2
    assert [wh["clientConfig"]["caBundle"] for wh in api.obj["webhooks"]] == ["Q0E=", "Q0E="]
    assert {"op": "test", "path": "/webhooks/0/name", "value": "vgpu.hami.io"} in api.patches[0]
    assert await inject_ca_bundle(api, "hami-webhook", "Q0E=") == 0  # already set: no write
    assert len(api.patches) == 1


async def test_inject_ca_bundle_only_named_webhooks() -> None:
    api = FakeApi(mwc())
    assert await inject_ca_bundle(api, "hami-webhook", "Q0E=", webhook_names=["vgpu.hami.io"]) == 1
    assert api.obj["webhooks"][1]["clientConfig"]["caBundle"] == "b2xk"


async def test_inject_with_retry_waits_for_the_configuration() -> None:
    api = FakeApi(mwc(), fail_times=2)
    n = await inject_with_retry(lambda: inject_ca_bundle(api, "hami-webhook", "Q0E="), delay_s=0.001)
    assert n == 2


async def test_inject_with_retry_gives_up() -> None:
    api = FakeApi(mwc(), fail_times=5)
    with pytest.raises(RuntimeError, match="404"):
        await inject_with_retry(
            lambda: inject_ca_bundle(api, "hami-webhook", "Q0E="), attempts=3, delay_s=0.001
        )


class ApiStatusError(Exception):
    def __init__(self, status: int) -> None:
        super().__init__(f"HTTP {status}")
        self.status = status


class FakeSecrets:
    """404 until created; ``race`` makes the first create lose to another replica's Secret."""

    def __init__(self, race: dict[str, Any] | None = None) -> None:
        self.secret: dict[str, Any] | None = None
        self.race = race
        self.creates = 0

    async def get(self, path: str) -> dict[str, Any]:
        assert path == "/api/v1/namespaces/kube-system/secrets/hami-webhook-ca"
        if self.secret is None:
            raise ApiStatusError(404)
        return self.secret

    async def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]:
        assert path == "/api/v1/namespaces/kube-system/secrets"
        self.creates += 1
        if self.race is not None:
            self.secret, self.race = self.race, None
            raise ApiStatusError(409)
        self.secret = body
        return body


async def test_shared_ca_is_created_once_and_reused() -> None:
    api = FakeSecrets()
    first = await shared_ca(api, "kube-system", "hami-webhook-ca")
    second = await shared_ca(api, "kube-system", "hami-webhook-ca")
    assert first == second and api.creates == 1
    a = generate_self_signed(["localhost"], ca=first)
    b = generate_self_signed(["localhost"], ca=second)
    ca = x509.load_pem_x509_certificate(first[0])
    for s in (a, b):  # both replicas' certificates chain to the one CA in the bundle
        x509.load_pem_x509_certificate(s.cert_pem).verify_directly_issued_by(ca)
    assert a.cert_pem != b.cert_pem


async def test_shared_ca_loses_a_race_gracefully() -> None:
    winner_pem, winner_key = generate_ca()
    race = {
        "data": {
            "ca.crt": base64.b64encode(winner_pem).decode(),
            "ca.key": base64.b64encode(winner_key).decode(),
        }
    }
    api = FakeSecrets(race=race)
    assert await shared_ca(api, "kube-system", "hami-webhook-ca") == (winner_pem, winner_key)


async def test_shared_ca_rejects_a_broken_secret() -> None:
    api = FakeSecrets()
    api.secret = {"data": {"ca.crt": "eA=="}}
    with pytest.raises(ValueError, match=r"ca\.key"):
        await shared_ca(api, "kube-system", "hami-webhook-ca")
