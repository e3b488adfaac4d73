"""Limits a tenant cannot lift from inside its container: with the device plugin's read-only
configuration file (/etc/hami/vgpu.conf) present, the environment, the region's location and the
debugging knobs cannot weaken enforcement. Each test runs real processes as a pod runs them
(/etc/ld.so.preload, the file bind-mounted read-only) in a private mount namespace."""

from __future__ import annotations

import pytest
from native_helpers import MiB, Sandbox, can_unshare, kv, lines, run_in_pod

pytestmark = [
    pytest.mark.native,
    pytest.mark.skipif(not can_unshare(), reason="needs root and mount namespaces (unshare --mount)"),
]

GiB = 1 << 30


def _conf(sandbox: Sandbox, **extra: str) -> dict[str, str]:
    conf = {
        "CUDA_DEVICE_MEMORY_LIMIT_0": "1000m",
        "CUDA_DEVICE_SM_LIMIT_0": "20",
        "CUDA_DEVICE_MEMORY_SHARED_CACHE": str(sandbox.cache),
        "GPU_CORE_UTILIZATION_POLICY": "default",
    }
    conf.update(extra)
    return conf


def _rcs(out: str) -> list[str]:
    return [kv(a)["rc"] for a in lines(out, "alloc ")]


def test_environment_cannot_lift_the_limit(sandbox: Sandbox) -> None:
    """A holder takes 600 MiB of the 1000 MiB slice; then every bypass asks for another 600 MiB."""
    fs = sandbox.tmp / "fake.state"
    script = "\n".join(
        [
            f"$APP alloc:linear:600m ready:{sandbox.tmp}/held sleep:30000 > /dev/null & HOLDER=$!",
            f"$APP waitfile:{sandbox.tmp}/held",
            # a child started with an empty environment (the preload comes from /etc/ld.so.preload)
            f"env -i FAKECUDA_STATE={fs} $APP alloc:linear:600m",
            # its own limit unset, then raised
            "env -u CUDA_DEVICE_MEMORY_LIMIT_0 $APP alloc:linear:600m",
            "CUDA_DEVICE_MEMORY_LIMIT_0=100g CUDA_DEVICE_MEMORY_LIMIT=100g $APP alloc:linear:600m",
            # a region of its own: a second full limit
            f"CUDA_DEVICE_MEMORY_SHARED_CACHE={sandbox.tmp}/mine.cache $APP alloc:linear:600m",
            "kill $HOLDER",
        ]
    )
    r = run_in_pod(sandbox, _conf(sandbox), script, CUDA_DEVICE_MEMORY_LIMIT_0="1000m")
    assert _rcs(r.stdout) == ["2", "2", "2", "2"], r.stdout + r.stderr
    assert "OOM dev=0" in r.stderr


def test_without_the_file_the_environment_still_governs(sandbox: Sandbox) -> None:
    """Outside a cluster (no file) the environment is the source, as before."""
    r = run_in_pod(sandbox, None, "$APP alloc:linear:600m alloc:linear:600m", CUDA_DEVICE_MEMORY_LIMIT="1g")
    assert _rcs(r.stdout) == ["0", "2"], r.stdout + r.stderr


@pytest.mark.parametrize(
    "knob",
    [
        {"LIBVGPU_CONTEXT_OVERHEAD": "0"},  # old: contexts charged nothing
        {"LIBVGPU_CONTEXT_OVERHEAD": "1"},  # one byte per context
        {"LIBVGPU_REAL_LIBNVML": "/nonexistent/libnvidia-ml.so.1"},  # old: no measurement, no limiter
    ],
)
def test_debug_knobs_do_not_weaken_context_charging(sandbox: Sandbox, knob: dict[str, str]) -> None:
    r = run_in_pod(sandbox, _conf(sandbox), "$APP info", FAKECUDA_CTX_BYTES="100m", **knob)
    info = kv(lines(r.stdout, "info ")[0])
    assert int(info["total"]) == 1000 * MiB, r.stdout + r.stderr
    assert int(info["free"]) == 900 * MiB, "the 100 MiB context must be charged: " + r.stdout + r.stderr
    assert "is ignored" in r.stderr


def test_first_process_cannot_disable_the_compute_limit(sandbox: Sandbox) -> None:
    """GPU_CORE_UTILIZATION_POLICY=disable (and CUDA_DEVICE_SM_LIMIT=100) in the container's first
    process: the file's 20 % still applies."""
    r = run_in_pod(
        sandbox,
        _conf(sandbox),
        "$APP launch:kernel:1.5:1000000:0.5",
        GPU_CORE_UTILIZATION_POLICY="disable",
        CUDA_DEVICE_SM_LIMIT="100",
        CUDA_DEVICE_SM_LIMIT_0="100",
    )
    util = float(kv(lines(r.stdout, "launch ")[0])["util"])
    assert util < 40, f"limited to 20 %, got {util}: " + r.stderr


def test_region_tampered_limits_are_restored(sandbox: Sandbox) -> None:
    """A region created beforehand with a huge limit (say by a process without the file): the file's
    limit applies and the region is put back to it."""
    sandbox.run("alloc:linear:1m", CUDA_DEVICE_MEMORY_LIMIT="100g")  # no file: creates the region
    r = run_in_pod(sandbox, _conf(sandbox), "$APP alloc:linear:600m alloc:linear:600m")
    assert _rcs(r.stdout) == ["0", "2"], r.stdout + r.stderr
    assert "restoring the file's limits" in r.stderr


def test_unreadable_file_fails_closed(sandbox: Sandbox) -> None:
    """A file that is there but not KEY=VALUE lines: every allocation is refused, never unlimited."""
    src = sandbox.tmp / "vgpu.conf"
    src.write_text("this is not KEY=VALUE\nno equals sign here\n")
    script = (
        "mkdir -p /etc/hami && : > /etc/hami/vgpu.conf && "
        f"mount --bind {src} /etc/hami/vgpu.conf && $APP alloc:linear:1m"
    )
    r = run_in_pod(sandbox, None, script)
    assert _rcs(r.stdout) == ["2"], r.stdout + r.stderr
    assert "cannot be read or parsed" in r.stderr
    assert "no region path" in r.stderr  # no region at a default path shared with anything else


@pytest.mark.parametrize(
    "conf",
    [
        {"NVIDIA_VISIBLE_DEVICES": "GPU-face0000-0000-0000-0000-000000000000"},  # the card, no limit
        {"CUDA_DEVICE_SM_LIMIT_0": "20"},  # no card list, no limit
        {"CUDA_DEVICE_MEMORY_LIMIT_0": "0m"},  # a 0-MiB card that reached the file
    ],
)
def test_a_file_without_a_memory_limit_is_not_unlimited(sandbox: Sandbox, conf: dict[str, str]) -> None:
    """The file is the slice: a card it gives no (or a 0) memory limit is refused, whatever the
    environment says (old: no limit in the file meant none at all)."""
    r = run_in_pod(sandbox, conf, "$APP alloc:linear:1m", CUDA_DEVICE_MEMORY_LIMIT="1g")
    assert _rcs(r.stdout) == ["2"], r.stdout + r.stderr
    assert "rather than running unlimited" in r.stderr


def test_file_card_order_decides_which_limit_a_card_gets(sandbox: Sandbox) -> None:
    """The file lists the container's cards (NVIDIA_VISIBLE_DEVICES) in the order of its _<i> limits;
    the process's own enumeration (here the reverse) does not decide which card gets which limit."""
    conf = _conf(sandbox)
    conf.update(
        NVIDIA_VISIBLE_DEVICES="GPU-face0000-0000-0000-0000-000000000001,GPU-face0000-0000-0000-0000-000000000000",
        CUDA_DEVICE_MEMORY_LIMIT_0="256m",  # card ...01
        CUDA_DEVICE_MEMORY_LIMIT_1="2g",  # card ...00
    )
    r = run_in_pod(sandbox, conf, "$APP alloc:linear:1g dev:1 alloc:linear:300m", FAKECUDA_DEVICES="2")
    assert _rcs(r.stdout) == ["0", "2"], r.stdout + r.stderr


def test_simulated_driver_with_its_own_uuids_maps_by_ordinal(sandbox: Sandbox) -> None:
    """A simulated driver (the sandbox's) reports UUIDs of its own, none of them in the file: the
    cards are mapped by ordinal (warned), not refused as foreign."""
    conf = _conf(sandbox, NVIDIA_VISIBLE_DEVICES="GPU-0a0a0a0a-0000-0000-0000-000000000001")
    r = run_in_pod(sandbox, conf, "$APP alloc:linear:600m alloc:linear:600m")
    assert _rcs(r.stdout) == ["0", "2"], r.stdout + r.stderr
    assert "mapping them by ordinal" in r.stderr
