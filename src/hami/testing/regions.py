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
from dataclasses import dataclass

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


class _Fields:
    """Named integer fields with defaults (``DEFAULTS``); an unknown name is a TypeError."""

    DEFAULTS: dict[str, int] = {}

    def __init__(self, **values: int) -> None:
        unknown = set(values) - set(self.DEFAULTS)
        if unknown:
            raise TypeError(f"{type(self).__name__}: unknown fields {sorted(unknown)}")
        self.values = {**self.DEFAULTS, **values}

    def __getattr__(self, name: str) -> int:
        try:
            return self.__dict__["values"][name]  # type: ignore[no-any-return]
        except KeyError:
            raise AttributeError(name) from None


class FakeDevice(_Fields):
    """One device record: ``limit, used, peak (default: used), ctx_overhead, sm_limit, limiting,
    throttled, util_x100, throttled_ns``."""

    DEFAULTS = dict.fromkeys(
        (
            "limit",
            "used",
            "peak",
            "ctx_overhead",
            "sm_limit",
            "limiting",
            "throttled",
            "util_x100",
            "throttled_ns",
        ),
        0,
    )

    def __init__(self, uuid: str = "", **values: int) -> None:
        super().__init__(**values)
        self.uuid = uuid


@dataclass
class FakeProcess:
    pid: int
    used: Sequence[int] = ()  # bytes per device index
    hostpid: int = 0
    start_ns: int = 0


class FakeRegion(_Fields):
    """Header fields ``policy, priority, utilization_switch, recent_kernel, last_kernel_ns, magic,
    abi_major, abi_minor, controller_ns``, plus the device records and the live process slots."""

    DEFAULTS = {"policy": 0, "priority": 1, "utilization_switch": 1, "recent_kernel": 0, "last_kernel_ns": 0}
    DEFAULTS |= {"magic": MAGIC, "abi_major": 1, "abi_minor": 0, "controller_ns": 0}

    def __init__(
        self, devices: Sequence[FakeDevice] = (), processes: Sequence[FakeProcess] = (), **header: int
    ) -> None:
        super().__init__(**header)
        self.devices = list(devices)
        self.processes = list(processes)


def encode_region(r: FakeRegion) -> bytes:
    buf = bytearray(REGION_SIZE)
    struct.pack_into(
        "<Q6I4iQ2I",
        buf,
        0,
        r.magic,
        r.abi_major,
        r.abi_minor,
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
    struct.pack_into("<Q", buf, 72, r.controller_ns)
    for i, d in enumerate(r.devices):
        off = HEADER_SIZE + i * DEV_SIZE
        peak = d.peak or d.used
        uuid = d.uuid.encode()[:47]
        struct.pack_into("<4Q2I48s", buf, off, d.limit, d.used, peak, d.ctx_overhead, d.sm_limit, 0, uuid)
        struct.pack_into(
            "<2I4Q",
            buf,
            off + 168,
            int(d.limiting),
            int(d.throttled),
            0,
            1_000_000,
            d.util_x100,
            d.throttled_ns,
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
