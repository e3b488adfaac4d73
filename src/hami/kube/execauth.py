"""Credentials from a kubeconfig ``exec`` plugin (client-go's credential plugin protocol).

Managed clusters hand out short-lived credentials through a helper program named in the kubeconfig
(``aws eks get-token``, ``gke-gcloud-auth-plugin``, ``kubelogin``, …). This module runs it the way
client-go does:

* the command is looked up on ``PATH``, or, when it contains a ``/`` and is relative, next to the
  kubeconfig that names it; ``args`` and ``env`` (a list of ``name``/``value``) are passed on top
  of this process's environment;
* ``KUBERNETES_EXEC_INFO`` carries an ``ExecCredential`` of the plugin's ``apiVersion``
  (``client.authentication.k8s.io/v1`` or ``v1beta1``) with ``spec.interactive: false`` (hami never
  has a terminal) and, with ``provideClusterInfo: true``, ``spec.cluster`` (server, CA, TLS name,
  ``extensions[client.authentication.k8s.io/exec].config``);
* standard output must be an ``ExecCredential`` of the same ``apiVersion`` whose ``status`` holds a
  ``token`` or ``clientCertificateData`` + ``clientKeyData`` (PEM), optionally
  ``expirationTimestamp`` (RFC 3339).

Guarantees: the plugin runs at most once at a time per source; a credential is reused until
``EXPIRY_MARGIN_S`` before its expiry (forever without one) or until :meth:`invalidate` (the client
calls it on HTTP 401, as client-go does); a plugin that fails, times out or prints something else
raises :class:`ExecCredentialError` naming the kubeconfig, the command and the reason (with the
kubeconfig's ``installHint`` when the command is missing), and never leaves a half-updated cache.
A certificate from a plugin is read when the client's TLS context is built; rotating it needs a
new client, as with certificate files.
"""

from __future__ import annotations

import asyncio
import base64
import datetime as dt
import json
import os
import shutil
import subprocess
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

__all__ = ["EXPIRY_MARGIN_S", "ExecCredential", "ExecCredentialError", "ExecCredentialSource", "ExecSpec"]

API_VERSIONS = ("client.authentication.k8s.io/v1", "client.authentication.k8s.io/v1beta1")
EXPIRY_MARGIN_S = 30.0
DEFAULT_TIMEOUT_S = 60.0


class ExecCredentialError(Exception):
    """The exec plugin is misconfigured, failed, or answered something that is not a credential."""


@dataclass(frozen=True)
class ExecCredential:
    token: str | None
    client_cert_data: bytes | None
    client_key_data: bytes | None
    #: monotonic time after which the credential must be fetched again (None: until invalidated)
    refresh_at: float | None


@dataclass(frozen=True)
class ExecSpec:
    """The ``user.exec`` section of a kubeconfig, validated."""

    command: str
    args: tuple[str, ...]
    env: tuple[tuple[str, str], ...]
    api_version: str
    install_hint: str
    cluster_info: Mapping[str, Any] | None
    where: str

    @classmethod
    def parse(
        cls, section: Any, *, where: str, kubeconfig_dir: str, cluster: Mapping[str, Any] | None
    ) -> ExecSpec:
        if not isinstance(section, dict):
            raise ExecCredentialError(f"{where}: user.exec must be a mapping")
        command = section.get("command")
        if not isinstance(command, str) or not command:
            raise ExecCredentialError(f"{where}: user.exec.command is required")
        if "/" in command and not os.path.isabs(command) and kubeconfig_dir:
            command = os.path.normpath(os.path.join(kubeconfig_dir, command))
        args = section.get("args") or []
        if not isinstance(args, list) or not all(isinstance(a, str) for a in args):
            raise ExecCredentialError(f"{where}: user.exec.args must be a list of strings")
        env: list[tuple[str, str]] = []
        for i, e in enumerate(section.get("env") or []):
            if not isinstance(e, dict) or not isinstance(e.get("name"), str) or "value" not in e:
                raise ExecCredentialError(f"{where}: user.exec.env[{i}] needs a 'name' and a 'value'")
            env.append((e["name"], str(e["value"])))
        api_version = section.get("apiVersion")
        if api_version not in API_VERSIONS:
            raise ExecCredentialError(
                f"{where}: user.exec.apiVersion {api_version!r} is not one of {', '.join(API_VERSIONS)}"
            )
        if section.get("interactiveMode") == "Always":
            raise ExecCredentialError(
                f"{where}: user.exec.interactiveMode is Always, but hami runs without a terminal"
            )
        return cls(
            command=command,
            args=tuple(args),
            env=tuple(env),
            api_version=str(api_version),
            install_hint=str(section.get("installHint") or ""),
            cluster_info=cluster if section.get("provideClusterInfo") else None,
            where=where,
        )

    def exec_info(self) -> str:
        spec: dict[str, Any] = {"interactive": False}
        if self.cluster_info is not None:
            spec["cluster"] = dict(self.cluster_info)
        return json.dumps({"apiVersion": self.api_version, "kind": "ExecCredential", "spec": spec})

    def argv_env(self) -> tuple[list[str], dict[str, str]]:
        resolved = self.command if "/" in self.command else shutil.which(self.command)
        if resolved is None or not os.access(resolved, os.X_OK):
            hint = f"; {self.install_hint}" if self.install_hint else ""
            raise ExecCredentialError(
                f"{self.where}: exec plugin {self.command!r} not found or not executable{hint}"
            )
        env = {**os.environ, **dict(self.env), "KUBERNETES_EXEC_INFO": self.exec_info()}
        return [resolved, *self.args], env

    def parse_output(self, stdout: bytes, now_wall: float, now_mono: float) -> ExecCredential:
        what = f"{self.where}: exec plugin {self.command!r}"
        try:
            doc = json.loads(stdout)
        except ValueError as exc:
            raise ExecCredentialError(f"{what} printed no JSON ExecCredential: {exc}") from exc
        if not isinstance(doc, dict) or doc.get("kind") != "ExecCredential":
            raise ExecCredentialError(f"{what}: output is not kind ExecCredential")
        if doc.get("apiVersion") != self.api_version:
            raise ExecCredentialError(
                f"{what}: output apiVersion {doc.get('apiVersion')!r} differs from the configured "
                f"{self.api_version!r}"
            )
        status = doc.get("status")
        if not isinstance(status, dict):
            raise ExecCredentialError(f"{what}: output has no status")
        token = status.get("token") or None
        cert, key = status.get("clientCertificateData"), status.get("clientKeyData")
        if bool(cert) != bool(key):
            raise ExecCredentialError(f"{what}: clientCertificateData and clientKeyData go together")
        if not token and not cert:
            raise ExecCredentialError(f"{what}: status has neither a token nor a client certificate")
        refresh_at = None
        expiry = status.get("expirationTimestamp")
        if expiry:
            try:
                when = dt.datetime.fromisoformat(str(expiry).replace("Z", "+00:00"))
            except ValueError as exc:
                raise ExecCredentialError(f"{what}: expirationTimestamp {expiry!r} is not RFC 3339") from exc
            if when.tzinfo is None:
                raise ExecCredentialError(f"{what}: expirationTimestamp {expiry!r} has no time zone")
            refresh_at = now_mono + (when.timestamp() - now_wall) - EXPIRY_MARGIN_S
        return ExecCredential(
            token=str(token) if token else None,
            client_cert_data=str(cert).encode() if cert else None,
            client_key_data=str(key).encode() if key else None,
            refresh_at=refresh_at,
        )


class ExecCredentialSource:
    """Runs an :class:`ExecSpec` when no valid credential is cached (see the module docstring)."""

    def __init__(self, spec: ExecSpec, timeout_s: float = DEFAULT_TIMEOUT_S) -> None:
        self.spec = spec
        self.timeout_s = timeout_s
        self.runs = 0
        self._cached: ExecCredential | None = None
        self._lock = threading.Lock()
        self._alock: asyncio.Lock | None = None

    def _valid(self) -> ExecCredential | None:
        c = self._cached
        if c is not None and (c.refresh_at is None or time.monotonic() < c.refresh_at):
            return c
        return None

    def invalidate(self) -> None:
        """Forget the cached credential (the server refused it)."""
        self._cached = None

    def _failed(self, code: int | None, stderr: bytes) -> ExecCredentialError:
        reason = "timed out" if code is None else f"exited with status {code}"
        tail = stderr.decode(errors="replace").strip()[-500:]
        return ExecCredentialError(
            f"{self.spec.where}: exec plugin {self.spec.command!r} {reason}" + (f": {tail}" if tail else "")
        )

    def credential(self) -> ExecCredential:
        """The cached credential, or run the plugin now (blocking; for synchronous callers)."""
        with self._lock:
            if (c := self._valid()) is not None:
                return c
            argv, env = self.spec.argv_env()
            self.runs += 1
            try:
                out = subprocess.run(
                    argv, env=env, capture_output=True, timeout=self.timeout_s, stdin=subprocess.DEVNULL
                )
            except subprocess.TimeoutExpired as exc:
                raise self._failed(None, exc.stderr or b"") from exc
            except OSError as exc:
                raise ExecCredentialError(
                    f"{self.spec.where}: cannot run {self.spec.command!r}: {exc}"
                ) from exc
            if out.returncode != 0:
                raise self._failed(out.returncode, out.stderr)
            self._cached = self.spec.parse_output(out.stdout, time.time(), time.monotonic())
            return self._cached

    async def credential_async(self) -> ExecCredential:
        """The cached credential, or run the plugin without blocking the event loop."""
        if (c := self._valid()) is not None:
            return c
        if self._alock is None:
            self._alock = asyncio.Lock()
        async with self._alock:
            if (c := self._valid()) is not None:
                return c
            argv, env = self.spec.argv_env()
            self.runs += 1
            try:
                proc = await asyncio.create_subprocess_exec(
                    *argv,
                    env=env,
                    stdin=asyncio.subprocess.DEVNULL,
                    stdout=asyncio.subprocess.PIPE,
                    stderr=asyncio.subprocess.PIPE,
                )
            except OSError as exc:
                raise ExecCredentialError(
                    f"{self.spec.where}: cannot run {self.spec.command!r}: {exc}"
                ) from exc
            try:
                stdout, stderr = await asyncio.wait_for(proc.communicate(), self.timeout_s)
            except TimeoutError:
                proc.kill()
                await proc.wait()
                raise self._failed(None, b"") from None
            if proc.returncode != 0:
                raise self._failed(proc.returncode, stderr)
            self._cached = self.spec.parse_output(stdout, time.time(), time.monotonic())
            return self._cached


def cluster_info(cluster: Mapping[str, Any], ca_data: bytes | None) -> dict[str, Any]:
    """``spec.cluster`` of ``KUBERNETES_EXEC_INFO`` for ``provideClusterInfo: true``."""
    info: dict[str, Any] = {"server": cluster.get("server")}
    if ca_data:
        info["certificate-authority-data"] = base64.b64encode(ca_data).decode()
    if cluster.get("tls-server-name"):
        info["tls-server-name"] = cluster["tls-server-name"]
    if cluster.get("insecure-skip-tls-verify"):
        info["insecure-skip-tls-verify"] = True
    for ext in cluster.get("extensions") or []:
        if isinstance(ext, dict) and ext.get("name") == "client.authentication.k8s.io/exec":
            info["config"] = ext.get("extension")
    return info
