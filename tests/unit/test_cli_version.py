"""``hami version`` and ``hami --version`` print the installed package's version (pyproject.toml's)."""

from __future__ import annotations

import tomllib
from pathlib import Path

from click.testing import CliRunner

from hami.cli import main

PYPROJECT = Path(__file__).resolve().parents[2] / "pyproject.toml"


def test_version_command_and_flag_print_the_project_version() -> None:
    expected = tomllib.loads(PYPROJECT.read_text())["project"]["version"]
    for args in (["version"], ["--version"]):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 0, result.output
        assert result.output.strip().endswith(expected), result.output
        assert result.output.startswith("hami")
