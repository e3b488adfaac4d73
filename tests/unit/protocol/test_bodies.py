"""hami.protocol.bodies: the readers of raw API objects.

Each reader must give exactly what the hand-written chain it replaced gave for missing and null
levels, must hand back the object's own dict/list (no copy), and the container readers must
tell init containers, native sidecars and app containers apart in the annotation index order.
"""

from __future__ import annotations

import doctest
from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from hami.kube.paths import object_key
from hami.protocol import bodies

#: a level that may be missing, null, empty or filled
_ABSENT = object()


def _maybe(value: Any) -> st.SearchStrategy[Any]:
    return st.sampled_from([_ABSENT, None, value])


def _build(**levels: Any) -> dict[str, Any]:
    return {k: v for k, v in levels.items() if v is not _ABSENT}


@st.composite
def _objects(draw: st.DrawFn) -> dict[str, Any]:
    """Objects whose metadata / spec / status levels and fields are each missing, null or set."""
    text = st.text(min_size=1, max_size=5)
    meta = _build(
        name=draw(_maybe(draw(text))),
        namespace=draw(_maybe(draw(text))),
        uid=draw(_maybe(draw(text))),
        resourceVersion=draw(_maybe(draw(text))),
        deletionTimestamp=draw(_maybe("2026-01-01T00:00:00Z")),
        annotations=draw(_maybe(draw(st.dictionaries(text, text, max_size=2)))),
        labels=draw(_maybe(draw(st.dictionaries(text, text, max_size=2)))),
    )
    spec = _build(
        nodeName=draw(_maybe(draw(text))),
        initContainers=draw(_maybe([{"name": "i"}, {"name": "s", "restartPolicy": "Always"}])),
        containers=draw(_maybe([{"name": "a"}])),
    )
    status = _build(
        phase=draw(_maybe(draw(st.sampled_from(["Pending", "Running", "Succeeded", "Failed"])))),
        conditions=draw(_maybe([{"type": "Ready", "status": "True"}])),
        initContainerStatuses=draw(_maybe([{"name": "i", "state": {"terminated": {"exitCode": 0}}}])),
        containerStatuses=draw(_maybe([{"name": "a", "ready": True}])),
        allocatable=draw(_maybe({"nvidia.com/gpu": "10"})),
    )
    return _build(
        metadata=draw(st.sampled_from([_ABSENT, None, {}, meta])),
        spec=draw(st.sampled_from([_ABSENT, None, {}, spec])),
        status=draw(st.sampled_from([_ABSENT, None, {}, status])),
    )


@given(_objects())
def test_readers_equal_the_chains_they_replace(obj: dict[str, Any]) -> None:
    m = obj.get("metadata") or {}
    s = obj.get("spec") or {}
    st_ = obj.get("status") or {}
    assert bodies.meta(obj) == m
    assert bodies.annotations(obj) == ((obj.get("metadata") or {}).get("annotations") or {})
    assert bodies.labels(obj) == ((obj.get("metadata") or {}).get("labels") or {})
    assert bodies.name(obj) == str(m.get("name") or "")
    assert bodies.namespace(obj) == m.get("namespace")
    assert bodies.uid(obj) == str(m.get("uid") or "")
    assert bodies.resource_version(obj) == m.get("resourceVersion")
    assert bodies.is_deleting(obj) == bool(m.get("deletionTimestamp"))
    assert bodies.object_key(obj) == object_key(obj)
    assert bodies.pod_key(obj) == object_key(obj)
    assert bodies.spec(obj) == s
    assert bodies.status(obj) == st_
    assert bodies.node_name(obj) == s.get("nodeName")
    reported = st_.get("phase")
    assert bodies.phase(obj) == ("Pending" if reported is None else reported)
    assert bodies.conditions(obj) == (st_.get("conditions") or [])
    assert bodies.allocatable(obj) == (st_.get("allocatable") or {})
    assert bodies.init_container_statuses(obj) == (st_.get("initContainerStatuses") or [])
    assert bodies.container_statuses(obj) == (st_.get("containerStatuses") or [])
    assert bodies.init_containers(obj) == (s.get("initContainers") or [])
    assert bodies.app_containers(obj) == (s.get("containers") or [])
    assert bodies.pod_containers(obj) == list(s.get("initContainers") or []) + list(s.get("containers") or [])


def test_missing_and_null_levels_read_as_empty() -> None:
    for obj in (
        {},
        {"metadata": None, "spec": None, "status": None},
        {"metadata": {}, "spec": {}, "status": {}},
    ):
        assert bodies.meta(obj) == {} and bodies.annotations(obj) == {} and bodies.labels(obj) == {}
        assert (bodies.name(obj), bodies.namespace(obj), bodies.uid(obj)) == ("", None, "")
        assert bodies.resource_version(obj) is None and not bodies.is_deleting(obj)
        assert bodies.object_key(obj) == "" and bodies.pod_key(obj) == ""
        assert bodies.spec(obj) == {} and bodies.status(obj) == {} and bodies.list_meta(obj) == {}
        assert bodies.node_name(obj) is None and bodies.phase(obj) == "Pending"
        assert bodies.conditions(obj) == [] and bodies.allocatable(obj) == {}
        assert bodies.init_containers(obj) == [] and bodies.app_containers(obj) == []
        assert bodies.init_container_statuses(obj) == [] and bodies.container_statuses(obj) == []
        assert bodies.pod_containers(obj) == [] and list(bodies.all_containers(obj)) == []


def test_null_fields_read_like_missing_ones() -> None:
    obj = {
        "metadata": {
            k: None for k in ("name", "namespace", "uid", "resourceVersion", "annotations", "labels")
        },
        "spec": {"nodeName": None, "initContainers": None, "containers": None},
        "status": {"phase": None, "conditions": None, "allocatable": None},
    }
    assert bodies.annotations(obj) == {} and bodies.labels(obj) == {}
    assert (bodies.name(obj), bodies.namespace(obj), bodies.uid(obj), bodies.resource_version(obj)) == (
        "",
        None,
        "",
        None,
    )
    assert bodies.node_name(obj) is None and bodies.phase(obj) == "Pending"
    assert bodies.conditions(obj) == [] and bodies.allocatable(obj) == {} and bodies.pod_containers(obj) == []


def test_fields_are_read_as_stored() -> None:
    pod = {
        "metadata": {
            "name": "p",
            "namespace": "ns",
            "uid": "u-1",
            "resourceVersion": "42",
            "deletionTimestamp": "2026-01-01T00:00:00Z",
            "annotations": {"a": "1"},
            "labels": {"l": "2"},
        },
        "spec": {"nodeName": "node-a"},
        "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": "True"}]},
    }
    assert (bodies.name(pod), bodies.namespace(pod), bodies.uid(pod)) == ("p", "ns", "u-1")
    assert bodies.resource_version(pod) == "42" and bodies.is_deleting(pod)
    assert bodies.pod_key(pod) == "ns/p" and bodies.object_key({"metadata": {"name": "n"}}) == "n"
    assert bodies.node_name(pod) == "node-a" and bodies.phase(pod) == "Running"
    node = {"metadata": {"name": "n"}, "status": {"allocatable": {"nvidia.com/gpu": "10"}}}
    assert bodies.allocatable(node) == {"nvidia.com/gpu": "10"} and bodies.namespace(node) is None
    assert bodies.list_meta({"metadata": {"resourceVersion": "7", "continue": "c"}}) == {
        "resourceVersion": "7",
        "continue": "c",
    }


def test_readers_return_the_objects_own_levels() -> None:
    """No copying: the hot path reads through these, and the informer's objects are shared."""
    pod: dict[str, Any] = {
        "metadata": {"annotations": {"a": "1"}, "labels": {"l": "2"}},
        "spec": {"initContainers": [{"name": "i"}], "containers": [{"name": "a"}]},
        "status": {"conditions": [], "allocatable": {"x": "1"}},
    }
    assert bodies.meta(pod) is pod["metadata"]
    assert bodies.annotations(pod) is pod["metadata"]["annotations"]
    assert bodies.labels(pod) is pod["metadata"]["labels"]
    assert bodies.spec(pod) is pod["spec"] and bodies.status(pod) is pod["status"]
    assert bodies.init_containers(pod) is pod["spec"]["initContainers"]
    assert bodies.app_containers(pod) is pod["spec"]["containers"]
    assert bodies.allocatable(pod) is pod["status"]["allocatable"]
    assert all(c is pod["spec"]["initContainers"][0] for k, c in bodies.all_containers(pod) if k == "init")


def test_missing_levels_give_fresh_empties() -> None:
    """A reader's empty result for a missing level is never shared between calls."""
    a, b = bodies.annotations({}), bodies.annotations({})
    a["x"] = "1"
    assert b == {} and bodies.annotations({}) == {}
    c = bodies.init_containers({})
    c.append({"name": "x"})
    assert bodies.init_containers({}) == []


def test_containers_init_sidecar_and_app_in_annotation_order() -> None:
    init = {"name": "setup"}
    sidecar = {"name": "proxy", "restartPolicy": "Always"}
    other_policy = {"name": "retry", "restartPolicy": "OnFailure"}
    app = {"name": "main"}
    app2 = {"name": "worker", "restartPolicy": "Always"}  # no meaning on an app container
    pod = {"spec": {"initContainers": [init, sidecar, other_policy], "containers": [app, app2]}}
    assert bodies.pod_containers(pod) == [init, sidecar, other_policy, app, app2]
    assert list(bodies.all_containers(pod)) == [
        ("init", init),
        ("sidecar", sidecar),
        ("init", other_policy),
        ("app", app),
        ("app", app2),
    ]
    assert bodies.is_sidecar(sidecar) and not bodies.is_sidecar(init) and not bodies.is_sidecar(other_policy)
    only_app = {"spec": {"containers": [app]}}
    assert list(bodies.all_containers(only_app)) == [("app", app)]
    only_init = {"spec": {"initContainers": [sidecar], "containers": None}}
    assert list(bodies.all_containers(only_init)) == [("sidecar", sidecar)]


def test_pod_containers_is_a_new_list() -> None:
    pod: dict[str, Any] = {"spec": {"containers": [{"name": "a"}]}}
    out = bodies.pod_containers(pod)
    out.append({"name": "b"})
    assert pod["spec"]["containers"] == [{"name": "a"}]


def test_malformed_container_entries_pass_through_without_raising() -> None:
    """Validation is the caller's (scheduling.requests rejects non-mapping containers with a reason)."""
    pod = {"spec": {"initContainers": ["oops", None], "containers": [42]}}
    assert list(bodies.all_containers(pod)) == [("init", "oops"), ("init", None), ("app", 42)]


def test_doctests() -> None:
    assert doctest.testmod(bodies).failed == 0
