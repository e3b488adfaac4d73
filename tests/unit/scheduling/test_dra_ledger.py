"""DRA allocations in the ledger (:mod:`hami.scheduling.dra`): slices name the cards, allocated claims
use them beside device-plugin pods, one invariant for both; the over-commit check and node scores."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from hami.deviceplugin.settings import NodeSettings, build_inventory
from hami.deviceplugin.sources.fake import FakeSource
from hami.devices.base import Card, Placement
from hami.devices.hooks import QuotaNames
from hami.draplugin.slices import resource_slice as plugin_resource_slice
from hami.draplugin.slices import shared_counters
from hami.draplugin.slices import slice_devices as plugin_slice_devices
from hami.protocol import keys
from hami.protocol.errors import ProtocolError
from hami.protocol.pod import ContainerDevice
from hami.scheduling.dra import (
    CLAIM_PREFIX,
    ClaimRequest,
    DraLedger,
    claim_requests,
    node_scores,
    overcommit_reason,
    quota_reason,
)
from hami.scheduling.state import ClusterState, PodAllocation
from hami.testing.dra import mig_fake_source_spec, resource_slice
from hami.testing.gpucluster import gpu_cards


def slice_of(node: str, n: int = 2, mem: int = 16000) -> dict[str, Any]:
    s = resource_slice(node, gpu_cards(node, n=n, mem=mem))
    s["metadata"]["uid"] = f"slice-{node}"
    return s


def claim(
    uid: str, node: str, *devices: tuple[int, str | None, str | None], ns: str = "team"
) -> dict[str, Any]:
    """An allocated claim: per device ``(index, memory, cores)`` consumed (None: not given)."""
    results = []
    for index, mem, cores in devices:
        r: dict[str, Any] = {
            "request": "gpu",
            "driver": keys.DRA_DRIVER,
            "pool": node,
            "device": f"gpu-{index}",
        }
        consumed = {k: v for k, v in (("memory", mem), ("cores", cores)) if v is not None}
        if consumed:
            r["consumedCapacity"] = consumed
        results.append(r)
    return {
        "metadata": {"name": f"c-{uid}", "namespace": ns, "uid": uid},
        "status": {"allocation": {"devices": {"results": results}}},
    }


def use(state: ClusterState, node: str, index: int) -> tuple[int, int, int]:
    c = state.nodes[node].by_uuid[f"GPU-{node}-{index}"]
    return c.used, c.usedmem, c.usedcores


def test_slice_cards_and_claim_usage() -> None:
    ledger = DraLedger(ClusterState())
    ledger.slice_changed(slice_of("n1"))
    cards = ledger.state.nodes["n1"].cards
    assert [(c.uuid, c.totalmem, c.totalcores, c.type, c.count) for c in cards] == [
        ("GPU-n1-0", 16000, 100, "NVIDIA-A100", 10),
        ("GPU-n1-1", 16000, 100, "NVIDIA-A100", 10),
    ]
    ledger.claim_changed(claim("a", "n1", (0, "4000Mi", "30")))
    assert use(ledger.state, "n1", 0) == (1, 4000, 30)
    # a result without consumed capacity holds the whole card
    ledger.claim_changed(claim("b", "n1", (1, None, None)))
    assert use(ledger.state, "n1", 1) == (1, 16000, 100)
    node = ledger.state.nodes["n1"]
    assert (node.used, node.usedmem, node.usedcores) == (2, 20000, 130)
    # claims are charged like pods: namespace quota, the ledger's entries
    assert CLAIM_PREFIX + "a" in ledger.state.pods
    # deallocated (no status.allocation), then deleted: nothing held
    ledger.claim_changed({"metadata": {"name": "c-a", "namespace": "team", "uid": "a"}, "status": {}})
    assert use(ledger.state, "n1", 0) == (0, 0, 0)
    ledger.claim_deleted(claim("b", "n1"))
    assert (node.used, node.usedmem, node.usedcores) == (0, 0, 0)


def test_claim_before_its_slice_is_pending_then_counted() -> None:
    ledger = DraLedger(ClusterState())
    ledger.claim_changed(claim("a", "n1", (1, "2Gi", "10")))
    assert ledger.pending() == ["a"] and "n1" not in ledger.state.nodes
    ledger.slice_changed(slice_of("n1"))
    assert ledger.pending() == [] and use(ledger.state, "n1", 1) == (1, 2048, 10)


def test_claim_keeps_its_card_after_the_slice_goes() -> None:
    """A plugin that stops deletes its slices; the claim still holds the card (a registered node)."""
    state = ClusterState()
    cards = [
        Card(
            uuid=f"GPU-n1-{i}",
            vendor=keys.VENDOR_NVIDIA,
            type="A100",
            count=10,
            totalmem=16000,
            totalcores=100,
            index=i,
        )
        for i in range(2)
    ]
    state.set_node("n1", cards)  # the device plugin's registration
    ledger = DraLedger(state)
    ledger.slice_changed(slice_of("n1"))
    assert state.nodes["n1"].cards == cards  # registered cards win over the slice's
    ledger.claim_changed(claim("a", "n1", (0, "1000Mi", "5")))
    ledger.slice_deleted(slice_of("n1"))
    assert use(state, "n1", 0) == (1, 1000, 5)


def test_slice_only_node_loses_its_cards_with_the_slice_and_registration_takes_over() -> None:
    state = ClusterState()
    ledger = DraLedger(state)
    ledger.slice_changed(slice_of("n1"))
    ledger.claim_changed(claim("a", "n1", (0, "1000Mi", "5")))
    registered = [
        Card(uuid="GPU-n1-0", vendor=keys.VENDOR_NVIDIA, type="A100", count=4, totalmem=8000, totalcores=100)
    ]
    state.set_node("n1", registered)  # the device plugin registers (mode switch back)
    ledger.node_refreshed("n1")
    assert state.nodes["n1"].cards == registered and use(state, "n1", 0) == (1, 1000, 5)
    state.remove_node("n1")  # registration gone: the slice's cards again
    ledger.node_refreshed("n1")
    assert len(state.nodes["n1"].cards) == 2 and use(state, "n1", 0) == (1, 1000, 5)
    ledger.slice_deleted(slice_of("n1"))
    assert "n1" not in state.nodes


@pytest.mark.parametrize(
    ("mutate", "field"),
    [
        (lambda d: d["attributes"].pop("uuid"), "spec.devices[0].attributes[uuid]"),
        (lambda d: d["capacity"].pop("memory"), "spec.devices[0].capacity"),
        (lambda d: d["capacity"]["memory"].update(value="lots"), "spec.devices[0].capacity.memory"),
        (lambda d: d["capacity"]["cores"].update(value="-1"), "spec.devices[0].capacity.cores"),
    ],
)
def test_malformed_slice_names_the_field_and_changes_nothing(mutate: Any, field: str) -> None:
    ledger = DraLedger(ClusterState())
    ledger.slice_changed(slice_of("n1"))
    ledger.claim_changed(claim("a", "n1", (0, "1000Mi", "5")))
    bad = slice_of("n1", mem=32000)
    mutate(bad["spec"]["devices"][0])
    with pytest.raises(ProtocolError, match=field.replace("[", r"\[").replace("]", r"\]")):
        ledger.slice_changed(bad)
    assert [c.totalmem for c in ledger.state.nodes["n1"].cards] == [16000, 16000]
    assert use(ledger.state, "n1", 0) == (1, 1000, 5)


def test_malformed_claim_names_the_field() -> None:
    ledger = DraLedger(ClusterState())
    with pytest.raises(ProtocolError, match=r"results\[0\].consumedCapacity.memory"):
        ledger.claim_changed(claim("a", "n1", (0, "a lot", "5")))
    assert ledger.claims == {}


def test_other_drivers_are_ignored() -> None:
    ledger = DraLedger(ClusterState())
    other = slice_of("n1")
    other["spec"]["driver"] = "gpu.nvidia.com"
    ledger.slice_changed(other)
    assert "n1" not in ledger.state.nodes
    c = claim("a", "n1", (0, "1Gi", "1"))
    c["status"]["allocation"]["devices"]["results"][0]["driver"] = "gpu.nvidia.com"
    ledger.claim_changed(c)
    assert ledger.claims == {}


def test_claim_requests() -> None:
    spec = {
        "devices": {
            "requests": [
                {
                    "name": "gpu",
                    "exactly": {
                        "deviceClassName": keys.DRA_DEVICE_CLASS,
                        "count": 2,
                        "capacity": {"requests": {"memory": "4Gi", "cores": "30"}},
                    },
                },
                {"name": "whole", "exactly": {"deviceClassName": keys.DRA_DEVICE_CLASS}},
                {"name": "nic", "exactly": {"deviceClassName": "rdma"}},
            ]
        }
    }
    assert claim_requests({"spec": spec}) == [ClaimRequest(2, 4096, 30), ClaimRequest(1, None, None)]
    spec["devices"]["requests"][0]["exactly"]["count"] = 0
    with pytest.raises(ProtocolError, match=r"requests\[0\].exactly.count"):
        claim_requests({"spec": spec})


# --- one invariant for pods and claims -----------------------------------------------------------
def pod_alloc(uid: str, node: str, index: int, mem: int, cores: int) -> PodAllocation:
    dev = ContainerDevice(uuid=f"GPU-{node}-{index}", type="A100", usedmem=mem, usedcores=cores)
    return PodAllocation(
        uid=uid,
        namespace="team",
        name=uid,
        node=node,
        containers={keys.VENDOR_NVIDIA: [(Placement(dev),)]},
        init_count=0,
    )


ops = st.lists(
    st.one_of(
        st.tuples(
            st.sampled_from(["pod", "claim"]),
            st.integers(0, 5),
            st.sampled_from(["n1", "n2"]),
            st.integers(0, 1),
            st.integers(0, 8000),
            st.integers(0, 50),
        ),
        st.tuples(st.just("drop-pod"), st.integers(0, 5)),
        st.tuples(st.just("drop-claim"), st.integers(0, 5)),
        st.tuples(st.just("slice"), st.sampled_from(["n1", "n2"])),
        st.tuples(st.just("unslice"), st.sampled_from(["n1", "n2"])),
    ),
    max_size=40,
)


@settings(max_examples=150, deadline=None)
@given(ops)
def test_totals_always_equal_the_live_pods_and_claims(steps: list[tuple[Any, ...]]) -> None:
    """Node and card totals equal a from-scratch sum over live pods and allocated claims, whatever
    order slices, claims and pods come and go in (a claim keeps its card after its slice goes)."""
    state = ClusterState()
    ledger = DraLedger(state)
    pods: dict[str, tuple[str, int, int, int]] = {}
    claims: dict[str, tuple[str, int, int, int]] = {}
    live_slices: set[str] = set()
    pending: set[str] = set()
    for step in steps:
        kind = step[0]
        if kind == "pod":
            _, i, node, index, mem, cores = step
            pods[f"p{i}"] = (node, index, mem, cores)
            state.add_pod(pod_alloc(f"p{i}", node, index, mem, cores))
        elif kind == "claim":
            _, i, node, index, mem, cores = step
            if f"c{i}" in claims:
                continue  # a claim's allocation does not move once made
            claims[f"c{i}"] = (node, index, mem, cores)
            if node not in live_slices:
                pending.add(f"c{i}")
            ledger.claim_changed(claim(f"c{i}", node, (index, f"{mem}Mi", str(cores))))
        elif kind == "drop-pod":
            pods.pop(f"p{step[1]}", None)
            state.remove_pod(f"p{step[1]}")
        elif kind == "drop-claim":
            claims.pop(f"c{step[1]}", None)
            pending.discard(f"c{step[1]}")
            ledger.claim_deleted({"metadata": {"uid": f"c{step[1]}"}})
        elif kind == "slice":
            live_slices.add(step[1])
            pending -= {k for k in pending if claims[k][0] == step[1]}
            ledger.slice_changed(slice_of(step[1]))
        else:
            live_slices.discard(step[1])
            ledger.slice_deleted(slice_of(step[1]))
    for name, node in state.nodes.items():
        expected: dict[str, list[int]] = {c.uuid: [0, 0, 0] for c in node.cards}
        live = list(pods.values()) + [v for k, v in claims.items() if k not in ledger.pending()]
        for n, index, mem, cores in live:
            if n == name:
                acc = expected[f"GPU-{n}-{index}"]
                acc[0] += 1
                acc[1] += mem
                acc[2] += cores
        assert {c.uuid: [c.used, c.usedmem, c.usedcores] for c in node.cards} == expected
        assert [node.used, node.usedmem, node.usedcores] == [
            sum(v[i] for v in expected.values()) for i in range(3)
        ]
    # a claim is pending exactly until a slice naming its device is seen
    assert set(ledger.pending()) == pending


# --- steering ------------------------------------------------------------------------------------
def test_overcommit_reason_only_where_device_plugin_pods_hold_cards() -> None:
    state = ClusterState()
    ledger = DraLedger(state)
    ledger.slice_changed(slice_of("n1", n=1))
    ledger.claim_changed(claim("a", "n1", (0, "4000Mi", "10")))
    big = [ClaimRequest(1, 8000, 10)]
    assert overcommit_reason(ledger, "n1", big) is None  # only claims: the DRA allocator sees everything
    assert overcommit_reason(ledger, "n1", None) is None
    state.add_pod(pod_alloc("dp", "n1", 0, 6000, 10))  # a device-plugin pod on the same card
    reason = overcommit_reason(ledger, "n1", big)
    assert reason is not None and "GPU-n1-0" in reason and "10000/16000 MiB" in reason
    assert overcommit_reason(ledger, "n1", [ClaimRequest(1, 6000, 10)]) is None  # fits both views
    assert overcommit_reason(ledger, "n1", [ClaimRequest(1, None, None)]) is None  # allocator refuses anyway
    assert "not known" in (overcommit_reason(ledger, "n1", None) or "")
    assert overcommit_reason(ledger, "elsewhere", big) is None


def test_node_scores_binpack_and_spread() -> None:
    state = ClusterState()
    ledger = DraLedger(state)
    for n in ("n1", "n2", "n3"):
        ledger.slice_changed(slice_of(n))
    ledger.claim_changed(claim("a", "n1", (0, "8000Mi", "50")))
    ledger.claim_changed(claim("b", "n2", (0, "2000Mi", "10")))
    nodes = ["n1", "n2", "n3", "unknown"]
    assert node_scores(state, nodes, "binpack") == {"n1": 10, "n2": 3, "n3": 0, "unknown": 0}
    assert node_scores(state, nodes, "spread") == {"n1": 0, "n2": 7, "n3": 10, "unknown": 0}
    assert node_scores(state, ["n3"], "binpack") == {"n3": 5}  # equal nodes score equally
    assert node_scores(state, ["x"], "binpack") == {"x": 0}


def test_assumed_pod_counts_until_its_claim_arrives() -> None:
    """kube-scheduler schedules the next pod before the last one's claim is written: what hami
    expects counts meanwhile, and the real claim replaces it wherever it landed."""
    state = ClusterState()
    ledger = DraLedger(state)
    ledger.slice_changed(slice_of("n1"))
    ledger.slice_changed(slice_of("n2"))
    assert ledger.assume("pod-1", "team", "p1", "n1", [ClaimRequest(2, 4000, 10)])
    assert use(state, "n1", 0) == (1, 4000, 10) and use(state, "n1", 1) == (1, 4000, 10)
    assert not ledger.has_pods("n1")  # an assumption is a DRA allocation, not a device-plugin pod
    # the over-commit check's view of the DRA allocator: allocated claims only (conservative)
    assert ledger.claim_usage("n1") == {}
    # the claim lands on n2 after all: the assumption on n1 goes
    real = claim("a", "n2", (0, "4000Mi", "10"), (1, "4000Mi", "10"))
    real["status"]["reservedFor"] = [{"resource": "pods", "name": "p1", "uid": "pod-1"}]
    ledger.claim_changed(real)
    assert use(state, "n1", 0) == (0, 0, 0) and use(state, "n2", 0) == (1, 4000, 10)
    # what does not fit is not assumed; a gone pod's assumption goes
    assert not ledger.assume("pod-2", "team", "p2", "n1", [ClaimRequest(3, 1000, 10)])
    assert not ledger.assume("pod-2", "team", "p2", "nowhere", [ClaimRequest(1, 1000, 10)])
    assert ledger.assume("pod-3", "team", "p3", "n1", [ClaimRequest(1, None, None)])
    assert use(state, "n1", 0) == (1, 16000, 0)  # the slice's defaults: the memory, no cores
    ledger.settle("pod-3")
    assert state.nodes["n1"].usedmem == 0


def test_node_events_leave_slice_cards_alone_and_slices_move_between_nodes() -> None:
    state = ClusterState()
    ledger = DraLedger(state)
    ledger.slice_changed(slice_of("n1"))
    before = state.nodes["n1"]
    ledger.node_refreshed("n1")  # a node heartbeat: nothing to read again
    assert state.nodes["n1"] is before
    moved = slice_of("n2")
    moved["metadata"]["name"] = slice_of("n1")["metadata"]["name"]  # the same slice, now for n2
    ledger.slice_changed(moved)
    assert "n1" not in state.nodes and len(state.nodes["n2"].cards) == 2


# --- MIG devices (the plugin's partitionable slices) and namespace quota ------------------------
def plugin_slice(node: str) -> dict[str, Any]:
    """The slice `hami dra-plugin` publishes for two A100s, card 0 MIG-capable with the sandbox's
    profiles (the plugin's own slice builder, not a copy of its format)."""
    source = FakeSource(mig_fake_source_spec(f"GPU-{node}-0", plain=[f"GPU-{node}-1"]))
    devices = build_inventory(source, NodeSettings(node_name=node, operating_mode=keys.OPERATING_MODE_DRA))
    body = plugin_resource_slice(node, "uid", 1, plugin_slice_devices(devices, []), shared_counters(devices))
    body["metadata"]["uid"] = f"slice-{node}"
    return body


def mig_claim(uid: str, node: str, device: str, ns: str = "team") -> dict[str, Any]:
    body = claim(uid, node, (0, None, None), ns=ns)
    body["status"]["allocation"]["devices"]["results"][0]["device"] = device
    return body


def test_a_mig_claim_holds_its_profile_on_its_card() -> None:
    state = ClusterState()
    ledger = DraLedger(state)
    ledger.slice_changed(plugin_slice("n1"))
    # MIG devices are partitions of card 0, not cards of the node
    assert [c.uuid for c in state.nodes["n1"].cards] == ["GPU-n1-0", "GPU-n1-1"]
    ledger.claim_changed(mig_claim("m", "n1", "gpu-0-mig-3g20gb-4"))
    assert use(state, "n1", 0) == (1, 19968, 39)
    # a device-plugin pod (a node mid-switch) sees what the MIG instance holds: 20992 MiB are left
    state.add_pod(pod_alloc("dp", "n1", 0, 20000, 10))
    assert use(state, "n1", 0) == (2, 39968, 49)
    # a MIG request asks at least the smallest profile (1g.5gb: 4864 MiB, 13 cores) of a card with
    # MIG devices: card 0 has no room for it in the ledger while the allocator sees room
    reason = overcommit_reason(ledger, "n1", [ClaimRequest(1, None, None, mig=True)])
    assert reason is not None and "GPU-n1-0" in reason and "4864 MiB" in reason
    ledger.claim_deleted(mig_claim("m", "n1", "gpu-0-mig-3g20gb-4"))
    assert use(state, "n1", 0) == (1, 20000, 10)


def test_claim_requests_of_the_mig_class() -> None:
    body = {
        "spec": {
            "devices": {
                "requests": [
                    {"name": "a", "exactly": {"deviceClassName": keys.DRA_MIG_DEVICE_CLASS, "count": 2}},
                    {"name": "b", "exactly": {"deviceClassName": "other.example.com"}},
                ]
            }
        }
    }
    assert claim_requests(body) == [ClaimRequest(2, None, None, mig=True)]


def limited_pod(uid: str, ns: str = "team") -> dict[str, Any]:
    return {"metadata": {"name": f"p-{uid}", "namespace": ns, "uid": uid}}


def test_dra_pods_are_refused_by_namespace_quota_like_device_plugin_pods() -> None:
    state = ClusterState()
    state.quota.set_vendor(keys.VENDOR_NVIDIA, QuotaNames("nvidia.com/gpumem", "nvidia.com/gpucores"))
    ledger = DraLedger(state)
    ledger.slice_changed(plugin_slice("n1"))
    state.set_quota("team", "gpu", {"limits.nvidia.com/gpumem": "30000", "limits.nvidia.com/gpucores": "60"})
    pod = limited_pod("p1")
    assert quota_reason(ledger, "n1", pod, [ClaimRequest(1, 8000, 30)]) is None
    assert quota_reason(ledger, "n1", limited_pod("x", ns="free"), [ClaimRequest(1, None, None)]) is None
    # claims count: a device-plugin pod's 10000 MiB and a claim's 8000 MiB leave 12000
    state.add_pod(pod_alloc("dp", "n1", 1, 10000, 0))
    ledger.claim_changed(claim("c", "n1", (1, "8000Mi", "20")))
    assert quota_reason(ledger, "n1", pod, [ClaimRequest(1, 12000, 10)]) is None
    assert quota_reason(ledger, "n1", pod, [ClaimRequest(1, 12001, 10)]) == (
        "namespace team: quota exceeded for limits.nvidia.com/gpumem (ResourceQuota gpu): "
        "limit 30000, used 18000, asked 12001 MiB"
    )
    # a whole card counts its memory; a MIG request at least its card's smallest profile (13 cores)
    assert "asked 40960 MiB" in (quota_reason(ledger, "n1", pod, [ClaimRequest(1, None, None)]) or "")
    ledger.claim_changed(claim("c2", "n1", (1, "1000Mi", "30")))
    assert "gpucores" in (quota_reason(ledger, "n1", pod, [ClaimRequest(1, None, None, mig=True)]) or "")
    # the pod's own assumption (from an earlier scoring pass) is not counted against it twice
    ledger.claim_deleted(claim("c2", "n1"))
    assert ledger.assume("p1", "team", "p-p1", "n1", [ClaimRequest(1, 12000, 10)])
    assert quota_reason(ledger, "n1", pod, [ClaimRequest(1, 12000, 10)]) is None
    assert "not known to hami yet" in (quota_reason(ledger, "n1", pod, None) or "")
