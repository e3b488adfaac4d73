"""List+watch informer over raw dicts: a local cache of one resource kept in sync by a watch.

::

    pods = Informer(kc, api_path("v1", "pods"), field_selector="spec.schedulerName=hami-scheduler",
                    on_add=ledger.add_pod, on_update=ledger.update_pod, on_delete=ledger.remove_pod)
    pods.start()
    await pods.wait_synced(timeout=30)
    pod = pods.get("default/p")          # cache key: "namespace/name" or "name"
    ...
    await pods.stop()

Guarantees:

* **List, then watch from the list's resourceVersion** with ``allowWatchBookmarks``; bookmarks
  only advance the resume point. A watch that ends (server timeout, dropped connection) resumes
  from the last seen resourceVersion, with exponential backoff on errors.
* **410 Gone** (HTTP status or an ``ERROR`` event) — and any other API error from the watch —
  triggers a **re-list that is diffed against the cache**: objects that vanished meanwhile get a
  synthetic ``on_delete(last_known_obj)``, new ones ``on_add``, changed ones ``on_update``. So no
  delete is ever missed, even across a compaction.
* Objects are keyed by ``ns/name`` but their ``metadata.uid`` is checked: an object deleted and
  recreated under the same name is reported as ``on_delete(old)`` + ``on_add(new)``, never as an
  update.
* Listed items get ``kind``/``apiVersion`` filled in (the API omits them in lists), so cached
  objects look the same whichever way they arrived.

Handlers run in the informer's task, in event order, and may be plain functions or coroutine
functions. Keep them short (no blocking I/O); an exception in a handler is logged and does not
stop the informer. The cache is updated *before* handlers run, so handlers see the new state.
Objects are shared with the cache: treat them as read-only.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import random
from collections.abc import Callable, ItemsView, Iterable, Iterator, ValuesView
from typing import Any

from hami.kube.client import KubeClient
from hami.kube.errors import ApiError, GoneError, KubeError
from hami.protocol import bodies

__all__ = ["Informer"]

log = logging.getLogger(__name__)

Obj = dict[str, Any]
AddHandler = Callable[[Obj], Any]
UpdateHandler = Callable[[Obj, Obj], Any]
DeleteHandler = Callable[[Obj], Any]


class Informer:
    """Keeps ``cache[key] -> obj`` for the objects at ``path`` (a collection path).

    :param path: collection path, e.g. ``api_path("v1", "pods")`` (all namespaces) or
        ``api_path("v1", "pods", namespace="ns")``.
    :param label_selector: / :param field_selector: server-side filters.
    :param resync_period: every so many seconds call ``on_resync(obj)`` for each cached object
        (``None``: never). Useful to retry reconciliation of objects that did not change.
    :param watch_timeout: ``timeoutSeconds`` of each watch request (jittered up to +25%).
    :param page_size: LIST page size (``limit``).
    :param backoff_initial: / :param backoff_max: retry delays after errors (seconds).
    """

    def __init__(
        self,
        client: KubeClient,
        path: str,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        on_add: AddHandler | None = None,
        on_update: UpdateHandler | None = None,
        on_delete: DeleteHandler | None = None,
        on_resync: AddHandler | None = None,
        resync_period: float | None = None,
        watch_timeout: int = 300,
        page_size: int = 500,
        backoff_initial: float = 0.2,
        backoff_max: float = 10.0,
        name: str | None = None,
    ) -> None:
        self._client = client
        self.path = path
        self.label_selector = label_selector
        self.field_selector = field_selector
        self.resync_period = resync_period
        self.watch_timeout = watch_timeout
        self.page_size = page_size
        self.backoff_initial = backoff_initial
        self.backoff_max = backoff_max
        self.name = name or path
        self._on_add: list[AddHandler] = []
        self._on_update: list[UpdateHandler] = []
        self._on_delete: list[DeleteHandler] = []
        self._on_resync: list[AddHandler] = []
        self.add_handlers(on_add=on_add, on_update=on_update, on_delete=on_delete, on_resync=on_resync)
        self._cache: dict[str, Obj] = {}
        self._rv: str | None = None
        self._synced = asyncio.Event()
        self._task: asyncio.Task[None] | None = None
        self._resync_task: asyncio.Task[None] | None = None
        #: number of completed LISTs (1 after the initial sync; more after 410s / errors)
        self.list_count = 0
        #: number of BOOKMARK events received
        self.bookmark_count = 0
        #: number of watch requests opened
        self.watch_count = 0
        #: the last error that interrupted the list/watch loop (for diagnostics)
        self.last_error: BaseException | None = None

    # ------------------------------------------------------------------------------ handlers

    def add_handlers(
        self,
        *,
        on_add: AddHandler | None = None,
        on_update: UpdateHandler | None = None,
        on_delete: DeleteHandler | None = None,
        on_resync: AddHandler | None = None,
    ) -> None:
        """Register more handlers (before :meth:`start`; later ones miss earlier events)."""
        if on_add:
            self._on_add.append(on_add)
        if on_update:
            self._on_update.append(on_update)
        if on_delete:
            self._on_delete.append(on_delete)
        if on_resync:
            self._on_resync.append(on_resync)

    async def _fire(self, handlers: list[Callable[..., Any]], *args: Obj) -> None:
        for h in handlers:
            try:
                result = h(*args)
                if inspect.isawaitable(result):
                    await result
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("informer %s: handler %r failed", self.name, h)

    # ------------------------------------------------------------------------------ cache reads

    def get(self, key: str) -> Obj | None:
        """The cached object for ``"ns/name"`` (namespaced) or ``"name"`` (cluster-scoped)."""
        return self._cache.get(key)

    def get_by_name(self, namespace: str | None, name: str) -> Obj | None:
        return self._cache.get(f"{namespace}/{name}" if namespace else name)

    def keys(self) -> list[str]:
        return list(self._cache)

    def values(self) -> ValuesView[Obj]:
        """A live view of the cached objects (copy with ``list()`` before awaiting)."""
        return self._cache.values()

    def items(self) -> ItemsView[str, Obj]:
        return self._cache.items()

    def __len__(self) -> int:
        return len(self._cache)

    def __contains__(self, key: object) -> bool:
        return key in self._cache

    def __iter__(self) -> Iterator[str]:
        return iter(list(self._cache))

    @property
    def resource_version(self) -> str | None:
        """The resourceVersion the next watch resumes from."""
        return self._rv

    @property
    def has_synced(self) -> bool:
        """True once the first LIST has been loaded into the cache (and handlers fired)."""
        return self._synced.is_set()

    async def wait_synced(self, timeout: float | None = None) -> None:
        """Wait for the initial sync; raises ``TimeoutError`` after ``timeout`` seconds."""
        if timeout is None:
            await self._synced.wait()
        else:
            async with asyncio.timeout(timeout):
                await self._synced.wait()

    # ------------------------------------------------------------------------------ lifecycle

    def start(self) -> asyncio.Task[None]:
        """Start the list/watch loop in a task (idempotent); returns the task."""
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self.run(), name=f"informer:{self.name}")
            if self.resync_period:
                self._resync_task = asyncio.create_task(self._resync_loop(), name=f"resync:{self.name}")
        return self._task

    async def stop(self) -> None:
        """Stop the loop and close its watch; the cache stays readable."""
        for task in (self._resync_task, self._task):
            if task is not None and not task.done():
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        self._task = self._resync_task = None

    async def run(self) -> None:
        """The list/watch loop; runs until cancelled (use :meth:`start`/:meth:`stop`)."""
        backoff = self.backoff_initial
        need_list = True
        while True:
            try:
                if need_list:
                    await self._list_and_replace()
                    need_list = False
                    backoff = self.backoff_initial
                await self._watch()
                backoff = self.backoff_initial
                continue
            except GoneError as exc:
                self.last_error = exc
                log.info("informer %s: %s; re-listing", self.name, exc)
                need_list = True
                continue
            except ApiError as exc:
                # Anything else the server refuses: start over from a fresh list (always correct).
                self.last_error = exc
                log.warning("informer %s: %s; re-listing in %.1fs", self.name, exc, backoff)
                need_list = True
            except KubeError as exc:  # transport: resume the watch from the last RV
                self.last_error = exc
                log.info("informer %s: %s; retrying in %.1fs", self.name, exc, backoff)
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                self.last_error = exc
                log.exception("informer %s: unexpected error; re-listing in %.1fs", self.name, backoff)
                need_list = True
            await asyncio.sleep(backoff * random.uniform(0.8, 1.2))
            backoff = min(backoff * 2, self.backoff_max)

    # ------------------------------------------------------------------------------ list / watch

    async def _list_and_replace(self) -> None:
        listed = await self._client.list(
            self.path,
            label_selector=self.label_selector,
            field_selector=self.field_selector,
            limit=self.page_size,
        )
        rv = bodies.list_meta(listed).get("resourceVersion")
        items: list[Obj] = listed.get("items") or []
        kind = str(listed.get("kind") or "")
        kind = kind[: -len("List")] if kind.endswith("List") else ""
        api_version = listed.get("apiVersion")
        fresh: dict[str, Obj] = {}
        for obj in items:
            if kind:
                obj.setdefault("kind", kind)
            if api_version:
                obj.setdefault("apiVersion", api_version)
            fresh[bodies.object_key(obj)] = obj
        await self._replace(fresh)
        self._rv = str(rv) if rv is not None else None
        self.list_count += 1
        if not self._synced.is_set():
            log.debug("informer %s: synced %d objects at rv %s", self.name, len(fresh), rv)
            self._synced.set()

    async def _replace(self, fresh: dict[str, Obj]) -> None:
        """Make the cache equal ``fresh``, firing the events a watch would have delivered."""
        old_cache = self._cache
        for key, old in list(old_cache.items()):
            new = fresh.get(key)
            if new is None or bodies.uid(new) != bodies.uid(old):
                del self._cache[key]
                await self._fire(self._on_delete, old)
        for key, obj in fresh.items():
            old_obj = self._cache.get(key)
            self._cache[key] = obj
            if old_obj is None:
                await self._fire(self._on_add, obj)
            elif bodies.resource_version(old_obj) != bodies.resource_version(obj):
                await self._fire(self._on_update, old_obj, obj)

    async def _watch(self) -> None:
        timeout = int(self.watch_timeout * random.uniform(1.0, 1.25)) if self.watch_timeout else None
        self.watch_count += 1
        async with self._client.watch(
            self.path,
            resource_version=self._rv,
            label_selector=self.label_selector,
            field_selector=self.field_selector,
            allow_bookmarks=True,
            timeout_seconds=timeout,
        ) as stream:
            async for event in stream:
                etype = event.get("type")
                obj = event.get("object")
                if not isinstance(obj, dict):
                    continue
                rv = bodies.resource_version(obj)
                if etype == "BOOKMARK":
                    self.bookmark_count += 1
                elif etype in ("ADDED", "MODIFIED"):
                    await self._upsert(obj)
                elif etype == "DELETED":
                    await self._remove(obj)
                else:
                    log.warning("informer %s: unknown event type %r", self.name, etype)
                    continue
                if rv:
                    self._rv = rv

    async def _upsert(self, obj: Obj) -> None:
        key = bodies.object_key(obj)
        old = self._cache.get(key)
        self._cache[key] = obj
        if old is None:
            await self._fire(self._on_add, obj)
        elif bodies.uid(old) != bodies.uid(obj):
            await self._fire(self._on_delete, old)
            await self._fire(self._on_add, obj)
        else:
            await self._fire(self._on_update, old, obj)

    async def _remove(self, obj: Obj) -> None:
        old = self._cache.pop(bodies.object_key(obj), None)
        if old is not None and bodies.uid(old) != bodies.uid(obj):
            # A newer incarnation is cached; the stale one being deleted is not ours to drop.
            self._cache[bodies.object_key(obj)] = old
            return
        await self._fire(self._on_delete, obj)

    async def _resync_loop(self) -> None:
        assert self.resync_period
        await self._synced.wait()
        while True:
            await asyncio.sleep(self.resync_period)
            for obj in list(self._cache.values()):
                await self._fire(self._on_resync, obj)


async def start_synced(informers: Iterable[Informer | None], timeout: float | None = None) -> None:
    """Start the informers one after another, each synced (``TimeoutError`` after ``timeout``
    seconds) before the next starts, so that each one's handlers see what the earlier ones cached;
    None (an informer that is off) is passed over."""
    for informer in informers:
        if informer is not None:
            informer.start()
            await informer.wait_synced(timeout=timeout)
