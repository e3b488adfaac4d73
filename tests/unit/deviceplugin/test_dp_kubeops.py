"""ClientKubeOps maps onto KubeClient calls; MemoryKube honours merge-patch and RV semantics."""

from __future__ import annotations

from typing import Any

import pytest

from hami.deviceplugin.kubeops import ClientKubeOps, merge_patch
from hami.kube.errors import ConflictError, NotFoundError
from hami.testing.memkube import MemoryKube


class StubClient:
    def __init__(self) -> None:
        self.calls: list[tuple[Any, ...]] = []

    async def get(self, path: str) -> dict[str, Any]:
        self.calls.append(("get", path))
        return {"path": path}

    async def list(self, path: str, *, field_selector: str | None = None) -> dict[str, Any]:
        self.calls.append(("list", path, field_selector))
        return {"items": [{"metadata": {"name": "p"}}]}

    async def merge_patch(
        self, path: str, patch: Any, *, resource_version: str | None = None
    ) -> dict[str, Any]:
        self.calls.append(("patch", path, patch, resource_version))
        return {}

    async def create_event(self, involved: Any, **kw: Any) -> dict[str, Any]:
        self.calls.append(("event", kw["reason"], kw["type"], kw["host"]))
        return {}


async def test_client_kube_ops_paths() -> None:
    c = StubClient()
    ops = ClientKubeOps(c, host="n1")
    await ops.get_node("n1")
    await ops.get_pod("ns", "p")
    assert await ops.list_node_pods("n1") == [{"metadata": {"name": "p"}}]
    await ops.patch_pod("ns", "p", {"a": 1}, resource_version="7")
    await ops.patch_node("n1", {"b": 2})
    await ops.pod_event({"metadata": {}}, "R", "m", warning=True)
    assert c.calls == [
        ("get", "/api/v1/nodes/n1"),
        ("get", "/api/v1/namespaces/ns/pods/p"),
        ("list", "/api/v1/pods", "spec.nodeName=n1"),
        ("patch", "/api/v1/namespaces/ns/pods/p", {"a": 1}, "7"),
        ("patch", "/api/v1/nodes/n1", {"b": 2}, None),
        ("event", "R", "Warning", "n1"),
    ]


def test_merge_patch() -> None:
    assert merge_patch({"a": {"b": 1, "c": 2}}, {"a": {"b": None, "d": 3}}) == {"a": {"c": 2, "d": 3}}


async def test_memory_kube_preconditions() -> None:
    kube = MemoryKube([{"metadata": {"name": "n"}}])
    node = await kube.get_node("n")
    rv = node["metadata"]["resourceVersion"]
    await kube.patch_node("n", {"metadata": {"annotations": {"k": "v"}}}, resource_version=rv)
    with pytest.raises(ConflictError):
        await kube.patch_node("n", {"metadata": {"annotations": {"k": "w"}}}, resource_version=rv)
    with pytest.raises(NotFoundError):
        await kube.get_pod("ns", "missing")
