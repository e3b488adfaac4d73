"""Assembles the web UI: informers on nodes, pods and ResourceQuotas feeding the scheduling core's
ledger (as the extender does, :class:`~hami.extender.sync.LedgerSync`), a live-usage poller, and
the HTTP server (:mod:`hami.webui.server`).

Guarantees: the web UI never writes to the API server (its ServiceAccount can only get, list and
watch nodes, pods and resourcequotas); the ledger it builds is its own, so nothing it does can
change a scheduling decision. Live usage is polled every ``usage_interval`` seconds; a monitor or
Prometheus that does not answer is named on the pages and the last good figures of the others
stay.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
from aiohttp import web

from hami import cliutil
from hami.config import DeviceConfig
from hami.devices.registry import default_registry
from hami.extender.sync import LedgerSync
from hami.kube.client import KubeClient
from hami.kube.config import KubeConfig
from hami.kube.informer import Informer, start_synced
from hami.kube.paths import api_path
from hami.protocol import bodies
from hami.scheduling.decide import Scheduler
from hami.webui.explain import ExplainCache, FitCounter
from hami.webui.server import make_app
from hami.webui.usage import FAMILIES, LiveUsage, merged, parse_monitor_metrics, parse_prometheus_vector
from hami.webui.views import MAX_EXPLAINED, Snapshot

log = logging.getLogger(__name__)


@dataclass
class WebUISettings:
    host: str = "0.0.0.0"
    port: int = 8090
    device_config: DeviceConfig = field(default_factory=DeviceConfig.default)
    #: Prometheus base URL (``http://prometheus:9090``); when set, usage comes from it alone
    prometheus_url: str | None = None
    #: monitor ``/metrics`` URLs scraped as they are (besides the discovered ones)
    monitor_urls: tuple[str, ...] = ()
    #: label selector (``k=v,k2=v2``) of the monitor pods to scrape at ``<podIP>:<monitor_port>``
    monitor_selector: str | None = None
    monitor_port: int = 9394
    usage_interval: float = 5.0
    usage_timeout: float = 3.0
    sync_timeout: float = 120.0


def parse_selector(text: str) -> dict[str, str]:
    """An equality label selector ``k=v,k2=v2`` as a dict; raises ValueError naming the bad term."""
    out: dict[str, str] = {}
    for term in filter(None, (t.strip() for t in text.split(","))):
        key, sep, value = term.partition("=")
        if not sep or not key.strip() or value.startswith("="):
            raise ValueError(f"monitor selector: {term!r} is not key=value")
        out[key.strip()] = value.strip()
    if not out:
        raise ValueError("monitor selector: empty")
    return out


def monitor_targets(pods: Any, selector: Mapping[str, str], port: int) -> list[str]:
    """``/metrics`` URLs of the running pods whose labels match ``selector``."""
    urls = []
    for pod in pods:
        labels = bodies.labels(pod)
        if any(labels.get(k) != v for k, v in selector.items()) or bodies.phase(pod) != "Running":
            continue
        ip = bodies.status(pod).get("podIP")
        if isinstance(ip, str) and ip:
            host = f"[{ip}]" if ":" in ip else ip
            urls.append(f"http://{host}:{port}/metrics")
    return sorted(urls)


class WebUI:
    """The running service. ``await start()``, then ``url``; ``await stop()`` to shut down."""

    def __init__(self, kube_config: KubeConfig, settings: WebUISettings) -> None:
        self.settings = settings
        cfg = settings.device_config
        sched_cfg = cfg.hami.scheduler
        self.scheduler_name = cfg.hami.scheduler_name
        self.selector = parse_selector(settings.monitor_selector) if settings.monitor_selector else None
        self.client = KubeClient(kube_config)
        self.scheduler = Scheduler(
            default_registry(cfg),
            node_policy=sched_cfg.node_scheduler_policy,
            gpu_policy=sched_cfg.gpu_scheduler_policy,
        )
        self.sync = LedgerSync(self.scheduler, scheduler_name=self.scheduler_name)
        self.fit_counter = FitCounter(self.scheduler)
        self.explain_cache = ExplainCache(MAX_EXPLAINED)
        #: bumped by every watch event: explanations computed at one version are reused until it changes
        self.version = 0
        self.nodes = self._informer("nodes", self.sync.node_changed, self.sync.node_deleted)
        self.pods = self._informer("pods", self.sync.pod_changed, self.sync.pod_deleted)
        self.quotas = self._informer("resourcequotas", self.sync.quota_changed, self.sync.quota_deleted)
        self.usage = LiveUsage()
        self._http: aiohttp.ClientSession | None = None
        self._poller: asyncio.Task[None] | None = None
        self._runner: web.AppRunner | None = None
        self.port = settings.port

    def _informer(
        self,
        resource: str,
        changed: Callable[[dict[str, Any]], None],
        deleted: Callable[[dict[str, Any]], None],
    ) -> Informer:
        def on_change(obj: dict[str, Any]) -> None:
            self.version += 1
            changed(obj)

        def on_delete(obj: dict[str, Any]) -> None:
            self.version += 1
            deleted(obj)

        return Informer(
            self.client,
            api_path("v1", resource),
            on_add=on_change,
            on_update=lambda _old, new: on_change(new),
            on_delete=on_delete,
            name=f"webui-{resource}",
        )

    # --- data ---------------------------------------------------------------------------------
    def synced(self) -> bool:
        return self.nodes.has_synced and self.pods.has_synced and self.quotas.has_synced

    def snapshot(self) -> Snapshot:
        return Snapshot(
            scheduler=self.scheduler,
            pods=self.pods.values(),
            nodes=self.nodes.values(),
            usage=self.usage,
            scheduler_name=self.scheduler_name,
            pod_errors=self.sync.pod_errors,
            fit_counter=self.fit_counter,
            pod_lookup=self.pods.get,
            explain_cache=self.explain_cache,
            version=self.version,
        )

    async def _get(self, url: str) -> tuple[int, bytes]:
        assert self._http is not None
        timeout = aiohttp.ClientTimeout(total=self.settings.usage_timeout)
        async with self._http.get(url, timeout=timeout) as resp:
            return resp.status, await resp.read()

    async def _scrape(self, url: str) -> LiveUsage:
        try:
            status, body = await self._get(url)
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            return LiveUsage(errors={url: f"{url}: {type(exc).__name__}: {exc}"})
        if status != 200:
            return LiveUsage(errors={url: f"{url}: HTTP {status}"})
        return parse_monitor_metrics(body.decode("utf-8", "replace"), url)

    async def _query(self, base: str, family: str) -> LiveUsage:
        url = f"{base.rstrip('/')}/api/v1/query?query={family}"
        try:
            _status, body = await self._get(url)
            answer = orjson.loads(body)
        except (aiohttp.ClientError, TimeoutError, OSError, ValueError) as exc:
            return LiveUsage(
                errors={f"{base} {family}": f"{base}: query {family}: {type(exc).__name__}: {exc}"}
            )
        return parse_prometheus_vector(family, answer, base)

    async def poll_usage(self) -> LiveUsage:
        """One round over every usage source (concurrently); replaces :attr:`usage` and returns it."""
        s = self.settings
        if s.prometheus_url:
            parts = await asyncio.gather(*(self._query(s.prometheus_url, f) for f in FAMILIES))
            usage = merged(parts)
            if not usage.errors:
                usage.sources.append(s.prometheus_url)
        else:
            urls = list(s.monitor_urls)
            if self.selector is not None:
                urls.extend(monitor_targets(self.pods.values(), self.selector, s.monitor_port))
            usage = merged(await asyncio.gather(*(self._scrape(u) for u in urls)))
        self.usage = usage
        return usage

    async def _poll_forever(self) -> None:
        while True:
            try:
                await self.poll_usage()
            except Exception:  # a bug in one round must not end live usage for good
                log.exception("reading live usage failed")
            await asyncio.sleep(self.settings.usage_interval)

    # --- lifecycle ----------------------------------------------------------------------------
    @property
    def url(self) -> str:
        return f"http://{self.settings.host}:{self.port}"

    async def start(self) -> None:
        self._http = aiohttp.ClientSession()
        await start_synced((self.nodes, self.pods, self.quotas), timeout=self.settings.sync_timeout)
        self._poller = asyncio.create_task(self._poll_forever())
        self._runner = web.AppRunner(make_app(self.snapshot, ready=self.synced), access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, self.settings.host, self.settings.port).start()
        if self.settings.port == 0:
            self.port = int(self._runner.addresses[0][1])
        log.info("hami web UI on %s (%d nodes, %d pods cached)", self.url, len(self.nodes), len(self.pods))

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._poller is not None:
            self._poller.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._poller
            self._poller = None
        await self.quotas.stop()
        await self.pods.stop()
        await self.nodes.stop()
        if self._http is not None:
            await self._http.close()
            self._http = None
        await self.client.close()

    async def run_forever(self) -> None:
        """Start and serve until cancelled; everything started is stopped, also when start fails midway."""
        await cliutil.serve_until_cancelled(self.start, self.stop)
