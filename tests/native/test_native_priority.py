"""Priority feedback end to end: two containers (regions) on one fake card, the real libvgpu.so,
and the monitor's feedback pass run by the test every 100 ms.

* while the high-priority container (``CUDA_TASK_PRIORITY=0``) launches, the low-priority one
  (default priority 1) is held: its region says so and it launches far less than alone, while the
  high one launches about as fast as alone;
* the hold lifts within 1 s after the high-priority one goes idle;
* a monitor that stops never leaves a container held: libvgpu ignores a hold whose heartbeat is
  older than 2 s, so the held program finishes.
"""

from __future__ import annotations

import struct
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from native_helpers import (
    APP,
    FAKE,
    REGION_MONITOR_NS,
    REGION_UTILIZATION_SWITCH,
    SHIM,
    Sandbox,
    base_env,
    kv,
    lines,
    region_poke,
    region_poke64,
)

from hami.monitor.feedback import Feedback

pytestmark = pytest.mark.native

HIGH = "11111111-1111-4111-8111-111111111111"
LOW = "22222222-2222-4222-8222-222222222222"
KNS = "200000"  # a 0.2 ms kernel


class Node:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.root = tmp / "containers"
        for uid, name in ((HIGH, "hi"), (LOW, "lo")):
            (self.root / f"{uid}_{name}").mkdir(parents=True)

    def cache(self, who: str) -> Path:
        return self.root / (f"{HIGH}_hi" if who == "hi" else f"{LOW}_lo") / "r.cache"

    def start(self, who: str, *ops: str) -> subprocess.Popen[str]:
        env = {
            **base_env(),
            "LD_LIBRARY_PATH": str(FAKE),
            "LD_PRELOAD": str(SHIM),
            "FAKECUDA_STATE": str(self.tmp / "fake.state"),  # one fake card shared by both
            "CUDA_DEVICE_MEMORY_SHARED_CACHE": str(self.cache(who)),
        }
        if who == "hi":
            env["CUDA_TASK_PRIORITY"] = "0"
        return subprocess.Popen(
            [str(APP), *ops], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )

    def recent_kernel(self, who: str) -> int:
        with open(self.cache(who), "rb") as f:
            f.seek(44)
            return int(struct.unpack("<i", f.read(4))[0])


def launches(p: subprocess.Popen[str], timeout: float = 60) -> int:
    out, err = p.communicate(timeout=timeout)
    assert p.returncode == 0, (out, err[-2000:])
    (line,) = lines(out, "launch ")
    return int(kv(line)["launches"])


class Monitor:
    """The feedback pass every 100 ms on a thread, recording the low container's hold state."""

    def __init__(self, node: Node) -> None:
        self.node = node
        self.fb = Feedback(str(node.root))
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.fb.step(time.monotonic_ns())
            if self.node.cache("lo").exists():
                self.samples.append((time.monotonic(), self.node.recent_kernel("lo")))
            self._stop.wait(0.1)

    def __enter__(self) -> Monitor:
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()


@pytest.fixture
def node(native_build: object, tmp_path: Path) -> Iterator[Node]:
    yield Node(tmp_path)


def _ready(node: Node) -> None:
    # both regions exist (each program initialises CUDA, then waits for the start file)
    end = time.monotonic() + 20
    while not (node.cache("hi").exists() and node.cache("lo").exists()):
        assert time.monotonic() < end
        time.sleep(0.01)


def test_high_priority_holds_low_priority_and_releases_within_a_second(node: Node) -> None:
    go = node.tmp / "go"
    # alone first: each program's launch count over 2 s
    solo_hi = launches(node.start("hi", "init", "ctx", f"launch:kernel:2:{KNS}"))
    solo_lo = launches(node.start("lo", "init", "ctx", f"launch:kernel:4:{KNS}"))
    with Monitor(node) as mon:
        lo = node.start("lo", "init", "ctx", f"waitfile:{go}", f"launch:kernel:4:{KNS}")
        hi = node.start("hi", "init", "ctx", f"waitfile:{go}", f"launch:kernel:2:{KNS}")
        _ready(node)
        go.touch()
        started = time.monotonic()
        got_hi = launches(hi)
        idle_at = time.monotonic()
        got_lo = launches(lo)
    held = [rk < 0 for t, rk in mon.samples if started + 0.5 < t < idle_at]
    assert held and sum(held) >= 0.8 * len(held), mon.samples
    released = [t for t, rk in mon.samples if t > idle_at and rk >= 0]
    assert released and released[0] - idle_at <= 1.0, (idle_at, mon.samples)
    # held for ~2 of its 4 s: clearly fewer launches than alone; the high one barely notices
    assert got_lo < 0.8 * solo_lo, (got_lo, solo_lo)
    assert got_hi > 0.7 * solo_hi, (got_hi, solo_hi)
    print(
        f"solo_hi={solo_hi} got_hi={got_hi} solo_lo={solo_lo} got_lo={got_lo} release={released[0] - idle_at:.2f}s"
    )


def test_a_stopped_monitor_never_leaves_a_container_held(node: Node) -> None:
    go = node.tmp / "go"
    hi = node.start("hi", "init", "ctx", f"waitfile:{go}", f"launch:kernel:30:{KNS}")
    lo = node.start("lo", "init", "ctx", f"waitfile:{go}", f"launch:kernel:2:{KNS}")
    try:
        _ready(node)
        go.touch()
        with Monitor(node) as mon:
            end = time.monotonic() + 10
            while not any(rk < 0 for _, rk in mon.samples):
                assert time.monotonic() < end, mon.samples
                time.sleep(0.05)
        # the monitor is gone, the hold is still written, the high-priority one still launches:
        # the low one resumes once the heartbeat is 2 s old and finishes its 2 s of launches
        assert node.recent_kernel("lo") < 0
        t0 = time.monotonic()
        assert launches(lo, timeout=30) > 0
        assert time.monotonic() - t0 < 2.0 + 2.0 + 1.5
    finally:
        hi.kill()
        hi.wait()


def test_default_policy_limits_again_when_the_monitor_goes_silent(sandbox: Sandbox) -> None:
    """A monitor said "not contended" (switch 0) and then stopped: after 2 s without its heartbeat
    the default policy limits again, as without a monitor."""
    assert sandbox.run("init", CUDA_DEVICE_SM_LIMIT="30").returncode == 0
    region_poke(sandbox.cache, REGION_UTILIZATION_SWITCH, 0)
    region_poke64(sandbox.cache, REGION_MONITOR_NS, time.monotonic_ns() - 10 * 10**9)
    r = sandbox.run("launch:kernel:2:1000000:0.5", CUDA_DEVICE_SM_LIMIT="30")
    util = float(kv(lines(r.stdout, "launch ")[0])["util"])
    assert 20 < util < 40, r.stdout + r.stderr
