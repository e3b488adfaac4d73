"""Decoder of a container's shared usage region (libvgpu's ABI v1, `native/src/vgpu.h`).

Read-only and defensive: the file belongs to a tenant's container, so anything in it may be
truncated, half-written or garbage. :func:`read_region` checks the magic, the ABI major version,
the header's own sizes and the file size before trusting a byte, clamps the slot high-water mark
to the table, and raises :class:`RegionError` with the reason otherwise — never anything else.

Layout (little-endian x86-64, offsets ``static_assert``-ed in `native/src/region.c`): a 192-byte
header, 16 device records of 256 bytes at 192, 1024 process slots of 192 bytes at 4288; 200,896
bytes in all. Only the header, the device records and the slots below ``slot_hwm`` are read.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
import struct
from collections.abc import Callable
from dataclasses import dataclass

MAGIC = 0x315550475649414D  # "MAIVGPU1"
ABI_MAJOR = 1
MAX_DEV = 16
MAX_SLOTS = 1024
HEADER_SIZE = 192
DEV_SIZE = 256
SLOT_SIZE = 192
SLOTS_OFFSET = HEADER_SIZE + MAX_DEV * DEV_SIZE  # 4288
REGION_SIZE = SLOTS_OFFSET + MAX_SLOTS * SLOT_SIZE  # 200896
HAMI_CORE_MAGIC = 19920718  # HAMi-core's region (int32 at offset 0): not this library's format

SLOT_LIVE = 1
#: vgpu.h VGPU_LIMIT_DENY: the limit libvgpu gives the records past the container's cards
LIMIT_DENY = 1
# byte-range locks beyond the data (vgpu.h VGPU_LOCK_*): slot i's owner holds LOCK_BASE + 64 + i
LOCK_BASE = (REGION_SIZE + 4095) & ~4095
F_OFD_SETLK = 37
F_OFD_GETLK = 36  # Linux; the kernel drops an open-file-description lock when its owner dies
FLOCK = struct.Struct("@hh4xqqi4x")  # struct flock on 64-bit Linux

_HEADER = struct.Struct("<Q6I4iQ2I")  # magic .. leader_pid (64 bytes)
# ABI 1.3: the compute controller's heartbeat at 72 (reserved, so zero, in older regions)
_CTL_NS = struct.Struct("<Q")
_CTL_NS_AT = 72
# limit, used, peak, ctx_overhead, sm_limit, pad0, uuid[48]
_DEV_A = struct.Struct("<4Q2I48s")
# limiting, throttled (at 168), then cost_ns, gain_ppm, util_x100, throttled_ns (at 176; the last
# is ABI 1.2's, padding — zero — in older regions)
_DEV_B = struct.Struct("<2I4Q")
_DEV_B_AT = 168
_SLOT_HEAD = struct.Struct("<2I2iQ")  # state, gen, pid, hostpid, start_ns
_SLOT_USED = struct.Struct("<16Q")


class RegionError(Exception):
    """The file is not a usable region; the message says why."""


@dataclass(frozen=True, slots=True)
class DeviceUsage:
    index: int
    uuid: str
    limit: int  # bytes; 0 = unlimited
    used: int  # bytes charged by the container's live processes
    peak: int
    ctx_overhead: int  # bytes per context (measured or configured); 0 = unknown
    sm_limit: int  # percent; 0 or >= 100 = unlimited
    limiting: bool
    throttled: bool
    util_percent: float  # last measured container utilisation of the card, percent
    #: cumulative ns the container's launches on the card waited (limiter or priority hold; ABI 1.2)
    throttled_ns: int = 0


@dataclass(frozen=True, slots=True)
class Process:
    slot: int
    pid: int
    hostpid: int
    start_ns: int
    used: tuple[int, ...]  # bytes per device index
    #: the owner still holds the slot's liveness lock; a dead process's slot keeps its numbers
    #: until the next process of the container reclaims it, so only live slots count as usage
    alive: bool = True


@dataclass(frozen=True, slots=True)
class Region:
    abi_minor: int
    policy: int  # 0 default, 1 force, 2 disable
    priority: int
    utilization_switch: int
    recent_kernel: int  # < 0: launches held by a node monitor
    last_kernel_ns: int  # CLOCK_MONOTONIC; 0 = no launch seen
    devices: tuple[DeviceUsage, ...]  # every record that is configured or in use
    processes: tuple[Process, ...]  # slots marked live (see Process.alive)
    #: CLOCK_MONOTONIC of the compute controller's last pass (ABI 1.3; 0 in older regions or before
    #: any limited process ran one)
    controller_ns: int = 0

    def alive(self) -> list[Process]:
        return [p for p in self.processes if p.alive]

    def held(self, dev: int) -> int:
        """Bytes held on device ``dev`` by the container's running processes."""
        return sum(p.used[dev] for p in self.processes if p.alive)

    def contexts_on(self, dev: int) -> int:
        """Running processes holding memory on device ``dev`` (each one has a context there)."""
        return sum(1 for p in self.processes if p.alive and p.used[dev])


def _text(raw: bytes) -> str:
    return raw.split(b"\0", 1)[0].decode("ascii", "replace")


def decode(header_and_devs: bytes, slots: bytes, alive: Callable[[int], bool] | None = None) -> Region:
    """Decode the first :data:`SLOTS_OFFSET` bytes and the slot bytes read after them;
    ``alive(slot)`` says whether a live-marked slot's owner still runs (None: assume it does)."""
    if len(header_and_devs) < SLOTS_OFFSET:
        raise RegionError(f"short read: {len(header_and_devs)} of {SLOTS_OFFSET} header bytes")
    (
        magic,
        major,
        minor,
        header_size,
        region_size,
        ndev,
        max_slots,
        policy,
        priority,
        util_switch,
        recent_kernel,
        last_kernel_ns,
        slot_hwm,
        _leader,
    ) = _HEADER.unpack_from(header_and_devs, 0)
    if magic != MAGIC:
        if magic == 0:
            raise RegionError("not initialised yet (magic 0)")
        if magic & 0xFFFFFFFF == HAMI_CORE_MAGIC:
            raise RegionError("a HAMi-core region (magic 19920718), not libvgpu's format")
        raise RegionError(f"unknown format (magic {magic:#x})")
    if major != ABI_MAJOR:
        raise RegionError(f"unsupported ABI version {major}.{minor} (this monitor reads {ABI_MAJOR}.x)")
    sizes = (header_size, region_size, ndev, max_slots)
    if sizes != (HEADER_SIZE, REGION_SIZE, MAX_DEV, MAX_SLOTS):
        raise RegionError(
            "inconsistent header (header_size, region_size, ndev, max_slots) = "
            f"{sizes}, expected {(HEADER_SIZE, REGION_SIZE, MAX_DEV, MAX_SLOTS)}"
        )
    hwm = min(slot_hwm, MAX_SLOTS)
    processes = []
    for i in range(min(hwm, len(slots) // SLOT_SIZE)):
        off = i * SLOT_SIZE
        state, _gen, pid, hostpid, start_ns = _SLOT_HEAD.unpack_from(slots, off)
        if state == SLOT_LIVE:
            used = _SLOT_USED.unpack_from(slots, off + 24)
            live = alive(i) if alive is not None else True
            processes.append(Process(i, pid, hostpid, start_ns, used, live))
    devices = []
    for d in range(MAX_DEV):
        off = HEADER_SIZE + d * DEV_SIZE
        limit, used, peak, ctx, sm_limit, _pad, uuid_raw = _DEV_A.unpack_from(header_and_devs, off)
        if not (used or uuid_raw[0]) and limit in (0, LIMIT_DENY):
            continue  # not configured, or a record past the container's cards (denied, unused)
        limiting, throttled, _cost, _gain, util_x100, waited = _DEV_B.unpack_from(
            header_and_devs, off + _DEV_B_AT
        )
        util = min(util_x100, 1_000_000) / 100.0
        uuid = _text(uuid_raw)
        devices.append(
            DeviceUsage(
                d, uuid, limit, used, peak, ctx, sm_limit, bool(limiting), bool(throttled), util, waited
            )
        )
    procs = tuple(processes)
    (ctl_ns,) = _CTL_NS.unpack_from(header_and_devs, _CTL_NS_AT)
    return Region(
        minor, policy, priority, util_switch, recent_kernel, last_kernel_ns, tuple(devices), procs, ctl_ns
    )


def read_region(path: str) -> Region:
    """Read and decode the region file at ``path``; :class:`RegionError` when it is unusable."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise RegionError("is a symbolic link") from e
        raise RegionError(f"cannot open: {e.strerror}") from e
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise RegionError("not a regular file")
        if st.st_size < REGION_SIZE:
            raise RegionError(f"truncated: {st.st_size} bytes, a region has {REGION_SIZE}")
        head = os.pread(fd, SLOTS_OFFSET, 0)
        hwm = _HEADER.unpack_from(head, 0)[12] if len(head) >= _HEADER.size else 0
        slots = os.pread(fd, min(hwm, MAX_SLOTS) * SLOT_SIZE, SLOTS_OFFSET) if hwm else b""
        return decode(head, slots, lambda i: slot_held(fd, i))
    except OSError as e:
        raise RegionError(f"cannot read: {e.strerror}") from e
    finally:
        os.close(fd)


def slot_held(fd: int, slot: int) -> bool:
    """Whether some process holds slot ``slot``'s liveness lock (True when it cannot be told)."""
    probe = FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, LOCK_BASE + 64 + slot, 1, 0)
    try:
        out = fcntl.fcntl(fd, F_OFD_GETLK, probe)
    except OSError:
        return True
    return bool(FLOCK.unpack(out)[0] != fcntl.F_UNLCK)
