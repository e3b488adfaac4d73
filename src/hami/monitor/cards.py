"""The node's cards as the driver sees them, through NVML (`nvidia-ml-py`'s `pynvml`).

One :class:`CardReader` per process: NVML is initialised once and each :meth:`CardReader.read`
queries every card. A query the driver does not support (or the fake NVML in tests lacks) leaves
that field ``None`` and its metric absent; when NVML cannot be initialised at all the reader
logs it and retries at most once a minute, so host metrics are simply absent meanwhile.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import dataclass
from typing import Any

log = logging.getLogger(__name__)

RETRY_SECONDS = 60.0


@dataclass(frozen=True, slots=True)
class HostCard:
    index: int
    uuid: str
    type: str
    memory_total: int | None
    memory_used: int | None
    utilization: float | None  # percent, whole card
    memory_utilization: float | None  # percent, memory controller


def _s(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)


class CardReader:
    def __init__(self) -> None:
        self._nvml: Any = None
        self._next_try = 0.0
        self._lock = threading.Lock()

    def _init(self) -> Any:
        now = time.monotonic()
        if self._nvml is not None or now < self._next_try:
            return self._nvml
        self._next_try = now + RETRY_SECONDS
        try:
            import pynvml

            pynvml.nvmlInit()
        except Exception as e:  # ImportError, NVMLError (no driver), OSError
            log.warning("NVML unavailable, host card metrics are off (retry in %.0f s): %s", RETRY_SECONDS, e)
            return None
        self._nvml = pynvml
        return pynvml

    def close(self) -> None:
        with self._lock:
            if self._nvml is not None:
                try:
                    self._nvml.nvmlShutdown()
                except Exception as e:  # pragma: no cover - best effort at exit
                    log.debug("nvmlShutdown: %s", e)
                self._nvml = None

    def read(self) -> list[HostCard]:
        with self._lock:
            n = self._init()
            if n is None:
                return []
            try:
                count = n.nvmlDeviceGetCount()
            except n.NVMLError as e:
                log.warning("NVML device count failed: %s", e)
                return []
            return [c for c in (self._card(n, i) for i in range(count)) if c is not None]

    @staticmethod
    def _card(n: Any, index: int) -> HostCard | None:
        try:
            h = n.nvmlDeviceGetHandleByIndex(index)
            uuid = _s(n.nvmlDeviceGetUUID(h))
        except n.NVMLError as e:
            log.warning("NVML card %d: %s", index, e)
            return None

        def q(fn: str) -> Any:
            try:
                return getattr(n, fn)(h)
            except (n.NVMLError, AttributeError):
                return None

        name = q("nvmlDeviceGetName")
        mem = q("nvmlDeviceGetMemoryInfo")
        util = q("nvmlDeviceGetUtilizationRates")
        return HostCard(
            index=index,
            uuid=uuid,
            type=_s(name) if name is not None else "",
            memory_total=int(mem.total) if mem is not None else None,
            memory_used=int(mem.used) if mem is not None else None,
            utilization=float(util.gpu) if util is not None else None,
            memory_utilization=float(util.memory) if util is not None else None,
        )
