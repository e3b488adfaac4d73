"""An in-memory stand-in for the device plugin's :class:`~hami.deviceplugin.kubeops.KubeOps`: nodes and
pods kept in dicts, merge patches and resourceVersion preconditions honoured as the API server does,
every call recorded. For unit and contract tests of the device plugin without an API server;
`MemoryDraKube` adds the ResourceClaims and ResourceSlices of the DRA plugin."""

from __future__ import annotations

import copy

from hami.deviceplugin.kubeops import Obj, merge_patch
from hami.kube.errors import AlreadyExistsError, ConflictError, NotFoundError
from hami.protocol import bodies

__all__ = ["MemoryDraKube", "MemoryKube"]


class MemoryKube:
    """In-memory nodes and pods honouring resourceVersion preconditions; records every call."""

    def __init__(self, nodes: list[Obj] | None = None, pods: list[Obj] | None = None) -> None:
        self._rv = 0
        self.nodes: dict[str, Obj] = {}
        self.pods: dict[tuple[str, str], Obj] = {}
        self.events: list[tuple[str, str, str]] = []  # (pod key, reason, message)
        self.calls: list[str] = []
        #: the node whose pods `cached_pod` serves (set by `start_pod_cache`), as a watch would
        self.cached_node: str | None = None
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

    def _stamp_namespaced(self, obj: Obj) -> tuple[tuple[str, str], Obj]:
        """A stamped copy of a namespaced object (namespace ``default`` and a uid made from its key
        when it has none) and its (namespace, name) key."""
        obj = self._stamp(copy.deepcopy(obj))
        meta = obj["metadata"]
        meta.setdefault("namespace", "default")
        meta.setdefault("uid", f"uid-{meta['namespace']}-{meta['name']}")
        return (meta["namespace"], meta["name"]), obj

    def add_pod(self, pod: Obj) -> Obj:
        key, pod = self._stamp_namespaced(pod)
        self.pods[key] = pod
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

    async def start_pod_cache(self, node: str) -> None:
        self.cached_node = node

    async def stop_pod_cache(self) -> None:
        self.cached_node = None

    def cached_pod(self, namespace: str, name: str) -> Obj | None:
        pod = self.pods.get((namespace, name))
        if pod is None or self.cached_node is None or bodies.node_name(pod) != self.cached_node:
            return None
        return copy.deepcopy(pod)

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


class MemoryDraKube(MemoryKube):
    """MemoryKube plus ResourceClaims and ResourceSlices: the DRA plugin's
    :class:`~hami.draplugin.kubeops.DraKube` for contract tests."""

    def __init__(self, nodes: list[Obj] | None = None, claims: list[Obj] | None = None) -> None:
        super().__init__(nodes)
        self.claims: dict[tuple[str, str], Obj] = {}
        self.slices: dict[str, Obj] = {}
        for c in claims or []:
            self.add_claim(c)

    def add_claim(self, claim: Obj) -> Obj:
        key, claim = self._stamp_namespaced(claim)
        self.claims[key] = claim
        return claim

    async def get_claim(self, namespace: str, name: str) -> Obj:
        self.calls.append(f"get claim {namespace}/{name}")
        try:
            return copy.deepcopy(self.claims[(namespace, name)])
        except KeyError:
            raise NotFoundError(
                404, "NotFound", f'resourceclaims.resource.k8s.io "{name}" not found'
            ) from None

    async def get_slice(self, name: str) -> Obj:
        self.calls.append(f"get slice {name}")
        try:
            return copy.deepcopy(self.slices[name])
        except KeyError:
            raise NotFoundError(
                404, "NotFound", f'resourceslices.resource.k8s.io "{name}" not found'
            ) from None

    async def create_slice(self, body: Obj) -> Obj:
        self.calls.append(f"create slice {bodies.name(body)}")
        if bodies.name(body) in self.slices:
            raise AlreadyExistsError(409, "AlreadyExists", f"resourceslice {bodies.name(body)} exists")
        stored = self._stamp(copy.deepcopy(body))
        self.slices[bodies.name(body)] = stored
        return copy.deepcopy(stored)

    async def replace_slice(self, body: Obj) -> Obj:
        self.calls.append(f"replace slice {bodies.name(body)}")
        current = self.slices.get(bodies.name(body))
        if current is None:
            raise NotFoundError(404, "NotFound", f"resourceslice {bodies.name(body)} not found")
        self._check_rv(current, body, None)
        stored = self._stamp(copy.deepcopy(body))
        self.slices[bodies.name(body)] = stored
        return copy.deepcopy(stored)
