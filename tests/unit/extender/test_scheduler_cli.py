"""``hami scheduler`` flags reach ExtenderSettings (the command is parsed for real; the extender is faked)."""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner

from hami.extender.cli import scheduler_command
from hami.extender.runner import ExtenderSettings


def run(*args: str) -> Any:
    return CliRunner().invoke(scheduler_command, list(args), catch_exceptions=False)


def test_defaults(extender_settings: list[ExtenderSettings], monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("POD_NAMESPACE", raising=False)
    result = run()
    assert result.exit_code == 0, result.output
    (s,) = extender_settings
    assert (s.host, s.port) == ("127.0.0.1", 8080)
    assert (s.metrics_host, s.metrics_port) == ("0.0.0.0", 9395)  # HAMi's metrics port, its own
    assert s.annotate_at_filter is True
    assert not s.leader_elect and not s.follow_scheduler_lease
    assert (s.lease_namespace, s.lease_name) == ("kube-system", "hami-scheduler-extender")
    assert s.bind_lock_wait == 20.0 and s.node_lock_expiry is None


def test_flags_reach_the_settings(extender_settings: list[ExtenderSettings]) -> None:
    result = run(
        "--bind",
        "0.0.0.0:443",
        "--annotate-at-bind",
        "--follow-scheduler-lease",
        "--node-lock-timeout",
        "30",
        "--bind-lock-wait",
        "5",
        "--gpu-scheduler-policy",
        "binpack",
    )
    assert result.exit_code == 0, result.output
    (s,) = extender_settings
    assert (s.host, s.port) == ("0.0.0.0", 443)
    assert s.annotate_at_filter is False
    assert s.follow_scheduler_lease and not s.leader_elect
    assert s.lease_name == "hami-scheduler"  # kube-scheduler's Lease in deploy/scheduler-config.yaml
    assert s.node_lock_expiry == 30.0 and s.bind_lock_wait == 5.0 and s.gpu_policy == "binpack"


def test_leader_elect_with_its_own_lease(extender_settings: list[ExtenderSettings]) -> None:
    result = run("--leader-elect", "--lease-namespace", "hami", "--lease-name", "ext")
    assert result.exit_code == 0, result.output
    (s,) = extender_settings
    assert s.leader_elect and (s.lease_namespace, s.lease_name) == ("hami", "ext")


def test_the_two_lease_modes_are_exclusive(extender_settings: list[ExtenderSettings]) -> None:
    result = CliRunner().invoke(scheduler_command, ["--leader-elect", "--follow-scheduler-lease"])
    assert result.exit_code == 2 and "exclusive" in result.output
    assert not extender_settings


def test_metrics_bind_is_its_own_address_or_off(extender_settings: list[ExtenderSettings]) -> None:
    assert run("--metrics-bind", "127.0.0.1:9000").exit_code == 0
    assert run("--metrics-bind", "").exit_code == 0
    assert [(s.metrics_host, s.metrics_port) for s in extender_settings] == [
        ("127.0.0.1", 9000),
        (None, None),
    ]


@pytest.mark.parametrize(("flag", "value"), [("--bind", "8080"), ("--metrics-bind", "host:http")])
def test_a_bad_address_is_a_usage_error_naming_the_flag(
    extender_settings: list[ExtenderSettings], flag: str, value: str
) -> None:
    result = CliRunner().invoke(scheduler_command, [flag, value])
    assert result.exit_code == 2
    assert f"Invalid value for {flag}" in result.output and "is not host:port" in result.output
    assert not extender_settings


def test_lease_namespace_follows_the_pod(
    extender_settings: list[ExtenderSettings], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("POD_NAMESPACE", "hami-system")
    assert run("--leader-elect").exit_code == 0
    assert extender_settings[0].lease_namespace == "hami-system"


def test_no_kubeconfig_is_a_clean_error(monkeypatch: pytest.MonkeyPatch, tmp_path: Any) -> None:
    """No traceback: one line saying what is missing, exit 1 (the real load_config runs)."""
    for var in ("KUBECONFIG", "KUBERNETES_SERVICE_HOST", "KUBERNETES_SERVICE_PORT"):
        monkeypatch.delenv(var, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    result = CliRunner().invoke(scheduler_command, [])
    assert result.exit_code == 1
    assert result.output.startswith("Error: cannot reach the Kubernetes API:")
    assert "kubeconfig" in result.output and "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
