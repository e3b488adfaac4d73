"""Chart tier: ``charts/hami`` rendered by a real helm (hack/build-helm.sh) and applied to the real
kube-apiserver of :mod:`hami.testing.fixtures`.

``helm`` fails the test when HAMI_REQUIRE_INTEGRATION=1 and no helm binary is found (skips it
otherwise). ``rendered(name)`` renders one of :data:`chart_values.VALUE_SETS` once per session.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Any

import pytest
from chart_values import CHART, VALUE_SETS, Rendered

from hami.testing.fixtures import *  # noqa: F403
from hami.testing.helm import Helm, HelmMissingError, find_helm


@pytest.fixture(scope="session")
def helm() -> Helm:
    try:
        return Helm(find_helm())
    except HelmMissingError as exc:
        if os.environ.get("HAMI_REQUIRE_INTEGRATION") == "1":
            pytest.fail(f"HAMI_REQUIRE_INTEGRATION=1 but {exc}", pytrace=False)
        pytest.skip(str(exc))


@pytest.fixture(scope="session")
def rendered(helm: Helm) -> Callable[[str], Rendered]:
    cache: dict[str, Rendered] = {}

    def render(name: str) -> Rendered:
        if name not in cache:
            vs = VALUE_SETS[name]
            objs: list[dict[str, Any]] = helm.render(
                CHART, release=vs.release, namespace=vs.namespace, values=vs.values
            )
            cache[name] = Rendered(vs, objs)
        return cache[name]

    return render
