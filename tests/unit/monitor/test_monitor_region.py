"""The region decoder against synthetic regions in the real layout: values, liveness, bad files."""

from __future__ import annotations

import os
import struct
from pathlib import Path

import pytest

from hami.monitor.region import REGION_SIZE, SLOTS_OFFSET, RegionError, read_region
from hami.testing.regions import FakeDevice, FakeProcess, FakeRegion, SlotHolder, encode_region, write_region

MiB = 1 << 20
UUID0 = "GPU-00000000-0000-0000-0000-000000000000"


def _region() -> FakeRegion:
    return FakeRegion(
        devices=[
            FakeDevice(
                uuid=UUID0,
                limit=1024 * MiB,
                used=300 * MiB,
                peak=400 * MiB,
                ctx_overhead=64 * MiB,
                sm_limit=30,
                limiting=True,
                throttled=True,
                util_x100=2950,
                throttled_ns=7_000,
            ),
        ],
        processes=[FakeProcess(pid=7, used=[100 * MiB]), FakeProcess(pid=8, used=[200 * MiB])],
        priority=0,
        last_kernel_ns=123,
    )


def test_decodes_every_field(tmp_path: Path) -> None:
    path = str(tmp_path / "r.cache")
    write_region(path, _region())
    with SlotHolder() as h:
        h.hold(path, [0, 1])
        r = read_region(path)
    assert (r.priority, r.policy, r.utilization_switch, r.recent_kernel, r.last_kernel_ns) == (
        0,
        0,
        1,
        0,
        123,
    )
    (d,) = r.devices
    assert (d.index, d.uuid, d.limit, d.used, d.peak, d.ctx_overhead) == (
        0,
        UUID0,
        1024 * MiB,
        300 * MiB,
        400 * MiB,
        64 * MiB,
    )
    assert (d.sm_limit, d.limiting, d.throttled, d.util_percent, d.throttled_ns) == (
        30,
        True,
        True,
        29.5,
        7_000,
    )
    assert [(p.slot, p.pid, p.used[0], p.alive) for p in r.processes] == [
        (0, 7, 100 * MiB, True),
        (1, 8, 200 * MiB, True),
    ]
    assert r.held(0) == 300 * MiB and r.contexts_on(0) == 2


@pytest.mark.parametrize(("minor", "ctl_ns"), [(2, 0), (3, 5_000_000_123)])
def test_reads_regions_before_and_after_the_controller_heartbeat(
    tmp_path: Path, minor: int, ctl_ns: int
) -> None:
    """ABI 1.3 adds the compute controller's heartbeat in what was reserved (zero) in 1.2: both read,
    with the same values for everything else."""
    path = str(tmp_path / "r.cache")
    reg = _region()
    reg.values.update(abi_minor=minor, controller_ns=ctl_ns)
    write_region(path, reg)
    r = read_region(path)
    assert (r.abi_minor, r.controller_ns, r.last_kernel_ns, r.devices[0].throttled_ns) == (
        minor,
        ctl_ns,
        123,
        7_000,
    )


def test_a_slot_whose_owner_is_gone_is_not_usage(tmp_path: Path) -> None:
    path = str(tmp_path / "r.cache")
    write_region(path, _region())
    with SlotHolder() as h:
        h.hold(path, [1])  # process 7 (slot 0) died without releasing its slot
        r = read_region(path)
    assert [p.alive for p in r.processes] == [False, True]
    assert r.held(0) == 200 * MiB and r.contexts_on(0) == 1
    assert read_region(path).held(0) == 0  # nobody holds anything now


def test_unconfigured_devices_are_left_out(tmp_path: Path) -> None:
    path = str(tmp_path / "r.cache")
    reg = _region()
    reg.devices += [FakeDevice(), FakeDevice(uuid="GPU-x", limit=0, used=0)]
    # libvgpu marks the records past the container's cards "deny" (limit 1): not cards of the
    # container; a card of its own with a malformed (deny) limit is one
    reg.devices += [FakeDevice(limit=1), FakeDevice(uuid="GPU-y", limit=1)]
    write_region(path, reg)
    assert [d.index for d in read_region(path).devices] == [0, 2, 4]


@pytest.mark.parametrize(
    ("mutate", "reason"),
    [
        (lambda b: b[:1000], "truncated: 1000 bytes"),
        (lambda b: b"", "truncated: 0 bytes"),
        (lambda b: bytes(REGION_SIZE), "not initialised yet"),
        (lambda b: struct.pack("<i", 19920718) + b[4:], "HAMi-core region"),
        (lambda b: b"\xff" * 8 + b[8:], "unknown format"),
        (lambda b: b[:8] + struct.pack("<I", 2) + b[12:], "unsupported ABI version 2"),
        (lambda b: b[:20] + struct.pack("<I", 999) + b[24:], "inconsistent header"),
        (lambda b: b[:24] + struct.pack("<I", 64) + b[28:], "inconsistent header"),
        (lambda b: os.urandom(REGION_SIZE), "unknown format"),
    ],
)
def test_bad_files_are_refused_with_the_reason(tmp_path: Path, mutate, reason: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "r.cache"
    path.write_bytes(mutate(encode_region(_region())))
    with pytest.raises(RegionError, match=reason):
        read_region(str(path))


def test_garbage_slot_high_water_mark_is_clamped(tmp_path: Path) -> None:
    b = bytearray(encode_region(_region()))
    struct.pack_into("<I", b, 56, 0xFFFFFFFF)  # slot_hwm
    path = tmp_path / "r.cache"
    path.write_bytes(bytes(b))
    r = read_region(str(path))
    assert [p.pid for p in r.processes] == [7, 8]  # the rest of the table is free slots


def test_unreadable_paths(tmp_path: Path) -> None:
    with pytest.raises(RegionError, match="cannot open"):
        read_region(str(tmp_path / "missing.cache"))
    (tmp_path / "d.cache").mkdir()
    with pytest.raises(RegionError):
        read_region(str(tmp_path / "d.cache"))
    good = tmp_path / "good.cache"
    write_region(str(good), _region())
    (tmp_path / "link.cache").symlink_to(good)
    with pytest.raises(RegionError, match="symbolic link"):
        read_region(str(tmp_path / "link.cache"))


def test_a_larger_file_is_fine(tmp_path: Path) -> None:
    # libvgpu's byte-range locks live past the data; the file may have grown there
    path = tmp_path / "r.cache"
    path.write_bytes(encode_region(_region()) + bytes(8192))
    assert read_region(str(path)).devices[0].used == 300 * MiB
    assert SLOTS_OFFSET == 4288 and REGION_SIZE == 200896
