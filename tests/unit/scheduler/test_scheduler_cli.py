"""``hami scheduler`` flags reach ExtenderSettings (the command is parsed for real; the extender is faked)."""

from __future__ import annotations

from typing import Any

import pytest
from click.testing import CliRunner

import hami.kube.config
import hami.scheduler.runner
from hami.scheduler.cli import scheduler_command
from hami.scheduler.runner import ExtenderSettings


@pytest.fixture
def captured(monkeypatch: pytest.MonkeyPatch) -> list[ExtenderSettings]:
    seen: list[ExtenderSettings] = []

    class FakeExtender:
        def __init__(self, _config: Any, settings: ExtenderSettings) -> None:
            seen.append(settings)

        async def run_forever(self) -> None:
            return None

    monkeypatch.setattr(hami.scheduler.runner, "Extender", FakeExtender)
    monkeypatch.setattr(hami.kube.config, "load_config", lambda _path=None: object())
    return seen


def run(*args: str) -> Any:
    return CliRunner().invoke(scheduler_command, list(args), catch_exceptions=False)


def test_defaults(captured: list[ExtenderSettings]) -> None:
    result = run()
    assert result.exit_code == 0, result.output
    (s,) = captured
    assert (s.host, s.port) == ("127.0.0.1", 8080)
    assert s.annotate_at_filter is True
    assert not s.leader_elect and not s.follow_scheduler_lease
    assert (s.lease_namespace, s.lease_name) == ("kube-system", "hami-scheduler-extender")
    assert s.bind_lock_wait == 20.0 and s.node_lock_expiry is None


def test_flags_reach_the_settings(captured: list[ExtenderSettings]) -> None:
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
    (s,) = captured
    assert (s.host, s.port) == ("0.0.0.0", 443)
    assert s.annotate_at_filter is False
    assert s.follow_scheduler_lease and not s.leader_elect
    assert s.lease_name == "hami-scheduler"  # kube-scheduler's Lease in deploy/scheduler-config.yaml
    assert s.node_lock_expiry == 30.0 and s.bind_lock_wait == 5.0 and s.gpu_policy == "binpack"


def test_leader_elect_with_its_own_lease(captured: list[ExtenderSettings]) -> None:
    result = run("--leader-elect", "--lease-namespace", "hami", "--lease-name", "ext")
    assert result.exit_code == 0, result.output
    (s,) = captured
    assert s.leader_elect and (s.lease_namespace, s.lease_name) == ("hami", "ext")


def test_the_two_lease_modes_are_exclusive(captured: list[ExtenderSettings]) -> None:
    result = CliRunner().invoke(scheduler_command, ["--leader-elect", "--follow-scheduler-lease"])
    assert result.exit_code == 2 and "exclusive" in result.output
    assert not captured
