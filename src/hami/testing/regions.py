"""Synthetic shared-usage regions in libvgpu's real layout (ABI v1), for tests and benchmarks.

:func:`encode_region` builds the bytes; :class:`SlotHolder` plays the processes: it holds each
live slot's liveness lock (an open-file-description lock, as libvgpu does), so the monitor counts
those slots as running until :meth:`SlotHolder.close`.
"""

from __future__ import annotations

import fcntl
import os
import struct
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

from hami.monitor.region import (
    DEV_SIZE,
    F_OFD_SETLK,
    FLOCK,
    HEADER_SIZE,
    LOCK_BASE,
    MAGIC,
    MAX_DEV,
    MAX_SLOTS,
    REGION_SIZE,
    SLOT_SIZE,
    SLOTS_OFFSET,
)


@dataclass
class FakeDevice:
    uuid: str = ""
    limit: int = 0
    used: int = 0
    peak: int = 0
    ctx_overhead: int = 0
    sm_limit: int = 0
    limiting: bool = False
    throttled: bool = False
    util_x100: int = 0


@dataclass
class FakeProcess:
    pid: int
    used: Sequence[int] = ()  # bytes per device index
    hostpid: int = 0
    start_ns: int = 0


@dataclass
class FakeRegion:
    devices: list[FakeDevice] = field(default_factory=list)
    processes: list[FakeProcess] = field(default_factory=list)
    policy: int = 0
    priority: int = 1
    utilization_switch: int = 1
    recent_kernel: int = 0
    last_kernel_ns: int = 0
    magic: int = MAGIC
    abi_major: int = 1


def encode_region(r: FakeRegion) -> bytes:
    buf = bytearray(REGION_SIZE)
    struct.pack_into(
        "<Q6I4iQ2I",
        buf,
        0,
        r.magic,
        r.abi_major,
        0,
        HEADER_SIZE,
        REGION_SIZE,
        MAX_DEV,
        MAX_SLOTS,
        r.policy,
        r.priority,
        r.utilization_switch,
        r.recent_kernel,
        r.last_kernel_ns,
        len(r.processes),
        0,
    )
    for i, d in enumerate(r.devices):
        off = HEADER_SIZE + i * DEV_SIZE
        peak = d.peak or d.used
        uuid = d.uuid.encode()[:47]
        struct.pack_into("<4Q2I48s", buf, off, d.limit, d.used, peak, d.ctx_overhead, d.sm_limit, 0, uuid)
        struct.pack_into(
            "<2I3Q", buf, off + 168, int(d.limiting), int(d.throttled), 0, 1_000_000, d.util_x100
        )
    for i, p in enumerate(r.processes):
        off = SLOTS_OFFSET + i * SLOT_SIZE
        used = list(p.used) + [0] * (MAX_DEV - len(p.used))
        struct.pack_into("<2I2iQ16Q", buf, off, 1, 1, p.pid, p.hostpid, p.start_ns, *used)
    return bytes(buf)


def write_region(path: str, r: FakeRegion) -> None:
    with open(path, "wb") as f:
        f.write(encode_region(r))


class SlotHolder:
    """Holds the liveness locks of the given slots of region files, as running processes would."""

    def __init__(self) -> None:
        self._fds: list[int] = []

    def hold(self, path: str, slots: Iterable[int]) -> None:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        self._fds.append(fd)
        for s in slots:
            fcntl.fcntl(fd, F_OFD_SETLK, FLOCK.pack(fcntl.F_WRLCK, os.SEEK_SET, LOCK_BASE + 64 + s, 1, 0))

    def close(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()

    def __enter__(self) -> SlotHolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
