"""hami.kube.informer against a real kube-apiserver: events, bookmarks, 410 re-list without missed deletes."""

from __future__ import annotations

import asyncio
import dataclasses
from collections.abc import Callable
from typing import Any

import pytest

from hami.kube.client import KubeClient
from hami.kube.config import KubeConfig
from hami.kube.errors import GoneError
from hami.kube.informer import Informer
from hami.kube.paths import api_path
from hami.testing.controlplane import ControlPlane
from hami.testing.proxy import TcpProxy

pytestmark = pytest.mark.integration


class Recorder:
    """Collects informer events as (type, key, uid) tuples."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, str]] = []

    @staticmethod
    def _id(obj: dict[str, Any]) -> tuple[str, str]:
        m = obj["metadata"]
        return f"{m.get('namespace')}/{m['name']}", m["uid"]

    def on_add(self, obj: dict[str, Any]) -> None:
        self.events.append(("add", *self._id(obj)))

    def on_update(self, old: dict[str, Any], new: dict[str, Any]) -> None:
        assert self._id(old) == self._id(new)
        self.events.append(("update", *self._id(new)))

    async def on_delete(self, obj: dict[str, Any]) -> None:  # async handlers work too
        self.events.append(("delete", *self._id(obj)))

    def kinds(self, key: str) -> list[str]:
        return [t for t, k, _ in self.events if k == key]


async def eventually(cond: Callable[[], bool], timeout: float = 15.0, what: str = "condition") -> None:
    deadline = asyncio.get_running_loop().time() + timeout
    while not cond():
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def pod(name: str, **labels: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name, "labels": labels},
        "spec": {"containers": [{"name": "c", "image": "busybox"}]},
    }


def podtemplate(name: str) -> dict[str, Any]:
    return {"metadata": {"name": name}, "template": {"spec": {"containers": [{"name": "c", "image": "i"}]}}}


async def test_informer_add_update_delete_and_recreate(kube_client: KubeClient, namespace: str) -> None:
    pods = api_path("v1", "pods", namespace=namespace)
    await kube_client.create(pods, pod("pre"))
    rec = Recorder()
    inf = Informer(
        kube_client,
        pods,
        on_add=rec.on_add,
        on_update=rec.on_update,
        on_delete=rec.on_delete,
        watch_timeout=60,
    )
    assert not inf.has_synced
    inf.start()
    try:
        await inf.wait_synced(timeout=10)
        assert inf.has_synced and inf.keys() == [f"{namespace}/pre"]
        cached = inf.get(f"{namespace}/pre")
        assert cached is not None and cached["kind"] == "Pod" and cached["apiVersion"] == "v1"

        p = await kube_client.create(pods, pod("p"))
        key = f"{namespace}/p"
        await eventually(lambda: key in inf, what="add")
        path = api_path("v1", "pods", namespace=namespace, name="p")
        await kube_client.merge_patch(path, {"metadata": {"annotations": {"x": "1"}}})
        await eventually(lambda: (inf.get(key) or {}).get("metadata", {}).get("annotations") == {"x": "1"})
        await kube_client.delete(path, grace_period_seconds=0)
        await eventually(lambda: key not in inf, what="delete")
        p2 = await kube_client.create(pods, pod("p"))  # same name, new uid
        await eventually(lambda: key in inf, what="re-add")
        assert p2["metadata"]["uid"] != p["metadata"]["uid"]
        assert rec.events[0] == ("add", f"{namespace}/pre", rec.events[0][2])
        seq = [(t, u) for t, k, u in rec.events if k == key]
        seq = [e for i, e in enumerate(seq) if i == 0 or e != seq[i - 1]]  # deletion may add an update
        assert seq == [
            ("add", p["metadata"]["uid"]),
            ("update", p["metadata"]["uid"]),
            ("delete", p["metadata"]["uid"]),
            ("add", p2["metadata"]["uid"]),
        ]
        assert inf.list_count == 1
    finally:
        await inf.stop()


async def test_informer_selectors(kube_client: KubeClient, namespace: str) -> None:
    pods = api_path("v1", "pods", namespace=namespace)
    inf = Informer(kube_client, pods, label_selector="app=gpu")
    inf.start()
    try:
        await inf.wait_synced(timeout=10)
        await kube_client.create(pods, pod("cpu", app="cpu"))
        await kube_client.create(pods, pod("gpu", app="gpu"))
        await eventually(lambda: f"{namespace}/gpu" in inf)
        await asyncio.sleep(0.3)
        assert inf.keys() == [f"{namespace}/gpu"]
    finally:
        await inf.stop()


async def test_informer_bookmarks_advance_resource_version(kube_client: KubeClient, namespace: str) -> None:
    # The watch cache sends a bookmark ~2 s before a watch's timeout; with a 4 s timeout we get
    # one quickly. Writes to pods in *another* namespace advance the bookmark RV only.
    pods = api_path("v1", "pods", namespace=namespace)
    inf = Informer(kube_client, pods, watch_timeout=4)
    inf.start()
    try:
        await inf.wait_synced(timeout=10)
        start_rv = int(inf.resource_version or 0)
        other = f"{namespace}-other"
        await kube_client.create(api_path("v1", "namespaces"), {"metadata": {"name": other}})
        elsewhere = await kube_client.create(api_path("v1", "pods", namespace=other), pod("x"))
        await eventually(lambda: inf.bookmark_count >= 1, timeout=20, what="a bookmark")
        await eventually(
            lambda: int(inf.resource_version or 0) >= int(elsewhere["metadata"]["resourceVersion"]),
            timeout=20,
            what="bookmark RV to pass the other namespace's write",
        )
        assert int(inf.resource_version or 0) > start_rv
        await eventually(lambda: inf.watch_count >= 2, timeout=20, what="the watch to time out and resume")
        assert len(inf) == 0 and inf.list_count == 1  # resumed after the timeout without re-listing
    finally:
        await inf.stop()


async def test_informer_relists_after_410_without_missing_deletes(
    kube_client: KubeClient, kube_config: KubeConfig, control_plane: ControlPlane, namespace: str
) -> None:
    # PodTemplates are watched straight from etcd (no watch cache, see ControlPlane): while the
    # informer is cut off, objects are deleted/changed/created and etcd is compacted, so its
    # resume point is gone and the server answers 410. The informer must re-list and diff.
    pts = api_path("v1", "podtemplates", namespace=namespace)
    for n in ("a", "b", "keep"):
        await kube_client.create(pts, podtemplate(n))
    async with TcpProxy("127.0.0.1", control_plane.apiserver_port) as proxy:
        cfg = dataclasses.replace(kube_config, server=f"https://127.0.0.1:{proxy.port}")
        async with KubeClient(cfg) as via_proxy:
            rec = Recorder()
            inf = Informer(
                via_proxy,
                pts,
                on_add=rec.on_add,
                on_update=rec.on_update,
                on_delete=rec.on_delete,
                backoff_initial=0.05,
                backoff_max=0.2,
            )
            inf.start()
            try:
                await inf.wait_synced(timeout=10)
                assert sorted(inf.keys()) == [f"{namespace}/{n}" for n in ("a", "b", "keep")]
                await eventually(lambda: inf.watch_count >= 1)
                await asyncio.sleep(0.2)  # let the watch get established
                uid_a = inf.get(f"{namespace}/a")["metadata"]["uid"]  # type: ignore[index]

                proxy.pause()
                await kube_client.delete(api_path("v1", "podtemplates", namespace=namespace, name="a"))
                await kube_client.merge_patch(
                    api_path("v1", "podtemplates", namespace=namespace, name="b"),
                    {"metadata": {"labels": {"changed": "yes"}}},
                )
                await kube_client.delete(api_path("v1", "podtemplates", namespace=namespace, name="keep"))
                await kube_client.create(pts, podtemplate("keep"))  # same name, new uid
                await kube_client.create(pts, podtemplate("c"))
                await kube_client.create(
                    api_path("v1", "configmaps", namespace=namespace), {"metadata": {"name": "bump"}}
                )
                control_plane.compact_etcd()
                assert inf.list_count == 1
                proxy.resume()

                await eventually(lambda: inf.list_count >= 2, what="re-list after 410")
                await eventually(lambda: f"{namespace}/c" in inf)
                assert sorted(inf.keys()) == [f"{namespace}/{n}" for n in ("b", "c", "keep")]
                assert ("delete", f"{namespace}/a", uid_a) in rec.events
                assert rec.kinds(f"{namespace}/b")[-1] == "update"
                assert inf.get(f"{namespace}/b")["metadata"]["labels"] == {"changed": "yes"}  # type: ignore[index]
                assert rec.kinds(f"{namespace}/keep")[-2:] == ["delete", "add"]
                assert isinstance(inf.last_error, GoneError), repr(inf.last_error)

                # And it keeps watching normally afterwards.
                await kube_client.delete(api_path("v1", "podtemplates", namespace=namespace, name="c"))
                await eventually(lambda: f"{namespace}/c" not in inf)
            finally:
                await inf.stop()


async def test_informer_resync_and_stop(kube_client: KubeClient, namespace: str) -> None:
    cms = api_path("v1", "configmaps", namespace=namespace)
    await kube_client.create(cms, {"metadata": {"name": "r"}})
    resynced: list[str] = []
    inf = Informer(
        kube_client, cms, resync_period=0.2, on_resync=lambda o: resynced.append(o["metadata"]["name"])
    )
    task = inf.start()
    await inf.wait_synced(timeout=10)
    await eventually(lambda: resynced.count("r") >= 2, what="resyncs")
    await inf.stop()
    assert task.done()
    n = len(resynced)
    await asyncio.sleep(0.5)
    assert len(resynced) == n  # stopped
    assert inf.get(f"{namespace}/r") is not None  # cache still readable


async def test_handler_exception_does_not_stop_informer(kube_client: KubeClient, namespace: str) -> None:
    cms = api_path("v1", "configmaps", namespace=namespace)
    seen: list[str] = []

    def bad(obj: dict[str, Any]) -> None:
        seen.append(obj["metadata"]["name"])
        raise RuntimeError("boom")

    inf = Informer(kube_client, cms, on_add=bad)
    inf.start()
    try:
        await inf.wait_synced(timeout=10)
        await kube_client.create(cms, {"metadata": {"name": "one"}})
        await kube_client.create(cms, {"metadata": {"name": "two"}})
        await eventually(lambda: seen == ["one", "two"])
        assert inf.list_count == 1
    finally:
        await inf.stop()
