"""Prometheus for the dashboard checks: the binaries, and the dashboard's queries ready to run.

The binaries (``prometheus``, ``promtool``) are in ``$HAMI_PROMETHEUS_BIN`` when set, else in
``~/.cache/hami/prometheus-<version>/`` where ``hack/build-prometheus.sh`` puts them.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass
from pathlib import Path

__all__ = [
    "PROMETHEUS_VERSION",
    "Query",
    "dashboard_queries",
    "find_prometheus",
    "metric_names",
    "rules_yaml",
]

PROMETHEUS_VERSION = "v0.316.0"  # hack/build-prometheus.sh's pin (Prometheus 3.16.0)
#: what the dashboard's template variables become for a check: every node, every namespace
VARIABLES = {"$node": ".*", "$namespace": ".*"}
_NAME = re.compile(r"\bhami_[a-z0-9_]+\b")
_SUFFIXES = ("_bucket", "_sum", "_count")


class PrometheusMissingError(RuntimeError):
    pass


def find_prometheus() -> Path:
    """The directory holding ``prometheus`` and ``promtool``; raises :class:`PrometheusMissingError`."""
    named = os.environ.get("HAMI_PROMETHEUS_BIN", "")
    if named:
        where = Path(named)
    else:
        cache = Path(os.environ.get("HAMI_CACHE_DIR", Path.home() / ".cache" / "hami"))
        where = cache / f"prometheus-{PROMETHEUS_VERSION}"
    for b in ("prometheus", "promtool"):
        if not os.access(where / b, os.X_OK):
            raise PrometheusMissingError(
                f"no {b} in {where} (run hack/build-prometheus.sh or set HAMI_PROMETHEUS_BIN)"
            )
    return where


@dataclass(frozen=True)
class Query:
    panel: str
    ref: str
    expr: str  # with the template variables substituted


def dashboard_queries(path: Path) -> list[Query]:
    """Every target of every panel of the dashboard at ``path``."""
    board = json.loads(path.read_text())
    out = []
    for p in board["panels"]:
        for t in p.get("targets") or ():
            expr = t["expr"]
            for var, value in VARIABLES.items():
                expr = expr.replace(var, value)
            out.append(Query(p["title"], t["refId"], expr))
    return out


def metric_names(expr: str) -> set[str]:
    """The hami families an expression reads (histogram series folded to their family)."""
    names = set()
    for n in _NAME.findall(expr):
        for s in _SUFFIXES:
            if n.endswith(s) and n.endswith("_seconds" + s):
                n = n[: -len(s)]
        names.add(n)
    return names


def rules_yaml(queries: list[Query]) -> str:
    """A rules file with one recording rule per query, for ``promtool check rules``."""
    lines = ["groups:", "  - name: hami-dashboard", "    rules:"]
    for i, q in enumerate(queries):
        lines.append(f"      - record: hami_dashboard:q{i}")
        lines.append(f"        expr: {json.dumps(q.expr)}")
    return "\n".join(lines) + "\n"
