"""The extender's HTTP contract with kube-scheduler v1.34 (``k8s.io/kube-scheduler/extender/v1``).

Requests are golden JSON in the exact shape kube-scheduler's ``HTTPExtender.send`` marshals
(Go field names, no JSON tags: ``{"Pod": ..., "Nodes": null, "NodeNames": [...]}``; the Pod is the
scheduler's cached object, so it has no ``kind``/``apiVersion``). Responses are checked byte for
byte: Go decodes keys case-insensitively, but we answer in canonical casing. Errors are HTTP 200 with
``Error`` set (any other status is a transport failure to kube-scheduler); a body that is not an
extender request is HTTP 400 naming the problem; bodies over 1 MiB are refused.

The real aiohttp app (:func:`hami.extender.server.make_app`) is served on loopback, and the service
behind it talks to a real kube-apiserver (pods, nodes, bindings, events).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import orjson
import pytest
from aiohttp import web
from prometheus_client.parser import text_string_to_metric_families

from hami.devices.registry import default_registry
from hami.extender.metrics import Metrics
from hami.extender.nodelock import NodeLocker
from hami.extender.server import MAX_BODY, make_app
from hami.extender.service import ExtenderService
from hami.extender.sync import LedgerSync
from hami.kube.client import KubeClient
from hami.kube.errors import ApiError, NotFoundError
from hami.kube.paths import api_path
from hami.protocol import bodies, keys
from hami.protocol.pod import decode_pod_devices
from hami.scheduling.decide import Scheduler
from hami.testing.fixtures import control_plane, kube_client, kube_config, namespace  # noqa: F401
from hami.testing.gpucluster import create_gpu_node, gpu_cards

pytestmark = pytest.mark.integration

MIB = 1024 * 1024

# ExtenderArgs exactly as kube-scheduler v1.34 marshals it for POST /filter with
# nodeCacheCapable: true -- a pod after hami's webhook, as the scheduler's informer holds it.
# __NS__, __UID__, __RV__, __MEM__, __N1__, __N2__ are filled in from the objects created on the API server.
GOLDEN_FILTER_ARGS = (
    '{"Pod":{"metadata":{"name":"gpu-pod","namespace":"__NS__","uid":"__UID__",'
    '"resourceVersion":"__RV__","creationTimestamp":"2026-11-22T08:00:00Z","labels":{"app":"infer"},'
    '"annotations":{"hami.io/gpu-scheduler-policy":"spread"},"managedFields":[{"manager":"kubectl-create",'
    '"operation":"Update","apiVersion":"v1","time":"2026-11-22T08:00:00Z","fieldsType":"FieldsV1",'
    '"fieldsV1":{"f:metadata":{"f:labels":{".":{},"f:app":{}}}}}]},'
    '"spec":{"volumes":[{"name":"kube-api-access-7xk2p","projected":{"sources":[{"serviceAccountToken":'
    '{"expirationSeconds":3607,"path":"token"}}],"defaultMode":420}}],'
    '"containers":[{"name":"main","image":"nvidia/cuda:12.4.0-base-ubuntu22.04","command":["sleep","infinity"],'
    '"resources":{"limits":{"nvidia.com/gpu":"1","nvidia.com/gpucores":"30","nvidia.com/gpumem":"__MEM__"},'
    '"requests":{"nvidia.com/gpu":"1","nvidia.com/gpucores":"30","nvidia.com/gpumem":"__MEM__"}},'
    '"volumeMounts":[{"name":"kube-api-access-7xk2p","readOnly":true,'
    '"mountPath":"/var/run/secrets/kubernetes.io/serviceaccount"}],'
    '"terminationMessagePath":"/dev/termination-log","terminationMessagePolicy":"File",'
    '"imagePullPolicy":"IfNotPresent"}],"restartPolicy":"Always","terminationGracePeriodSeconds":30,'
    '"dnsPolicy":"ClusterFirst","serviceAccountName":"default","serviceAccount":"default",'
    '"securityContext":{},"schedulerName":"hami-scheduler","tolerations":[{"key":"node.kubernetes.io/not-ready",'
    '"operator":"Exists","effect":"NoExecute","tolerationSeconds":300},{"key":"node.kubernetes.io/unreachable",'
    '"operator":"Exists","effect":"NoExecute","tolerationSeconds":300}],"priority":0,'
    '"enableServiceLinks":true,"preemptionPolicy":"PreemptLowerPriority"},'
    '"status":{"phase":"Pending","qosClass":"BestEffort"}},'
    '"Nodes":null,"NodeNames":["__N1__","__N2__"]}'
)

# ExtenderBindingArgs for POST /bind (binding.Name, binding.Namespace, binding.UID, binding.Target.Name)
GOLDEN_BIND_ARGS = '{"PodName":"gpu-pod","PodNamespace":"__NS__","PodUID":"__UID__","Node":"__N1__"}'


def fill(template: str, **values: str) -> bytes:
    for key, value in values.items():
        template = template.replace(f"__{key}__", value)
    assert "__" not in template, template
    return template.encode()


def webhook_pod(name: str, mem: int = 4000) -> dict[str, Any]:
    """The pod the golden request describes, as a user creates it (the webhook set the scheduler)."""
    res = {"nvidia.com/gpu": "1", "nvidia.com/gpucores": "30", "nvidia.com/gpumem": str(mem)}
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "labels": {"app": "infer"},
            "annotations": {keys.GPU_SCHEDULER_POLICY: "spread"},
        },
        "spec": {
            "schedulerName": "hami-scheduler",
            "containers": [
                {
                    "name": "main",
                    "image": "nvidia/cuda:12.4.0-base-ubuntu22.04",
                    "command": ["sleep", "infinity"],
                    "resources": {"limits": res, "requests": res},
                }
            ],
        },
    }


@dataclass
class Served:
    """The real app on loopback around a service wired to the real API server."""

    url: str
    http: aiohttp.ClientSession
    kc: KubeClient
    namespace: str
    service: ExtenderService
    scheduler: Scheduler
    nodes: list[str]
    flags: dict[str, bool] = field(default_factory=lambda: {"leader": True, "synced": True})

    async def post(self, verb: str, body: bytes) -> tuple[int, str, bytes]:
        async with self.http.post(
            f"{self.url}/{verb}", data=body, headers={"Content-Type": "application/json"}
        ) as r:
            return r.status, r.headers.get("Content-Type", ""), await r.read()

    async def get(self, path: str) -> tuple[int, str, bytes]:
        async with self.http.get(f"{self.url}{path}") as r:
            return r.status, r.headers.get("Content-Type", ""), await r.read()

    async def create_pod(self, pod: dict[str, Any]) -> dict[str, Any]:
        return await self.kc.create(api_path("v1", "pods", namespace=self.namespace), pod)

    async def filter_args(self, name: str = "gpu-pod", mem: int = 4000) -> tuple[bytes, dict[str, Any]]:
        created = await self.create_pod(webhook_pod(name, mem))
        body = fill(
            GOLDEN_FILTER_ARGS,
            NS=self.namespace,
            UID=created["metadata"]["uid"],
            RV=created["metadata"]["resourceVersion"],
            N1=self.nodes[0],
            N2=self.nodes[1],
            MEM=str(mem),
        ).replace(b'"name":"gpu-pod"', f'"name":"{name}"'.encode(), 1)
        return body, created


@pytest.fixture
async def served(kube_client: KubeClient, namespace: str) -> AsyncIterator[Served]:  # noqa: F811
    # n1: two 16000 MiB cards (fits 4000 MiB); n2: one 2000 MiB card (never fits)
    n1, n2 = f"{namespace}-n1", f"{namespace}-n2"
    await create_gpu_node(kube_client, n1, gpu_cards(n1, 2, mem=16000), labels={"hami-test": namespace})
    await create_gpu_node(kube_client, n2, gpu_cards(n2, 1, mem=2000), labels={"hami-test": namespace})
    scheduler = Scheduler(default_registry())
    sync = LedgerSync(scheduler)
    for name in (n1, n2):
        sync.node_changed(await kube_client.get(api_path("v1", "nodes", name=name)))
    flags = {"leader": True, "synced": True}
    service = ExtenderService(
        scheduler=scheduler,
        sync=sync,
        client=kube_client,
        locker=NodeLocker(kube_client, expiry=60, wait=2),
        pod_lookup=lambda _ns, _name: None,  # no informer here: every pod is read from the API server
        is_leader=lambda: flags["leader"],
        is_synced=lambda: flags["synced"],
    )
    runner = web.AppRunner(make_app(service, Metrics(scheduler.state)), access_log=None)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    async with aiohttp.ClientSession() as http:
        s = Served(
            url=f"http://127.0.0.1:{port}",
            http=http,
            kc=kube_client,
            namespace=namespace,
            service=service,
            scheduler=scheduler,
            nodes=[n1, n2],
            flags=flags,
        )
        try:
            yield s
        finally:
            service.reservations.cancel_writes()
            await runner.cleanup()
            # these pods name hami-scheduler and no node selector: a kube-scheduler started by a
            # later test would place them on its nodes, so they must not outlive this test
            for pod in (await kube_client.get(api_path("v1", "pods", namespace=namespace))).get(
                "items"
            ) or []:
                with contextlib.suppress(NotFoundError):
                    await kube_client.delete(
                        api_path("v1", "pods", namespace=namespace, name=pod["metadata"]["name"]),
                        grace_period_seconds=0,
                    )
            for name in (n1, n2):
                await kube_client.delete(api_path("v1", "nodes", name=name))


async def wait_pod(kc: KubeClient, ns: str, name: str, pred: Any, timeout: float = 10) -> dict[str, Any]:
    path = api_path("v1", "pods", namespace=ns, name=name)
    deadline = asyncio.get_running_loop().time() + timeout
    while True:
        pod = await kc.get(path)
        if pred(pod):
            return pod
        if asyncio.get_running_loop().time() > deadline:
            raise AssertionError(f"pod {name} never satisfied the condition: {pod['metadata']}")
        await asyncio.sleep(0.05)


# ----------------------------------------------------------------------------------------- filter


async def test_golden_filter_and_bind_exact_bytes(served: Served) -> None:
    body, created = await served.filter_args()
    # the golden text really is the Go encoding: canonical keys, Pod without kind/apiVersion
    parsed = json.loads(body)
    assert list(parsed) == ["Pod", "Nodes", "NodeNames"] and parsed["Nodes"] is None
    assert "kind" not in parsed["Pod"] and "apiVersion" not in parsed["Pod"]

    status, ctype, raw = await served.post("filter", body)
    assert status == 200 and ctype.startswith("application/json")
    n1 = served.nodes[0]
    # the best node is returned alone (like HAMi); nodes never tried are simply left out, so a pod
    # that fits reports no failures
    assert (
        raw
        == (
            f'{{"Nodes":null,"NodeNames":["{n1}"],"FailedNodes":{{}},"FailedAndUnresolvableNodes":{{}},"Error":""}}'
        ).encode()
    )

    # the decision annotations (HAMi keys) are written on the pod in the background
    pod = await wait_pod(
        served.kc,
        served.namespace,
        "gpu-pod",
        lambda p: keys.VGPU_NODE in bodies.annotations(p),
    )
    assert pod["metadata"]["annotations"][keys.VGPU_NODE] == n1
    assert pod["metadata"]["labels"][keys.VGPU_NODE] == n1

    uid = created["metadata"]["uid"]
    bind = fill(GOLDEN_BIND_ARGS, NS=served.namespace, UID=uid, N1=n1)
    assert list(json.loads(bind)) == ["PodName", "PodNamespace", "PodUID", "Node"]
    status, ctype, raw = await served.post("bind", bind)
    assert (status, raw) == (200, b'{"Error":""}') and ctype.startswith("application/json")
    pod = await served.kc.get(api_path("v1", "pods", namespace=served.namespace, name="gpu-pod"))
    ann = pod["metadata"]["annotations"]
    assert pod["spec"]["nodeName"] == n1
    assert ann[keys.BIND_PHASE] == keys.BIND_PHASE_ALLOCATING and int(ann[keys.BIND_TIME]) > 0
    (container,) = decode_pod_devices(ann[keys.VGPU_DEVICES_TO_ALLOCATE])
    assert container[0].usedmem == 4000 and container[0].usedcores == 30
    node = await served.kc.get(api_path("v1", "nodes", name=n1))
    assert node["metadata"]["annotations"][keys.NODE_LOCK].endswith(f",{served.namespace},gpu-pod")


async def test_unschedulable_pod_answers_empty_node_names_and_every_failure(served: Served) -> None:
    body, _ = await served.filter_args("too-big", mem=20000)  # larger than every card
    status, _, raw = await served.post("filter", body)
    assert status == 200
    reply = orjson.loads(raw)
    assert reply["NodeNames"] == [] and reply["Nodes"] is None and reply["Error"] == ""
    assert set(reply["FailedNodes"]) == set(served.nodes)
    assert reply["FailedAndUnresolvableNodes"] == {}
    assert raw.startswith(b'{"Nodes":null,"NodeNames":[],"FailedNodes":{')
    assert not served.scheduler.state.pods  # nothing reserved


async def test_keys_are_read_case_insensitively(served: Served) -> None:
    body, created = await served.filter_args("casey")
    doc = json.loads(body)
    lowered = {"pod": doc["Pod"], "nodes": None, "NODENAMES": doc["NodeNames"]}
    status, _, raw = await served.post("filter", orjson.dumps(lowered))
    reply = orjson.loads(raw)
    assert status == 200 and reply["NodeNames"] == [served.nodes[0]] and reply["Error"] == ""
    bind = {
        "podname": "casey",
        "PODNAMESPACE": served.namespace,
        "podUid": created["metadata"]["uid"],
        "node": served.nodes[0],
    }
    status, _, raw = await served.post("bind", orjson.dumps(bind))
    assert (status, raw) == (200, b'{"Error":""}')


async def test_node_list_mode_answers_with_nodes(served: Served) -> None:
    """nodeCacheCapable: false -- kube-scheduler sends whole Nodes and reads back only ``Nodes``."""
    body, _ = await served.filter_args("listed")
    doc = json.loads(body)
    node_objs = [await served.kc.get(api_path("v1", "nodes", name=n)) for n in served.nodes]
    args = {"Pod": doc["Pod"], "Nodes": {"metadata": {}, "items": node_objs}, "NodeNames": None}
    status, _, raw = await served.post("filter", orjson.dumps(args))
    reply = orjson.loads(raw)
    assert status == 200 and reply["Error"] == ""
    assert [n["metadata"]["name"] for n in reply["Nodes"]["items"]] == [served.nodes[0]]
    assert reply["Nodes"]["items"][0] == node_objs[0]
    assert reply["NodeNames"] == [served.nodes[0]]
    # an unschedulable pod: an empty list (kube-scheduler filters every node out), failures per node
    body, _ = await served.filter_args("listed-big", mem=20000)
    args["Pod"] = json.loads(body)["Pod"]
    reply = orjson.loads((await served.post("filter", orjson.dumps(args)))[2])
    assert reply["Nodes"] == {"metadata": {}, "items": []} and set(reply["FailedNodes"]) == set(served.nodes)


async def test_bind_carries_the_decision_even_if_the_background_write_failed(
    served: Served, monkeypatch: pytest.MonkeyPatch
) -> None:
    async def fail(*_a: Any, **_k: Any) -> None:
        raise ApiError(500, "InternalError", "injected: etcd unavailable")

    monkeypatch.setattr(served.service, "_write_decision", fail)
    body, created = await served.filter_args("unlucky")
    status, _, raw = await served.post("filter", body)
    assert status == 200 and orjson.loads(raw)["NodeNames"] == [served.nodes[0]]
    bind = fill(GOLDEN_BIND_ARGS, NS=served.namespace, UID=created["metadata"]["uid"], N1=served.nodes[0])
    status, _, raw = await served.post("bind", bind.replace(b'"gpu-pod"', b'"unlucky"'))
    assert (status, raw) == (200, b'{"Error":""}')
    pod = await served.kc.get(api_path("v1", "pods", namespace=served.namespace, name="unlucky"))
    ann = pod["metadata"]["annotations"]
    assert pod["spec"]["nodeName"] == served.nodes[0]
    assert ann[keys.VGPU_NODE] == served.nodes[0]
    assert ann[keys.VGPU_DEVICES_TO_ALLOCATE] == ann[keys.VGPU_DEVICES_ALLOCATED]
    assert decode_pod_devices(ann[keys.VGPU_DEVICES_ALLOCATED])[0][0].usedmem == 4000


# ----------------------------------------------------------------------------------------- errors


async def test_errors_are_http_200_with_error_set(served: Served) -> None:
    body, created = await served.filter_args("refused")
    served.flags["leader"] = False
    status, ctype, raw = await served.post("filter", body)
    assert status == 200 and ctype.startswith("application/json")
    reply = orjson.loads(raw)
    assert list(reply) == ["Nodes", "NodeNames", "FailedNodes", "FailedAndUnresolvableNodes", "Error"]
    assert reply["NodeNames"] is None and "not the leader" in reply["Error"]
    bind = fill(GOLDEN_BIND_ARGS, NS=served.namespace, UID=created["metadata"]["uid"], N1=served.nodes[0])
    status, _, raw = await served.post("bind", bind)
    assert (
        status == 200
        and list(orjson.loads(raw)) == ["Error"]
        and "not the leader" in orjson.loads(raw)["Error"]
    )
    served.flags["leader"] = True
    served.flags["synced"] = False
    status, _, raw = await served.post("filter", body)
    assert status == 200 and "not synced" in orjson.loads(raw)["Error"]
    served.flags["synced"] = True
    assert not served.scheduler.state.pods  # neither decided anything
    # a bind for a pod that does not exist
    missing = fill(GOLDEN_BIND_ARGS, NS=served.namespace, UID="0000", N1=served.nodes[0]).replace(
        b'"gpu-pod"', b'"ghost"'
    )
    status, _, raw = await served.post("bind", missing)
    assert status == 200 and orjson.loads(raw) == {"Error": f"pod {served.namespace}/ghost not found"}
    # a bind whose UID does not match (the pod was replaced)
    wrong = fill(GOLDEN_BIND_ARGS, NS=served.namespace, UID="not-the-uid", N1=served.nodes[0]).replace(
        b'"gpu-pod"', b'"refused"'
    )
    status, _, raw = await served.post("bind", wrong)
    assert status == 200 and "replaced" in orjson.loads(raw)["Error"]


@pytest.mark.parametrize(
    ("verb", "body", "says"),
    [
        ("filter", b"{not json", "not JSON"),
        ("filter", b"", "not JSON"),
        ("filter", b"[]", "must be a JSON object"),
        ("filter", b'{"NodeNames":["a"]}', "ExtenderArgs.Pod"),
        ("filter", b'{"Pod":{"spec":{}},"NodeNames":["a"]}', "ExtenderArgs.Pod"),
        ("filter", b'{"Pod":{"metadata":{"name":"p"}},"NodeNames":"a"}', "NodeNames"),
        ("filter", b'{"Pod":{"metadata":{"name":"p"}},"NodeNames":[1]}', "NodeNames"),
        ("filter", b'{"Pod":{"metadata":{"name":"p"}},"Nodes":{"items":[{"metadata":{}}]}}', "metadata.name"),
        ("filter", b'{"Pod":{"metadata":{"name":"p"}},"Nodes":[]}', "NodeList"),
        ("bind", b"null", "must be a JSON object"),
        ("bind", b'{"PodName":"p","PodNamespace":"ns","Node":"n"}', "PodUID"),
        ("bind", b'{"PodName":"p","PodNamespace":"ns","PodUID":"u","Node":""}', "Node"),
        ("bind", b'{"PodName":7,"PodNamespace":"ns","PodUID":"u","Node":"n"}', "PodName"),
    ],
)
async def test_malformed_bodies_are_400_naming_the_problem(
    served: Served, verb: str, body: bytes, says: str
) -> None:
    status, _, raw = await served.post(verb, body)
    assert status == 400, raw
    assert says in raw.decode(), raw
    assert not served.scheduler.state.pods


async def test_body_over_one_mib_is_refused(served: Served) -> None:
    body, _ = await served.filter_args("huge")
    doc = json.loads(body)
    doc["Pod"]["metadata"]["annotations"]["padding"] = "x" * MAX_BODY
    big = orjson.dumps(doc)
    assert len(big) > MAX_BODY
    status, _, _ = await served.post("filter", big)
    assert status == 413
    status, _, _ = await served.post("bind", b'{"PodName":"' + b"p" * MAX_BODY + b'"}')
    assert status == 413
    assert not served.scheduler.state.pods
    # just under the limit is fine
    doc["Pod"]["metadata"]["annotations"]["padding"] = "x" * (MAX_BODY - len(body) - 100)
    status, _, raw = await served.post("filter", orjson.dumps(doc))
    assert status == 200 and orjson.loads(raw)["NodeNames"] == [served.nodes[0]]


async def test_unknown_paths_and_methods(served: Served) -> None:
    assert (await served.post("prioritize", b"{}"))[0] == 404
    assert (await served.get("/filter"))[0] == 405


# ----------------------------------------------------------------------------------------- probes


async def test_healthz_and_readyz(served: Served) -> None:
    assert (await served.get("/healthz"))[::2] == (200, b"ok")
    served.flags["synced"] = False
    status, _, raw = await served.get("/readyz")
    assert status == 503 and b"not synced" in raw
    assert (await served.get("/healthz"))[0] == 200  # alive while syncing
    served.flags["synced"] = True
    assert (await served.get("/readyz"))[::2] == (200, b"ok")
    served.flags["leader"] = False  # a synced follower is ready (it answers, with an error)
    assert (await served.get("/readyz"))[::2] == (200, b"ok (follower)")


async def test_metrics_parse_and_carry_hamis_card_gauges(served: Served) -> None:
    body, _ = await served.filter_args("metered")
    assert orjson.loads((await served.post("filter", body))[2])["NodeNames"] == [served.nodes[0]]
    too_big, _ = await served.filter_args("metered-big", mem=20000)
    await served.post("filter", too_big)
    status, ctype, raw = await served.get("/metrics")
    assert status == 200 and ctype.startswith("text/plain")
    families = {f.name: f for f in text_string_to_metric_families(raw.decode())}
    for name in (
        "hami_gpu_memory_allocated_bytes",
        "hami_gpu_memory_limit_bytes",
        "hami_gpu_core_allocated_ratio",
        "hami_gpu_core_limit_ratio",
        "hami_gpu_shared_count",
        "hami_scheduler_filter_duration_seconds",
        "hami_scheduler_bind_duration_seconds",
        "hami_scheduler_filter_results",
        "hami_scheduler_bind_results",
    ):
        assert name in families, sorted(families)
    n1, n2 = served.nodes
    allocated = {
        s.labels["device_uuid"]: s.value for s in families["hami_gpu_memory_allocated_bytes"].samples
    }
    assert set(allocated) == {f"GPU-{n1}-0", f"GPU-{n1}-1", f"GPU-{n2}-0"}
    assert sorted(allocated.values()) == [0, 0, 4000 * MIB]
    sample = next(s for s in families["hami_gpu_memory_allocated_bytes"].samples if s.value)
    assert set(sample.labels) == {
        "zone",
        "node",
        "device_uuid",
        "device_index",
        "device_type",
        "device_cores",
    }
    assert sample.labels["node"] == n1 and sample.labels["device_cores"] == "100"
    limits = {s.labels["device_uuid"]: s.value for s in families["hami_gpu_memory_limit_bytes"].samples}
    assert limits[f"GPU-{n2}-0"] == 2000 * MIB
    shared = sum(s.value for s in families["hami_gpu_shared_count"].samples)
    assert shared == 1
    results = {
        s.labels["result"]: s.value
        for s in families["hami_scheduler_filter_results"].samples
        if s.name.endswith("_total")
    }
    assert results == {"scheduled": 1.0, "unschedulable": 1.0}
    count = next(
        s for s in families["hami_scheduler_filter_duration_seconds"].samples if s.name.endswith("_count")
    )
    assert count.value == 2


async def test_annotate_at_bind_writes_only_through_the_binding(served: Served) -> None:
    served.service.annotate_at_filter = False
    body, created = await served.filter_args("late")
    status, _, raw = await served.post("filter", body)
    assert status == 200 and orjson.loads(raw)["NodeNames"] == [served.nodes[0]]
    await asyncio.sleep(0.3)
    pod = await served.kc.get(api_path("v1", "pods", namespace=served.namespace, name="late"))
    assert keys.VGPU_NODE not in (pod["metadata"].get("annotations") or {})  # no write at filter
    bind = fill(GOLDEN_BIND_ARGS, NS=served.namespace, UID=created["metadata"]["uid"], N1=served.nodes[0])
    status, _, raw = await served.post("bind", bind.replace(b'"gpu-pod"', b'"late"'))
    assert (status, raw) == (200, b'{"Error":""}')
    pod = await served.kc.get(api_path("v1", "pods", namespace=served.namespace, name="late"))
    ann = pod["metadata"]["annotations"]
    assert pod["spec"]["nodeName"] == served.nodes[0] and ann[keys.VGPU_NODE] == served.nodes[0]
    assert ann[keys.BIND_PHASE] == keys.BIND_PHASE_ALLOCATING
    assert decode_pod_devices(ann[keys.VGPU_DEVICES_TO_ALLOCATE])[0][0].usedmem == 4000


# ---------------------------------------------------------------------------------------- preempt

# ExtenderPreemptionArgs as kube-scheduler v1.34 marshals it for POST /preempt with
# nodeCacheCapable: true (HTTPExtender.ProcessPreemption): the Pod, ``NodeNameToVictims`` null and
# the victims by uid only. __POD__ is the Pod exactly as in GOLDEN_FILTER_ARGS.
GOLDEN_PREEMPT_ARGS = (
    '{"Pod":__POD__,"NodeNameToVictims":null,"NodeNameToMetaVictims":{'
    '"__N1__":{"Pods":[{"UID":"__V1__"},{"UID":"__V2__"}],"NumPDBViolations":1},'
    '"__N2__":{"Pods":[{"UID":"__V3__"}],"NumPDBViolations":0}}}'
)


async def place(served: Served, name: str, mem: int) -> str:
    """Filter pod ``name`` through the HTTP verb (its reservation holds the card); returns its uid."""
    body, created = await served.filter_args(name, mem)
    status, _, raw = await served.post("filter", body)
    assert status == 200 and orjson.loads(raw)["NodeNames"] == [served.nodes[0]], raw
    return str(created["metadata"]["uid"])


async def test_golden_preempt_keeps_only_victims_that_free_the_right_card(served: Served) -> None:
    # n1's two 16000 MiB cards: v1 alone on one, v2 and v3 on the other (spread)
    v1 = await place(served, "v1", 16000)
    v2 = await place(served, "v2", 8000)
    v3 = await place(served, "v3", 8000)
    held = {uid: a.containers for uid, a in served.scheduler.state.pods.items()}
    body, _ = await served.filter_args("gpu-pod", 12000)
    status, _, raw = await served.post("filter", body)
    assert orjson.loads(raw)["NodeNames"] == []  # unschedulable: kube-scheduler tries preemption
    pod_json = body[len(b'{"Pod":') : body.index(b',"Nodes":null')]
    n1, n2 = served.nodes
    args = fill(GOLDEN_PREEMPT_ARGS, POD=pod_json.decode(), N1=n1, N2=n2, V1=v1, V2=v2, V3=v3)
    parsed = json.loads(args)
    assert list(parsed) == ["Pod", "NodeNameToVictims", "NodeNameToMetaVictims"]
    status, ctype, raw = await served.post("preempt", args)
    assert status == 200 and ctype.startswith("application/json")
    # v2 leaves v3's 8000 MiB on its card: only v1's card serves 12000 MiB; n2 (one 2000 MiB card)
    # never fits, so it is left out (an empty victim list is an error to kube-scheduler)
    assert (
        raw
        == f'{{"NodeNameToMetaVictims":{{"{n1}":{{"Pods":[{{"UID":"{v1}"}}],"NumPDBViolations":1}}}}}}'.encode()
    )
    # the trial changed nothing
    assert {uid: a.containers for uid, a in served.scheduler.state.pods.items()} == held


async def test_preempt_with_whole_victim_pods_reads_their_priority(served: Served) -> None:
    """``nodeCacheCapable: false``: whole Pods in ``NodeNameToVictims``; the lower priority goes."""
    lo = await place(served, "lo", 10000)
    hi = await place(served, "hi", 10000)
    listed = await served.kc.get(api_path("v1", "pods", namespace=served.namespace))
    pods = {bodies.uid(p): p for p in listed["items"]}
    pods[lo]["spec"]["priority"] = 10
    pods[hi]["spec"]["priority"] = 1000
    body, _ = await served.filter_args("gpu-pod", 12000)
    pod = json.loads(body)["Pod"]
    n1 = served.nodes[0]
    args = {"Pod": pod, "NodeNameToVictims": {n1: {"Pods": [pods[hi], pods[lo]], "NumPDBViolations": 0}}}
    status, _, raw = await served.post("preempt", orjson.dumps(args))
    assert status == 200
    assert orjson.loads(raw) == {
        "NodeNameToMetaVictims": {n1: {"Pods": [{"UID": lo}], "NumPDBViolations": 0}}
    }


async def test_preempt_errors_are_http_errors(served: Served) -> None:
    """``ExtenderPreemptionResult`` has no Error field: failures are non-200 replies."""
    body, _ = await served.filter_args("gpu-pod", 12000)
    args = body.replace(b'"Nodes":null,"NodeNames":', b'"NodeNameToMetaVictims":{},"x":')
    served.flags["leader"] = False
    status, _, raw = await served.post("preempt", args)
    assert status == 503 and b"not the leader" in raw
    served.flags["leader"] = True
    status, _, raw = await served.post("preempt", args)
    assert (status, raw) == (200, b'{"NodeNameToMetaVictims":{}}')


@pytest.mark.parametrize(
    ("body", "says"),
    [
        (b"[]", "must be a JSON object"),
        (b'{"NodeNameToMetaVictims":{}}', "ExtenderPreemptionArgs.Pod"),
        (b'{"Pod":{"metadata":{"name":"p"}},"NodeNameToMetaVictims":[]}', "NodeNameToMetaVictims"),
        (b'{"Pod":{"metadata":{"name":"p"}},"NodeNameToMetaVictims":{"n":{"Pods":[{}]}}}', "UID"),
        (b'{"Pod":{"metadata":{"name":"p"}},"NodeNameToMetaVictims":{"n":{"Pods":{}}}}', "Pods"),
        (
            b'{"Pod":{"metadata":{"name":"p"}},"NodeNameToMetaVictims":{"n":{"NumPDBViolations":-1}}}',
            "NumPDBViolations",
        ),
        (b'{"Pod":{"metadata":{"name":"p"}},"NodeNameToVictims":{"n":{"Pods":[{"spec":{}}]}}}', "Pods[0]"),
    ],
)
async def test_malformed_preempt_bodies_are_400(served: Served, body: bytes, says: str) -> None:
    status, _, raw = await served.post("preempt", body)
    assert status == 400, raw
    assert says in raw.decode(), raw
