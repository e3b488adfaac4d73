"""Which container of a pod a PreStartContainer is for (`startorder.starting_container`)."""

from __future__ import annotations

from typing import Any

import pytest

from hami.deviceplugin.startorder import Ambiguous, Wait, requested, starting_container

RES = "nvidia.com/gpu"


def ctr(name: str, gpus: int = 0, sidecar: bool = False) -> dict[str, Any]:
    c: dict[str, Any] = {"name": name}
    if gpus:
        c["resources"] = {"limits": {RES: str(gpus)}}
    if sidecar:
        c["restartPolicy"] = "Always"
    return c


def pod(init: list[dict[str, Any]], app: list[dict[str, Any]], **states: dict[str, Any]) -> dict[str, Any]:
    return {
        "spec": {"initContainers": init, "containers": app},
        "status": {"initContainerStatuses": [{"name": n, "state": s} for n, s in states.items()]},
    }


DONE: dict[str, Any] = {"terminated": {"exitCode": 0}}
FAILED: dict[str, Any] = {"terminated": {"exitCode": 1}}
RUNNING: dict[str, Any] = {"running": {}}
WAITING: dict[str, Any] = {"waiting": {}}


def test_single_candidate_needs_no_status() -> None:
    assert starting_container(pod([], [ctr("app", 1)]), ["app"], RES, 1) == "app"
    # a sidecar is listed by PodResources like an app container
    assert starting_container(pod([ctr("side", 1, sidecar=True)], [ctr("app")]), ["side"], RES, 1) == "side"


def test_reused_init_ids_follow_the_init_order() -> None:
    init = [ctr("setup"), ctr("warm", 1)]
    app = [ctr("app", 1)]
    assert starting_container(pod(init, app, setup=DONE, warm=WAITING), ["app"], RES, 1) == "warm"
    assert starting_container(pod(init, app, setup=DONE, warm=FAILED), ["app"], RES, 1) == "warm"  # a retry
    assert starting_container(pod(init, app, setup=DONE, warm=DONE), ["app"], RES, 1) == "app"
    # status behind the kubelet: wait, never guess
    assert isinstance(starting_container(pod(init, app, setup=DONE, warm=RUNNING), ["app"], RES, 1), Wait)
    assert isinstance(starting_container(pod(init, app, setup=RUNNING), ["app"], RES, 1), Wait)


def test_two_gpu_init_containers_then_the_app() -> None:
    init = [ctr("i1", 2), ctr("i2", 2)]
    app = [ctr("app", 2)]
    assert starting_container(pod(init, app), ["app"], RES, 2) == "i1"
    assert starting_container(pod(init, app, i1=DONE), ["app"], RES, 2) == "i2"
    assert starting_container(pod(init, app, i1=DONE, i2=DONE), ["app"], RES, 2) == "app"
    # an init container asking for another count cannot hold exactly these IDs
    assert starting_container(pod([ctr("i1", 1)], app), ["app"], RES, 2) == "app"


def test_undecidable_is_ambiguous() -> None:
    assert isinstance(starting_container(pod([], [ctr("x", 1), ctr("y", 1)]), ["x", "y"], RES, 1), Ambiguous)
    assert isinstance(starting_container(pod([], [ctr("x", 1)]), [], RES, 2), Ambiguous)
    two_done = pod([ctr("i", 1), ctr("j", 1)], [ctr("app")], i=DONE, j=DONE)
    assert isinstance(starting_container(two_done, [], RES, 1), Ambiguous)
    # the only container that can hold the IDs is the answer whatever its status shows (a new pod
    # sandbox runs the init containers again while the status still shows their last exit)
    assert starting_container(pod([ctr("i", 1)], [ctr("app")], i=DONE), [], RES, 1) == "i"


@pytest.mark.parametrize(("value", "count"), [("2", 2), (3, 3), ("x", 0), (None, 0)])
def test_requested(value: object, count: int) -> None:
    c: dict[str, Any] = {"name": "c", "resources": {"requests": {RES: value}} if value is not None else {}}
    assert requested(c, RES) == count
