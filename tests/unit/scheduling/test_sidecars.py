"""Native sidecars (init containers with ``restartPolicy: Always``) run beside the app containers."""

from __future__ import annotations

from typing import Any

from schedkit import container, gpu, node, pod, scheduler, usage

from hami.extender.sync import init_containers_done
from hami.protocol import keys


def sidecar(name: str, **res: Any) -> dict[str, Any]:
    c = container(name, **res)
    c["restartPolicy"] = "Always"
    return c


def test_sidecar_and_app_must_fit_together() -> None:
    s = scheduler(node("n1", [gpu("GPU-a", mem=16000)]))
    p = pod("p", container("main", gpu=1, mem=12000), init=[sidecar("proxy", gpu=1, mem=12000)])
    d = s.decide(p)
    assert d.node is None and "CardInsufficientMemory" in (d.reason or "")
    assert usage(s.state, "n1")["GPU-a"] == (0, 0, 0)


def test_sidecar_usage_adds_to_the_app_and_survives_init_release() -> None:
    s = scheduler(node("n1", [gpu("GPU-a", mem=16000)]))
    p = pod(
        "p",
        container("main", gpu=1, mem=6000, cores=10),
        init=[sidecar("proxy", gpu=1, mem=4000, cores=10), container("setup", gpu=1, mem=9000, cores=10)],
    )
    d = s.decide(p)
    assert d.node == "n1"
    # while 'setup' runs: proxy (4000) + setup (9000); afterwards proxy + main (10000): peak 13000
    assert usage(s.state, "n1")["GPU-a"][1] == 13000
    uid = next(iter(s.state.pods))
    s.state.release_init(uid)
    assert usage(s.state, "n1")["GPU-a"][1:] == (10000, 20)  # the sidecar still counts


def test_a_sequential_init_container_fits_beside_an_earlier_sidecar() -> None:
    s = scheduler(node("n1", [gpu("GPU-a", mem=16000)]))
    p = pod(
        "p",
        container("main", gpu=1, mem=1000),
        init=[sidecar("proxy", gpu=1, mem=8000), container("setup", gpu=1, mem=9000)],
    )
    assert s.decide(p).node is None  # 8000 + 9000 > 16000 while setup runs


def test_allocation_from_annotations_knows_the_sidecars() -> None:
    s = scheduler(node("n1", [gpu("GPU-a", mem=16000)]))
    p = pod("p", container("main", gpu=1, mem=6000), init=[sidecar("proxy", gpu=1, mem=4000)])
    d = s.decide(p)
    p["metadata"]["annotations"] = dict(d.annotations)
    fresh = scheduler(node("n1", [gpu("GPU-a", mem=16000)]))
    alloc = fresh.allocation_of(p, "n1")
    assert alloc is not None and alloc.sidecars == frozenset({0})
    fresh.state.add_pod(alloc)
    assert usage(fresh.state, "n1")["GPU-a"][1] == 10000
    assert keys.VGPU_DEVICES_ALLOCATED in d.annotations


def test_init_done_does_not_wait_for_running_sidecars() -> None:
    p = pod("p", container("main"), init=[sidecar("proxy"), container("setup")])
    p["status"] = {
        "initContainerStatuses": [
            {"name": "proxy", "state": {"running": {}}},
            {"name": "setup", "state": {"terminated": {"exitCode": 0}}},
        ]
    }
    assert init_containers_done(p)
    p["status"]["initContainerStatuses"][1]["state"] = {"running": {}}
    assert not init_containers_done(p)
