"""Connection settings for the Kubernetes API: kubeconfig files and in-cluster service accounts.

``load_config()`` follows client-go's order of precedence: an explicit kubeconfig path, then
``$KUBECONFIG`` (a ``:``-separated list, merged first-wins like kubectl), then the in-cluster
service account (``KUBERNETES_SERVICE_HOST``/``KUBERNETES_SERVICE_PORT`` + the mounted token and
``ca.crt``), then ``~/.kube/config``.

The result is an immutable :class:`KubeConfig`. Credentials that live in files (the bound
service-account token, which the kubelet rotates) are re-read through a :class:`TokenSource`, so a
long-running client keeps working after rotation. :meth:`KubeConfig.ssl_context` builds the
``ssl.SSLContext`` (server CA, client certificate) used by :class:`hami.kube.client.KubeClient`.

Credentials: client certificates, bearer tokens, token files, and ``exec`` credential plugins
(:mod:`hami.kube.execauth`, client-go's protocol: EKS, GKE, OIDC helpers). The legacy
``auth-provider`` plugins and basic auth raise :class:`KubeConfigError` with a clear message.
"""

from __future__ import annotations

import base64
import os
import ssl
import tempfile
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from hami.kube.execauth import ExecCredentialError, ExecCredentialSource, ExecSpec, cluster_info

__all__ = [
    "SERVICE_ACCOUNT_DIR",
    "KubeConfig",
    "KubeConfigError",
    "TokenSource",
    "load_config",
    "load_incluster_config",
    "load_kubeconfig",
]

SERVICE_ACCOUNT_DIR = "/var/run/secrets/kubernetes.io/serviceaccount"
DEFAULT_TOKEN_REFRESH_S = 60.0


class KubeConfigError(Exception):
    """A kubeconfig or in-cluster configuration is missing, malformed or unsupported."""


class TokenSource:
    """A bearer token read from a file and re-read at most every ``refresh_s`` seconds.

    Bound service-account tokens are rotated by the kubelet (by default hourly), so the file
    must be re-read while the process runs. A failed re-read keeps the last good token.
    """

    def __init__(self, path: str, refresh_s: float = DEFAULT_TOKEN_REFRESH_S) -> None:
        self.path = path
        self.refresh_s = refresh_s
        self._token: str | None = None
        self._read_at = -float("inf")
        self._lock = threading.Lock()

    def token(self) -> str:
        """Return the current token, re-reading the file when the cached copy is stale."""
        now = time.monotonic()
        with self._lock:
            if self._token is None or now - self._read_at >= self.refresh_s:
                try:
                    self._token = Path(self.path).read_text().strip()
                    self._read_at = now
                except OSError as exc:
                    if self._token is None:
                        raise KubeConfigError(f"cannot read token file {self.path}: {exc}") from exc
            return self._token

    def __repr__(self) -> str:
        return f"TokenSource({self.path!r})"


@dataclass(frozen=True)
class KubeConfig:
    """Everything needed to talk to one API server.

    ``*_data`` fields hold PEM bytes (already base64-decoded when they came from a kubeconfig);
    file paths given in a kubeconfig are read eagerly, except token files, which are re-read.
    """

    server: str
    ca_data: bytes | None = None
    client_cert_data: bytes | None = None
    client_key_data: bytes | None = None
    token: str | None = field(default=None, repr=False)
    token_file: str | None = None
    insecure_skip_tls_verify: bool = False
    tls_server_name: str | None = None
    namespace: str = "default"
    source: str = ""
    _token_source: TokenSource | None = field(default=None, repr=False, compare=False)
    #: credentials from a kubeconfig ``exec`` plugin (token and/or client certificate)
    exec_source: ExecCredentialSource | None = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.token_file and self._token_source is None:
            object.__setattr__(self, "_token_source", TokenSource(self.token_file))
        if bool(self.client_cert_data) != bool(self.client_key_data):
            raise KubeConfigError(
                f"{self.source or 'config'}: client certificate and key must be set together"
            )

    def bearer_token(self) -> str | None:
        """The token to send as ``Authorization: Bearer``: a token file, else an exec plugin's token
        (running the plugin when none is cached; async callers use the source directly), else the
        static token."""
        if self._token_source is not None:
            return self._token_source.token()
        if self.exec_source is not None:
            try:
                return self.exec_source.credential().token or self.token
            except ExecCredentialError as exc:
                raise KubeConfigError(str(exc)) from exc
        return self.token

    def ssl_context(self, client_cert: tuple[bytes, bytes] | None = None) -> ssl.SSLContext | None:
        """A client ``SSLContext`` for ``https`` servers (``None`` for plain ``http``).

        ``client_cert`` (PEM certificate, key) replaces the configured one: an exec plugin's."""
        if not self.server.startswith("https"):
            return None
        ctx = ssl.create_default_context(ssl.Purpose.SERVER_AUTH)
        if self.insecure_skip_tls_verify:
            ctx.check_hostname = False
            ctx.verify_mode = ssl.CERT_NONE
        elif self.ca_data:
            ctx.load_verify_locations(cadata=self.ca_data.decode())
        if client_cert is not None:
            _load_cert_chain_from_memory(ctx, *client_cert)
        elif self.client_cert_data and self.client_key_data:
            _load_cert_chain_from_memory(ctx, self.client_cert_data, self.client_key_data)
        return ctx


def _load_cert_chain_from_memory(ctx: ssl.SSLContext, cert: bytes, key: bytes) -> None:
    # ssl can only load a chain from files; use a private temp dir and delete it at once.
    with tempfile.TemporaryDirectory(prefix="hami-kube-") as tmp:
        cert_path = os.path.join(tmp, "client.crt")
        key_path = os.path.join(tmp, "client.key")
        for path, data in ((cert_path, cert), (key_path, key)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as fh:
                fh.write(data)
        try:
            ctx.load_cert_chain(cert_path, key_path)
        except ssl.SSLError as exc:
            raise KubeConfigError(f"invalid client certificate or key: {exc}") from exc


# --------------------------------------------------------------------------------------- kubeconfig


def _named(items: Any, what: str, source: str) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    if items is None:
        return out
    if not isinstance(items, list):
        raise KubeConfigError(f"{source}: '{what}' must be a list")
    for entry in items:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            raise KubeConfigError(f"{source}: every entry of '{what}' needs a 'name'")
        body = entry.get(what[:-1]) or {}
        if not isinstance(body, dict):
            raise KubeConfigError(f"{source}: {what}[{entry['name']}] must be a mapping")
        out.setdefault(entry["name"], {**body, "__dir__": entry.get("__dir__", "")})
    return out


def _read_kubeconfig_files(paths: list[str]) -> tuple[dict[str, Any], str]:
    """Merge several kubeconfig files first-wins (kubectl semantics). Returns (merged, description)."""
    merged: dict[str, Any] = {"clusters": [], "users": [], "contexts": [], "current-context": ""}
    used: list[str] = []
    for p in paths:
        path = Path(p).expanduser()
        if not path.is_file():
            continue
        try:
            doc = yaml.safe_load(path.read_text()) or {}
        except (OSError, yaml.YAMLError) as exc:
            raise KubeConfigError(f"{path}: cannot parse kubeconfig: {exc}") from exc
        if not isinstance(doc, dict):
            raise KubeConfigError(f"{path}: kubeconfig must be a mapping")
        used.append(str(path))
        for key in ("clusters", "users", "contexts"):
            entries = doc.get(key) or []
            if not isinstance(entries, list):
                raise KubeConfigError(f"{path}: '{key}' must be a list")
            for entry in entries:
                if isinstance(entry, dict):
                    merged[key].append({**entry, "__dir__": str(path.parent)})
        if not merged["current-context"] and doc.get("current-context"):
            merged["current-context"] = doc["current-context"]
    if not used:
        raise KubeConfigError(f"no kubeconfig found at {', '.join(paths) or '(none)'}")
    return merged, ", ".join(used)


def _data_or_file(
    section: Mapping[str, Any], data_key: str, file_key: str, source: str, base64_data: bool = True
) -> bytes | None:
    data = section.get(data_key)
    if data:
        if not base64_data:
            return str(data).encode()
        try:
            return base64.b64decode(str(data), validate=False)
        except ValueError as exc:
            raise KubeConfigError(f"{source}: '{data_key}' is not valid base64") from exc
    file = section.get(file_key)
    if file:
        path = Path(str(file)).expanduser()
        if not path.is_absolute():
            path = Path(section.get("__dir__", "")) / path
        try:
            return path.read_bytes()
        except OSError as exc:
            raise KubeConfigError(f"{source}: cannot read {file_key} {path}: {exc}") from exc
    return None


def load_kubeconfig(path: str | os.PathLike[str] | None = None, context: str | None = None) -> KubeConfig:
    """Load a kubeconfig file (``path``, else ``$KUBECONFIG``, else ``~/.kube/config``).

    ``context`` overrides ``current-context``.
    """
    if path is not None:
        paths = [os.fspath(path)]
    elif os.environ.get("KUBECONFIG"):
        paths = [p for p in os.environ["KUBECONFIG"].split(os.pathsep) if p]
    else:
        paths = [str(Path.home() / ".kube" / "config")]
    doc, source = _read_kubeconfig_files(paths)
    clusters = _named(doc["clusters"], "clusters", source)
    users = _named(doc["users"], "users", source)
    contexts = _named(doc["contexts"], "contexts", source)
    ctx_name = context or doc.get("current-context") or ""
    if not ctx_name:
        if len(contexts) == 1:
            ctx_name = next(iter(contexts))
        else:
            raise KubeConfigError(f"{source}: no current-context set and no context given")
    if ctx_name not in contexts:
        raise KubeConfigError(f"{source}: context {ctx_name!r} not found")
    ctx = contexts[ctx_name]
    cluster_name = ctx.get("cluster")
    if cluster_name not in clusters:
        raise KubeConfigError(f"{source}: context {ctx_name!r} names unknown cluster {cluster_name!r}")
    cluster = clusters[cluster_name]
    user_name = ctx.get("user")
    user: dict[str, Any] = {}
    if user_name:
        if user_name not in users:
            raise KubeConfigError(f"{source}: context {ctx_name!r} names unknown user {user_name!r}")
        user = users[user_name]
    where = f"{source} (context {ctx_name})"
    server = cluster.get("server")
    if not isinstance(server, str) or not server:
        raise KubeConfigError(f"{where}: cluster {cluster_name!r} has no server")
    if user.get("auth-provider"):
        raise KubeConfigError(
            f"{where}: user {user_name!r} uses a legacy auth-provider plugin, which hami does not support; "
            "use an exec credential plugin, a client certificate or a token"
        )
    ca_data = _data_or_file(cluster, "certificate-authority-data", "certificate-authority", where)
    exec_source = None
    if user.get("exec") is not None:
        try:
            spec = ExecSpec.parse(
                user["exec"],
                where=f"{where}, user {user_name!r}",
                kubeconfig_dir=str(user.get("__dir__", "")),
                cluster=cluster_info(cluster, ca_data),
            )
        except ExecCredentialError as exc:
            raise KubeConfigError(str(exc)) from exc
        exec_source = ExecCredentialSource(spec)
    token = user.get("token")
    token_file = user.get("tokenFile")
    if token_file:
        tf = Path(str(token_file)).expanduser()
        if not tf.is_absolute():
            tf = Path(user.get("__dir__", "")) / tf
        token_file = str(tf)
    if user.get("username") or user.get("password"):
        raise KubeConfigError(f"{where}: basic auth (username/password) is not supported")
    return KubeConfig(
        server=server.rstrip("/"),
        ca_data=ca_data,
        client_cert_data=_data_or_file(user, "client-certificate-data", "client-certificate", where),
        client_key_data=_data_or_file(user, "client-key-data", "client-key", where),
        token=str(token) if token else None,
        token_file=token_file or None,
        insecure_skip_tls_verify=bool(cluster.get("insecure-skip-tls-verify", False)),
        tls_server_name=cluster.get("tls-server-name") or None,
        namespace=str(ctx.get("namespace") or "default"),
        source=where,
        exec_source=exec_source,
    )


def load_incluster_config(
    sa_dir: str | os.PathLike[str] = SERVICE_ACCOUNT_DIR, environ: Mapping[str, str] | None = None
) -> KubeConfig:
    """The in-cluster configuration: service host/port from the environment, token and CA from ``sa_dir``."""
    env = os.environ if environ is None else environ
    host = env.get("KUBERNETES_SERVICE_HOST")
    port = env.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        raise KubeConfigError("not running in a cluster: KUBERNETES_SERVICE_HOST/PORT are not set")
    sa = Path(sa_dir)
    token_path = sa / "token"
    if not token_path.is_file():
        raise KubeConfigError(f"in-cluster config: service-account token {token_path} not found")
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"  # IPv6 literal
    ca_path = sa / "ca.crt"
    ca = ca_path.read_bytes() if ca_path.is_file() else None
    ns_path = sa / "namespace"
    namespace = ns_path.read_text().strip() if ns_path.is_file() else "default"
    return KubeConfig(
        server=f"https://{host}:{port}",
        ca_data=ca,
        token_file=str(token_path),
        namespace=namespace or "default",
        source="in-cluster",
    )


def load_config(path: str | os.PathLike[str] | None = None, context: str | None = None) -> KubeConfig:
    """Explicit path > ``$KUBECONFIG`` > in-cluster service account > ``~/.kube/config``."""
    if path is not None or os.environ.get("KUBECONFIG"):
        return load_kubeconfig(path, context)
    if os.environ.get("KUBERNETES_SERVICE_HOST") and Path(SERVICE_ACCOUNT_DIR, "token").is_file():
        return load_incluster_config()
    return load_kubeconfig(None, context)
