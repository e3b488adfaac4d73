"""`hami monitor`'s service: the pod list, the metrics endpoint and the directory collector.

Threads: the informer and the collection loop run on the asyncio loop; the metrics endpoint
(:mod:`hami.monitor.http`) serves on its own thread and runs :class:`MonitorCollector` at each
scrape (it reads the pod list through :class:`PodDirectory`'s lock).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from hami.deviceplugin.hostinstall import vgpu_dir
from hami.monitor.cards import LIBRARY, CardReader
from hami.monitor.feedback import Feedback
from hami.monitor.http import MetricsServer
from hami.monitor.layout import GarbageCollector, PodDirectory
from hami.monitor.metrics import MonitorCollector

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MonitorSettings:
    node_name: str
    hook_path: str = "/usr/local"
    metrics_host: str = "0.0.0.0"
    metrics_port: int = 9394
    #: a directory whose pod is gone is removed after this long (HAMi: HAMI_RESYNC_INTERVAL, 5 min)
    gc_grace: float = 300.0
    gc_interval: float = 30.0
    nvml: bool = True
    #: the NVML library: a soname found the usual way (a real node: the NVIDIA container runtime
    #: puts the host driver's there) or a path (a host directory mounted in, e.g. a sandbox's)
    nvml_library: str = LIBRARY
    #: seconds between priority-feedback passes (None: off); see :mod:`hami.monitor.feedback`
    feedback_interval: float | None = 0.5
    #: also export HAMi's pre-2.10 metric names (HAMi's --legacy-metrics)
    legacy_metrics: bool = False

    @property
    def containers_dir(self) -> str:
        return f"{vgpu_dir(self.hook_path)}/containers"


def _version() -> str:
    try:
        return version("hami")
    except PackageNotFoundError:  # pragma: no cover - running from a source tree
        return ""


class Monitor:
    def __init__(self, settings: MonitorSettings, client: Any | None) -> None:
        self.settings = settings
        self.client = client
        self.pods = PodDirectory()
        self.cards = CardReader(settings.nvml_library) if settings.nvml else None
        self.collector = MonitorCollector(
            settings.containers_dir,
            settings.node_name,
            self.pods,
            self.cards,
            version=_version(),
            legacy=settings.legacy_metrics,
        )
        self.gc = GarbageCollector(settings.containers_dir, self.pods, grace=settings.gc_grace)
        self.metrics_port: int | None = None

    async def run(self, stop: asyncio.Event) -> None:
        server = MetricsServer(self.settings.metrics_host, self.settings.metrics_port, self.collector)
        server.start()
        self.metrics_port = server.port
        log.info(
            "serving metrics on %s:%d; reading %s for node %s",
            self.settings.metrics_host,
            self.metrics_port,
            self.settings.containers_dir,
            self.settings.node_name,
        )
        informer = None
        feedback = asyncio.create_task(self._feedback()) if self.settings.feedback_interval else None
        try:
            if self.client is not None:
                informer = await self._start_informer()
            while not stop.is_set():
                if informer is not None and informer.has_synced:
                    removed = await asyncio.to_thread(self.gc.run_once, time.monotonic(), time.time())
                    for path in removed:
                        log.info("collected %s", path)
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop.wait(), self.settings.gc_interval)
        finally:
            if feedback is not None:
                feedback.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await feedback
            if informer is not None:
                await informer.stop()
            server.stop()
            if self.cards is not None:
                self.cards.close()

    async def _feedback(self) -> None:
        """Priority feedback passes (they need no pod list: regions carry priority and cards)."""
        fb = Feedback(self.settings.containers_dir)
        interval = self.settings.feedback_interval or 0.5
        while True:
            try:
                await asyncio.to_thread(fb.step, time.monotonic_ns())
            except Exception:  # a bug must not stop the loop for good; libvgpu drops stale holds
                log.exception("priority feedback pass failed")
            await asyncio.sleep(interval)

    async def _start_informer(self) -> Any:
        from hami.kube.informer import Informer
        from hami.kube.paths import api_path

        informer = Informer(
            self.client,  # type: ignore[arg-type]
            api_path("v1", "pods"),
            field_selector=f"spec.nodeName={self.settings.node_name}",
            on_add=self.pods.add,
            on_update=self.pods.update,
            on_delete=self.pods.remove,
            name="monitor-pods",
        )
        informer.start()
        await informer.wait_synced()
        self.pods.mark_synced()
        log.info("pod list synced: %d pod(s) on %s", len(informer), self.settings.node_name)
        return informer
