"""MIG-capable cards as partitionable devices against the real kube-apiserver and kube-scheduler
v1.34 (DRAPartitionableDevices and DRAConsumableCapacity on in the test control plane): the slice
`hami dra-plugin` publishes for a MIG-capable A100 (the sandbox's profiles) keeps its shared
counters, kube-scheduler allocates MIG profile placements without overlapping memory slices and
refuses the whole card (and any share of it) once a placement is allocated; the plugin prepares
the MIG device into a CDI spec naming the instance. The last test writes down what v1.34 does not
do: a card already shared by a claim still gives out MIG placements, and the plugin refuses them."""

from __future__ import annotations

import json
import tempfile
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest

from hami.deviceplugin.sources.fake import FakeSource
from hami.draplugin.kubeops import ClientDraKube
from hami.draplugin.prepare import CDI_KIND
from hami.draplugin.runner import DraNodePlugin
from hami.draplugin.slices import slice_name
from hami.kube.client import KubeClient
from hami.kube.paths import api_path
from hami.protocol import bodies, keys
from hami.protocol.dra import RESOURCE_API, claim_allocations
from hami.testing.controlplane import BinariesMissingError, ControlPlane, SchedulerHandle, find_binaries
from hami.testing.dra import claim_body, create_device_class, dra_plugin_in, mig_fake_source_spec, serving
from hami.testing.drakubelet import DraKubelet
from hami.testing.gpucluster import create_gpu_node
from hami.testing.prereq import missing
from hami.testing.stack import wait_for

pytestmark = pytest.mark.integration

CARDS = ("GPU-dra-mig-0", "GPU-dra-mig-1")


def claim(name: str, device_class: str, *, index: int, profile: str = "", memory: str = "") -> dict[str, Any]:
    """A claim for a device of card `index` (a MIG device of `profile` with the MIG class)."""
    attrs = f'device.attributes["{keys.DRA_DRIVER}"]'
    cel = [f"{attrs}.{keys.DRA_ATTR_INDEX} == {index}"]
    if profile:
        cel.append(f'{attrs}.{keys.DRA_ATTR_MIG_PROFILE} == "{profile}"')
    return claim_body(name, device_class=device_class, memory=memory or None, selectors=cel)


def claim_pod(name: str, node: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {
            "nodeSelector": {"kubernetes.io/hostname": node},
            "resourceClaims": [{"name": "gpu", "resourceClaimName": name}],
            "containers": [{"name": "main", "image": "busybox", "resources": {"claims": [{"name": "gpu"}]}}],
        },
    }


class Cluster:
    def __init__(self, client: KubeClient, namespace: str, node: str) -> None:
        self.client, self.namespace, self.node = client, namespace, node

    async def submit(self, body: dict[str, Any]) -> None:
        """The claim and a pod (same name) that uses it on the node."""
        await self.client.create(api_path(RESOURCE_API, "resourceclaims", namespace=self.namespace), body)
        pod = claim_pod(bodies.name(body), self.node)
        await self.client.create(api_path("v1", "pods", namespace=self.namespace), pod)

    async def claim(self, name: str) -> dict[str, Any]:
        path = api_path(RESOURCE_API, "resourceclaims", namespace=self.namespace, name=name)
        got: dict[str, Any] = await self.client.get(path)
        return got

    async def allocated(self, name: str) -> dict[str, Any]:
        async def done() -> dict[str, Any] | None:
            c = await self.claim(name)
            return c if bodies.status(c).get("allocation") else None

        got: dict[str, Any] = await wait_for(done, timeout=60)
        return got

    async def device_of(self, name: str) -> str:
        (a,) = claim_allocations(await self.allocated(name))
        assert a.pool == self.node
        return a.device

    async def unschedulable(self, name: str) -> None:
        async def pending() -> dict[str, Any] | None:
            p = await self.client.get(api_path("v1", "pods", namespace=self.namespace, name=name))
            cond = next((c for c in bodies.conditions(p) if c.get("type") == "PodScheduled"), None)
            return p if cond and cond.get("reason") == "Unschedulable" else None

        pod = await wait_for(pending, timeout=60)
        assert not bodies.node_name(pod)
        assert not bodies.status(await self.claim(name)).get("allocation")


@pytest.fixture
async def mig_node(
    kube_client: KubeClient, namespace: str, start_scheduler: Callable[..., SchedulerHandle]
) -> AsyncIterator[tuple[Cluster, DraNodePlugin, Path]]:
    node = f"{namespace}-n0"
    await create_gpu_node(kube_client, node, [], labels={"kubernetes.io/hostname": node})
    await create_device_class(kube_client)
    root = Path(tempfile.mkdtemp(prefix="hdrm", dir="/tmp"))
    source = FakeSource(mig_fake_source_spec(*CARDS))
    async with serving(dra_plugin_in(root, node, source, ClientDraKube(kube_client)), root) as plugin:
        start_scheduler()
        yield Cluster(kube_client, namespace, node), plugin, root


async def test_scheduler_allocates_mig_placements_and_then_refuses_the_whole_card(
    mig_node: tuple[Cluster, DraNodePlugin, Path],
) -> None:
    cluster, plugin, root = mig_node
    stored = await cluster.client.get(api_path(RESOURCE_API, "resourceslices", name=slice_name(cluster.node)))
    # the API server kept the partitionable-device fields (it drops them with the gate off)
    counters = stored["spec"]["sharedCounters"]
    assert [(c["name"], len(c["counters"])) for c in counters] == [
        ("gpu-0-counters", 9),
        ("gpu-1-counters", 9),
    ]
    whole = stored["spec"]["devices"][0]
    assert whole["name"] == "gpu-0" and whole["consumesCounters"][0]["counterSet"] == "gpu-0-counters"
    # the API server stores exactly what the plugin wants (canonical quantities): a refresh writes nothing
    assert await plugin.refresh() and plugin.publisher.published == 1
    again = await cluster.client.get(api_path(RESOURCE_API, "resourceslices", name=slice_name(cluster.node)))
    assert again["spec"]["pool"]["generation"] == 1
    # what the API server stores is what the plugin wants: a refresh writes nothing
    assert await plugin.refresh() and plugin.publisher.published == 1
    assert stored["spec"]["pool"]["generation"] == 1

    await cluster.submit(claim("m1", keys.DRA_MIG_DEVICE_CLASS, index=0, profile="3g.20gb"))
    first = await cluster.device_of("m1")
    # a whole card and a share of it both consume every counter: refused beside a MIG placement
    await cluster.submit(claim("whole", keys.DRA_DEVICE_CLASS, index=0))
    await cluster.submit(claim("share", keys.DRA_DEVICE_CLASS, index=0, memory="1000Mi"))
    await cluster.unschedulable("whole")
    await cluster.unschedulable("share")
    # the second 3g.20gb placement is the other half of the card's memory slices
    await cluster.submit(claim("m2", keys.DRA_MIG_DEVICE_CLASS, index=0, profile="3g.20gb"))
    second = await cluster.device_of("m2")
    assert sorted([first, second]) == ["gpu-0-mig-3g20gb-0", "gpu-0-mig-3g20gb-4"]
    # every memory slice is taken: even the smallest profile does not fit
    await cluster.submit(claim("m3", keys.DRA_MIG_DEVICE_CLASS, index=0, profile="1g.5gb"))
    await cluster.unschedulable("m3")

    m1 = await cluster.claim("m1")
    kubelet = DraKubelet(root / "registry", keys.DRA_DRIVER)
    await kubelet.register()
    resp = await kubelet.prepare((cluster.namespace, bodies.uid(m1), "m1"))
    out = resp.claims[bodies.uid(m1)]
    assert out.error == ""
    assert [(d.device_name, list(d.cdi_device_ids)) for d in out.devices] == [
        (first, [f"{CDI_KIND}={bodies.uid(m1)}-gpu"])
    ]
    (inst,) = plugin.source.list_mig_instances(CARDS[0])
    assert (inst.profile, inst.placement.start) == ("3g.20gb", int(first.rsplit("-", 1)[1]))
    spec = json.loads((root / "cdi" / f"{keys.DRA_DRIVER}-{bodies.uid(m1)}.json").read_text())
    assert f"{keys.ENV_VISIBLE_DEVICES}={inst.mig_uuid}" in spec["devices"][0]["containerEdits"]["env"]


async def test_v1_34_gives_out_mig_placements_of_a_shared_card_and_the_plugin_refuses_them(
    mig_node: tuple[Cluster, DraNodePlugin, Path],
) -> None:
    """kube-scheduler v1.34 subtracts the counters of allocated devices only for devices allocated
    whole (`allocatedState.AllocatedDevices`); a share of a card (`shareID`) is not among them, so
    once the share's claim is allocated the card's counters look free again. (The share is on card
    1: v1.34 checks every request's capacity against the slice's first device, so a share on card
    0 would refuse the MIG request for another reason.)"""
    cluster, plugin, root = mig_node
    await cluster.submit(claim("share", keys.DRA_DEVICE_CLASS, index=1, memory="1000Mi"))
    assert await cluster.device_of("share") == "gpu-1"
    await cluster.submit(claim("m1", keys.DRA_MIG_DEVICE_CLASS, index=1, profile="1g.5gb"))
    assert (await cluster.device_of("m1")).startswith("gpu-1-mig-1g5gb-")

    kubelet = DraKubelet(root / "registry", keys.DRA_DRIVER)
    await kubelet.register()
    share, m1 = await cluster.claim("share"), await cluster.claim("m1")
    resp = await kubelet.prepare((cluster.namespace, bodies.uid(share), "share"))
    assert resp.claims[bodies.uid(share)].error == ""
    resp = await kubelet.prepare((cluster.namespace, bodies.uid(m1), "m1"))
    assert "a card is either shared whole or split into MIG instances" in resp.claims[bodies.uid(m1)].error
    assert plugin.source.list_mig_instances(CARDS[1]) == []


async def test_without_the_partitionable_gate_mig_capable_cards_are_published_whole() -> None:
    """A cluster whose API server runs without DRAPartitionableDevices drops the slice's counters:
    the plugin notices on its first write and publishes whole cards only (no MIG device left
    without counters, no rewrite every refresh), and kube-scheduler allocates them as before."""
    try:
        binaries = find_binaries()
    except BinariesMissingError as exc:
        missing(str(exc), integration=True)
    with ControlPlane(binaries, feature_gates={"DRAConsumableCapacity": True}) as cp:
        async with KubeClient(cp.kube_config()) as client:
            node = "gateless-n0"
            await create_gpu_node(client, node, [], labels={"kubernetes.io/hostname": node})
            await create_device_class(client)
            root = Path(tempfile.mkdtemp(prefix="hdrg", dir="/tmp"))
            source = FakeSource(mig_fake_source_spec(*CARDS))
            async with serving(dra_plugin_in(root, node, source, ClientDraKube(client)), root) as plugin:
                path = api_path(RESOURCE_API, "resourceslices", name=slice_name(node))
                stored = await client.get(path)
                assert "sharedCounters" not in stored["spec"]
                assert [d["name"] for d in stored["spec"]["devices"]] == ["gpu-0", "gpu-1"]
                assert not any("consumesCounters" in d for d in stored["spec"]["devices"])
                assert not plugin.publisher.partitions
                written = plugin.publisher.published
                assert await plugin.refresh() and plugin.publisher.published == written
                cp.start_scheduler()
                cluster = Cluster(client, "default", node)
                await cluster.submit(claim("whole-gateless", keys.DRA_DEVICE_CLASS, index=0, memory="1000Mi"))
                assert await cluster.device_of("whole-gateless") == "gpu-0"
