"""What an exec credential plugin prints: accepted shapes, expiry arithmetic, and errors that name the problem."""

from __future__ import annotations

import json
from typing import Any

import pytest

from hami.kube.execauth import EXPIRY_MARGIN_S, ExecCredentialError, ExecSpec

API = "client.authentication.k8s.io/v1beta1"
SPEC = ExecSpec.parse(
    {"apiVersion": API, "command": "get-token"},
    where="kc (context x)",
    kubeconfig_dir="/etc/kube",
    cluster=None,
)


def out(**status: Any) -> bytes:
    return json.dumps({"apiVersion": API, "kind": "ExecCredential", "status": status}).encode()


def test_token_with_expiry_is_refreshed_a_margin_before_it() -> None:
    # wall clock 2026-01-01T00:00:00Z = 1767225600; expiry one hour later
    cred = SPEC.parse_output(out(token="t", expirationTimestamp="2026-01-01T01:00:00Z"), 1767225600.0, 100.0)
    assert cred.token == "t" and cred.client_cert_data is None
    assert cred.refresh_at == pytest.approx(100.0 + 3600 - EXPIRY_MARGIN_S)


def test_no_expiry_means_until_invalidated() -> None:
    assert SPEC.parse_output(out(token="t"), 0.0, 0.0).refresh_at is None


def test_relative_command_with_a_slash_is_resolved_next_to_the_kubeconfig() -> None:
    spec = ExecSpec.parse(
        {"apiVersion": API, "command": "./bin/t"}, where="w", kubeconfig_dir="/k", cluster=None
    )
    assert spec.command == "/k/bin/t"
    assert SPEC.command == "get-token"  # a bare name is looked up on PATH


@pytest.mark.parametrize(
    ("stdout", "message"),
    [
        (b"not json", "printed no JSON ExecCredential"),
        (json.dumps({"apiVersion": API, "kind": "Secret"}).encode(), "not kind ExecCredential"),
        (
            json.dumps({"apiVersion": "client.authentication.k8s.io/v1", "kind": "ExecCredential"}).encode(),
            "differs from the configured",
        ),
        (json.dumps({"apiVersion": API, "kind": "ExecCredential"}).encode(), "has no status"),
        (out(), "neither a token nor a client certificate"),
        (out(clientCertificateData="PEM"), "go together"),
        (out(token="t", expirationTimestamp="tomorrow"), "not RFC 3339"),
        (out(token="t", expirationTimestamp="2026-01-01T00:00:00"), "has no time zone"),
    ],
)
def test_bad_output_names_the_plugin_and_the_problem(stdout: bytes, message: str) -> None:
    with pytest.raises(ExecCredentialError, match=message) as info:
        SPEC.parse_output(stdout, 0.0, 0.0)
    assert "kc (context x): exec plugin 'get-token'" in str(info.value)
