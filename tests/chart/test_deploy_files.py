"""deploy/ holds plain-kubectl copies of what charts/hami renders for ``helm install hami
charts/hami -n hami-system``; they must not drift from the chart."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import yaml
from chart_values import Rendered

pytestmark = pytest.mark.integration

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"

Obj = dict[str, Any]


def _comparable(obj: Obj) -> Obj:
    """``obj`` without labels (helm adds its own) and with CEL expressions' whitespace collapsed."""

    def walk(x: Any, key: str = "") -> Any:
        if isinstance(x, dict):
            return {k: walk(v, k) for k, v in x.items() if k != "labels"}
        if isinstance(x, list):
            return [walk(v) for v in x]
        if key == "expression" and isinstance(x, str):
            return " ".join(x.split())
        return x

    out: Obj = walk(obj)
    return out


@pytest.mark.parametrize(
    ("path", "kinds"),
    [
        ("admission-policy.yaml", ["ValidatingAdmissionPolicy", "ValidatingAdmissionPolicyBinding"]),
        ("webhook.yaml", ["MutatingWebhookConfiguration"]),
    ],
)
def test_deploy_file_is_the_default_rendering(
    rendered: Callable[[str], Rendered], path: str, kinds: list[str]
) -> None:
    shipped = [d for d in yaml.safe_load_all((DEPLOY / path).read_text()) if d]
    chart = rendered("default")
    expected = [o for kind in kinds for o in chart.of_kind(kind)]
    assert [_comparable(d) for d in shipped] == [_comparable(o) for o in expected]
