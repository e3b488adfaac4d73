"""The shared region must never take others down: a truncated region file does not kill the other
processes with SIGBUS, a lock word naming a foreign or dead thread does not hang new processes, and
NVML's process list seen through the library shows this container's processes only."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import time
from pathlib import Path

import pytest
from native_helpers import MiB, Sandbox, kv, lines

pytestmark = pytest.mark.native

REGION_LOCK = 128  # pthread_mutex_t: __lock (owner TID for a robust mutex) at +0, __owner at +8


def _wait(path: Path, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists() and time.monotonic() < deadline:
        time.sleep(0.01)


def test_truncated_region_does_not_kill_other_processes(sandbox: Sandbox) -> None:
    held = sandbox.tmp / "held"
    p = sandbox.popen(
        "alloc:linear:100m",
        f"ready:{held}",
        "sleep:1500",
        "alloc:linear:1m",
        "info",
        CUDA_DEVICE_MEMORY_LIMIT="1g",
    )
    _wait(held)
    os.truncate(sandbox.cache, 0)  # what a tenant's process can do to its own container's region
    out, err = p.communicate(timeout=60)
    assert p.returncode == 0, f"the holder died ({p.returncode}, -{int(signal.SIGBUS)} is SIGBUS): {err}"
    # its view of the container's usage is gone: it fails closed, never unlimited
    assert [kv(a)["rc"] for a in lines(out, "alloc ")] == ["0", "2"], out + err
    assert "truncated" in err or "damaged" in err, err
    assert sandbox.cache.stat().st_size >= 200_000  # given its size back


def _region_lock_word(sandbox: Sandbox, tid: int) -> None:
    with open(sandbox.cache, "r+b") as f:
        f.seek(REGION_LOCK)
        f.write(struct.pack("<i", tid))
        f.seek(REGION_LOCK + 8)
        f.write(struct.pack("<i", tid))


def test_lock_word_naming_a_dead_thread_is_repaired(sandbox: Sandbox) -> None:
    sandbox.run("alloc:linear:1m", CUDA_DEVICE_MEMORY_LIMIT="1g")  # creates the region
    dead = subprocess.Popen(["true"])
    dead.wait()  # a TID that existed and is gone
    _region_lock_word(sandbox, dead.pid)
    t0 = time.monotonic()
    r = sandbox.run("alloc:linear:600m", "alloc:linear:600m", CUDA_DEVICE_MEMORY_LIMIT="1g", timeout=30)
    assert time.monotonic() - t0 < 20
    assert [kv(a)["rc"] for a in lines(r.stdout, "alloc ")] == ["0", "2"], r.stdout + r.stderr
    assert "does not exist; re-initialising it" in r.stderr


def test_lock_word_naming_a_live_foreign_thread_fails_closed_in_bounded_time(sandbox: Sandbox) -> None:
    sandbox.run("alloc:linear:1m", CUDA_DEVICE_MEMORY_LIMIT="1g")
    _region_lock_word(sandbox, os.getpid())  # alive, and never going to unlock it
    t0 = time.monotonic()
    try:
        r = sandbox.run("alloc:linear:1m", CUDA_DEVICE_MEMORY_LIMIT="1g", timeout=40)
    except subprocess.TimeoutExpired:
        pytest.fail("a foreign owner in the region's lock hangs new processes")
    assert time.monotonic() - t0 < 30
    assert [kv(a)["rc"] for a in lines(r.stdout, "alloc ")] == ["2"], r.stdout + r.stderr
    assert "refusing rather than waiting" in r.stderr


def test_nvml_process_list_shows_this_container_only(tmp_path: Path, native_build: object) -> None:
    """Two containers on one card (one fake device, two regions): each sees its own process."""
    a, b = Sandbox(tmp_path / "a"), Sandbox(tmp_path / "b")
    for sb in (a, b):
        sb.tmp.mkdir()
    shared = {"FAKECUDA_STATE": str(tmp_path / "card.state")}
    held = tmp_path / "held"
    # the other container keeps its card busy, so it is in every list and every utilisation window
    other = a.popen("alloc:linear:300m", f"ready:{held}", "launch:kernel:30:1000000", **shared)
    try:
        _wait(held)
        # each container's process has run a kernel, so both appear in NVML's utilisation samples
        r = b.run("alloc:linear:100m", "launch:kernel:0.2:1000000", "procs", **shared)
        plain = b.run("alloc:linear:100m", "launch:kernel:0.2:1000000", "procs", shim=False, **shared)
    finally:
        other.kill()
        other.communicate()
    got = kv(lines(r.stdout, "procs ")[0])
    assert (got["rc"], got["n"], got["n1"], got["n0"]) == ("0", "1", "1", "1"), r.stdout + r.stderr
    assert got["rc0"] == "7"  # NVML_ERROR_INSUFFICIENT_SIZE, counting this container's processes only
    assert int(got["mem"]) == 100 * MiB
    assert (got["rcg"], got["ng"]) == ("0", "1"), "graphics list"
    assert (got["rcu"], got["nu"]) == ("0", "1"), "utilisation samples"
    seen = kv(lines(plain.stdout, "procs ")[0])
    assert (seen["n"], seen["ng"], seen["nu"]) == ("2", "2", "2"), plain.stdout  # the card has both


def test_init_lock_held_forever_does_not_hang_new_processes(sandbox: Sandbox) -> None:
    """A process of the container that takes the region's init lock (a byte-range lock at 204,800)
    and never lets go: a new process waits 2 s at most, then runs on a private region whose limits
    still apply to it (outside a pod; in a pod it refuses, as the trust tests show for a bad file)."""
    import fcntl

    sandbox.run("alloc:linear:1m", CUDA_DEVICE_MEMORY_LIMIT="1g")
    with open(sandbox.cache, "r+b") as f:
        fcntl.lockf(f, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, 204_800)
        t0 = time.monotonic()
        try:
            r = sandbox.run(
                "alloc:linear:600m", "alloc:linear:600m", CUDA_DEVICE_MEMORY_LIMIT="1g", timeout=30
            )
        except subprocess.TimeoutExpired:
            pytest.fail("a held init lock hangs new processes")
    assert time.monotonic() - t0 < 20
    assert [kv(a)["rc"] for a in lines(r.stdout, "alloc ")] == ["0", "2"], r.stdout + r.stderr
    assert "init lock" in r.stderr
