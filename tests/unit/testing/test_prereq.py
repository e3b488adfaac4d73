"""A missing prerequisite skips a test run by hand and fails it under `make test`."""

from __future__ import annotations

import pytest

from hami.testing.prereq import missing

REASON = "valgrind is not installed (apt-get install valgrind)"


@pytest.fixture(autouse=True)
def _no_requirement(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("HAMI_REQUIRE_ALL", raising=False)
    monkeypatch.delenv("HAMI_REQUIRE_INTEGRATION", raising=False)


@pytest.mark.parametrize("integration", [False, True])
def test_skips_when_nothing_is_required(integration: bool) -> None:
    with pytest.raises(pytest.skip.Exception, match=r"^valgrind is not installed"):
        missing(REASON, integration=integration)


@pytest.mark.parametrize("integration", [False, True])
def test_fails_saying_what_to_install_under_make_test(
    monkeypatch: pytest.MonkeyPatch, integration: bool
) -> None:
    monkeypatch.setenv("HAMI_REQUIRE_ALL", "1")
    with pytest.raises(
        pytest.fail.Exception, match=r"^HAMI_REQUIRE_ALL=1 but valgrind is not installed \(apt-get"
    ):
        missing(REASON, integration=integration)


def test_integration_requirement_covers_only_the_control_plane(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HAMI_REQUIRE_INTEGRATION", "1")
    with pytest.raises(pytest.fail.Exception, match=r"^HAMI_REQUIRE_INTEGRATION=1 but "):
        missing("no kube-apiserver", integration=True)
    with pytest.raises(pytest.skip.Exception):
        missing(REASON)
