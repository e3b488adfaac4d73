"""Several processes sharing one region: atomic admission, kill -9, fork, threads, drift."""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from native_helpers import APP, MiB, Sandbox, kv, lines, region_state

pytestmark = pytest.mark.native

GiB = 1 << 30


def _wait_for(path_or_proc: object, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if getattr(path_or_proc, "exists", None) and path_or_proc.exists():  # type: ignore[attr-defined]
            return
        time.sleep(0.005)
    raise TimeoutError(str(path_or_proc))


def test_two_processes_asking_60_percent_exactly_one_wins(sandbox: Sandbox) -> None:
    rounds = 40
    bar = sandbox.tmp / "barrier"
    procs = [
        sandbox.popen(f"barrier_open:{bar}:2", f"race:{rounds}:600m", CUDA_DEVICE_MEMORY_LIMIT="1g")
        for _ in range(2)
    ]
    outs = [p.communicate(timeout=120) for p in procs]
    results = [{int(ln.split()[1]): kv(ln)["rc"] for ln in lines(o, "round ")} for o, _ in outs]
    assert all(len(r) == rounds for r in results), outs
    for k in range(rounds):
        got = sorted([results[0][k], results[1][k]])
        assert got == ["0", "2"], f"round {k}: {got} (both passing would over-commit the card)"


def test_four_processes_never_exceed_the_limit(sandbox: Sandbox) -> None:
    bar = sandbox.tmp / "barrier"
    procs = [
        sandbox.popen(f"barrier_open:{bar}:4", "race:25:300m", CUDA_DEVICE_MEMORY_LIMIT="1g")
        for _ in range(4)
    ]
    outs = [p.communicate(timeout=120)[0] for p in procs]
    for k in range(25):
        wins = sum(kv(ln)["rc"] == "0" for o in outs for ln in lines(o, f"round {k} "))
        assert wins == 3, f"round {k}: {wins} x 300 MiB admitted against 1 GiB"


def test_killed_holder_is_reclaimed_within_one_second(sandbox: Sandbox) -> None:
    a_ready, b_ready, killed = (sandbox.tmp / n for n in ("a", "b", "killed"))
    holder = sandbox.popen(
        "alloc:linear:700m", f"ready:{a_ready}", "sleep:60000", CUDA_DEVICE_MEMORY_LIMIT="1g"
    )
    _wait_for(a_ready)
    other = sandbox.popen(
        "alloc:linear:100m",
        "alloc:linear:500m",  # refused while the holder lives
        f"ready:{b_ready}",
        f"waitfile:{killed}",
        "pollfree:924m:3000",
        "alloc:linear:800m",  # fits once the dead holder's 700 MiB is back
        CUDA_DEVICE_MEMORY_LIMIT="1g",
    )
    _wait_for(b_ready)
    holder.send_signal(signal.SIGKILL)
    holder.wait()
    killed.touch()
    out, err = other.communicate(timeout=30)
    assert [kv(a)["rc"] for a in lines(out, "alloc ")] == ["0", "2", "0"], out + err
    poll = lines(out, "pollfree ")[0]
    assert poll.startswith("pollfree ok"), out
    assert float(kv(poll)["ms"]) < 1000.0
    state = region_state(sandbox.cache)
    assert all(s["pid"] != holder.pid for s in state["slots"]), "the killed holder's slot was reclaimed"
    # the other process exited normally; its slot is reclaimed by the next process that attaches
    after = sandbox.run("pid", "info", CUDA_DEVICE_MEMORY_LIMIT="1g")
    assert int(kv(lines(after.stdout, "info ")[0])["free"]) == GiB
    assert [s["pid"] for s in region_state(sandbox.cache)["slots"]] == [
        int(kv(lines(after.stdout, "pid ")[0])["pid"])
    ]


def test_kill_mid_allocation_never_hangs_others(sandbox: Sandbox) -> None:
    """SIGKILL a process hammering alloc/free from 4 threads (often inside the admission lock)."""
    rng = random.Random(5)
    for rnd in range(6):
        ready, killed = sandbox.tmp / f"b{rnd}", sandbox.tmp / f"k{rnd}"
        other = sandbox.popen(
            "alloc:linear:100m",
            f"ready:{ready}",
            f"waitfile:{killed}",
            "pollfree:924m:3000",
            "alloc:linear:800m",
            "info",
            CUDA_DEVICE_MEMORY_LIMIT="1g",
        )
        _wait_for(ready)
        hammer = sandbox.popen("hammer:60m", CUDA_DEVICE_MEMORY_LIMIT="1g")
        assert hammer.stdout is not None
        assert hammer.stdout.readline().startswith("hammering")
        time.sleep(rng.uniform(0.02, 0.3))
        hammer.send_signal(signal.SIGKILL)
        hammer.wait()
        killed.touch()
        out, err = other.communicate(timeout=30)
        poll = lines(out, "pollfree ")[0]
        assert poll.startswith("pollfree ok") and float(kv(poll)["ms"]) < 1000.0, out + err
        assert kv(lines(out, "alloc linear 800m")[0])["rc"] == "0", out + err
        assert int(kv(lines(out, "info ")[0])["free"]) == GiB - 900 * MiB, out + err
        assert all(not s["alive"] for s in region_state(sandbox.cache)["slots"]), "no live slot after exit"


def test_threads_and_fork(sandbox: Sandbox) -> None:
    r = sandbox.run(
        "threads:8:5000:1m",
        "sync",
        "fork:64m",  # the child charges 64 MiB to its own slot and exits without freeing
        "sleep:400",
        "info",
        "alloc:linear:1000m",
        CUDA_DEVICE_MEMORY_LIMIT="1g",
    )
    assert kv(lines(r.stdout, "threads ")[0])["fails"] == "0", r.stdout + r.stderr
    assert "child alloc rc=0" in r.stdout and "fork child exit=0" in r.stdout
    assert int(kv(lines(r.stdout, "info ")[0])["free"]) == GiB, "the exited child's charge must be reclaimed"
    assert kv(lines(r.stdout, "alloc ")[0])["rc"] == "0"


def test_million_cycles_zero_drift(sandbox: Sandbox) -> None:
    r = sandbox.run("cycles:1000000:1m", "sync", "info", CUDA_DEVICE_MEMORY_LIMIT="1g", timeout=180)
    assert kv(lines(r.stdout, "cycles ")[0])["fails"] == "0", r.stdout + r.stderr
    info = kv(lines(r.stdout, "info ")[0])
    assert int(info["free"]) == int(info["total"]) == GiB, "usage drifted after 1,000,000 alloc/free cycles"


def test_region_limits_are_container_wide_and_first_writer_wins(sandbox: Sandbox) -> None:
    a = sandbox.tmp / "a"
    holder = sandbox.popen("alloc:linear:600m", f"ready:{a}", "sleep:5000", CUDA_DEVICE_MEMORY_LIMIT="1g")
    _wait_for(a)
    # a second process with a different (larger) env limit still obeys the region's 1 GiB
    r = sandbox.run("alloc:linear:600m", CUDA_DEVICE_MEMORY_LIMIT="4g")
    holder.kill()
    holder.wait()
    assert kv(lines(r.stdout, "alloc ")[0])["rc"] == "2"
    assert "the region's value applies" in r.stderr


def test_non_cuda_programs_are_untouched(sandbox: Sandbox) -> None:
    env = sandbox.make_env(CUDA_DEVICE_MEMORY_LIMIT="1g", LIBCUDA_LOG_LEVEL="4")
    r = subprocess.run(
        ["python3", "-c", "import ctypes, ctypes.util; print(ctypes.CDLL(None).getpid() > 0)"],
        env=env,
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert r.returncode == 0 and r.stdout.strip() == "True"
    assert "libvgpu" not in r.stderr, "a process that never touches CUDA must not even initialise the shim"
    assert not sandbox.cache.exists()


def test_cuda_visible_devices_reordering_charges_each_card(sandbox: Sandbox, tmp_path: Path) -> None:
    """Usage is per card (matched by UUID), not per the process's device ordinal: a process that
    sees the container's two cards as `1,0` charges card 0's memory to card 0."""
    env = {"FAKECUDA_DEVICES": "2", "CUDA_DEVICE_MEMORY_LIMIT_0": "1g", "CUDA_DEVICE_MEMORY_LIMIT_1": "2g"}
    held = tmp_path / "held"
    holder = sandbox.popen("alloc:linear:600m", f"ready:{held}", "sleep:30000", **env)  # card 0
    try:
        deadline = time.monotonic() + 20
        while not held.exists() and time.monotonic() < deadline:
            time.sleep(0.01)
        r = sandbox.run(
            "dev:1",  # ordinal 1 is card 0 here: 600 MiB of its 1 GiB are held
            "alloc:linear:600m",
            "dev:0",  # ordinal 0 is card 1: 2 GiB
            "alloc:linear:1500m",
            "totalmem",
            CUDA_VISIBLE_DEVICES="1,0",
            **env,
        )
    finally:
        holder.kill()
        holder.communicate()
    # old code: ordinal 1 charged to card 1 (600 MiB of 2 GiB: admitted), ordinal 0 to card 0 (refused)
    assert [kv(a)["rc"] for a in lines(r.stdout, "alloc ")] == ["2", "0"], r.stdout + r.stderr


# The numbers: 300 MiB contexts against a 1000 MiB slice. The holder has its context and
# 400 MiB (700 MiB); a second process's context takes the slice to exactly 1000 MiB, so its 100 MiB
# allocation is refused. Uncharged contexts would let it through (and report 1000 MiB free).
_CTX_SCRIPT = (
    "$APP info alloc:linear:400m ready:{held} sleep:30000 > {out} & HOLDER=$!\n"
    "$APP waitfile:{held} info alloc:linear:100m procs\n"
    "kill $HOLDER; wait; cat {out}"
)


def _ctx_checks(out: str, err: str) -> None:
    infos = [int(kv(i)["free"]) for i in lines(out, "info ")]
    assert sorted(infos) == [0, 700 * MiB], out + err  # the second process's view, the holder's
    assert [kv(a)["rc"] for a in lines(out, "alloc linear 100m")] == ["2"], out + err
    # NVML's list seen from the container: both of its processes, by host PID (each found itself)
    assert kv(lines(out, "procs ")[0])["n"] == "2", out + err


needs_pid_namespace = pytest.mark.skipif(
    os.geteuid() != 0 or shutil.which("unshare") is None, reason="needs root (unshare --pid)"
)


def in_pid_namespace(sandbox: Sandbox, script: str) -> subprocess.CompletedProcess[str]:
    """`script` under `unshare --pid --fork`, with 300 MiB contexts against a 1000 MiB slice. NVML
    lists host PIDs; inside the namespace the library's getpid() is not among them. The fake
    driver lists processes by host PID, as a real one does."""
    env = sandbox.make_env(APP=str(APP), CUDA_DEVICE_MEMORY_LIMIT="1000m", FAKECUDA_CTX_BYTES="300m")
    return subprocess.run(
        ["unshare", "--pid", "--fork", "sh", "-c", script],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


@needs_pid_namespace
def test_context_memory_is_charged_in_a_pid_namespace(sandbox: Sandbox) -> None:
    r = in_pid_namespace(
        sandbox, _CTX_SCRIPT.format(held=sandbox.tmp / "held", out=sandbox.tmp / "holder.out")
    )
    _ctx_checks(r.stdout, r.stderr)


@needs_pid_namespace
def test_three_processes_contexts_in_a_pid_namespace(sandbox: Sandbox) -> None:
    """Issue 16's case as written: three processes with 300 MiB contexts in a 1000 MiB slice leave
    100 MiB — the third process gets exactly that, not the 1000 MiB an uncharged context shows."""
    t = sandbox.tmp
    script = (
        f"$APP info ready:{t}/h1 sleep:30000 > {t}/o1 & A=$!\n"
        f"$APP waitfile:{t}/h1 info ready:{t}/h2 sleep:30000 > {t}/o2 & B=$!\n"
        f"$APP waitfile:{t}/h2 info alloc:linear:101m alloc:linear:100m info\n"
        f"kill $A $B; wait; cat {t}/o1 {t}/o2"
    )
    r = in_pid_namespace(sandbox, script)
    # the third process's view before and after its allocations, then the first's and the second's
    free = [int(kv(i)["free"]) // MiB for i in lines(r.stdout, "info ")]
    assert free == [100, 0, 700, 400], r.stdout + r.stderr
    assert [kv(a)["rc"] for a in lines(r.stdout, "alloc ")] == ["2", "0"], r.stdout + r.stderr


def test_context_memory_is_charged_when_nvml_pids_are_foreign(sandbox: Sandbox) -> None:
    """No /proc view of the host PID at all (a container's own procfs): NVML's PIDs are simply
    different numbers (FAKECUDA_PID_OFFSET). The library finds itself as the process that appeared on
    the device while it created its first context."""
    script = _CTX_SCRIPT.format(held=sandbox.tmp / "held", out=sandbox.tmp / "holder.out")
    env = sandbox.make_env(
        APP=str(APP),
        CUDA_DEVICE_MEMORY_LIMIT="1000m",
        FAKECUDA_CTX_BYTES="300m",
        FAKECUDA_PID_OFFSET="1000000",
    )
    r = subprocess.run(["sh", "-c", script], env=env, capture_output=True, text=True, timeout=60, check=False)
    _ctx_checks(r.stdout, r.stderr)
