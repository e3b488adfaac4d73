"""Priority feedback: while a higher-priority container is busy on a card, hold the launches of the
lower-priority containers sharing it; with `gpuCorePolicy: default`, limit cores only under contention.

HAMi's vGPU monitor semantics (`feedback.go: Observe`), driven by time instead of a decremented
counter: each pass reads every container region's priority (``CUDA_TASK_PRIORITY``: 0 high,
1 low, the default), cards and last launch time (libvgpu's watcher stamps it every 100 ms while the
container launches). A container is *active* if it launched within :data:`ACTIVE_NS`. Then, per
container:

* **hold** (``recent_kernel = -1``) while an active container with a smaller priority number shares
  one of its cards; released (``0``) otherwise;
* ``utilization_switch = 1`` (the core limit applies under policy ``default``) while another active
  container of the same or a higher priority shares one of its cards, else ``0``;
* ``monitor_ns`` = now, the heartbeat: libvgpu honours a hold only while it is under 2 s old, so a
  monitor that stops never leaves a container held.

Files are read and written with ``pread``/``pwrite`` (never mapped: a tenant truncating its file
must not be able to crash the monitor), after the same validation as the metrics reader.
"""

from __future__ import annotations

import bisect
import errno
import logging
import os
import stat
import struct
from collections.abc import Iterable
from dataclasses import dataclass

from hami.monitor.layout import scan
from hami.monitor.region import REGION_SIZE, SLOTS_OFFSET, Region, RegionError, decode

log = logging.getLogger(__name__)

ACTIVE_NS = 300_000_000  # libvgpu stamps last_kernel_ns every 100 ms while launching
OFF_SWITCH, OFF_RECENT, OFF_MONITOR = 40, 44, 64
_I32 = struct.Struct("<i")
_U64 = struct.Struct("<Q")


@dataclass(frozen=True, slots=True)
class Tenant:
    path: str
    priority: int
    active: bool
    cards: frozenset[str]
    held: bool  # recent_kernel < 0 now
    switch: int  # utilization_switch now


@dataclass(frozen=True, slots=True)
class Decision:
    hold: bool
    switch: int


def decide(tenants: Iterable[Tenant]) -> dict[str, Decision]:
    """Pure: each container's hold and core-limit switch from its card-mates' priority and activity."""
    ts = list(tenants)
    active: dict[str, list[int]] = {}  # card -> sorted priorities of its active containers
    for t in ts:
        if t.active:
            for c in t.cards:
                active.setdefault(c, []).append(t.priority)
    for ps in active.values():
        ps.sort()
    out = {}
    for t in ts:
        hold = switch = False
        for c in t.cards:
            mates = active.get(c)
            if not mates:
                continue
            hold = hold or mates[0] < t.priority  # never itself: its own priority is not below itself
            # another active one of the same or a higher priority (itself discounted)
            switch = switch or bisect.bisect_right(mates, t.priority) - int(t.active) > 0
        out[t.path] = Decision(hold, int(switch))
    return out


def _open(path: str) -> int:
    try:
        fd = os.open(path, os.O_RDWR | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
    except OSError as e:
        raise RegionError(
            "is a symbolic link" if e.errno == errno.ELOOP else f"cannot open: {e.strerror}"
        ) from e
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode) or st.st_size < REGION_SIZE:
        os.close(fd)
        raise RegionError("not a regular file of a region's size")
    return fd


class Feedback:
    """One pass per :meth:`step` over the container directories under ``root``."""

    def __init__(self, root: str) -> None:
        self.root = root
        self._warned: set[str] = set()
        self._bad: dict[str, str] = {}

    def step(self, now_ns: int) -> dict[str, Decision]:
        fds: dict[str, int] = {}
        tenants = []
        try:
            for d in scan(self.root, warned=self._warned):
                if d.cache is None:
                    continue
                try:
                    fd = _open(d.cache)
                    fds[d.cache] = fd
                    r = decode(os.pread(fd, SLOTS_OFFSET, 0), b"")
                except (RegionError, OSError) as e:
                    if self._bad.get(d.cache) != str(e):
                        self._bad[d.cache] = str(e)
                        log.warning("priority feedback skips %s: %s", d.cache, e)
                    continue
                self._bad.pop(d.cache, None)
                tenants.append(_tenant(d.cache, r, now_ns))
            decisions = decide(tenants)
            for t in tenants:
                self._apply(fds[t.path], t, decisions[t.path], now_ns)
            return decisions
        finally:
            for fd in fds.values():
                os.close(fd)

    @staticmethod
    def _apply(fd: int, t: Tenant, d: Decision, now_ns: int) -> None:
        try:
            os.pwrite(fd, _U64.pack(now_ns), OFF_MONITOR)  # the heartbeat first: a hold needs it
            if d.switch != t.switch:
                os.pwrite(fd, _I32.pack(d.switch), OFF_SWITCH)
            if d.hold:
                os.pwrite(fd, _I32.pack(-1), OFF_RECENT)
            elif t.held:
                os.pwrite(fd, _I32.pack(0), OFF_RECENT)
        except OSError as e:
            log.warning("priority feedback cannot write %s: %s", t.path, e.strerror)
        if d.hold != t.held:
            log.info("%s %s", "holding" if d.hold else "releasing", t.path)


def _tenant(path: str, r: Region, now_ns: int) -> Tenant:
    active = bool(r.last_kernel_ns) and now_ns - r.last_kernel_ns < ACTIVE_NS
    cards = frozenset(dev.uuid for dev in r.devices if dev.uuid)
    return Tenant(path, r.priority, active, cards, r.recent_kernel < 0, r.utilization_switch)
