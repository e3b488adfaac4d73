"""Priority feedback decisions (pure) and one pass over synthetic regions (what it writes)."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from hami.monitor.feedback import ACTIVE_NS, Decision, Feedback, Tenant, decide
from hami.testing.regions import FakeDevice, FakeRegion, write_region

A, B = "GPU-a", "GPU-b"
NOW = 100 * 10**9


def t(path: str, priority: int, active: bool, *cards: str, held: bool = False) -> Tenant:
    return Tenant(path, priority, active, frozenset(cards), held, 1)


def test_a_busy_higher_priority_container_holds_lower_ones_on_its_cards() -> None:
    got = decide(
        [t("hi", 0, True, A), t("lo", 1, True, A), t("other", 1, True, B), t("both", 2, False, A, B)]
    )
    assert got == {
        "hi": Decision(hold=False, switch=0),  # nobody above it; a lower one does not contend
        "lo": Decision(hold=True, switch=1),
        "other": Decision(hold=False, switch=0),  # alone on its card: no core limit (policy default)
        "both": Decision(hold=True, switch=1),  # held through card A
    }


def test_idle_higher_priority_holds_nobody_and_same_priority_only_switches() -> None:
    assert decide([t("hi", 0, False, A), t("lo", 1, True, A)])["lo"] == Decision(False, 0)
    assert decide([t("x", 1, True, A), t("y", 1, True, A)]) == {
        "x": Decision(False, 1),
        "y": Decision(False, 1),
    }
    assert decide([t("x", 1, True, A), t("y", 1, False, A)])["x"] == Decision(False, 0)
    assert decide([t("x", 1, True)]) == {"x": Decision(False, 0)}  # no card recorded yet


def _header(path: Path) -> tuple[int, int, int]:
    raw = path.read_bytes()
    switch, recent = struct.unpack_from("<ii", raw, 40)
    (monitor,) = struct.unpack_from("<Q", raw, 64)
    return switch, recent, monitor


def test_a_pass_writes_holds_releases_switches_and_the_heartbeat(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    def region(name: str, priority: int, last_kernel_ns: int, recent: int = 0) -> Path:
        d = tmp_path / f"0000000{priority}-0000-4000-8000-00000000000{len(name)}_{name}"
        d.mkdir()
        r = FakeRegion(
            devices=[FakeDevice(A, limit=1)],
            priority=priority,
            last_kernel_ns=last_kernel_ns,
            recent_kernel=recent,
        )
        write_region(str(d / "r.cache"), r)
        return d / "r.cache"

    hi = region("h", 0, NOW - ACTIVE_NS // 2)
    lo = region("lo", 1, NOW - 1)
    (tmp_path / "88888888-0000-4000-8000-000000000000_bad").mkdir()
    (tmp_path / "88888888-0000-4000-8000-000000000000_bad" / "x.cache").write_bytes(b"junk")
    fb = Feedback(str(tmp_path))
    fb.step(NOW)
    assert _header(lo) == (1, -1, NOW)
    assert _header(hi) == (0, 0, NOW)
    assert "priority feedback skips" in caplog.text
    # the high-priority one goes idle: the hold is released at the next pass
    fb.step(NOW + ACTIVE_NS)
    assert _header(lo) == (0, 0, NOW + ACTIVE_NS)
