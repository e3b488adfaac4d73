"""Async Kubernetes REST client over aiohttp that keeps objects as raw dicts.

One :class:`KubeClient` owns one ``aiohttp.ClientSession`` (created lazily inside the running
event loop) with a large read buffer so that single watch events of several MB are never
rejected. Bodies are encoded and decoded with orjson; no typed models anywhere.

Paths are plain REST paths (see :func:`hami.kube.paths.api_path`)::

    async with KubeClient(load_config()) as kc:
        pod = await kc.get(api_path("v1", "pods", namespace="default", name="p"))
        pod = await kc.merge_patch(path, {"metadata": {"annotations": {"a": "b"}}},
                                   resource_version=pod["metadata"]["resourceVersion"])
        await kc.bind_pod("default", "p", uid=pod["metadata"]["uid"], node="node-a")

Every failure is a :class:`hami.kube.errors.KubeError`: an :class:`~hami.kube.errors.ApiError`
subclass for an error status, :class:`~hami.kube.errors.TransportError` for no answer at all.
"""

from __future__ import annotations

import builtins
import logging
import time
from collections.abc import Awaitable, Callable, Mapping
from types import TracebackType
from typing import Any, Self
from urllib.parse import urlencode

import aiohttp
import orjson
from yarl import URL

from hami.kube.config import KubeConfig
from hami.kube.errors import ConflictError, TransportError, error_from_status
from hami.kube.execauth import ExecCredential, ExecCredentialError
from hami.kube.paths import api_path
from hami.kube.times import rfc3339
from hami.protocol import bodies

__all__ = [
    "JSON_PATCH",
    "MERGE_PATCH",
    "STRATEGIC_MERGE_PATCH",
    "KubeClient",
    "WatchStream",
    "retry_merge_patch",
]

log = logging.getLogger(__name__)

MERGE_PATCH = "application/merge-patch+json"
JSON_PATCH = "application/json-patch+json"
STRATEGIC_MERGE_PATCH = "application/strategic-merge-patch+json"

Obj = dict[str, Any]
ParamValue = str | int | bool | None


def _decode(raw: bytes) -> Any:
    if not raw:
        return None
    try:
        return orjson.loads(raw)
    except orjson.JSONDecodeError:
        return raw


def _query(params: Mapping[str, ParamValue] | None) -> str:
    if not params:
        return ""
    flat: list[tuple[str, str]] = []
    for k, v in params.items():
        if v is None:
            continue
        flat.append((k, ("true" if v else "false") if isinstance(v, bool) else str(v)))
    return urlencode(flat)


async def retry_merge_patch(
    mutate: Callable[[Obj], Obj | None],
    *,
    fetch: Callable[[], Awaitable[Obj]],
    send: Callable[[Obj, str | None], Awaitable[Obj]],
    current: Obj | None = None,
    attempts: int = 8,
    what: str = "object",
) -> Obj:
    """The loop behind :meth:`KubeClient.patch_with_retry`, over any way of reading (``fetch()``)
    and merge-patching (``send(patch, resourceVersion)``) one object: for API access that is not a
    bare KubeClient (the device plugin's ``KubeOps``, test doubles). Same contract: ``mutate``
    returns the patch or ``None``; conflicts re-read and retry; after ``attempts`` conflicts the
    last ConflictError propagates; anything ``mutate`` raises propagates at once."""
    obj = current if current is not None else await fetch()
    for attempt in range(1, attempts + 1):
        patch = mutate(obj)
        if patch is None:
            return obj
        rv = bodies.resource_version(obj)
        try:
            return await send(patch, rv)
        except ConflictError:
            if attempt == attempts:
                raise
            log.debug("conflict patching %s (attempt %d); re-reading", what, attempt)
            obj = await fetch()
    raise AssertionError("unreachable")  # pragma: no cover


class KubeClient:
    """Async API client. Use as ``async with KubeClient(cfg) as kc`` or call :meth:`close`.

    :param timeout: default total timeout (seconds) of non-watch requests.
    :param read_bufsize: aiohttp read buffer; large so one huge watch event fits.
    :param connection_limit: size of the connection pool.
    """

    def __init__(
        self,
        config: KubeConfig,
        *,
        timeout: float = 30.0,
        read_bufsize: int = 2**22,
        connection_limit: int = 64,
        user_agent: str = "hami",
    ) -> None:
        self.config = config
        self.timeout = timeout
        self._read_bufsize = read_bufsize
        self._connection_limit = connection_limit
        self._user_agent = user_agent
        self._base = config.server.rstrip("/")
        self._ssl = config.ssl_context()
        self._session: aiohttp.ClientSession | None = None
        #: the exec-plugin credential whose client certificate the current session presents
        self._session_cred: ExecCredential | None = None

    # ------------------------------------------------------------------------------ lifecycle

    async def __aenter__(self) -> Self:
        self._get_session()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    async def close(self) -> None:
        """Close the HTTP session (idempotent)."""
        if self._session is not None and not self._session.closed:
            await self._session.close()
        self._session = None

    def _get_session(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            connector = aiohttp.TCPConnector(
                ssl=self._ssl if self._ssl is not None else True, limit=self._connection_limit
            )
            self._session = aiohttp.ClientSession(
                connector=connector, read_bufsize=self._read_bufsize, raise_for_status=False
            )
        return self._session

    def _url(self, path: str, params: Mapping[str, ParamValue] | None) -> URL:
        q = _query(params)
        return URL(f"{self._base}{path}{'?' + q if q else ''}", encoded=True)

    async def _prepare(self, content_type: str | None) -> tuple[aiohttp.ClientSession, dict[str, str]]:
        """The session and headers for one request, with fresh exec-plugin credentials.

        A plugin's client certificate lives in the TLS context, so a new one (rotation, or after a
        401) replaces the session; requests in flight on the old one fail and are retried by their
        callers like any dropped connection.
        """
        h = {"Accept": "application/json", "User-Agent": self._user_agent}
        if content_type:
            h["Content-Type"] = content_type
        source = self.config.exec_source
        if source is None:
            token = self.config.bearer_token()
        else:
            try:
                cred = await source.credential_async()
            except ExecCredentialError as exc:
                raise TransportError(f"credentials: {exc}") from exc
            if cred.client_cert_data and cred.client_key_data and cred is not self._session_cred:
                self._ssl = self.config.ssl_context((cred.client_cert_data, cred.client_key_data))
                self._session_cred = cred
                await self.close()
            token = cred.token or self.config.token
        if token:
            h["Authorization"] = f"Bearer {token}"
        return self._get_session(), h

    def _unauthorized(self) -> bool:
        """After a 401: drop exec-plugin credentials so the next attempt runs the plugin again.
        True when a retry can help."""
        if self.config.exec_source is None:
            return False
        self.config.exec_source.invalidate()
        return True

    # ------------------------------------------------------------------------------ raw request

    async def request(
        self,
        method: str,
        path: str,
        *,
        params: Mapping[str, ParamValue] | None = None,
        body: Any = None,
        content_type: str = "application/json",
        timeout: float | None = None,
        raw: bool = False,
    ) -> Any:
        """Send one request and return the decoded JSON reply (``None`` for an empty body).

        ``body`` is JSON-encoded unless it is already ``bytes``; ``raw`` returns the reply's bytes
        undecoded. Raises an
        :class:`~hami.kube.errors.ApiError` subclass for status >= 400 and
        :class:`~hami.kube.errors.TransportError` when no answer arrives.
        """
        data = None if body is None else body if isinstance(body, bytes) else orjson.dumps(body)
        kwargs: dict[str, Any] = {}
        if self.config.tls_server_name:
            kwargs["server_hostname"] = self.config.tls_server_name
        for attempt in (1, 2):
            session, headers = await self._prepare(content_type if data is not None else None)
            try:
                async with session.request(
                    method,
                    self._url(path, params),
                    data=data,
                    headers=headers,
                    timeout=aiohttp.ClientTimeout(total=timeout if timeout is not None else self.timeout),
                    **kwargs,
                ) as resp:
                    body_bytes = await resp.read()
                    status = resp.status
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                raise TransportError(f"{method} {path}: {type(exc).__name__}: {exc}") from exc
            # a refused exec-plugin credential (revoked, clock skew) is fetched again once
            if not (status == 401 and attempt == 1 and self._unauthorized()):
                break
        if status >= 400:
            raise error_from_status(status, _decode(body_bytes))
        if raw:
            return body_bytes
        decoded = _decode(body_bytes)
        if isinstance(decoded, bytes):
            raise TransportError(f"{method} {path}: reply is not JSON: {decoded[:200]!r}")
        return decoded

    # ------------------------------------------------------------------------------ reads

    async def get(self, path: str, *, params: Mapping[str, ParamValue] | None = None) -> Obj:
        """GET one object (or any JSON document, e.g. ``/version``)."""
        out: Obj = await self.request("GET", path, params=params)
        return out

    async def get_text(self, path: str, *, params: Mapping[str, ParamValue] | None = None) -> str:
        """GET a plain-text document (e.g. ``pods/<name>/log``)."""
        body: bytes = await self.request("GET", path, params=params, raw=True)
        return body.decode(errors="replace")

    async def list(
        self,
        path: str,
        *,
        label_selector: str | None = None,
        field_selector: str | None = None,
        limit: int | None = 500,
        resource_version: str | None = None,
        resource_version_match: str | None = None,
        timeout: float | None = None,
    ) -> Obj:
        """LIST a collection, following ``continue`` tokens until all pages are read.

        Returns the last page with ``items`` replaced by the items of every page; all pages share
        one snapshot, so ``metadata.resourceVersion`` is the RV to start a watch from. An expired
        continue token raises :class:`~hami.kube.errors.GoneError` (restart the list).
        """
        items: list[Obj] = []
        cont: str | None = None
        while True:
            params: dict[str, ParamValue] = {
                "labelSelector": label_selector,
                "fieldSelector": field_selector,
                "limit": limit,
                "continue": cont,
            }
            if cont is None:
                params["resourceVersion"] = resource_version
                params["resourceVersionMatch"] = resource_version_match
            page: Obj = await self.request("GET", path, params=params, timeout=timeout)
            items.extend(page.get("items") or [])
            cont = bodies.list_meta(page).get("continue") or None
            if not cont:
                page["items"] = items
                return page

    def watch(
        self,
        path: str,
        *,
        resource_version: str | None = None,
        label_selector: str | None = None,
        field_selector: str | None = None,
        allow_bookmarks: bool = True,
        timeout_seconds: int | None = 300,
        send_initial_events: bool = False,
    ) -> WatchStream:
        """Open a watch; use as ``async with kc.watch(path, resource_version=rv) as events:``.

        Yields event dicts ``{"type": "ADDED"|"MODIFIED"|"DELETED"|"BOOKMARK", "object": {...}}``.
        An ``ERROR`` event is raised as the matching :class:`~hami.kube.errors.ApiError`
        (:class:`~hami.kube.errors.GoneError` for an expired resourceVersion), so is an HTTP error.
        The stream ends normally when the server closes it (``timeout_seconds``).
        """
        params: dict[str, ParamValue] = {
            "watch": True,
            "resourceVersion": resource_version,
            "labelSelector": label_selector,
            "fieldSelector": field_selector,
            "allowWatchBookmarks": True if allow_bookmarks else None,
            "timeoutSeconds": timeout_seconds,
        }
        if send_initial_events:
            params["sendInitialEvents"] = True
            params["resourceVersionMatch"] = "NotOlderThan"
        read_timeout = None if timeout_seconds is None else timeout_seconds + 60.0
        return WatchStream(self, path, params, read_timeout)

    # ------------------------------------------------------------------------------ writes

    async def create(self, path: str, body: Obj, *, params: Mapping[str, ParamValue] | None = None) -> Obj:
        """POST ``body`` to a collection path; returns the created object."""
        out: Obj = await self.request("POST", path, params=params, body=body)
        return out

    async def replace(self, path: str, body: Obj) -> Obj:
        """PUT the whole object; ``metadata.resourceVersion`` in ``body`` is a precondition (409)."""
        out: Obj = await self.request("PUT", path, body=body)
        return out

    async def patch(
        self,
        path: str,
        body: Any,
        *,
        content_type: str = MERGE_PATCH,
        params: Mapping[str, ParamValue] | None = None,
    ) -> Obj:
        """PATCH with an explicit patch type (:data:`MERGE_PATCH`, :data:`JSON_PATCH`, ...)."""
        out: Obj = await self.request("PATCH", path, params=params, body=body, content_type=content_type)
        return out

    async def merge_patch(self, path: str, patch: Obj, *, resource_version: str | None = None) -> Obj:
        """JSON merge patch (RFC 7386); returns the patched object.

        With ``resource_version`` the patch carries ``metadata.resourceVersion``, which the API
        server treats as a precondition: a stale version raises
        :class:`~hami.kube.errors.ConflictError`.
        """
        if resource_version is not None:
            meta = dict(bodies.meta(patch))
            meta["resourceVersion"] = resource_version
            patch = {**patch, "metadata": meta}
        return await self.patch(path, patch, content_type=MERGE_PATCH)

    async def json_patch(self, path: str, ops: builtins.list[Obj]) -> Obj:
        """JSON patch (RFC 6902); add ``{"op": "test", ...}`` operations for preconditions."""
        return await self.patch(path, ops, content_type=JSON_PATCH)

    async def patch_with_retry(
        self,
        path: str,
        mutate: Callable[[Obj], Obj | None],
        *,
        current: Obj | None = None,
        getter: Callable[[], Awaitable[Obj]] | None = None,
        attempts: int = 8,
    ) -> Obj:
        """Optimistic read-modify-write with a merge patch, retried on conflict.

        ``mutate(obj)`` returns the merge patch to apply to ``obj`` (or ``None`` when nothing needs
        to change, which returns ``obj`` unchanged). The patch is sent with ``obj``'s
        resourceVersion as precondition; on :class:`~hami.kube.errors.ConflictError` the object
        is read again (``getter()``, default GET ``path``) and ``mutate`` is called again.
        ``current`` (e.g. from an informer cache) saves the first GET. After ``attempts``
        conflicts the last ConflictError propagates. The loop is :func:`retry_merge_patch`.
        """

        async def send(patch: Obj, rv: str | None) -> Obj:
            return await self.merge_patch(path, patch, resource_version=rv)

        return await retry_merge_patch(
            mutate,
            fetch=getter if getter is not None else lambda: self.get(path),
            send=send,
            current=current,
            attempts=attempts,
            what=path,
        )

    async def delete(
        self,
        path: str,
        *,
        uid: str | None = None,
        resource_version: str | None = None,
        grace_period_seconds: int | None = None,
        propagation_policy: str | None = None,
    ) -> Obj | None:
        """DELETE with optional ``uid`` / ``resourceVersion`` preconditions (409 on mismatch).

        Returns the server's reply (the object or a Status). A missing object raises
        :class:`~hami.kube.errors.NotFoundError`.
        """
        body: Obj = {"apiVersion": "v1", "kind": "DeleteOptions"}
        pre: dict[str, str] = {}
        if uid is not None:
            pre["uid"] = uid
        if resource_version is not None:
            pre["resourceVersion"] = resource_version
        if pre:
            body["preconditions"] = pre
        if grace_period_seconds is not None:
            body["gracePeriodSeconds"] = grace_period_seconds
        if propagation_policy is not None:
            body["propagationPolicy"] = propagation_policy
        out: Obj | None = await self.request("DELETE", path, body=body)
        return out

    # ------------------------------------------------------------------------------ pod helpers

    async def bind_pod(
        self,
        namespace: str,
        name: str,
        *,
        uid: str,
        node: str,
        annotations: Mapping[str, str] | None = None,
    ) -> Obj:
        """POST ``pods/<name>/binding``: assign the pod to ``node`` if its UID is still ``uid``.

        ``annotations`` are merged into the pod atomically with the bind. The reply is a
        ``Status`` (not a Binding). A different UID (pod deleted and recreated) or an already
        bound pod raises :class:`~hami.kube.errors.ConflictError`; a missing pod
        :class:`~hami.kube.errors.NotFoundError`.
        """
        meta: Obj = {"name": name, "namespace": namespace, "uid": uid}
        if annotations:
            meta["annotations"] = dict(annotations)
        body = {
            "apiVersion": "v1",
            "kind": "Binding",
            "metadata": meta,
            "target": {"apiVersion": "v1", "kind": "Node", "name": node},
        }
        return await self.create(
            api_path("v1", "pods", namespace=namespace, name=name, subresource="binding"), body
        )

    async def create_event(
        self,
        involved: Obj,
        *,
        reason: str,
        message: str,
        type: str = "Normal",
        component: str = "hami",
        host: str | None = None,
        kind: str | None = None,
        api_version: str | None = None,
    ) -> Obj:
        """Create a core/v1 Event about ``involved`` (a raw object dict, e.g. a cached pod).

        ``type`` is ``"Normal"`` or ``"Warning"``. ``kind``/``api_version`` default to the
        object's own fields, else ``Pod``/``v1`` (list items carry no kind). Shown by
        ``kubectl describe``. The message is truncated to 1024 characters.
        """
        meta = bodies.meta(involved)
        ns = meta.get("namespace") or "default"
        obj_name = meta.get("name", "")
        now = rfc3339()
        ref: Obj = {
            "apiVersion": api_version or involved.get("apiVersion") or "v1",
            "kind": kind or involved.get("kind") or "Pod",
            "name": obj_name,
            "namespace": ns if meta.get("namespace") else None,
            "uid": meta.get("uid"),
            "resourceVersion": meta.get("resourceVersion"),
        }
        source: Obj = {"component": component}
        if host:
            source["host"] = host
        body: Obj = {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": f"{obj_name}.{time.time_ns():x}", "namespace": ns},
            "involvedObject": {k: v for k, v in ref.items() if v is not None},
            "reason": reason,
            "message": message[:1024],
            "type": type,
            "source": source,
            "firstTimestamp": now,
            "lastTimestamp": now,
            "count": 1,
        }
        return await self.create(api_path("v1", "events", namespace=ns), body)

    async def version(self) -> Obj:
        """GET ``/version`` (server build info)."""
        return await self.get("/version")


class WatchStream:
    """One watch request, an async context manager and async iterator of event dicts.

    Lines are split by hand (``iter_any``), so event size is bounded only by memory.
    Leaving the ``async with`` block (or :meth:`close`) closes the connection.
    """

    def __init__(
        self, client: KubeClient, path: str, params: dict[str, ParamValue], read_timeout: float | None
    ) -> None:
        self._client = client
        self.path = path
        self._params = params
        self._read_timeout = read_timeout
        self._resp: aiohttp.ClientResponse | None = None
        self._buf = bytearray()
        self._chunks: Any = None
        self._done = False

    async def __aenter__(self) -> Self:
        await self._open()
        return self

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.close()

    def close(self) -> None:
        """Close the underlying connection (idempotent)."""
        self._done = True
        if self._resp is not None:
            self._resp.close()
            self._resp = None

    async def _open(self) -> None:
        c = self._client
        session, headers = await c._prepare(None)
        kwargs: dict[str, Any] = {}
        if c.config.tls_server_name:
            kwargs["server_hostname"] = c.config.tls_server_name
        try:
            resp = await session.get(
                c._url(self.path, self._params),
                headers=headers,
                timeout=aiohttp.ClientTimeout(total=None, connect=c.timeout, sock_read=self._read_timeout),
                **kwargs,
            )
        except (aiohttp.ClientError, TimeoutError, OSError) as exc:
            raise TransportError(f"WATCH {self.path}: {type(exc).__name__}: {exc}") from exc
        if resp.status >= 400:
            try:
                raw = await resp.read()
            except (aiohttp.ClientError, TimeoutError, OSError):
                raw = b""
            finally:
                resp.close()
            if resp.status == 401:
                c._unauthorized()  # the caller's re-open runs the exec plugin again
            raise error_from_status(resp.status, _decode(raw))
        self._resp = resp
        self._chunks = resp.content.iter_any().__aiter__()

    def __aiter__(self) -> Self:
        return self

    async def __anext__(self) -> Obj:
        if self._resp is None and not self._done:
            await self._open()
        while True:
            nl = self._buf.find(b"\n")
            if nl >= 0:
                line = bytes(self._buf[:nl])
                del self._buf[: nl + 1]
                if not line.strip():
                    continue
                return self._event(line)
            if self._done or self._chunks is None:
                raise StopAsyncIteration
            try:
                chunk = await self._chunks.__anext__()
            except StopAsyncIteration:
                self._done = True
                tail = bytes(self._buf).strip()
                self._buf.clear()
                self.close()
                if tail:
                    return self._event(tail)
                raise
            except (aiohttp.ClientError, TimeoutError, OSError) as exc:
                self.close()
                raise TransportError(f"WATCH {self.path}: {type(exc).__name__}: {exc}") from exc
            self._buf += chunk

    def _event(self, line: bytes) -> Obj:
        try:
            event: Obj = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            self.close()
            raise TransportError(f"WATCH {self.path}: undecodable event: {line[:200]!r}") from exc
        if event.get("type") == "ERROR":
            self.close()
            status = event.get("object") or {}
            code = status.get("code") if isinstance(status, dict) else None
            raise error_from_status(code if isinstance(code, int) else 500, status)
        return event
