"""Serving certificates for the webhook: from files (reloaded when they change) or self-signed in process.

Self-signed mode makes a private CA and a serving certificate for the given DNS names / IP
addresses (``cryptography``, ECDSA P-256), serves with them, and puts the CA into the
``MutatingWebhookConfiguration``'s ``caBundle`` (:func:`inject_ca_bundle`) so the API server trusts
it. File mode reads ``--cert-file``/``--key-file`` (e.g. a cert-manager Secret volume) and reloads
them into the same ``SSLContext`` when their modification time changes, so a rotated certificate is
used for new connections without a restart.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import ipaddress
import logging
import os
import ssl
import tempfile
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

__all__ = [
    "CertReloader",
    "SelfSigned",
    "generate_ca",
    "generate_self_signed",
    "inject_ca_bundle",
    "inject_with_retry",
    "issue_serving_cert",
    "server_context_from_pem",
    "shared_ca",
]

log = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class SelfSigned:
    """PEM bytes of a private CA and of a serving certificate it signed."""

    ca_pem: bytes
    cert_pem: bytes
    key_pem: bytes

    @property
    def ca_bundle(self) -> str:
        """base64 of the CA PEM, the form ``clientConfig.caBundle`` takes."""
        return base64.b64encode(self.ca_pem).decode("ascii")


def _san(hosts: Sequence[str]) -> list[x509.GeneralName]:
    out: list[x509.GeneralName] = []
    for h in hosts:
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(h)))
        except ValueError:
            out.append(x509.DNSName(h))
    return out


def build_ca(
    common_name: str, *, start: dt.datetime, end: dt.datetime, path_length: int | None = 0
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A self-signed EC P-256 CA certificate valid from ``start`` to ``end``, and its key. The one
    CA builder in hami: the webhook's own CA and the test clusters' CA both come from here."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
        .add_extension(_key_usage(cert_sign=True), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return cert, key


def build_leaf(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    common_name: str,
    *,
    start: dt.datetime,
    end: dt.datetime,
    hosts: Sequence[str] = (),
    organizations: Sequence[str] = (),
    server: bool = True,
    client: bool = False,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A leaf certificate signed by the CA, and its new EC key: subject ``O=<organizations>,
    CN=<common_name>``, SANs for ``hosts`` (IPs and DNS names), serverAuth and/or clientAuth."""
    key = ec.generate_private_key(ec.SECP256R1())
    attrs = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, o) for o in organizations]
    attrs.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    usages = [
        u
        for u, on in ((ExtendedKeyUsageOID.SERVER_AUTH, server), (ExtendedKeyUsageOID.CLIENT_AUTH, client))
        if on
    ]
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name(attrs))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_key_usage(cert_sign=False), critical=True)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
    )
    if usages:
        builder = builder.add_extension(x509.ExtendedKeyUsage(usages), critical=False)
    if hosts:
        builder = builder.add_extension(x509.SubjectAlternativeName(_san(hosts)), critical=False)
    return builder.sign(ca_key, hashes.SHA256()), key


def generate_ca(*, valid_days: int = 3650, now: dt.datetime | None = None) -> tuple[bytes, bytes]:
    """A private CA: ``(certificate PEM, key PEM)``."""
    start = (now or dt.datetime.now(dt.UTC)) - dt.timedelta(minutes=5)
    cert, key = build_ca("hami-webhook-ca", start=start, end=start + dt.timedelta(days=valid_days))
    return cert.public_bytes(serialization.Encoding.PEM), key_pem(key)


def issue_serving_cert(
    ca_pem: bytes,
    ca_key_pem: bytes,
    hosts: Sequence[str],
    *,
    valid_days: int = 3650,
    now: dt.datetime | None = None,
) -> tuple[bytes, bytes]:
    """A serving certificate for ``hosts`` (DNS names and/or IPs) signed by the CA: ``(cert, key)``."""
    hosts = [h.strip() for h in hosts if h.strip()]
    if not hosts:
        raise ValueError("at least one DNS name or IP address is needed for the serving certificate")
    ca_cert = x509.load_pem_x509_certificate(ca_pem)
    ca_key = serialization.load_pem_private_key(ca_key_pem, password=None)
    if not isinstance(ca_key, ec.EllipticCurvePrivateKey):
        raise ValueError("the webhook CA key must be an EC key")
    start = (now or dt.datetime.now(dt.UTC)) - dt.timedelta(minutes=5)
    end = min(start + dt.timedelta(days=valid_days), ca_cert.not_valid_after_utc)
    cert, key = build_leaf(ca_cert, ca_key, hosts[0], start=start, end=end, hosts=hosts)
    return cert.public_bytes(serialization.Encoding.PEM), key_pem(key)


def generate_self_signed(
    hosts: Sequence[str],
    *,
    ca: tuple[bytes, bytes] | None = None,
    valid_days: int = 3650,
    now: dt.datetime | None = None,
) -> SelfSigned:
    """A serving certificate for ``hosts`` signed by ``ca`` (``(cert PEM, key PEM)``), or by a new CA."""
    if not [h for h in hosts if h.strip()]:
        raise ValueError("at least one DNS name or IP address is needed for the serving certificate")
    ca_pem, ca_key_pem = ca if ca is not None else generate_ca(valid_days=valid_days, now=now)
    cert_pem, key_pem_ = issue_serving_cert(ca_pem, ca_key_pem, hosts, valid_days=valid_days, now=now)
    return SelfSigned(ca_pem=ca_pem, cert_pem=cert_pem, key_pem=key_pem_)


def _key_usage(*, cert_sign: bool) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=cert_sign,
        crl_sign=cert_sign,
        encipher_only=False,
        decipher_only=False,
    )


def key_pem(key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey) -> bytes:
    """A private key as unencrypted PKCS#8 PEM."""
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _new_server_context() -> ssl.SSLContext:
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    return ctx


def server_context_from_pem(cert_pem: bytes, key_pem: bytes) -> ssl.SSLContext:
    """A server ``SSLContext`` from in-memory PEM (written to a private temp dir only while loading)."""
    ctx = _new_server_context()
    with tempfile.TemporaryDirectory(prefix="hami-webhook-tls-") as d:
        cert_path = os.path.join(d, "tls.crt")
        key_path = os.path.join(d, "tls.key")
        fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(key_pem)
        with open(cert_path, "wb") as f:
            f.write(cert_pem)
        ctx.load_cert_chain(cert_path, key_path)
    return ctx


class CertReloader:
    """Owns a server ``SSLContext`` loaded from ``cert_file``/``key_file``; :meth:`maybe_reload`
    loads them again into the same context when either file changed (new handshakes use them)."""

    def __init__(self, cert_file: str, key_file: str) -> None:
        self.cert_file = cert_file
        self.key_file = key_file
        self.context = _new_server_context()
        self._stamp = self._current_stamp()
        self.context.load_cert_chain(cert_file, key_file)

    def _current_stamp(self) -> tuple[float, int, float, int]:
        c = os.stat(self.cert_file)
        k = os.stat(self.key_file)
        return (c.st_mtime, c.st_size, k.st_mtime, k.st_size)

    def maybe_reload(self) -> bool:
        """Reload when the files changed; returns True if it did. A bad pair keeps the old one."""
        try:
            stamp = self._current_stamp()
        except OSError as exc:
            log.warning("webhook TLS: cannot stat %s / %s: %s", self.cert_file, self.key_file, exc)
            return False
        if stamp == self._stamp:
            return False
        try:
            self.context.load_cert_chain(self.cert_file, self.key_file)
        except (OSError, ssl.SSLError) as exc:
            # Secret volumes update cert and key in one atomic symlink swap, but other writers may
            # not: keep serving the old pair and retry on the next tick.
            log.warning(
                "webhook TLS: reloading %s failed, keeping the old certificate: %s", self.cert_file, exc
            )
            return False
        self._stamp = stamp
        log.info("webhook TLS: reloaded %s", self.cert_file)
        return True

    async def watch(self, interval_s: float = 10.0) -> None:
        """Poll forever (run as a task; cancel to stop)."""
        while True:
            await asyncio.sleep(interval_s)
            self.maybe_reload()


class SecretClient(Protocol):
    """The calls :func:`shared_ca` needs; :class:`hami.kube.client.KubeClient` has them."""

    async def get(self, path: str) -> dict[str, Any]: ...

    async def create(self, path: str, body: dict[str, Any]) -> dict[str, Any]: ...


CA_CERT_KEY = "ca.crt"
CA_KEY_KEY = "ca.key"


def _status(exc: Exception) -> int | None:
    status = getattr(exc, "status", None)
    return status if isinstance(status, int) else None


async def shared_ca(client: SecretClient, namespace: str, name: str) -> tuple[bytes, bytes]:
    """The webhook CA kept in Secret ``namespace/name`` (``ca.crt``, ``ca.key``), created on first use.

    Every replica signs its own serving certificate with this one CA, so the single ``caBundle``
    trusts them all (a CA per replica would have each replica overwrite the others' bundle).
    Two replicas racing to create the Secret both end up with the winner's CA.
    """
    from urllib.parse import quote

    coll = f"/api/v1/namespaces/{quote(namespace, safe='')}/secrets"
    path = f"{coll}/{quote(name, safe='')}"
    for _ in range(3):
        try:
            secret = await client.get(path)
        except Exception as exc:
            if _status(exc) != 404:
                raise
        else:
            data = secret.get("data") or {}
            try:
                return base64.b64decode(data[CA_CERT_KEY]), base64.b64decode(data[CA_KEY_KEY])
            except (KeyError, ValueError) as exc:
                raise ValueError(
                    f"secret {namespace}/{name} has no valid {CA_CERT_KEY}/{CA_KEY_KEY}"
                ) from exc
        ca_pem, ca_key_pem = generate_ca()
        body = {
            "apiVersion": "v1",
            "kind": "Secret",
            "metadata": {"name": name, "namespace": namespace, "labels": {"app.kubernetes.io/name": "hami"}},
            "type": "Opaque",
            "data": {
                CA_CERT_KEY: base64.b64encode(ca_pem).decode("ascii"),
                CA_KEY_KEY: base64.b64encode(ca_key_pem).decode("ascii"),
            },
        }
        try:
            await client.create(coll, body)
        except Exception as exc:
            if _status(exc) == 409:
                continue  # another replica won: read its CA
            raise
        log.info("webhook: created CA secret %s/%s", namespace, name)
        return ca_pem, ca_key_pem
    raise RuntimeError(f"could not read or create secret {namespace}/{name}")


class JsonPatchClient(Protocol):
    """The two calls :func:`inject_ca_bundle` needs; :class:`hami.kube.client.KubeClient` has both."""

    async def get(self, path: str) -> dict[str, Any]: ...

    async def json_patch(self, path: str, ops: list[dict[str, Any]]) -> dict[str, Any]: ...


MWC_PATH = "/apis/admissionregistration.k8s.io/v1/mutatingwebhookconfigurations/"


async def inject_ca_bundle(
    client: JsonPatchClient,
    config_name: str,
    ca_bundle: str,
    *,
    webhook_names: Sequence[str] | None = None,
) -> int:
    """Set ``clientConfig.caBundle`` of the webhooks (all, or those named) of a
    MutatingWebhookConfiguration; returns how many were patched.

    Each operation is guarded by a ``test`` of the webhook's name at that index, so a concurrent
    edit that reorders the list makes the patch fail (the API server answers 422) instead of
    writing the CA into the wrong webhook.
    """
    path = MWC_PATH + config_name
    current = await client.get(path)
    webhooks = current.get("webhooks") or []
    ops: list[dict[str, Any]] = []
    for i, wh in enumerate(webhooks):
        name = wh.get("name")
        if webhook_names is not None and name not in webhook_names:
            continue
        if (wh.get("clientConfig") or {}).get("caBundle") == ca_bundle:
            continue
        ops.append({"op": "test", "path": f"/webhooks/{i}/name", "value": name})
        ops.append({"op": "add", "path": f"/webhooks/{i}/clientConfig/caBundle", "value": ca_bundle})
    if ops:
        await client.json_patch(path, ops)
    return len(ops) // 2


async def inject_with_retry(
    inject: Callable[[], Awaitable[int]],
    *,
    attempts: int | None = 10,
    delay_s: float = 1.0,
    max_delay_s: float = 30.0,
) -> int:
    """Retry :func:`inject_ca_bundle` (the configuration may not exist yet at start-up);
    ``attempts=None`` retries forever. Raises the last error when attempts run out."""
    attempt = 0
    while True:
        try:
            return await inject()
        except Exception as exc:
            attempt += 1
            if attempts is not None and attempt >= attempts:
                raise
            log.warning(
                "webhook: caBundle injection attempt %d%s failed: %s",
                attempt,
                f"/{attempts}" if attempts is not None else "",
                exc,
            )
            await asyncio.sleep(min(delay_s * 2 ** (attempt - 1), max_delay_s))
