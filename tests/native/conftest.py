"""Fixtures for the native tier: build libvgpu.so + the fake driver once, then run test programs."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from native_helpers import BUILD, NATIVE, Sandbox


def _make(*targets: str) -> None:
    subprocess.run(["make", "-s", "-C", str(NATIVE), *targets], check=True, timeout=600)


@pytest.fixture(scope="session")
def native_build() -> Path:
    """Builds native/ (no-op when up to date) and returns the build directory."""
    _make("all")
    return BUILD


@pytest.fixture(scope="session")
def asan_build() -> Path:
    _make("asan")
    return BUILD / "asan"


@pytest.fixture
def sandbox(native_build: Path, tmp_path: Path) -> Iterator[Sandbox]:
    yield Sandbox(tmp_path)
