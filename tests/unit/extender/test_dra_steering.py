"""The extender's DRA half over HTTP: ``/dra/filter`` and ``/dra/prioritize`` in kube-scheduler's wire
form, claims looked up through the pod's status, readiness, malformed watch events, and the
scheduler configuration's DRA entry."""

from __future__ import annotations

from typing import Any

from aiohttp.test_utils import TestClient, TestServer

from hami.devices.base import Placement
from hami.devices.registry import default_registry
from hami.extender.dra import DraSteering, pod_claim_names
from hami.extender.metrics import Metrics
from hami.extender.schedulerconfig import DRA_WEIGHT, scheduler_configuration
from hami.extender.server import make_app
from hami.extender.service import ExtenderService
from hami.extender.sync import LedgerSync
from hami.protocol import keys
from hami.protocol.pod import ContainerDevice
from hami.scheduling.decide import Scheduler
from hami.scheduling.state import PodAllocation
from hami.testing.dra import resource_slice
from hami.testing.gpucluster import gpu_cards


def dra_pod(policy: str | None = None, claim: str | None = "c-1") -> dict[str, Any]:
    pod: dict[str, Any] = {
        "metadata": {"name": "p", "namespace": "team", "uid": "uid-p", "annotations": {}},
        "spec": {
            "containers": [{"name": "main", "resources": {"limits": {keys.DRA_STEER_RESOURCE: "1"}}}],
            "resourceClaims": [{"name": "hami-gpu-0", "resourceClaimTemplateName": "hami-gpu-x"}],
        },
        "status": {},
    }
    if policy:
        pod["metadata"]["annotations"][keys.NODE_SCHEDULER_POLICY] = policy
    if claim:
        pod["status"]["resourceClaimStatuses"] = [{"name": "hami-gpu-0", "resourceClaimName": claim}]
    return pod


CLAIM = {
    "metadata": {"name": "c-1", "namespace": "team", "uid": "claim-1"},
    "spec": {
        "devices": {
            "requests": [
                {
                    "name": "gpu",
                    "exactly": {
                        "deviceClassName": keys.DRA_DEVICE_CLASS,
                        "count": 1,
                        "capacity": {"requests": {"memory": "8000Mi", "cores": "10"}},
                    },
                }
            ]
        }
    },
}


def allocated(uid: str, node: str, mem: str) -> dict[str, Any]:
    result = {
        "driver": keys.DRA_DRIVER,
        "pool": node,
        "device": "gpu-0",
        "consumedCapacity": {"memory": mem, "cores": "10"},
    }
    return {
        "metadata": {"name": uid, "namespace": "team", "uid": uid},
        "status": {"allocation": {"devices": {"results": [result]}}},
    }


def setup(*, leader: bool = True) -> tuple[ExtenderService, DraSteering, dict[str, dict[str, Any]]]:
    sched = Scheduler(default_registry())
    claims: dict[str, dict[str, Any]] = {}
    steering = DraSteering(sched, claims.get)
    for node in ("n1", "n2"):
        steering.slice_changed(resource_slice(node, gpu_cards(node, n=1, mem=16000)))
    svc = ExtenderService(
        scheduler=sched,
        sync=LedgerSync(sched),
        client=None,  # type: ignore[arg-type]
        locker=None,  # type: ignore[arg-type]
        pod_lookup=lambda ns, n: None,
        is_leader=lambda: leader,
    )
    return svc, steering, claims


async def post(svc: ExtenderService, steering: DraSteering, verb: str, pod: dict[str, Any]) -> Any:
    async with TestClient(TestServer(make_app(svc, Metrics(svc.scheduler.state), steering))) as client:
        resp = await client.post(f"/dra/{verb}", json={"Pod": pod, "NodeNames": ["n1", "n2"]})
        return resp.status, await resp.json() if resp.status == 200 else await resp.text()


async def test_prioritize_scores_by_the_pods_node_policy() -> None:
    svc, steering, _ = setup()
    steering.claim_changed(allocated("a", "n1", "8000Mi"))
    assert await post(svc, steering, "prioritize", dra_pod("binpack")) == (
        200,
        [{"Host": "n1", "Score": 10}, {"Host": "n2", "Score": 0}],
    )
    assert await post(svc, steering, "prioritize", dra_pod("spread")) == (
        200,
        [{"Host": "n1", "Score": 0}, {"Host": "n2", "Score": 10}],
    )
    # no annotation (or an unknown one): the scheduler's default policy (binpack)
    _, body = await post(svc, steering, "prioritize", dra_pod("nonsense"))
    assert body[0] == {"Host": "n1", "Score": 10}


async def test_filter_refuses_only_a_node_with_device_plugin_pods_in_the_way() -> None:
    svc, steering, claims = setup()
    dev = ContainerDevice(uuid="GPU-n1-0", type="A100", usedmem=12000, usedcores=10)
    svc.scheduler.state.add_pod(
        PodAllocation(
            uid="dp",
            namespace="team",
            name="dp",
            node="n1",
            containers={keys.VENDOR_NVIDIA: [(Placement(dev),)]},
            init_count=0,
        )
    )
    # the pod's claim is not in the cache yet: refused on n1 only, saying why
    status, body = await post(svc, steering, "filter", dra_pod())
    assert status == 200 and body["NodeNames"] == ["n2"] and "not known" in body["FailedNodes"]["n1"]
    claims["team/c-1"] = CLAIM
    status, body = await post(svc, steering, "filter", dra_pod())
    assert body["NodeNames"] == ["n2"] and "GPU-n1-0" in body["FailedNodes"]["n1"]
    svc.scheduler.state.remove_pod("dp")
    status, body = await post(svc, steering, "filter", dra_pod())
    assert body["NodeNames"] == ["n1", "n2"] and body["FailedNodes"] == {}


async def test_a_follower_answers_with_an_error() -> None:
    svc, steering, _ = setup(leader=False)
    status, body = await post(svc, steering, "filter", dra_pod())
    assert status == 200 and body["NodeNames"] is None and "not the leader" in body["Error"]
    status, text = await post(svc, steering, "prioritize", dra_pod())
    assert status == 503 and "not the leader" in text


def test_malformed_events_are_logged_not_raised() -> None:
    _, steering, _ = setup()
    bad = resource_slice("n3", gpu_cards("n3", n=1))
    del bad["spec"]["devices"][0]["attributes"]["uuid"]
    steering.slice_changed(bad)
    assert "uuid" in steering.errors[f"ResourceSlice {bad['metadata']['name']}"]
    steering.claim_changed(allocated("x", "n1", "plenty"))
    assert "consumedCapacity.memory" in steering.errors["ResourceClaim team/x"]
    assert "n3" not in steering.scheduler.state.nodes


def test_pod_claim_names() -> None:
    assert pod_claim_names(dra_pod()) == ["c-1"]
    assert pod_claim_names(dra_pod(claim=None)) is None  # made from a template, not named yet
    direct = dra_pod(claim=None)
    direct["spec"]["resourceClaims"] = [{"name": "mine", "resourceClaimName": "shared"}]
    assert pod_claim_names(direct) == ["shared"]


def test_scheduler_configuration_dra_entry() -> None:
    cfg = scheduler_configuration(
        extender_url="http://127.0.0.1:8080", registry=default_registry(), preempt=True, dra=True
    )
    main, dra = cfg["extenders"]
    assert main["bindVerb"] == "bind" and main["preemptVerb"] == "preempt"
    assert dra == {
        "urlPrefix": "http://127.0.0.1:8080",
        "filterVerb": "dra/filter",
        "prioritizeVerb": "dra/prioritize",
        "enableHTTPS": False,
        "nodeCacheCapable": True,
        "weight": DRA_WEIGHT,
        "httpTimeout": "30s",
        "ignorable": False,
        "managedResources": [{"name": keys.DRA_STEER_RESOURCE, "ignoredByScheduler": True}],
    }
    assert (
        len(scheduler_configuration(extender_url="http://x", registry=default_registry())["extenders"]) == 1
    )


async def test_prioritize_assumes_the_pod_on_the_node_it_scores_best() -> None:
    svc, steering, claims = setup()
    claims["team/c-1"] = CLAIM
    steering.claim_changed(allocated("a", "n1", "4000Mi"))
    _, body = await post(svc, steering, "prioritize", dra_pod("binpack"))
    assert body[0] == {"Host": "n1", "Score": 10}
    state = svc.scheduler.state
    assert state.nodes["n1"].usedmem == 12000  # 4000 allocated + 8000 assumed for pod p
    # asked again (a retry), the pod's own assumption does not count twice
    await post(svc, steering, "prioritize", dra_pod("binpack"))
    assert state.nodes["n1"].usedmem == 12000
    steering.pod_gone("uid-p")
    assert state.nodes["n1"].usedmem == 4000
    # a tie (kube-scheduler would pick at random): the first by name gets a point more, and the pod
    steering.claim_deleted(allocated("a", "n1", "4000Mi"))
    steering.pod_gone("uid-p")
    _, body = await post(svc, steering, "prioritize", dra_pod("spread"))
    assert body == [{"Host": "n1", "Score": 6}, {"Host": "n2", "Score": 5}]
    assert (state.nodes["n1"].usedmem, state.nodes["n2"].usedmem) == (8000, 0)
