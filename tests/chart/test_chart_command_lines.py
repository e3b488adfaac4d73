"""Every hami container the chart renders, in every value set, has a command line the real ``hami``
command parses (flags, choices, addresses; mounted files replaced by local ones). The chart keeps
using hami's own flag names; HAMi's spellings are aliases for manifests written for HAMi."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import click
import pytest
from chart_values import VALUE_SETS, Rendered

from hami.cli import main

#: commands the chart starts that this build does not have yet
NOT_YET: set[str] = set()
#: the node monitor runs as ``python3 -m hami.monitor`` (not through the ``hami`` command)
MONITOR_COMMAND = ["python3", "-m", "hami.monitor"]


def _local_files(args: list[str], tmp_path: Path) -> list[str]:
    """``--flag=/mounted/file`` -> a local file of the same name (some flags require it to exist)."""
    out = []
    for arg in args:
        flag, sep, value = arg.partition("=")
        if sep and value.startswith("/") and not Path(value).exists():
            local = tmp_path / Path(value).name
            local.write_text("")
            arg = f"{flag}={local}"
        out.append(arg)
    return out


@pytest.mark.parametrize("values", sorted(VALUE_SETS))
def test_every_hami_command_line_parses(
    rendered: Callable[[str], Rendered], values: str, tmp_path: Path
) -> None:
    r = rendered(values)
    parsed = []
    for kind in ("Deployment", "DaemonSet"):
        for obj in r.of_kind(kind):
            spec = obj["spec"]["template"]["spec"]
            for c in [*spec.get("initContainers", []), *spec["containers"]]:
                args = c.get("args") or []
                if c.get("command") == MONITOR_COMMAND:
                    args = ["monitor", *args]
                elif c.get("command") or not args or args[0] in NOT_YET:
                    continue  # not hami (kube-scheduler), or not built yet
                command = main.commands.get(args[0])
                assert command is not None, f"{obj['metadata']['name']}/{c['name']}: no `hami {args[0]}`"
                try:
                    command.make_context(args[0], _local_files(args[1:], tmp_path))
                except click.ClickException as exc:
                    pytest.fail(f"{obj['metadata']['name']}/{c['name']} {args}: {exc.format_message()}")
                parsed.append(args[0])
    assert {"scheduler", "webhook"} <= set(parsed) or values == "minimal", parsed
    assert ("monitor" in parsed) == (values != "minimal"), parsed
