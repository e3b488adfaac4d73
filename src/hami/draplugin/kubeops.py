"""The Kubernetes operations the DRA plugin needs, behind one small interface.

`DraKube` is implemented by `ClientDraKube` (a `hami.kube.KubeClient`: what the chart's RBAC
grants — resourceclaims get, resourceslices get/create/update, nodes get) and, in contract
tests, by `hami.testing.memkube.MemoryDraKube`. Objects are raw dicts; errors are
`hami.kube.errors` exceptions (NotFoundError, ConflictError).
"""

from __future__ import annotations

from typing import Protocol

from hami.deviceplugin.kubeops import Obj
from hami.kube.client import KubeClient
from hami.kube.paths import api_path
from hami.protocol import bodies
from hami.protocol.dra import RESOURCE_API


class DraKube(Protocol):
    async def get_node(self, name: str) -> Obj: ...

    async def get_claim(self, namespace: str, name: str) -> Obj: ...

    async def get_slice(self, name: str) -> Obj: ...

    async def create_slice(self, body: Obj) -> Obj: ...

    async def replace_slice(self, body: Obj) -> Obj: ...


class ClientDraKube:
    """DraKube over the real API server."""

    def __init__(self, client: KubeClient) -> None:
        self._kc = client

    async def get_node(self, name: str) -> Obj:
        return await self._kc.get(api_path("v1", "nodes", name=name))

    async def get_claim(self, namespace: str, name: str) -> Obj:
        return await self._kc.get(api_path(RESOURCE_API, "resourceclaims", namespace=namespace, name=name))

    async def get_slice(self, name: str) -> Obj:
        return await self._kc.get(api_path(RESOURCE_API, "resourceslices", name=name))

    async def create_slice(self, body: Obj) -> Obj:
        return await self._kc.create(api_path(RESOURCE_API, "resourceslices"), body)

    async def replace_slice(self, body: Obj) -> Obj:
        return await self._kc.replace(api_path(RESOURCE_API, "resourceslices", name=bodies.name(body)), body)
