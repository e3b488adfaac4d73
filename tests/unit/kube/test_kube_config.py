"""Unit tests for hami.kube.config (kubeconfig + in-cluster), paths, times and error mapping."""

from __future__ import annotations

import base64
import ssl
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from hami.kube import config as kcfg
from hami.kube.config import KubeConfig, KubeConfigError, load_config, load_incluster_config, load_kubeconfig
from hami.kube.errors import (
    AlreadyExistsError,
    ApiError,
    ConflictError,
    GoneError,
    NotFoundError,
    error_from_status,
)
from hami.kube.paths import api_path, object_key, object_path, split_key
from hami.kube.times import micro_time, parse_time, rfc3339
from hami.testing.pki import CertificateAuthority


@pytest.fixture(scope="module")
def pki() -> dict[str, bytes]:
    ca = CertificateAuthority.create("unit-ca")
    client = ca.issue("me", organizations=["system:masters"], client=True)
    return {"ca": ca.cert_pem, "cert": client.cert_pem, "key": client.key_pem}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def write_kubeconfig(path: Path, doc: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(doc))
    return path


def two_context_doc(pki: dict[str, bytes]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Config",
        "current-context": "one",
        "clusters": [
            {
                "name": "c1",
                "cluster": {"server": "https://10.0.0.1:6443/", "certificate-authority-data": b64(pki["ca"])},
            },
            {"name": "c2", "cluster": {"server": "https://c2.example:443", "insecure-skip-tls-verify": True}},
        ],
        "users": [
            {
                "name": "u1",
                "user": {"client-certificate-data": b64(pki["cert"]), "client-key-data": b64(pki["key"])},
            },
            {"name": "u2", "user": {"token": "s3cr3t"}},
        ],
        "contexts": [
            {"name": "one", "context": {"cluster": "c1", "user": "u1", "namespace": "team-a"}},
            {"name": "two", "context": {"cluster": "c2", "user": "u2"}},
        ],
    }


def test_kubeconfig_current_context_with_inline_data(tmp_path: Path, pki: dict[str, bytes]) -> None:
    path = write_kubeconfig(tmp_path / "config", two_context_doc(pki))
    cfg = load_kubeconfig(path)
    assert cfg.server == "https://10.0.0.1:6443"  # trailing slash dropped
    assert cfg.ca_data == pki["ca"]
    assert cfg.client_cert_data == pki["cert"] and cfg.client_key_data == pki["key"]
    assert cfg.namespace == "team-a"
    assert cfg.bearer_token() is None
    assert "one" in cfg.source
    ctx = cfg.ssl_context()
    assert isinstance(ctx, ssl.SSLContext)
    assert ctx.verify_mode == ssl.CERT_REQUIRED and ctx.check_hostname
    assert "s3cr3t" not in repr(load_kubeconfig(path, context="two"))


def test_kubeconfig_explicit_context_token_insecure(tmp_path: Path, pki: dict[str, bytes]) -> None:
    path = write_kubeconfig(tmp_path / "config", two_context_doc(pki))
    cfg = load_kubeconfig(path, context="two")
    assert cfg.server == "https://c2.example:443"
    assert cfg.bearer_token() == "s3cr3t"
    assert cfg.insecure_skip_tls_verify and cfg.namespace == "default"
    ctx = cfg.ssl_context()
    assert ctx is not None and ctx.verify_mode == ssl.CERT_NONE and not ctx.check_hostname


def test_kubeconfig_file_references_relative_to_the_file(tmp_path: Path, pki: dict[str, bytes]) -> None:
    d = tmp_path / "kube"
    d.mkdir()
    (d / "ca.crt").write_bytes(pki["ca"])
    (d / "me.crt").write_bytes(pki["cert"])
    (d / "me.key").write_bytes(pki["key"])
    (d / "tok").write_text("tok-1\n")
    doc = {
        "current-context": "x",
        "clusters": [{"name": "c", "cluster": {"server": "https://h:1", "certificate-authority": "ca.crt"}}],
        "users": [
            {
                "name": "u",
                "user": {"client-certificate": "me.crt", "client-key": str(d / "me.key"), "tokenFile": "tok"},
            }
        ],
        "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
    }
    cfg = load_kubeconfig(write_kubeconfig(d / "config", doc))
    assert (
        cfg.ca_data == pki["ca"] and cfg.client_cert_data == pki["cert"] and cfg.client_key_data == pki["key"]
    )
    assert cfg.token_file == str(d / "tok")
    assert cfg.bearer_token() == "tok-1"
    assert cfg.ssl_context() is not None


def test_kubeconfig_env_list_merges_first_wins(
    tmp_path: Path, pki: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    first = write_kubeconfig(
        tmp_path / "a",
        {"clusters": [{"name": "c2", "cluster": {"server": "http://first:8080"}}], "current-context": "two"},
    )
    second = write_kubeconfig(tmp_path / "b", two_context_doc(pki))
    monkeypatch.setenv("KUBECONFIG", f"{first}:{tmp_path / 'missing'}:{second}")
    cfg = load_kubeconfig()
    assert cfg.server == "http://first:8080"  # c2 from the first file, context "two" from the first file
    assert cfg.bearer_token() == "s3cr3t"
    assert cfg.ssl_context() is None  # plain http


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: d.update({"current-context": "nope"}), "context 'nope' not found"),
        (lambda d: d["contexts"][0]["context"].update({"cluster": "zz"}), "unknown cluster"),
        (lambda d: d["contexts"][0]["context"].update({"user": "zz"}), "unknown user"),
        (lambda d: d["clusters"][0]["cluster"].pop("server"), "has no server"),
        (lambda d: d["users"][0]["user"].update({"auth-provider": {"name": "gcp"}}), "legacy auth-provider"),
        (lambda d: d["users"][0]["user"].update({"exec": {"command": "aws"}}), "exec.apiVersion None is not"),
        (
            lambda d: d["users"][0]["user"].update(
                {"exec": {"apiVersion": "client.authentication.k8s.io/v1"}}
            ),
            "exec.command is required",
        ),
        (
            lambda d: d["users"][0]["user"].update(
                {
                    "exec": {
                        "apiVersion": "client.authentication.k8s.io/v1",
                        "command": "x",
                        "env": [{"name": "A"}],
                    }
                }
            ),
            r"exec.env\[0\] needs a 'name' and a 'value'",
        ),
        (
            lambda d: d["users"][0]["user"].update(
                {
                    "exec": {
                        "apiVersion": "client.authentication.k8s.io/v1",
                        "command": "x",
                        "interactiveMode": "Always",
                    }
                }
            ),
            "runs without a terminal",
        ),
        (lambda d: d["users"][0]["user"].pop("client-key-data"), "certificate and key must be set together"),
        (lambda d: d["users"][0]["user"].update({"username": "x", "password": "y"}), "basic auth"),
        (lambda d: d.update({"clusters": {"not": "a list"}}), "must be a list"),
    ],
)
def test_kubeconfig_errors_name_the_problem(
    tmp_path: Path, pki: dict[str, bytes], mutate: Any, message: str
) -> None:
    doc = two_context_doc(pki)
    mutate(doc)
    path = write_kubeconfig(tmp_path / "config", doc)
    with pytest.raises(KubeConfigError, match=message):
        load_kubeconfig(path)


def test_kubeconfig_missing_and_unparsable(tmp_path: Path) -> None:
    with pytest.raises(KubeConfigError, match="no kubeconfig found"):
        load_kubeconfig(tmp_path / "none")
    bad = tmp_path / "bad"
    bad.write_text("clusters: [unclosed")
    with pytest.raises(KubeConfigError, match="cannot parse"):
        load_kubeconfig(bad)
    (tmp_path / "list").write_text("- 1\n")
    with pytest.raises(KubeConfigError, match="must be a mapping"):
        load_kubeconfig(tmp_path / "list")


def test_kubeconfig_single_context_without_current(tmp_path: Path) -> None:
    doc = {
        "clusters": [{"name": "c", "cluster": {"server": "https://h:6443"}}],
        "contexts": [{"name": "only", "context": {"cluster": "c"}}],
    }
    cfg = load_kubeconfig(write_kubeconfig(tmp_path / "c", doc))
    assert cfg.server == "https://h:6443" and cfg.bearer_token() is None


def make_sa_dir(tmp_path: Path, pki: dict[str, bytes]) -> Path:
    sa = tmp_path / "sa"
    sa.mkdir()
    (sa / "token").write_text("token-1")
    (sa / "ca.crt").write_bytes(pki["ca"])
    (sa / "namespace").write_text("hami-system\n")
    return sa


def test_incluster_config_and_token_rotation(tmp_path: Path, pki: dict[str, bytes]) -> None:
    sa = make_sa_dir(tmp_path, pki)
    env = {"KUBERNETES_SERVICE_HOST": "10.96.0.1", "KUBERNETES_SERVICE_PORT": "443"}
    cfg = load_incluster_config(sa, env)
    assert cfg.server == "https://10.96.0.1:443"
    assert cfg.ca_data == pki["ca"] and cfg.namespace == "hami-system" and cfg.source == "in-cluster"
    assert cfg.bearer_token() == "token-1"
    (sa / "token").write_text("token-2")
    assert cfg.bearer_token() == "token-1"  # cached for refresh_s
    assert cfg._token_source is not None
    cfg._token_source.refresh_s = 0
    assert cfg.bearer_token() == "token-2"  # rotated token is picked up
    (sa / "token").unlink()
    assert cfg.bearer_token() == "token-2"  # a failed re-read keeps the last good token

    (sa / "token").write_text("token-3")
    v6 = load_incluster_config(sa, {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"})
    assert v6.server == "https://[fd00::1]:443"


def test_incluster_errors(tmp_path: Path, pki: dict[str, bytes]) -> None:
    with pytest.raises(KubeConfigError, match="not running in a cluster"):
        load_incluster_config(tmp_path, {})
    with pytest.raises(KubeConfigError, match="token"):
        load_incluster_config(tmp_path, {"KUBERNETES_SERVICE_HOST": "h", "KUBERNETES_SERVICE_PORT": "1"})


def test_load_config_precedence(
    tmp_path: Path, pki: dict[str, bytes], monkeypatch: pytest.MonkeyPatch
) -> None:
    explicit = write_kubeconfig(tmp_path / "explicit", two_context_doc(pki))
    envfile = write_kubeconfig(
        tmp_path / "env",
        {
            "clusters": [{"name": "c", "cluster": {"server": "https://env:1"}}],
            "contexts": [{"name": "e", "context": {"cluster": "c"}}],
            "current-context": "e",
        },
    )
    home = tmp_path / "home"
    (home / ".kube").mkdir(parents=True)
    write_kubeconfig(
        home / ".kube" / "config",
        {
            "clusters": [{"name": "c", "cluster": {"server": "https://home:1"}}],
            "contexts": [{"name": "h", "context": {"cluster": "c"}}],
            "current-context": "h",
        },
    )
    sa = make_sa_dir(tmp_path, pki)
    monkeypatch.setattr(kcfg, "SERVICE_ACCOUNT_DIR", str(sa))
    monkeypatch.setattr(kcfg, "load_incluster_config", lambda: load_incluster_config(sa))
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.setenv("KUBECONFIG", str(envfile))
    monkeypatch.setenv("KUBERNETES_SERVICE_HOST", "10.0.0.1")
    monkeypatch.setenv("KUBERNETES_SERVICE_PORT", "443")

    assert load_config(explicit).server == "https://10.0.0.1:6443"
    assert load_config().server == "https://env:1"
    monkeypatch.delenv("KUBECONFIG")
    assert load_config().source == "in-cluster"
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST")
    assert load_config().server == "https://home:1"


def test_invalid_client_key_is_reported(pki: dict[str, bytes]) -> None:
    cfg = KubeConfig(server="https://h:1", client_cert_data=pki["cert"], client_key_data=b"garbage")
    with pytest.raises(KubeConfigError, match="invalid client certificate"):
        cfg.ssl_context()


def test_paths_and_keys() -> None:
    assert api_path("v1", "nodes") == "/api/v1/nodes"
    assert api_path("v1", "nodes", name="n1", subresource="status") == "/api/v1/nodes/n1/status"
    assert api_path("v1", "pods", namespace="d", name="p", subresource="binding") == (
        "/api/v1/namespaces/d/pods/p/binding"
    )
    assert api_path("coordination.k8s.io/v1", "leases", namespace="kube-system", name="x") == (
        "/apis/coordination.k8s.io/v1/namespaces/kube-system/leases/x"
    )
    with pytest.raises(ValueError):
        api_path("v1", "pods", subresource="status")
    pod = {"metadata": {"namespace": "ns", "name": "p"}}
    assert object_key(pod) == "ns/p" and object_key({"metadata": {"name": "n"}}) == "n"
    assert split_key("ns/p") == ("ns", "p") and split_key("n") == (None, "n")
    assert object_path("v1", "pods", pod, "status") == "/api/v1/namespaces/ns/pods/p/status"


def test_times() -> None:
    t = datetime(2026, 11, 22, 7, 40, 1, 123456, tzinfo=UTC)
    assert rfc3339(t) == "2026-11-22T07:40:01Z"
    assert micro_time(t) == "2026-11-22T07:40:01.123456Z"
    assert parse_time("2026-11-22T07:40:01.123456Z") == t
    assert parse_time("2026-11-22T07:40:01.123456789Z") == t  # nanoseconds truncated
    assert parse_time("2026-11-22T08:40:01.123456+01:00") == t
    assert parse_time("2026-11-22T07:40:01Z") == t.replace(microsecond=0)


def test_error_mapping() -> None:
    status = {"kind": "Status", "code": 409, "reason": "AlreadyExists", "message": 'pods "p" already exists'}
    err = error_from_status(409, status)
    assert isinstance(err, AlreadyExistsError) and isinstance(err, ConflictError)
    assert err.status == 409 and err.reason == "AlreadyExists" and "already exists" in str(err)
    assert type(error_from_status(409, {"reason": "Conflict"})) is ConflictError
    assert isinstance(error_from_status(404, None), NotFoundError)
    assert isinstance(
        error_from_status(200, {"code": 410, "reason": "Expired"}), GoneError
    )  # watch ERROR event
    plain = error_from_status(503, b"upstream down")
    assert type(plain) is ApiError and plain.message == "upstream down"
