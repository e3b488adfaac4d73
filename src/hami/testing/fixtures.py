"""pytest fixtures for the real control plane. Import them into a ``conftest.py``::

    from hami.testing.fixtures import *  # noqa: F403

Fixtures:

* ``control_plane`` (session) — a started :class:`~hami.testing.controlplane.ControlPlane`.
  Missing binaries skip the test, or fail it loudly when ``HAMI_REQUIRE_INTEGRATION=1`` or
  ``HAMI_REQUIRE_ALL=1`` (see :mod:`hami.testing.prereq`).
* ``kube_config`` — admin :class:`~hami.kube.config.KubeConfig` for it.
* ``kube_client`` — an open :class:`~hami.kube.client.KubeClient` (closed after the test).
* ``namespace`` — a fresh namespace name for this test (created; never deleted, since no
  namespace controller runs to empty it).
* ``start_scheduler`` — ``start_scheduler(config, **kw) -> SchedulerHandle``; every scheduler
  started through it is stopped after the test.

``pytest_runtest_makereport`` (also exported) attaches component log tails to failed tests.
"""

from __future__ import annotations

import re
import uuid
from collections.abc import AsyncIterator, Callable, Generator, Iterator
from typing import Any

import pytest

from hami.kube.client import KubeClient
from hami.kube.config import KubeConfig
from hami.kube.paths import api_path
from hami.testing.controlplane import (
    BinariesMissingError,
    ControlPlane,
    ControlPlaneError,
    SchedulerHandle,
    find_binaries,
)
from hami.testing.prereq import missing

__all__ = [
    "control_plane",
    "kube_client",
    "kube_config",
    "namespace",
    "pytest_runtest_makereport",
    "start_scheduler",
]

_ACTIVE: list[ControlPlane] = []
_REFS = [0]


@pytest.fixture(scope="session")
def control_plane() -> Iterator[ControlPlane]:
    """One control plane per test session, shared even when several conftests import this fixture."""
    if not _ACTIVE:
        try:
            binaries = find_binaries()
        except BinariesMissingError as exc:
            missing(str(exc), integration=True)
        cp = ControlPlane(binaries)
        try:
            cp.start()
        except ControlPlaneError as exc:
            cp.stop()
            pytest.fail(f"control plane failed to start: {exc}", pytrace=False)
        _ACTIVE.append(cp)
    _REFS[0] += 1
    try:
        yield _ACTIVE[0]
    finally:
        _REFS[0] -= 1
        if _REFS[0] == 0:
            _ACTIVE.pop().stop()


@pytest.fixture
def kube_config(control_plane: ControlPlane) -> KubeConfig:
    return control_plane.kube_config()


@pytest.fixture
async def kube_client(kube_config: KubeConfig) -> AsyncIterator[KubeClient]:
    async with KubeClient(kube_config) as kc:
        yield kc


@pytest.fixture
async def namespace(kube_client: KubeClient, request: pytest.FixtureRequest) -> str:
    base = re.sub(r"[^a-z0-9-]+", "-", request.node.name.lower()).strip("-")[:40].strip("-")
    name = f"{base or 't'}-{uuid.uuid4().hex[:6]}"
    await kube_client.create(api_path("v1", "namespaces"), {"metadata": {"name": name}})
    return name


@pytest.fixture
def start_scheduler(control_plane: ControlPlane) -> Generator[Callable[..., SchedulerHandle], None, None]:
    started: list[SchedulerHandle] = []

    def start(config: Any = None, **kwargs: Any) -> SchedulerHandle:
        handle = control_plane.start_scheduler(config, **kwargs)
        started.append(handle)
        return handle

    yield start
    for h in started:
        h.stop()


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> Generator[None, Any, None]:
    outcome = yield
    report = outcome.get_result()
    if report.failed and _ACTIVE and "control_plane" in getattr(item, "fixturenames", ()):
        for cp in _ACTIVE:
            report.sections.append(("control plane logs", cp.logs_tail()))
