"""The node's cards as the driver sees them, through NVML (`libnvidia-ml.so.1`).

The monitor needs eight NVML calls, bound here with ctypes: `nvidia-ml-py`'s `pynvml` (which the
device plugin uses) defines every NVML structure at import and costs ~16 MB of resident memory,
a quarter of the monitor's budget (issue 11: RSS <= 60 MB). Same library, same symbols (`_v2`
where NVML versions them), same soname lookup as pynvml.

One :class:`CardReader` per process: NVML is initialised once and each :meth:`CardReader.read`
queries every card. A query the driver does not support (or the fake NVML in tests lacks) leaves
that field ``None`` and its metric absent; when NVML cannot be loaded or initialised the reader
logs it and retries at most once a minute, so host metrics are simply absent meanwhile.
"""

from __future__ import annotations

import ctypes
import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

RETRY_SECONDS = 60.0
LIBRARY = "libnvidia-ml.so.1"
_BUF = 96  # NVML_DEVICE_UUID_V2_BUFFER_SIZE / NVML_DEVICE_NAME_V2_BUFFER_SIZE


class _Memory(ctypes.Structure):
    _fields_ = [("total", ctypes.c_ulonglong), ("free", ctypes.c_ulonglong), ("used", ctypes.c_ulonglong)]


class _Utilization(ctypes.Structure):
    _fields_ = [("gpu", ctypes.c_uint), ("memory", ctypes.c_uint)]


@dataclass(frozen=True, slots=True)
class HostCard:
    index: int
    uuid: str
    type: str
    memory_total: int | None
    memory_used: int | None
    utilization: float | None  # percent, whole card
    memory_utilization: float | None  # percent, memory controller


class NvmlError(Exception):
    pass


class _Nvml:
    """The few NVML entry points the monitor calls. Not thread-safe: :class:`CardReader` locks."""

    def __init__(self, library: str = LIBRARY) -> None:
        try:
            self.lib: Any = ctypes.CDLL(library)
        except OSError as e:
            raise NvmlError(f"cannot load {library}: {e}") from e
        init = getattr(self.lib, "nvmlInit_v2", None) or getattr(self.lib, "nvmlInit", None)
        if init is None:
            raise NvmlError(f"{library} has no nvmlInit")
        self._check(init(), "nvmlInit")

    def _error(self, rc: int) -> str:
        fn = getattr(self.lib, "nvmlErrorString", None)
        if fn is not None:
            fn.restype = ctypes.c_char_p
            text = fn(rc)
            if text:
                return f"{text.decode(errors='replace')} ({rc})"
        return f"NVML error {rc}"

    def _check(self, rc: int, what: str) -> None:
        if rc != 0:
            raise NvmlError(f"{what}: {self._error(rc)}")

    def _fn(self, *names: str) -> Any:
        for n in names:
            fn = getattr(self.lib, n, None)
            if fn is not None:
                return fn
        raise NvmlError(f"{names[0]} is not in the driver's NVML")

    def count(self) -> int:
        n = ctypes.c_uint()
        self._check(self._fn("nvmlDeviceGetCount_v2", "nvmlDeviceGetCount")(ctypes.byref(n)), "device count")
        return n.value

    def handle(self, index: int) -> ctypes.c_void_p:
        h = ctypes.c_void_p()
        fn = self._fn("nvmlDeviceGetHandleByIndex_v2", "nvmlDeviceGetHandleByIndex")
        self._check(fn(ctypes.c_uint(index), ctypes.byref(h)), f"card {index}")
        return h

    def text(self, fn: str, h: ctypes.c_void_p) -> str:
        buf = ctypes.create_string_buffer(_BUF)
        self._check(self._fn(fn)(h, buf, ctypes.c_uint(_BUF)), fn)
        return buf.value.decode(errors="replace")

    def memory(self, h: ctypes.c_void_p) -> _Memory:
        m = _Memory()
        self._check(self._fn("nvmlDeviceGetMemoryInfo")(h, ctypes.byref(m)), "memory info")
        return m

    def utilization(self, h: ctypes.c_void_p) -> _Utilization:
        u = _Utilization()
        self._check(self._fn("nvmlDeviceGetUtilizationRates")(h, ctypes.byref(u)), "utilization")
        return u

    def shutdown(self) -> None:
        fn = getattr(self.lib, "nvmlShutdown", None)
        if fn is not None:
            fn()


class CardReader:
    def __init__(self, library: str = LIBRARY) -> None:
        self.library = library
        self._nvml: _Nvml | None = None
        self._next_try = 0.0
        self._lock = threading.Lock()

    def _init(self) -> _Nvml | None:
        now = time.monotonic()
        if self._nvml is not None or now < self._next_try:
            return self._nvml
        self._next_try = now + RETRY_SECONDS
        try:
            self._nvml = _Nvml(self.library)
        except NvmlError as e:
            log.warning("NVML unavailable, host card metrics are off (retry in %.0f s): %s", RETRY_SECONDS, e)
        return self._nvml

    def close(self) -> None:
        with self._lock:
            if self._nvml is not None:
                self._nvml.shutdown()
                self._nvml = None

    def read(self) -> list[HostCard]:
        with self._lock:
            n = self._init()
            if n is None:
                return []
            try:
                count = n.count()
            except NvmlError as e:
                log.warning("%s", e)
                return []
            return [c for c in (self._card(n, i) for i in range(count)) if c is not None]

    @staticmethod
    def _card(n: _Nvml, index: int) -> HostCard | None:
        try:
            h = n.handle(index)
            uuid = n.text("nvmlDeviceGetUUID", h)
        except NvmlError as e:
            log.warning("NVML: %s", e)
            return None
        try:
            name = n.text("nvmlDeviceGetName", h)
        except NvmlError:
            name = ""
        try:
            mem: _Memory | None = n.memory(h)
        except NvmlError:  # NOT_SUPPORTED on unified-memory cards: the series is left out, as HAMi
            mem = None
        try:
            util: _Utilization | None = n.utilization(h)
        except NvmlError:
            util = None
        return HostCard(
            index=index,
            uuid=uuid,
            type=name,
            memory_total=int(mem.total) if mem is not None else None,
            memory_used=int(mem.used) if mem is not None else None,
            utilization=float(util.gpu) if util is not None else None,
            memory_utilization=float(util.memory) if util is not None else None,
        )
