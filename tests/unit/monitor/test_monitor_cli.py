"""`hami monitor`'s flags: HAMi's spelling of the metrics address, bind forms, env, bad values."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

import pytest
from click.testing import CliRunner

from hami.monitor import cli
from hami.monitor.runner import MonitorSettings


@pytest.fixture
def runs(monkeypatch: pytest.MonkeyPatch) -> list[tuple[MonitorSettings, str | None]]:
    got: list[tuple[MonitorSettings, str | None]] = []

    async def fake(settings: MonitorSettings, kubeconfig: str | None) -> None:
        got.append((settings, kubeconfig))

    monkeypatch.setattr(cli, "_run", fake)
    return got


@pytest.mark.parametrize(
    ("args", "host", "port"),
    [
        ([], "0.0.0.0", 9394),
        (["--metrics-bind=127.0.0.1:9000"], "127.0.0.1", 9000),
        (["--metrics-bind-address", ":9001"], "0.0.0.0", 9001),
        (["--metrics-bind=[::1]:9002"], "::1", 9002),
    ],
)
def test_metrics_address(runs: list[Any], args: list[str], host: str, port: int) -> None:
    r = CliRunner().invoke(cli.monitor, args, env={"NODE_NAME": "n1", "HOOK_PATH": "/h"})
    assert r.exit_code == 0, r.output
    settings, kubeconfig = runs[0]
    assert (settings.metrics_host, settings.metrics_port) == (host, port)
    assert (settings.node_name, settings.containers_dir, kubeconfig) == ("n1", "/h/vgpu/containers", None)


@pytest.mark.parametrize("bad", ["9394", "host:", "host:99999", "a:b"])
def test_a_bad_address_is_a_usage_error(runs: list[Any], bad: str) -> None:
    r = CliRunner().invoke(cli.monitor, [f"--metrics-bind={bad}"])
    assert r.exit_code == 2 and "--metrics-bind" in r.output and not runs


def test_flags_reach_the_settings(runs: list[Any]) -> None:
    args = [
        "--node-name=x",
        "--hook-path=/k/",
        "--kubeconfig=",
        "--gc-grace=5",
        "--gc-interval=1",
        "--no-nvml",
        "--legacy-metrics",
    ]
    r = CliRunner().invoke(cli.monitor, args)
    assert r.exit_code == 0, r.output
    s, kubeconfig = runs[0]
    assert s.legacy_metrics and s.feedback_interval == 0.5
    assert (s.node_name, s.containers_dir, s.gc_grace, s.gc_interval, s.nvml, kubeconfig) == (
        "x",
        "/k/vgpu/containers",
        5.0,
        1.0,
        False,
        "",
    )


def test_python_m_loads_the_monitor_alone() -> None:
    code = (
        "import runpy, sys; sys.argv = ['m', '--help']; runpy.run_module('hami.monitor', run_name='__main__')"
    )
    probe = code + "\n"
    out = subprocess.run(
        [sys.executable, "-c", f"import sys\ntry:\n    exec({probe!r})\nexcept SystemExit:\n    pass\n"
         "print(sorted(m for m in sys.modules if m.startswith(('pydantic', 'grpc', 'cryptography', 'pynvml'))))"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert "Usage: hami monitor" in out.stdout
    assert out.stdout.strip().endswith("[]"), out.stdout
