"""The few Kubernetes operations the device plugin needs, behind one small interface.

`KubeOps` is implemented by `ClientKubeOps` (a `hami.kube.KubeClient`) and by `MemoryKube`
(in-memory nodes and pods with resourceVersion preconditions, for unit tests and the sandbox).
Objects are raw dicts; `patch_pod_with_retry` is the optimistic read-modify-write over either.
Errors are `hami.kube.errors` exceptions (NotFoundError, ConflictError).
"""

from __future__ import annotations

import copy
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

from hami.kube.client import retry_merge_patch
from hami.kube.errors import ConflictError, NotFoundError
from hami.protocol import bodies

if TYPE_CHECKING:
    from hami.kube.client import KubeClient

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


class MemoryKube:
    """In-memory nodes and pods honouring resourceVersion preconditions; records every call."""

    def __init__(self, nodes: list[Obj] | None = None, pods: list[Obj] | None = None) -> None:
        self._rv = 0
        self.nodes: dict[str, Obj] = {}
        self.pods: dict[tuple[str, str], Obj] = {}
        self.events: list[tuple[str, str, str]] = []  # (pod key, reason, message)
        self.calls: list[str] = []
        for n in nodes or []:
            self.add_node(n)
        for p in pods or []:
            self.add_pod(p)

    def _stamp(self, obj: Obj) -> Obj:
        self._rv += 1
        obj.setdefault("metadata", {})["resourceVersion"] = str(self._rv)
        return obj

    def add_node(self, node: Obj) -> Obj:
        node = self._stamp(copy.deepcopy(node))
        self.nodes[node["metadata"]["name"]] = node
        return node

    def add_pod(self, pod: Obj) -> Obj:
        pod = self._stamp(copy.deepcopy(pod))
        meta = pod["metadata"]
        meta.setdefault("namespace", "default")
        meta.setdefault("uid", f"uid-{meta['namespace']}-{meta['name']}")
        self.pods[(meta["namespace"], meta["name"])] = pod
        return pod

    def delete_pod(self, namespace: str, name: str) -> None:
        self.pods.pop((namespace, name), None)

    @staticmethod
    def _check_rv(obj: Obj, patch: Obj, resource_version: str | None) -> None:
        want = resource_version or bodies.resource_version(patch)
        if want is not None and want != obj["metadata"]["resourceVersion"]:
            raise ConflictError(409, "Conflict", "the object has been modified")

    async def get_node(self, name: str) -> Obj:
        self.calls.append(f"get node {name}")
        try:
            return copy.deepcopy(self.nodes[name])
        except KeyError:
            raise NotFoundError(404, "NotFound", f'nodes "{name}" not found') from None

    async def patch_node(self, name: str, patch: Obj, *, resource_version: str | None = None) -> Obj:
        self.calls.append(f"patch node {name}")
        if name not in self.nodes:
            raise NotFoundError(404, "NotFound", f'nodes "{name}" not found')
        self._check_rv(self.nodes[name], patch, resource_version)
        clean = copy.deepcopy(patch)
        (clean.get("metadata") or {}).pop("resourceVersion", None)
        node = self._stamp(merge_patch(self.nodes[name], clean))
        self.nodes[name] = node
        return copy.deepcopy(node)

    async def get_pod(self, namespace: str, name: str) -> Obj:
        self.calls.append(f"get pod {namespace}/{name}")
        try:
            return copy.deepcopy(self.pods[(namespace, name)])
        except KeyError:
            raise NotFoundError(404, "NotFound", f'pods "{name}" not found') from None

    async def list_node_pods(self, node: str) -> list[Obj]:
        self.calls.append(f"list pods on {node}")
        return [copy.deepcopy(p) for p in self.pods.values() if bodies.node_name(p) == node]

    async def patch_pod(
        self, namespace: str, name: str, patch: Obj, *, resource_version: str | None = None
    ) -> Obj:
        self.calls.append(f"patch pod {namespace}/{name}")
        key = (namespace, name)
        if key not in self.pods:
            raise NotFoundError(404, "NotFound", f'pods "{name}" not found')
        self._check_rv(self.pods[key], patch, resource_version)
        clean = copy.deepcopy(patch)
        (clean.get("metadata") or {}).pop("resourceVersion", None)
        pod = self._stamp(merge_patch(self.pods[key], clean))
        self.pods[key] = pod
        return copy.deepcopy(pod)

    async def pod_event(self, pod: Obj, reason: str, message: str, *, warning: bool = False) -> None:
        self.events.append((bodies.pod_key(pod), reason, message))
