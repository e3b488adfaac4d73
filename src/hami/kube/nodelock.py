"""Releasing a node lock: the one function the extender and the device plugin both call.

Guarantees: the lock is removed only when the caller owns it (or it is a legacy, ownerless value),
read in the backend's own format (:class:`~hami.protocol.nodelock.NodeLockCodec`); the removal is
a merge patch carrying the Node's resourceVersion, so a lock taken by someone else in between is
never removed. A value that cannot be read is left alone (the next acquire replaces it).
"""

from __future__ import annotations

from typing import Any, Protocol

from hami.kube.client import KubeClient
from hami.kube.errors import ConflictError, NotFoundError
from hami.kube.paths import api_path
from hami.protocol import bodies
from hami.protocol.nodelock import HAMI_NODE_LOCK, NodeLockCodec

Obj = dict[str, Any]


class NodeAccess(Protocol):
    """Read and merge-patch one Node (the device plugin's ``KubeOps`` is one)."""

    async def get_node(self, name: str) -> Obj: ...

    async def patch_node(self, name: str, patch: Obj, *, resource_version: str | None = None) -> Obj: ...


class ClientNodes:
    """:class:`NodeAccess` over a :class:`KubeClient`."""

    def __init__(self, client: KubeClient) -> None:
        self.client = client

    async def get_node(self, name: str) -> Obj:
        return await self.client.get(api_path("v1", "nodes", name=name))

    async def patch_node(self, name: str, patch: Obj, *, resource_version: str | None = None) -> Obj:
        return await self.client.merge_patch(
            api_path("v1", "nodes", name=name), patch, resource_version=resource_version
        )


async def release_node_lock(
    nodes: NodeAccess,
    node: str,
    namespace: str,
    name: str,
    *,
    codec: NodeLockCodec = HAMI_NODE_LOCK,
    attempts: int = 8,
) -> bool:
    """Remove ``node``'s lock if ``namespace/name`` owns it (or it is a legacy bare timestamp).

    Returns True if a lock was removed; False if there was none, another pod owns it, it is
    corrupt, or the node is gone. A conflict re-reads the node; after ``attempts`` conflicts the
    last :class:`ConflictError` propagates, as do other API errors.
    """
    for attempt in range(1, attempts + 1):
        try:
            obj = await nodes.get_node(node)
            value = bodies.annotations(obj).get(codec.key)
            if not value or not codec.releasable_by(value, namespace, name):
                return False
            await nodes.patch_node(
                node,
                {"metadata": {"annotations": {codec.key: None}}},
                resource_version=bodies.resource_version(obj),
            )
            return True
        except NotFoundError:
            return False
        except ConflictError:
            if attempt == attempts:
                raise
    return False
