"""Fixtures shared by the unit tests."""

from __future__ import annotations

from typing import Any

import pytest

import hami.extender.runner
import hami.kube.config
from hami.extender.runner import ExtenderSettings


@pytest.fixture
def extender_settings(monkeypatch: pytest.MonkeyPatch) -> list[ExtenderSettings]:
    """The settings each ``hami scheduler`` run in the test would start the extender with (the
    extender itself is replaced by a stand-in that records them and returns)."""
    seen: list[ExtenderSettings] = []

    class FakeExtender:
        def __init__(self, _config: Any, settings: ExtenderSettings) -> None:
            seen.append(settings)

        async def run_forever(self) -> None:
            return None

    monkeypatch.setattr(hami.extender.runner, "Extender", FakeExtender)
    monkeypatch.setattr(hami.kube.config, "load_config", lambda _path=None: object())
    return seen
