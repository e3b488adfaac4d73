"""The Grafana dashboard (charts/hami/dashboards/hami.json): well-formed, generated, and reading
only families hami exports; every PromQL expression parses (promtool, when built)."""

from __future__ import annotations

import importlib.util
import json
import re
import subprocess
from pathlib import Path
from typing import Any

from hami.testing.prereq import missing
from hami.testing.prometheus import (
    PrometheusMissingError,
    dashboard_queries,
    find_prometheus,
    metric_names,
    rules_yaml,
)

ROOT = Path(__file__).resolve().parents[3]
BOARD = ROOT / "charts" / "hami" / "dashboards" / "hami.json"
DOCS_COPY = ROOT / "docs" / "grafana-dashboard.json"
SOURCES = (
    ROOT / "src" / "hami" / "monitor" / "metrics.py",
    ROOT / "src" / "hami" / "extender" / "metrics.py",
)
#: HAMi v2.10's "HAMi vGPU metrics" dashboard, panel by panel
HAMI_PANELS = (
    "Physical GPUs", "Total GPU memory", "Allocated GPU memory", "GPU memory allocated %", "Shared containers",
    "Host GPU memory used", "Host GPU utilization", "GPU memory: allocated vs limit",
    "Node GPU memory allocated ratio", "GPU core allocated ratio", "GPU shared count per device",
    "vGPU memory: used vs limit", "Container device utilization", "vGPU memory used % of limit",
    "Top 10 containers by vGPU memory",
)  # fmt: skip
#: families no panel needs to show
NOT_ON_THE_BOARD = {"hami_build_info"}


def exported() -> set[str]:
    """Every ``hami_*`` family name written in the two metrics modules."""
    names: set[str] = set()
    for src in SOURCES:
        names |= set(re.findall(r'"(hami_[a-z0-9_]+)"', src.read_text()))
    return names


def board() -> dict[str, Any]:
    loaded: dict[str, Any] = json.loads(BOARD.read_text())
    return loaded


def panels() -> list[dict[str, Any]]:
    return [p for p in board()["panels"] if p["type"] != "row"]


def test_generated_and_copied_to_docs() -> None:
    spec = importlib.util.spec_from_file_location("gen_dashboard", ROOT / "hack" / "gen-dashboard.py")
    assert spec and spec.loader
    gen = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(gen)
    text = json.dumps(gen.dashboard(), indent=2) + "\n"
    assert BOARD.read_text() == text, "run python3 hack/gen-dashboard.py"
    assert DOCS_COPY.read_text() == text, "run python3 hack/gen-dashboard.py"


def test_every_panel_is_complete() -> None:
    ids = [p["id"] for p in board()["panels"]]
    assert len(ids) == len(set(ids))
    for p in panels():
        assert p["title"] and p["description"], p
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert {"h", "w", "x", "y"} <= set(p["gridPos"]) and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
        assert p["targets"], p["title"]
        refs = [t["refId"] for t in p["targets"]]
        assert len(refs) == len(set(refs)), p["title"]
        for t in p["targets"]:
            assert t["expr"].strip() and t["datasource"] == p["datasource"], p["title"]
    variables = {v["name"] for v in board()["templating"]["list"]}
    assert variables == {"datasource", "node", "namespace"}
    for q in dashboard_queries(BOARD):
        assert "$" not in q.expr, q  # every variable the panels use is substituted by checks


def test_every_hami_panel_is_there() -> None:
    titles = {p["title"] for p in panels()}
    assert set(HAMI_PANELS) <= titles, set(HAMI_PANELS) - titles


def test_queries_read_only_families_hami_exports() -> None:
    have = exported()
    used: set[str] = set()
    for q in dashboard_queries(BOARD):
        names = metric_names(q.expr)
        assert names, q
        assert names <= have, (q.panel, names - have)
        used |= names
    # and every family hami exports is on the board somewhere
    assert have - used - NOT_ON_THE_BOARD == set()


def test_metric_names_fold_histogram_series() -> None:
    assert metric_names("rate(hami_scheduler_filter_duration_seconds_bucket[5m])") == {
        "hami_scheduler_filter_duration_seconds"
    }
    assert metric_names("hami_scheduler_filter_results_total") == {"hami_scheduler_filter_results_total"}
    assert metric_names("hami_monitor_regions") == {"hami_monitor_regions"}


def test_every_query_is_valid_promql(tmp_path: Path) -> None:
    try:
        promtool = find_prometheus() / "promtool"
    except PrometheusMissingError as exc:
        missing(str(exc))
    rules = tmp_path / "dashboard.rules.yml"
    rules.write_text(rules_yaml(dashboard_queries(BOARD)))
    out = subprocess.run([promtool, "check", "rules", rules], capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stdout + out.stderr
    assert f"SUCCESS: {len(dashboard_queries(BOARD))} rules found" in out.stdout, out.stdout
