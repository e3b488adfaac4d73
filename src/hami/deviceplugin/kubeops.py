"""The few Kubernetes operations the device plugin needs, behind one small interface.

`KubeOps` is implemented by `ClientKubeOps` (a `hami.kube.KubeClient`) and, in tests, by `hami.testing.memkube.MemoryKube`
(in-memory nodes and pods with resourceVersion preconditions, for unit and contract tests).
Objects are raw dicts; `patch_pod_with_retry` is the optimistic read-modify-write over either.
Errors are `hami.kube.errors` exceptions (NotFoundError, ConflictError).

`start_pod_cache` keeps a watch of the node's own pods (field selector `spec.nodeName`) and
`cached_pod` answers from it, without a request: possibly behind the API server, and keyed by
namespace/name only, so a caller must confirm the copy is the pod it means (the lock-free
allocator checks its UID against the kubelet's records) and read the API otherwise.
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from hami.kube.client import retry_merge_patch

if TYPE_CHECKING:
    from hami.kube.client import KubeClient
    from hami.kube.informer import Informer

Obj = dict[str, Any]


class KubeOps(Protocol):
    async def get_node(self, name: str) -> Obj: ...

    async def patch_node(self, name: str, patch: Obj, *, resource_version: str | None = None) -> Obj: ...

    async def get_pod(self, namespace: str, name: str) -> Obj: ...

    async def list_node_pods(self, node: str) -> list[Obj]: ...

    async def patch_pod(
        self, namespace: str, name: str, patch: Obj, *, resource_version: str | None = None
    ) -> Obj: ...

    async def pod_event(self, pod: Obj, reason: str, message: str, *, warning: bool = False) -> None: ...

    async def start_pod_cache(self, node: str) -> None: ...

    async def stop_pod_cache(self) -> None: ...

    def cached_pod(self, namespace: str, name: str) -> Obj | None: ...


async def patch_pod_with_retry(
    kube: KubeOps,
    namespace: str,
    name: str,
    mutate: Callable[[Obj], Obj | None],
    *,
    current: Obj | None = None,
    attempts: int = 8,
) -> Obj:
    """`KubeClient.patch_with_retry` for a pod through `KubeOps` (the same loop,
    `hami.kube.client.retry_merge_patch`): each try merge-patches with the resourceVersion of the
    pod `mutate` saw; a conflict re-reads the pod and asks `mutate` again."""

    async def send(patch: Obj, rv: str | None) -> Obj:
        return await kube.patch_pod(namespace, name, patch, resource_version=rv)

    return await retry_merge_patch(
        mutate,
        fetch=lambda: kube.get_pod(namespace, name),
        send=send,
        current=current,
        attempts=attempts,
        what=f"pod {namespace}/{name}",
    )


class ClientKubeOps:
    """KubeOps over the real API server."""

    def __init__(
        self, client: KubeClient, *, component: str = "hami-device-plugin", host: str | None = None
    ) -> None:
        from hami.kube.paths import api_path

        self._kc = client
        self._path = api_path
        self._component = component
        self._host = host
        self._pods: Informer | None = None

    async def get_node(self, name: str) -> Obj:
        return await self._kc.get(self._path("v1", "nodes", name=name))

    async def patch_node(self, name: str, patch: Obj, *, resource_version: str | None = None) -> Obj:
        return await self._kc.merge_patch(
            self._path("v1", "nodes", name=name), patch, resource_version=resource_version
        )

    async def get_pod(self, namespace: str, name: str) -> Obj:
        return await self._kc.get(self._path("v1", "pods", namespace=namespace, name=name))

    async def list_node_pods(self, node: str) -> list[Obj]:
        page = await self._kc.list(self._path("v1", "pods"), field_selector=f"spec.nodeName={node}")
        items: list[Obj] = page.get("items") or []
        return items

    async def patch_pod(
        self, namespace: str, name: str, patch: Obj, *, resource_version: str | None = None
    ) -> Obj:
        return await self._kc.merge_patch(
            self._path("v1", "pods", namespace=namespace, name=name), patch, resource_version=resource_version
        )

    async def start_pod_cache(self, node: str) -> None:
        from hami.kube.informer import Informer

        if self._pods is None:
            self._pods = Informer(self._kc, self._path("v1", "pods"), field_selector=f"spec.nodeName={node}")
            self._pods.start()

    async def stop_pod_cache(self) -> None:
        if self._pods is not None:
            await self._pods.stop()
            self._pods = None

    def cached_pod(self, namespace: str, name: str) -> Obj | None:
        if self._pods is None or not self._pods.has_synced:
            return None
        return self._pods.get_by_name(namespace, name)

    async def pod_event(self, pod: Obj, reason: str, message: str, *, warning: bool = False) -> None:
        await self._kc.create_event(
            pod,
            reason=reason,
            message=message,
            type="Warning" if warning else "Normal",
            component=self._component,
            host=self._host,
        )


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 JSON merge patch (returns a new object)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = dict(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out
