"""Throw-away PKI for test control planes and test servers (``cryptography``, EC P-256 keys).

>>> ca = CertificateAuthority.create("test-ca")
>>> server = ca.issue("kube-apiserver", ips=["127.0.0.1"], dns=["localhost"])
>>> admin = ca.issue("admin", organizations=["system:masters"], client=True)
>>> server.cert_pem.startswith(b"-----BEGIN CERTIFICATE-----")
True
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from hami.webhook.tls import build_ca, build_leaf, key_pem

__all__ = ["CertificateAuthority", "KeyPair", "rsa_key_pair"]

_VALIDITY = dt.timedelta(days=2)


@dataclass(frozen=True)
class KeyPair:
    """A PEM certificate and its PEM private key."""

    cert_pem: bytes
    key_pem: bytes

    def write(self, directory: Path, stem: str) -> tuple[Path, Path]:
        """Write ``<stem>.crt`` and ``<stem>.key`` (mode 0600) into ``directory``."""
        crt, key = directory / f"{stem}.crt", directory / f"{stem}.key"
        crt.write_bytes(self.cert_pem)
        key.write_bytes(self.key_pem)
        key.chmod(0o600)
        return crt, key


def _window() -> tuple[dt.datetime, dt.datetime]:
    now = dt.datetime.now(dt.UTC)
    return now - dt.timedelta(hours=1), now + _VALIDITY


class CertificateAuthority:
    """A self-signed CA that issues server and client certificates (built by the webhook's
    :func:`hami.webhook.tls.build_ca` / :func:`~hami.webhook.tls.build_leaf`)."""

    def __init__(self, key: ec.EllipticCurvePrivateKey, cert: x509.Certificate) -> None:
        self._key = key
        self.cert = cert

    @classmethod
    def create(cls, common_name: str = "hami-test-ca") -> CertificateAuthority:
        start, end = _window()
        cert, key = build_ca(common_name, start=start, end=end, path_length=None)
        return cls(key, cert)

    @property
    def cert_pem(self) -> bytes:
        return self.cert.public_bytes(serialization.Encoding.PEM)

    @property
    def key_pem(self) -> bytes:
        return key_pem(self._key)

    def issue(
        self,
        common_name: str,
        *,
        organizations: list[str] | None = None,
        dns: list[str] | None = None,
        ips: list[str] | None = None,
        client: bool = False,
        server: bool | None = None,
    ) -> KeyPair:
        """Issue a leaf certificate. ``client=True`` adds clientAuth; server usage is on when any
        SAN is given (or ``server=True``). For Kubernetes client certs the CN is the user name and
        the organizations are the groups (``system:masters`` = cluster admin)."""
        hosts = [*(ips or []), *(dns or [])]
        start, end = _window()
        cert, key = build_leaf(
            self.cert,
            self._key,
            common_name,
            start=start,
            end=end,
            hosts=hosts,
            organizations=organizations or [],
            server=bool(hosts) if server is None else server,
            client=client,
        )
        return KeyPair(cert.public_bytes(serialization.Encoding.PEM), key_pem(key))


def rsa_key_pair() -> tuple[bytes, bytes]:
    """An RSA-2048 key pair as (private PEM, public PEM), e.g. for service-account token signing."""
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pub = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return key_pem(key), pub
