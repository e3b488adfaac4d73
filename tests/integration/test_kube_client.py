"""hami.kube.client against a real kube-apiserver: CRUD, preconditions, binding, events, watch."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from hami.kube.client import KubeClient
from hami.kube.errors import AlreadyExistsError, ApiError, ConflictError, GoneError, NotFoundError
from hami.kube.paths import api_path
from hami.testing.controlplane import ControlPlane

pytestmark = pytest.mark.integration


def pod_body(name: str, **annotations: str) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": name, "annotations": dict(annotations)},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
    }


def node_body(name: str) -> dict[str, Any]:
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": {"hami-test": "1"}}}


async def test_version_and_list_pagination(kube_client: KubeClient, namespace: str) -> None:
    info = await kube_client.version()
    assert info["major"] == "1" and int(info["minor"]) >= 34
    cms = api_path("v1", "configmaps", namespace=namespace)
    for i in range(7):
        await kube_client.create(
            cms, {"metadata": {"name": f"cm-{i}", "labels": {"i": str(i % 2)}}, "data": {}}
        )
    full = await kube_client.list(cms, limit=2)  # 4 pages
    assert sorted(o["metadata"]["name"] for o in full["items"]) == [f"cm-{i}" for i in range(7)]
    assert int(full["metadata"]["resourceVersion"]) > 0
    assert "continue" not in full["metadata"] or not full["metadata"]["continue"]
    odd = await kube_client.list(cms, label_selector="i=1", limit=1)
    assert sorted(o["metadata"]["name"] for o in odd["items"]) == ["cm-1", "cm-3", "cm-5"]


async def test_crud_and_typed_errors(kube_client: KubeClient, namespace: str) -> None:
    pods = api_path("v1", "pods", namespace=namespace)
    created = await kube_client.create(pods, pod_body("p1", a="1"))
    assert created["metadata"]["uid"]
    path = api_path("v1", "pods", namespace=namespace, name="p1")
    got = await kube_client.get(path)
    assert got["metadata"]["annotations"] == {"a": "1"}

    with pytest.raises(AlreadyExistsError) as exc_info:
        await kube_client.create(pods, pod_body("p1"))
    assert exc_info.value.status == 409 and exc_info.value.reason == "AlreadyExists"
    assert isinstance(exc_info.value, ConflictError)

    with pytest.raises(NotFoundError) as nf:
        await kube_client.get(api_path("v1", "pods", namespace=namespace, name="nope"))
    assert nf.value.status == 404 and nf.value.reason == "NotFound"

    with pytest.raises(ApiError) as invalid:
        await kube_client.create(pods, {"metadata": {"name": "Bad_Name"}, "spec": {"containers": []}})
    assert invalid.value.status == 422

    # delete with a wrong uid precondition is refused, with the right one it succeeds
    with pytest.raises(ConflictError):
        await kube_client.delete(path, uid="00000000-0000-0000-0000-000000000000")
    await kube_client.delete(path, uid=created["metadata"]["uid"], grace_period_seconds=0)
    with pytest.raises(NotFoundError):
        await kube_client.get(path)


async def test_merge_patch_precondition_and_retry(kube_client: KubeClient, namespace: str) -> None:
    pods = api_path("v1", "pods", namespace=namespace)
    created = await kube_client.create(pods, pod_body("p", a="1"))
    path = api_path("v1", "pods", namespace=namespace, name="p")
    stale_rv = created["metadata"]["resourceVersion"]

    patched = await kube_client.merge_patch(
        path, {"metadata": {"annotations": {"b": "2"}}}, resource_version=stale_rv
    )
    assert patched["metadata"]["annotations"] == {"a": "1", "b": "2"}
    assert patched["metadata"]["resourceVersion"] != stale_rv

    # the same precondition is now stale -> 409
    with pytest.raises(ConflictError) as conflict:
        await kube_client.merge_patch(
            path, {"metadata": {"annotations": {"c": "3"}}}, resource_version=stale_rv
        )
    assert conflict.value.status == 409 and conflict.value.reason == "Conflict"
    # merge patch deletes keys with null
    cleared = await kube_client.merge_patch(path, {"metadata": {"annotations": {"a": None}}})
    assert cleared["metadata"]["annotations"] == {"b": "2"}

    # patch_with_retry starting from the stale object: one conflict, then success
    calls: list[str] = []

    def bump(obj: dict[str, Any]) -> dict[str, Any]:
        calls.append(obj["metadata"]["resourceVersion"])
        n = int(obj["metadata"]["annotations"].get("n", "0"))
        return {"metadata": {"annotations": {"n": str(n + 1)}}}

    result = await kube_client.patch_with_retry(path, bump, current=created)
    assert result["metadata"]["annotations"]["n"] == "1"
    assert len(calls) == 2 and calls[0] == stale_rv

    # concurrent increments never lose an update
    await asyncio.gather(*(kube_client.patch_with_retry(path, bump, attempts=50) for _ in range(8)))
    final = await kube_client.get(path)
    assert final["metadata"]["annotations"]["n"] == "9"

    # mutate returning None is a no-op without a write
    same = await kube_client.patch_with_retry(path, lambda obj: None)
    assert same["metadata"]["resourceVersion"] == final["metadata"]["resourceVersion"]

    # out of attempts -> the ConflictError propagates
    with pytest.raises(ConflictError):
        await kube_client.patch_with_retry(
            path,
            lambda obj: {"metadata": {"annotations": {"x": "y"}}},
            getter=lambda: _return(created),
            current=created,
            attempts=3,
        )


async def _return(obj: dict[str, Any]) -> dict[str, Any]:
    return obj


async def test_json_patch_test_op(kube_client: KubeClient, namespace: str) -> None:
    cms = api_path("v1", "configmaps", namespace=namespace)
    cm = await kube_client.create(cms, {"metadata": {"name": "cm"}, "data": {"k": "v"}})
    path = api_path("v1", "configmaps", namespace=namespace, name="cm")
    out = await kube_client.json_patch(
        path,
        [
            {"op": "test", "path": "/metadata/resourceVersion", "value": cm["metadata"]["resourceVersion"]},
            {"op": "replace", "path": "/data/k", "value": "w"},
        ],
    )
    assert out["data"] == {"k": "w"}
    with pytest.raises(ApiError) as exc_info:  # the test op fails now: 422 Invalid
        await kube_client.json_patch(
            path,
            [{"op": "test", "path": "/metadata/resourceVersion", "value": cm["metadata"]["resourceVersion"]}],
        )
    assert exc_info.value.status == 422


async def test_bind_pod_uid_precondition(kube_client: KubeClient, namespace: str) -> None:
    node = f"node-{namespace}"
    await kube_client.create(api_path("v1", "nodes"), node_body(node))
    pods = api_path("v1", "pods", namespace=namespace)
    pod = await kube_client.create(pods, pod_body("bindme"))
    uid = pod["metadata"]["uid"]

    with pytest.raises(ConflictError) as wrong:
        await kube_client.bind_pod(namespace, "bindme", uid="11111111-2222-3333-4444-555555555555", node=node)
    assert wrong.value.status == 409
    unbound = await kube_client.get(api_path("v1", "pods", namespace=namespace, name="bindme"))
    assert not unbound["spec"].get("nodeName")

    status = await kube_client.bind_pod(
        namespace, "bindme", uid=uid, node=node, annotations={"hami.io/bind-phase": "success"}
    )
    assert status["kind"] == "Status" and status["status"] == "Success"
    bound = await kube_client.get(api_path("v1", "pods", namespace=namespace, name="bindme"))
    assert bound["spec"]["nodeName"] == node
    assert bound["metadata"]["annotations"]["hami.io/bind-phase"] == "success"

    with pytest.raises(ConflictError):  # already bound
        await kube_client.bind_pod(namespace, "bindme", uid=uid, node=node)
    with pytest.raises(NotFoundError):
        await kube_client.bind_pod(namespace, "missing", uid=uid, node=node)


async def test_create_event(kube_client: KubeClient, namespace: str) -> None:
    pod = await kube_client.create(api_path("v1", "pods", namespace=namespace), pod_body("ev"))
    ev = await kube_client.create_event(
        pod,
        reason="FilteringFailed",
        message="no node fits: insufficient gpumem",
        type="Warning",
        component="hami-scheduler",
    )
    assert ev["involvedObject"]["uid"] == pod["metadata"]["uid"]
    evs = await kube_client.list(
        api_path("v1", "events", namespace=namespace),
        field_selector=f"involvedObject.uid={pod['metadata']['uid']}",
    )
    assert [(e["reason"], e["type"]) for e in evs["items"]] == [("FilteringFailed", "Warning")]


async def test_watch_stream_and_too_old_rv(kube_client: KubeClient, namespace: str) -> None:
    cms = api_path("v1", "configmaps", namespace=namespace)
    listed = await kube_client.list(cms)
    rv = listed["metadata"]["resourceVersion"]
    events: list[tuple[str, str]] = []
    async with kube_client.watch(cms, resource_version=rv, timeout_seconds=30) as stream:
        await kube_client.create(cms, {"metadata": {"name": "w1"}})
        await kube_client.merge_patch(
            api_path("v1", "configmaps", namespace=namespace, name="w1"), {"data": {"a": "b"}}
        )
        await kube_client.delete(api_path("v1", "configmaps", namespace=namespace, name="w1"))
        async for ev in stream:
            if ev["type"] == "BOOKMARK":
                continue
            events.append((ev["type"], ev["object"]["metadata"]["name"]))
            if len(events) == 3:
                break
    assert events == [("ADDED", "w1"), ("MODIFIED", "w1"), ("DELETED", "w1")]


async def test_watch_compacted_rv_is_gone(
    kube_client: KubeClient, control_plane: ControlPlane, namespace: str
) -> None:
    # PodTemplates bypass the watch cache (see ControlPlane), so etcd compaction makes old RVs 410.
    pts = api_path("v1", "podtemplates", namespace=namespace)
    created = await kube_client.create(
        pts, {"metadata": {"name": "pt"}, "template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}}
    )
    old_rv = created["metadata"]["resourceVersion"]
    await kube_client.merge_patch(
        api_path("v1", "podtemplates", namespace=namespace, name="pt"), {"metadata": {"labels": {"x": "1"}}}
    )
    # advance the revision past old_rv + 1
    await kube_client.create(api_path("v1", "configmaps", namespace=namespace), {"metadata": {"name": "x"}})
    control_plane.compact_etcd()
    with pytest.raises(GoneError) as gone:
        async with kube_client.watch(pts, resource_version=old_rv, timeout_seconds=5) as stream:
            async for _ in stream:
                pass
    assert gone.value.status == 410
    with pytest.raises(GoneError):
        await kube_client.list(pts, resource_version=old_rv, resource_version_match="Exact")
