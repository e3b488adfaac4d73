"""The services' shared flags, and HAMi's spellings of them as hidden aliases.

HAMi's scheduler binary (extender_settings + webhook) takes ``--http_bind``, ``--cert_file``/``--key_file``,
``--metrics-bind-address``, ``--device-config-file``, ``--scheduler-name``,
``--node-scheduler-policy`` and ``--gpu-scheduler-policy`` (reference/hami-control-plane.md §5.3);
each command is parsed for real here and the settings it would run with are checked.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

import hami.extender.runner
import hami.kube.config
import hami.simulate
import hami.webhook.runner
from hami.cli import main
from hami.deviceplugin.cli import device_plugin
from hami.extender.runner import ExtenderSettings
from hami.webhook.runner import WebhookSettings

ROOT = Path(__file__).resolve().parents[2]
EXAMPLES = ROOT / "examples"
CERT = str(ROOT / "pyproject.toml")  # the flags only check that the files exist


@pytest.fixture
def device_config(tmp_path: Path) -> str:
    path = tmp_path / "device-config.yaml"
    path.write_text("nvidia:\n  deviceSplitCount: 4\nhami:\n  schedulerName: from-file\n")
    return str(path)


@pytest.fixture
def webhook(monkeypatch: pytest.MonkeyPatch) -> list[WebhookSettings]:
    seen: list[WebhookSettings] = []

    class FakeWebhook:
        def __init__(self, settings: WebhookSettings) -> None:
            seen.append(settings)

        async def run_forever(self) -> None:
            return None

    monkeypatch.setattr(hami.webhook.runner, "Webhook", FakeWebhook)
    return seen


def hami_cli(*args: str) -> Any:
    result = CliRunner().invoke(main, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def test_the_scheduler_takes_hamis_flag_spellings(
    extender_settings: list[ExtenderSettings], device_config: str
) -> None:
    hami_cli(
        "scheduler",
        "--http_bind=0.0.0.0:443",
        f"--cert_file={CERT}",
        f"--key_file={CERT}",
        "--metrics-bind-address=:9395",
        f"--device-config-file={device_config}",
        "--scheduler-name=hami-scheduler-2",
        "--node-scheduler-policy=spread",
        "--gpu-scheduler-policy=topology-aware",
    )
    (s,) = extender_settings
    assert (s.host, s.port) == ("0.0.0.0", 443)
    assert (s.metrics_host, s.metrics_port) == ("0.0.0.0", 9395)  # HAMi's ":9395": every interface
    assert s.cert_file == s.key_file == CERT
    assert s.device_config.nvidia.device_split_count == 4  # the file was read
    assert s.device_config.hami.scheduler_name == "hami-scheduler-2"  # the flag wins over the file
    assert (s.node_policy, s.gpu_policy) == ("spread", "topology-aware")


def test_the_scheduler_flags_and_their_aliases_mean_the_same(
    extender_settings: list[ExtenderSettings], device_config: str
) -> None:
    hami_cli(
        "scheduler", "--bind", "0.0.0.0:443", "--metrics-bind", ":9395", "--device-config", device_config
    )
    hami_cli(
        "scheduler",
        "--http_bind",
        "0.0.0.0:443",
        "--metrics-bind-address",
        ":9395",
        "--device-config-file",
        device_config,
    )
    ours, hamis = extender_settings
    assert dataclasses.replace(ours, identity="") == dataclasses.replace(hamis, identity="")
    assert ours.device_config.hami.scheduler_name == "from-file"  # without --scheduler-name


def test_the_webhook_takes_hamis_flag_spellings(webhook: list[WebhookSettings], device_config: str) -> None:
    hami_cli(
        "webhook",
        "--http_bind=0.0.0.0:443",
        f"--cert_file={CERT}",
        f"--key_file={CERT}",
        f"--device-config-file={device_config}",
        "--scheduler-name=hami-scheduler-2",
        "--log-level=debug",
    )
    (s,) = webhook
    assert (s.host, s.port) == ("0.0.0.0", 443)
    assert s.cert_file == s.key_file == CERT and s.hosts == []
    assert s.device_config.nvidia.device_split_count == 4
    assert s.policy().scheduler_name == "hami-scheduler-2"  # what the webhook writes on pods


def test_the_webhook_settings_from_our_flags(webhook: list[WebhookSettings]) -> None:
    hami_cli(
        "webhook",
        "--self-signed-hosts",
        "a.svc, 127.0.0.1",
        "--ca-secret",
        "hami/ca",
        "--no-namespace-labels",
        "--no-force-overwrite-default-scheduler",
    )
    (s,) = webhook
    assert (s.host, s.port) == ("0.0.0.0", 9443)
    assert s.hosts == ["a.svc", "127.0.0.1"] and s.ca_secret == ("hami", "ca")
    assert not s.namespace_lookup and not s.force_overwrite_default_scheduler
    assert s.device_config.hami.scheduler_name == "hami-scheduler"


def test_simulate_takes_the_scheduler_policy_names(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[dict[str, Any]] = []

    class Result:
        warnings: list[str] = []

        def as_json(self) -> dict[str, Any]:
            return {}

    def fake(*_args: Any, **kwargs: Any) -> Result:
        seen.append(kwargs)
        return Result()

    monkeypatch.setattr(hami.simulate, "simulate", fake)
    nodes, pods = str(EXAMPLES / "nodes.yaml"), str(EXAMPLES / "pods.yaml")
    common = ["simulate", "--nodes", nodes, "--pods", pods, "--output", "json"]
    hami_cli(*common, "--node-policy", "spread", "--gpu-policy", "binpack")
    hami_cli(*common, "--node-scheduler-policy", "spread", "--gpu-scheduler-policy", "binpack")
    hami_cli(*common, "--device-config", str(EXAMPLES / "device-config.yaml"))
    assert [(k["node_policy"], k["gpu_policy"]) for k in seen[:2]] == [("spread", "binpack")] * 2


@pytest.mark.parametrize("flag", ["--device-config", "--device-config-file"])
def test_the_device_plugin_takes_both_device_config_spellings(flag: str, device_config: str) -> None:
    ctx = device_plugin.make_context("device-plugin", [flag, device_config, "--log-level", "debug"])
    assert ctx.params["device_config_file"] == device_config


@pytest.mark.parametrize(
    ("command", "aliases"),
    [
        ("scheduler", ["--http_bind", "--metrics-bind-address", "--device-config-file", "--cert_file"]),
        ("webhook", ["--http_bind", "--device-config-file", "--key_file"]),
        ("device-plugin", ["--device-config-file"]),
        ("simulate", ["--node-scheduler-policy", "--gpu-scheduler-policy"]),
    ],
)
def test_aliases_are_hidden_from_help(command: str, aliases: list[str]) -> None:
    out = hami_cli(command, "--help").output
    for alias in aliases:
        assert alias not in out


def test_a_bad_value_under_an_alias_names_the_flag_help_shows(
    extender_settings: list[ExtenderSettings],
) -> None:
    result = CliRunner().invoke(main, ["scheduler", "--http_bind", "8080"])
    assert result.exit_code == 2 and "Invalid value for --bind" in result.output
    result = CliRunner().invoke(main, ["scheduler", "--node-scheduler-policy", "fifo"])
    assert result.exit_code == 2 and "'--node-scheduler-policy'" in result.output
    result = CliRunner().invoke(main, ["scheduler", "--scheduler-name", "Not_A_Name"])
    assert result.exit_code == 2 and "--scheduler-name" in result.output and "DNS subdomain" in result.output
    assert not extender_settings


def test_a_bad_device_config_keeps_each_commands_exit_status(tmp_path: Path) -> None:
    bad = tmp_path / "dc.yaml"
    bad.write_text("nvidia:\n  deviceSplitCount: -1\n")
    sim = CliRunner().invoke(main, ["simulate", "--nodes", "x", "--pods", "y", "--config", str(bad)])
    sched = CliRunner().invoke(main, ["scheduler", "--device-config-file", str(bad)])
    hook = CliRunner().invoke(main, ["webhook", "--self-signed-hosts", "a", "--device-config-file", str(bad)])
    assert (sim.exit_code, sched.exit_code, hook.exit_code) == (2, 2, 1)
    assert all("deviceSplitCount" in r.output for r in (sim, sched, hook))


def test_service_commands_import_without_the_umbrella_cli() -> None:
    """No import cycle: each service's cli module stands alone."""
    code = (
        "import sys, hami.extender.cli, hami.webhook.cli, hami.deviceplugin.cli; "
        "assert 'hami.cli' not in sys.modules, 'cycle'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


def test_the_installed_entry_point_parses_hamis_spellings() -> None:
    """Through a real process: an invalid --http_bind is refused before anything starts."""
    proc = subprocess.run(
        [sys.executable, "-c", "from hami.cli import main; main()", "scheduler", "--http_bind", "nohost"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2 and "Invalid value for --bind" in proc.stderr


def test_dra_mode_flags(
    extender_settings: list[ExtenderSettings], webhook: list[WebhookSettings], device_config: str
) -> None:
    hami_cli("scheduler", f"--device-config={device_config}")
    hami_cli("scheduler", f"--device-config={device_config}", "--dra")
    assert [s.dra for s in extender_settings] == [False, True]
    hami_cli("webhook", f"--cert-file={CERT}", f"--key-file={CERT}")
    hami_cli("webhook", f"--cert-file={CERT}", f"--key-file={CERT}", "--dra=all")
    off, all_pods = webhook
    assert off.policy().dra is None
    dra = all_pods.policy().dra
    assert dra is not None and dra.default_mode == "dra"
    result = CliRunner().invoke(main, ["webhook", f"--cert-file={CERT}", f"--key-file={CERT}", "--dra=some"])
    assert result.exit_code == 2 and "--dra" in result.output
