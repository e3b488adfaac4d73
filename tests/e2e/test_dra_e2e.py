"""DRA mode on a real control plane with consumable capacity switched on (Kubernetes 1.34 gates).

kube-apiserver validates the webhook's ResourceClaimTemplates and converted pods, the real
resourceclaim controller makes claims from the templates, the real kube-scheduler's
DynamicResources plugin allocates them against ResourceSlices (in the DRA kubelet plugin's format,
:mod:`hami.testing.dra`) and calls hami's ``/dra/filter`` and ``/dra/prioritize``; the extender's
ledger counts the allocated claims beside device-plugin pods.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from hami.config import DeviceConfig
from hami.extender.runner import Extender
from hami.kube.client import KubeClient
from hami.kube.config import KubeConfig
from hami.kube.paths import api_path
from hami.protocol import bodies, keys
from hami.scheduling.dra import CLAIM_PREFIX
from hami.testing.controlplane import BinariesMissingError, ControlPlane, SchedulerHandle, find_binaries
from hami.testing.dra import (
    DRA_GATES,
    RESOURCE_API,
    claim_body,
    create_converted_pod,
    create_device_class,
    create_dra_node,
    resource_slice,
)
from hami.testing.gpucluster import create_gpu_node, gpu_cards, gpu_pod, set_node_status
from hami.testing.prereq import missing
from hami.testing.stack import Stack, wait_for
from hami.testing.webhooks import create_until_admitted_by_webhook, served_webhook
from hami.webhook.dra import DraPolicy
from hami.webhook.mutate import WebhookPolicy
from hami.webhook.runner import api_creator

EXAMPLES = Path(__file__).resolve().parents[2] / "examples" / "dra"
DRA_ALL = WebhookPolicy.from_config(
    DeviceConfig.default(), dra=DraPolicy(default_mode=keys.OPERATING_MODE_DRA)
)


@pytest.fixture(scope="module")
def control_plane() -> Iterator[ControlPlane]:
    """This module's own control plane: the DRA gates on every component, the resourceclaim controller."""
    try:
        binaries = find_binaries()
    except BinariesMissingError as exc:
        missing(str(exc), integration=True)
    with ControlPlane(binaries, apiserver_args=DRA_GATES) as cp:
        cp.start_controller_manager(["resourceclaim-controller"], extra_args=DRA_GATES)
        yield cp


def dra_stack(kube_config: KubeConfig, start_scheduler: Callable[..., SchedulerHandle]) -> Stack:
    stack = Stack(kube_config, start_scheduler)
    stack.dra = True
    stack.scheduler_args = DRA_GATES
    return stack


async def dra_test_node(
    client: KubeClient, namespace: str, node: str, *, n: int, mem: int, **labels: str
) -> None:
    """The DeviceClass (already there is fine) and a DRA-mode node with `n` cards of `mem` MiB,
    labelled ``hami-test=<namespace>`` (the test's pods select it) and with `labels`."""
    await create_device_class(client)
    await create_dra_node(
        client, node, gpu_cards(node, n=n, mem=mem), labels={"hami-test": namespace, **labels}
    )


async def bound(client: KubeClient, namespace: str, name: str) -> dict[str, Any]:
    path = api_path("v1", "pods", namespace=namespace, name=name)

    async def check() -> dict[str, Any] | None:
        pod = await client.get(path)
        return pod if bodies.node_name(pod) else None

    result: dict[str, Any] = await wait_for(check, timeout=60)
    return result


async def unschedulable(client: KubeClient, namespace: str, name: str) -> str:
    """The message of the pod's PodScheduled=False condition, once kube-scheduler has set it."""
    path = api_path("v1", "pods", namespace=namespace, name=name)

    async def check() -> str | None:
        pod = await client.get(path)
        for c in bodies.conditions(pod):
            if c.get("type") == "PodScheduled" and c.get("status") == "False":
                return str(c.get("message"))
        return None

    message: str = await wait_for(check, timeout=60)
    return message


async def allocated_claim(client: KubeClient, namespace: str, pod: dict[str, Any]) -> dict[str, Any]:
    [status] = bodies.status(pod)["resourceClaimStatuses"]
    path = api_path(RESOURCE_API, "resourceclaims", namespace=namespace, name=status["resourceClaimName"])

    async def check() -> dict[str, Any] | None:
        claim = await client.get(path)
        return claim if bodies.status(claim).get("allocation") else None

    claim: dict[str, Any] = await wait_for(check, timeout=60)
    return claim


async def until(check: Callable[[], bool], timeout: float = 30) -> None:
    """Wait for a condition on the in-process extender's ledger (fed by its informers)."""

    async def poll() -> bool:
        return check()

    await wait_for(poll, timeout=timeout)


def card_use(extender: Extender | None, node: str, card: str) -> tuple[int, int]:
    assert extender is not None
    state = extender.scheduler.state.nodes.get(node)
    c = state.by_uuid.get(card) if state is not None else None
    return (c.usedmem, c.usedcores) if c is not None else (-1, -1)


async def test_webhook_converts_and_kube_scheduler_allocates(
    kube_config: KubeConfig,
    kube_client: KubeClient,
    namespace: str,
    start_scheduler: Callable[..., SchedulerHandle],
) -> None:
    node = f"{namespace}-n0"
    await dra_test_node(kube_client, namespace, node, n=2, mem=16000)
    pods = api_path("v1", "pods", namespace=namespace)
    async with (
        served_webhook(kube_client, DRA_ALL, namespace, create_object=api_creator(kube_client)),
        dra_stack(kube_config, start_scheduler) as stack,
    ):

        def manifest(i: int) -> dict[str, Any]:
            pod = gpu_pod(
                f"train-{i}",
                mem=4000,
                cores=30,
                scheduler_name=None,
                annotations={keys.NVIDIA_USE_GPUTYPE: "a100"},
            )
            pod["spec"]["nodeSelector"] = {"hami-test": namespace}
            return pod

        async def discard(pod: dict[str, Any]) -> None:
            await kube_client.delete(f"{pods}/{pod['metadata']['name']}")

        created = await create_until_admitted_by_webhook(
            lambda i: kube_client.create(pods, manifest(i)),
            lambda pod: bool(pod["spec"].get("resourceClaims")),
            discard=discard,
        )
        # the HAMi resources became a claim on a template the webhook created
        container = created["spec"]["containers"][0]
        assert not [r for r in container["resources"].get("limits", {}) if r.startswith("nvidia.com/")]
        assert container["resources"]["limits"][keys.DRA_STEER_RESOURCE] == "1"
        [ref] = created["spec"]["resourceClaims"]
        assert container["resources"]["claims"] == [{"name": ref["name"]}]
        assert created["spec"]["nodeSelector"][keys.OPERATING_MODE] == keys.OPERATING_MODE_DRA
        template = await kube_client.get(
            api_path(
                RESOURCE_API,
                "resourceclaimtemplates",
                namespace=namespace,
                name=ref["resourceClaimTemplateName"],
            )
        )
        [request] = template["spec"]["spec"]["devices"]["requests"]
        assert request["exactly"]["capacity"]["requests"] == {"memory": "4000Mi", "cores": "30"}

        # kube-scheduler allocated the claim (consumable capacity) and bound the pod itself
        pod = await bound(kube_client, namespace, created["metadata"]["name"])
        assert pod["spec"]["nodeName"] == node
        claim = await allocated_claim(kube_client, namespace, pod)
        [result] = claim["status"]["allocation"]["devices"]["results"]
        assert result["driver"] == keys.DRA_DRIVER and result["pool"] == node
        assert result["consumedCapacity"] == {"memory": "4000Mi", "cores": "30"}

        # the extender's ledger counts the claim on the card its device names
        card = f"GPU-{node}-{result['device'].removeprefix('gpu-')}"
        await until(lambda: card_use(stack.extender, node, card) == (4000, 30))

        # a percentage other than 100 cannot be a DRA request: denied, naming the resource
        bad = manifest(99)
        bad["spec"]["containers"][0]["resources"]["limits"] = {"nvidia.com/gpumem-percentage": "50"}
        with pytest.raises(Exception, match="gpumem-percentage"):
            await kube_client.create(pods, bad)


async def test_binpack_and_spread_steer_dra_pods(
    kube_config: KubeConfig,
    kube_client: KubeClient,
    namespace: str,
    start_scheduler: Callable[..., SchedulerHandle],
) -> None:
    nodes = [f"{namespace}-a", f"{namespace}-b"]
    for slot, node in zip("ab", nodes, strict=True):
        await dra_test_node(kube_client, namespace, node, n=4, mem=16000, slot=slot)

    def pod(name: str, policy: str, **selector: str) -> dict[str, Any]:
        p = gpu_pod(name, mem=4000, cores=20, annotations={keys.NODE_SCHEDULER_POLICY: policy})
        p["spec"]["nodeSelector"] = {"hami-test": namespace, **selector}
        return p

    async with dra_stack(kube_config, start_scheduler) as stack:
        first = await create_converted_pod(kube_client, namespace, DRA_ALL, pod("first", "binpack", slot="a"))
        assert (await bound(kube_client, namespace, first["metadata"]["name"]))["spec"]["nodeName"] == nodes[
            0
        ]
        assert stack.extender is not None
        state = stack.extender.scheduler.state
        await until(lambda: state.nodes[nodes[0]].usedmem == 4000)
        # kube-scheduler alone scores these nodes alike (its resource scores round to the same
        # value; a tie is broken at random), so three pods in a row land as hami's score says:
        # binpack on the fuller node ...
        for i in range(3):
            await create_converted_pod(kube_client, namespace, DRA_ALL, pod(f"packed-{i}", "binpack"))
            assert (await bound(kube_client, namespace, f"packed-{i}"))["spec"]["nodeName"] == nodes[0]
            await until(lambda i=i: state.nodes[nodes[0]].usedmem == 4000 * (i + 2))
        # ... spread on the emptier one
        for i in range(3):
            await create_converted_pod(kube_client, namespace, DRA_ALL, pod(f"spread-{i}", "spread"))
            assert (await bound(kube_client, namespace, f"spread-{i}"))["spec"]["nodeName"] == nodes[1]
            await until(lambda i=i: state.nodes[nodes[1]].usedmem == 4000 * (i + 1))


async def test_mode_switch_never_overcommits_a_card(
    kube_config: KubeConfig,
    kube_client: KubeClient,
    namespace: str,
    start_scheduler: Callable[..., SchedulerHandle],
) -> None:
    """One 16000-MiB card serves a device-plugin pod, then its node switches to DRA mode with the
    pod still running: the DRA allocator sees a free card, hami's ledger does not."""
    await create_device_class(kube_client)
    node = f"{namespace}-m"
    cards = gpu_cards(node, n=1, mem=16000)
    card = cards[0].id
    await create_gpu_node(kube_client, node, cards, labels={"hami-test": namespace})
    nodes = api_path("v1", "nodes", name=node)

    def dra_pod(name: str, mem: int) -> dict[str, Any]:
        p = gpu_pod(name, mem=mem, cores=10)
        p["spec"]["nodeSelector"] = {"hami-test": namespace}
        return p

    async with dra_stack(kube_config, start_scheduler) as stack:
        # device-plugin mode: 12000 MiB through hami's extender
        dp = gpu_pod("dp", mem=12000, cores=10)
        dp["spec"]["nodeSelector"] = {"hami-test": namespace}
        await kube_client.create(api_path("v1", "pods", namespace=namespace), dp)
        await bound(kube_client, namespace, "dp")
        await until(lambda: card_use(stack.extender, node, card) == (12000, 10))

        # the node switches to DRA mode; the device-plugin pod keeps running
        await kube_client.merge_patch(
            nodes, {"metadata": {"labels": {keys.OPERATING_MODE: keys.OPERATING_MODE_DRA}}}
        )
        await set_node_status(
            kube_client, node, {"pods": "500", "cpu": "256", "memory": "1Ti", "nvidia.com/gpu": "0"}
        )
        await kube_client.create(api_path(RESOURCE_API, "resourceslices"), resource_slice(node, cards))

        # 8000 MiB fits the DRA allocator's view (no claims) but not the card: hami refuses the node
        await create_converted_pod(kube_client, namespace, DRA_ALL, dra_pod("too-big", 8000))
        message = await unschedulable(kube_client, namespace, "too-big")
        assert "over-commit" in message and card in message, message
        # 4000 MiB fits both: allocated, and the ledger holds the pod and the claim
        fits = await create_converted_pod(kube_client, namespace, DRA_ALL, dra_pod("fits", 4000))
        pod = await bound(kube_client, namespace, fits["metadata"]["name"])
        claim = await allocated_claim(kube_client, namespace, pod)
        await until(lambda: card_use(stack.extender, node, card) == (16000, 20))
        assert stack.extender is not None
        assert CLAIM_PREFIX + bodies.uid(claim) in stack.extender.scheduler.state.pods

        # back to device-plugin mode with the claim still allocated: the card is full for hami's
        # filter too, so a device-plugin pod cannot take the memory the claim holds
        await kube_client.merge_patch(
            nodes, {"metadata": {"labels": {keys.OPERATING_MODE: keys.OPERATING_MODE_DEVICE_PLUGIN}}}
        )
        await set_node_status(
            kube_client, node, {"pods": "500", "cpu": "256", "memory": "1Ti", "nvidia.com/gpu": "10"}
        )
        late = gpu_pod("late", mem=1000, cores=10)
        late["spec"]["nodeSelector"] = {"hami-test": namespace}
        await kube_client.create(api_path("v1", "pods", namespace=namespace), late)
        await unschedulable(kube_client, namespace, "late")

        # the DRA pod goes: its claim is deleted by the resourceclaim controller and the ledger frees it
        await kube_client.delete(
            api_path("v1", "pods", namespace=namespace, name=fits["metadata"]["name"]), grace_period_seconds=0
        )
        await until(lambda: card_use(stack.extender, node, card)[0] <= 13000, timeout=60)


async def test_examples_are_admitted_and_allocated(
    kube_config: KubeConfig,
    kube_client: KubeClient,
    namespace: str,
    start_scheduler: Callable[..., SchedulerHandle],
) -> None:
    """``examples/dra/``: the native claim (with hami's steering) and the HAMi-style pod (converted)."""
    node = f"{namespace}-x"
    await dra_test_node(kube_client, namespace, node, n=1, mem=40960)
    native = list(yaml.safe_load_all((EXAMPLES / "native-claim.yaml").read_text()))
    [hami_style] = yaml.safe_load_all((EXAMPLES / "hami-style-pod.yaml").read_text())
    async with dra_stack(kube_config, start_scheduler):
        for obj in native:
            plural = "resourceclaimtemplates" if obj["kind"] == "ResourceClaimTemplate" else "pods"
            api = RESOURCE_API if plural == "resourceclaimtemplates" else "v1"
            await kube_client.create(api_path(api, plural, namespace=namespace), obj)
        pod = await bound(kube_client, namespace, "inference-dra")
        claim = await allocated_claim(kube_client, namespace, pod)
        [result] = claim["status"]["allocation"]["devices"]["results"]
        assert result["consumedCapacity"] == {"memory": "8Gi", "cores": "30"}
        created = await create_converted_pod(kube_client, namespace, DRA_ALL, hami_style)
        pod = await bound(kube_client, namespace, created["metadata"]["name"])
        claim = await allocated_claim(kube_client, namespace, pod)
        [result] = claim["status"]["allocation"]["devices"]["results"]
        assert result["consumedCapacity"] == {"memory": "8000Mi", "cores": "30"}
        assert pod["spec"]["nodeName"] == node


def native_claim_pod(name: str, namespace: str, memory: str) -> tuple[dict[str, Any], dict[str, Any]]:
    """A native ResourceClaim (no webhook) for `memory` of a card, and a pod steered through hami
    (``schedulerName: hami-scheduler`` and the ``hami.io/dra`` marker, as examples/dra/native-claim.yaml)."""
    claim = claim_body(name, memory=memory, cores="10")
    pod = gpu_pod(name, scheduler_name="hami-scheduler")
    pod["spec"]["nodeSelector"] = {"hami-test": namespace}
    pod["spec"]["resourceClaims"] = [{"name": "gpu", "resourceClaimName": name}]
    main = pod["spec"]["containers"][0]
    main["resources"] = {"claims": [{"name": "gpu"}], "limits": {keys.DRA_STEER_RESOURCE: "1"}}
    return claim, pod


async def test_dra_pods_count_against_and_are_refused_by_namespace_quota(
    kube_config: KubeConfig,
    kube_client: KubeClient,
    namespace: str,
    start_scheduler: Callable[..., SchedulerHandle],
) -> None:
    """A namespace limited to 10000 MiB of card memory: a converted pod's claim holds 8000 of it, so
    another converted pod (4000) and a native claim's pod (3000) are refused by hami's /dra/filter
    with the device-plugin path's message; when the first pod goes, the converted one is placed."""
    node = f"{namespace}-q"
    await dra_test_node(kube_client, namespace, node, n=2, mem=16000)
    quota = {
        "metadata": {"name": "gpu"},
        "spec": {"hard": {"limits.nvidia.com/gpumem": "10000", "limits.nvidia.com/gpucores": "100"}},
    }
    await kube_client.create(api_path("v1", "resourcequotas", namespace=namespace), quota)

    def converted(name: str, mem: int) -> dict[str, Any]:
        p = gpu_pod(name, mem=mem, cores=10)
        p["spec"]["nodeSelector"] = {"hami-test": namespace}
        return p

    async with dra_stack(kube_config, start_scheduler) as stack:
        assert stack.extender is not None
        quota_ledger = stack.extender.scheduler.state.quota
        await until(lambda: quota_ledger.limited(namespace))
        first = await create_converted_pod(kube_client, namespace, DRA_ALL, converted("first", 8000))
        pod = await bound(kube_client, namespace, first["metadata"]["name"])
        await allocated_claim(kube_client, namespace, pod)
        await until(lambda: quota_ledger.used[namespace].get("nvidia.com/gpumem") == 8000)

        await create_converted_pod(kube_client, namespace, DRA_ALL, converted("second", 4000))
        message = await unschedulable(kube_client, namespace, "second")
        assert (
            f"namespace {namespace}: quota exceeded for limits.nvidia.com/gpumem (ResourceQuota gpu): "
            "limit 10000, used 8000, asked 4000 MiB" in message
        ), message
        claim, native = native_claim_pod("native", namespace, "3000Mi")
        await kube_client.create(api_path(RESOURCE_API, "resourceclaims", namespace=namespace), claim)
        await kube_client.create(api_path("v1", "pods", namespace=namespace), native)
        message = await unschedulable(kube_client, namespace, "native")
        assert "used 8000, asked 3000 MiB" in message, message

        # the first pod goes (its claim with it): the quota has room again, the second is placed
        await kube_client.delete(
            api_path("v1", "pods", namespace=namespace, name="first"), grace_period_seconds=0
        )
        placed = await bound(kube_client, namespace, "second")
        assert placed["spec"]["nodeName"] == node
        # 4000 + 3000 fit the 10000 as well: the native claim's pod follows, and the quota holds both
        await bound(kube_client, namespace, "native")
        await until(lambda: quota_ledger.used[namespace].get("nvidia.com/gpumem") == 7000, timeout=60)


async def test_native_claim_pods_are_steered_to_hami_and_its_quota_by_the_webhook(
    kube_config: KubeConfig,
    kube_client: KubeClient,
    namespace: str,
    start_scheduler: Callable[..., SchedulerHandle],
) -> None:
    """A plain native pod (no schedulerName, no marker) whose claim asks hami's DeviceClass: the
    webhook in DRA mode reads the claim, steers the pod through hami-scheduler, and hami's
    /dra/filter refuses it while the namespace's quota has no room; a bigger quota lets it run."""
    node = f"{namespace}-s"
    await dra_test_node(kube_client, namespace, node, n=1, mem=16000)
    quotas = api_path("v1", "resourcequotas", namespace=namespace)
    await kube_client.create(
        quotas, {"metadata": {"name": "gpu"}, "spec": {"hard": {"limits.nvidia.com/gpumem": "2000"}}}
    )
    claim, _ = native_claim_pod("native", namespace, "3000Mi")
    await kube_client.create(api_path(RESOURCE_API, "resourceclaims", namespace=namespace), claim)
    pods = api_path("v1", "pods", namespace=namespace)

    def plain(i: int) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": f"native-{i}"},
            "spec": {
                "nodeSelector": {"hami-test": namespace},
                "resourceClaims": [{"name": "gpu", "resourceClaimName": "native"}],
                "containers": [
                    {"name": "main", "image": "busybox", "resources": {"claims": [{"name": "gpu"}]}}
                ],
                "terminationGracePeriodSeconds": 0,
            },
        }

    async def discard(pod: dict[str, Any]) -> None:
        await kube_client.delete(f"{pods}/{pod['metadata']['name']}", grace_period_seconds=0)

    async with (
        served_webhook(kube_client, DRA_ALL, namespace, create_object=api_creator(kube_client)),
        dra_stack(kube_config, start_scheduler) as stack,
    ):
        assert stack.extender is not None
        quota_ledger = stack.extender.scheduler.state.quota
        await until(lambda: quota_ledger.limited(namespace))
        created = await create_until_admitted_by_webhook(
            lambda i: kube_client.create(pods, plain(i)),
            lambda pod: pod["spec"].get("schedulerName") == "hami-scheduler",
            discard=discard,
        )
        name = created["metadata"]["name"]
        assert created["spec"]["containers"][0]["resources"]["limits"] == {keys.DRA_STEER_RESOURCE: "1"}
        message = await unschedulable(kube_client, namespace, name)
        assert "quota exceeded for limits.nvidia.com/gpumem" in message and "asked 3000 MiB" in message, (
            message
        )
        # with room in the quota the same pod is placed (a quota change is no event kube-scheduler
        # retries on, so the pod is made again)
        await discard(created)
        await kube_client.merge_patch(
            f"{quotas}/gpu", {"spec": {"hard": {"limits.nvidia.com/gpumem": "4000"}}}
        )
        await until(lambda: quota_ledger.limits[namespace]["nvidia.com/gpumem"].value == 4000)
        again = await kube_client.create(pods, plain(100))
        assert again["spec"]["schedulerName"] == "hami-scheduler"
        pod = await bound(kube_client, namespace, again["metadata"]["name"])
        assert pod["spec"]["nodeName"] == node
