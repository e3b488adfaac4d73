"""The vendor boundary: two toy backends, each one module plus registration, scheduled by the real core.

``toy_wholecard`` implements only the required members (a count-only whole-card vendor);
``toy_templates`` implements every optional hook (template payloads, its own rejection, sizing,
usage, card choice, node score, admission, pod-aware annotations and node lock). Neither touches a
shared module: they are registered from config sections next to NVIDIA.
"""

from __future__ import annotations

import copy
from datetime import UTC, datetime
from typing import Any

from toy_templates import TEMPLATE_UNAVAILABLE, TemplatesInUse, ToyChipConfig, ToyTemplate, ToyTemplateBackend
from toy_wholecard import ALLOCATED, REGISTER, ToyWholeBackend, ToyWholeConfig

from hami.config import NvidiaConfig
from hami.devices.registry import BackendRegistry, default_factories, registry_from_sections
from hami.extender.nodelock import NodeLocker
from hami.kube.errors import ConflictError, NotFoundError
from hami.kube.nodelock import release_node_lock
from hami.protocol.nodelock import HAMI_NODE_LOCK
from hami.scheduling import Scheduler
from hami.webhook.mutate import WebhookPolicy, mutate_pod

SMALL = ToyTemplate(name="small", memory=4000, cores=25, units=1)
BIG = ToyTemplate(name="big", memory=8000, cores=50, units=2)
CHIPS = [ToyChipConfig(chip="a", templates=[SMALL, BIG]), ToyChipConfig(chip="b", templates=[SMALL])]


def registry() -> BackendRegistry:
    sections = {"nvidia": NvidiaConfig(), "toywhole": ToyWholeConfig(), "toytpls": CHIPS}
    factories = {**default_factories(), "toywhole": ToyWholeBackend, "toytpls": ToyTemplateBackend}
    return registry_from_sections(sections, factories)


def node(name: str, annotations: dict[str, str]) -> dict[str, Any]:
    return {"metadata": {"name": name, "annotations": annotations}}


def pod(name: str, limits: dict[str, Any], *, init: dict[str, Any] | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"containers": [{"name": "c", "resources": {"limits": limits}}]}
    if init is not None:
        spec["initContainers"] = [{"name": "i", "resources": {"limits": init}}]
    return {
        "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}", "annotations": {}},
        "spec": spec,
    }


def bound(p: dict[str, Any], annotations: dict[str, str]) -> dict[str, Any]:
    out = copy.deepcopy(p)
    out["metadata"]["annotations"].update(annotations)
    return out


def scheduler(*nodes: dict[str, Any]) -> Scheduler:
    sched = Scheduler(registry())
    for n in nodes:
        assert sched.observe_node(n) is None
    return sched


def test_sections_build_one_backend_each_and_a_list_one_per_entry() -> None:
    reg = registry()
    assert [b.vendor for b in reg] == ["NVIDIA", "TOYWHOLE", "TOYTPL-a", "TOYTPL-b"]
    assert reg.resource_names()[-4:] == [
        "toy.example/a",
        "toy.example/a-mem",
        "toy.example/b",
        "toy.example/b-mem",
    ]
    assert reg.hooks("TOYWHOLE").fits is None and reg.hooks("TOYWHOLE").reject is None  # shared defaults
    assert reg.hooks("TOYTPL-a").reject is not None


# --- count-only whole cards ---------------------------------------------------------------------------


def test_whole_cards_are_handed_out_by_count_and_counted_in_the_ledger() -> None:
    sched = scheduler(node("n1", {REGISTER: "T-0,T-1,T-2"}))
    first = pod("p", {"toy.example/card": 2})
    d = sched.decide(first)
    assert d.node == "n1"
    # equal cards: the highest index first, as HAMi
    assert [[p.device.uuid for p in c] for c in d.placements["TOYWHOLE"]] == [["T-2", "T-1"]]
    assert d.annotations[ALLOCATED] == "T-2,TOYWHOLE,0,0:T-1,TOYWHOLE,0,0:;"
    second = sched.decide(pod("q", {"toy.example/card": 2}))
    assert second.node is None
    assert second.failed == {"n1": "1/3 AllocatedCardsInsufficientRequest, 2/3 CardTimeSlicingExhausted"}
    # a fresh scheduler restores the usage from the bound pod's annotations
    again = scheduler(node("n1", {REGISTER: "T-0,T-1,T-2"}))
    alloc = again.allocation_of(bound(first, d.annotations), "n1")
    assert alloc is not None
    again.state.add_pod(alloc)
    assert [c.used for c in again.state.nodes["n1"].cards] == [0, 1, 1]
    again.state.remove_pod(alloc.uid)
    assert [c.used for c in again.state.nodes["n1"].cards] == [0, 0, 0]


def test_whole_cards_and_nvidia_in_one_pod() -> None:
    from hami.protocol.node import DeviceInfo, encode_node_devices

    gpu = DeviceInfo(id="GPU-a", count=10, devmem=16000, devcore=100, type="NVIDIA-T4")
    sched = scheduler(
        node("n1", {REGISTER: "T-0", "hami.io/node-nvidia-register": encode_node_devices([gpu])})
    )
    d = sched.decide(pod("p", {"toy.example/card": 1, "nvidia.com/gpu": 1, "nvidia.com/gpumem": 1000}))
    assert d.node == "n1"
    assert set(d.placements) == {"TOYWHOLE", "NVIDIA"}


# --- templates: every hook --------------------------------------------------------------------------


def tpl_node(name: str, cards: str, kind: str = "slow") -> dict[str, Any]:
    return node(name, {"toy.example/a-cards": cards, "toy.example/kind": kind})


def test_template_request_takes_the_template_and_its_units() -> None:
    sched = scheduler(tpl_node("n1", "A-0:small,A-1:small|big"))
    d = sched.decide(pod("p", {"toy.example/a": 1, "toy.example/a-mem": 6000}))
    assert d.node == "n1"
    (placement,) = d.placements["TOYTPL-a"][0]
    assert (placement.device.uuid, placement.device.usedmem, placement.payload) == ("A-1", 8000, "big")
    card = sched.state.nodes["n1"].by_uuid["A-1"]
    assert (card.used, card.usedmem, card.usedcores) == (2, 8000, 50)  # big takes 2 units
    assert isinstance(card.payload, TemplatesInUse) and card.payload.in_use == ["big"]
    assert d.annotations["toy.example/a-owner"] == "p"  # the annotation hook saw the pod
    assert (sched.state.nodes["n1"].used, sched.state.nodes["n1"].usedmem) == (2, 8000)


def test_custom_rejection_and_custom_capacity_reasons() -> None:
    sched = scheduler(tpl_node("n1", "A-0:small"))
    d = sched.decide(pod("p", {"toy.example/a": 1, "toy.example/a-mem": 6000}))
    assert d.failed == {"n1": f"1/1 {TEMPLATE_UNAVAILABLE}"}
    sched = scheduler(tpl_node("n1", "A-0:big"))
    assert sched.decide(pod("p", {"toy.example/a": 1, "toy.example/a-mem": 6000})).node == "n1"
    assert sched.decide(pod("q", {"toy.example/a": 1, "toy.example/a-mem": 6000})).node == "n1"
    third = sched.decide(pod("r", {"toy.example/a": 1, "toy.example/a-mem": 6000}))
    assert third.failed == {"n1": "1/1 CardTimeSlicingExhausted"}  # 2 + 2 units of 4


def test_card_choice_hook_takes_a_contiguous_run() -> None:
    sched = scheduler(tpl_node("n1", "A-0:small,A-1:small,A-2:small"))
    assert sched.decide(pod("warm", {"toy.example/a": 1})).node == "n1"  # spread: A-0 now used
    d = sched.decide(pod("p", {"toy.example/a": 2}))
    # spread alone would take the two idle cards; the hook wants consecutive indices
    # starting from the first eligible run, which is
    assert [p.device.uuid for p in d.placements["TOYTPL-a"][0]] == ["A-0", "A-1"]


def test_node_score_hook_moves_the_node_choice() -> None:
    sched = scheduler(tpl_node("n-slow", "A-0:small"), tpl_node("n-fast", "A-9:small", kind="fast"))
    # binpack would keep filling the fuller node; the vendor's +50 for fast nodes wins
    assert sched.decide(pod("p", {"toy.example/a": 1})).node == "n-fast"


def test_template_usage_survives_a_restart_and_init_payloads_are_held() -> None:
    sched = scheduler(tpl_node("n1", "A-0:small|big"))
    p = pod("p", {"toy.example/a": 1}, init={"toy.example/a": 1, "toy.example/a-mem": 6000})
    d = sched.decide(p)
    assert d.node == "n1"
    card = sched.state.nodes["n1"].by_uuid["A-0"]
    assert isinstance(card.payload, TemplatesInUse)
    assert sorted(card.payload.in_use) == ["big", "small"]  # the init container's template is held too
    again = scheduler(tpl_node("n1", "A-0:small|big"))
    alloc = again.allocation_of(bound(p, d.annotations), "n1")
    assert alloc is not None
    again.state.add_pod(alloc)
    card = again.state.nodes["n1"].by_uuid["A-0"]
    assert (card.used, card.usedmem) == (3, 8000)  # units of both templates; memory collapsed (max)
    again.state.remove_pod(alloc.uid)
    assert isinstance(card.payload, TemplatesInUse)
    assert (card.used, card.usedmem, card.usedcores, card.payload.in_use) == (0, 0, 0, [])
    assert again.state.nodes["n1"].used == 0


# --- admission -------------------------------------------------------------------------------------


def test_admission_hook_defaults_and_validates() -> None:
    policy = WebhookPolicy(registry=registry())
    ok = mutate_pod(pod("p", {"toy.example/a": 1}), namespace="ns", namespace_labels={}, policy=policy)
    assert ok.allowed
    assert {
        "op": "add",
        "path": "/spec/containers/0/env",
        "value": [{"name": "TOY_TEMPLATE", "value": "small"}],
    } in (ok.patch)
    bad = mutate_pod(pod("p", {"toy.example/a": 5}), namespace="ns", namespace_labels={}, policy=policy)
    assert not bad.allowed and bad.code == 400
    assert "toy.example/a: at most 4 templates" in bad.message


# --- node lock ---------------------------------------------------------------------------------------


class FakeNodes:
    """One Node in memory, with resourceVersion preconditions (NodeAccess and the KubeClient calls)."""

    def __init__(self, annotations: dict[str, str]) -> None:
        self.obj: dict[str, Any] = {
            "metadata": {"name": "n1", "resourceVersion": "1", "annotations": annotations}
        }

    def annotations(self) -> dict[str, str]:
        out: dict[str, str] = self.obj["metadata"]["annotations"]
        return out

    async def get_node(self, name: str) -> dict[str, Any]:
        if name != "n1":
            raise NotFoundError(404, "no such node")
        return copy.deepcopy(self.obj)

    async def patch_node(
        self, name: str, patch: dict[str, Any], *, resource_version: str | None = None
    ) -> dict[str, Any]:
        meta = self.obj["metadata"]
        if resource_version is not None and resource_version != meta["resourceVersion"]:
            raise ConflictError(409, "conflict")
        for k, v in patch["metadata"]["annotations"].items():
            if v is None:
                meta["annotations"].pop(k, None)
            else:
                meta["annotations"][k] = v
        meta["resourceVersion"] = str(int(meta["resourceVersion"]) + 1)
        return copy.deepcopy(self.obj)

    async def get(self, path: str) -> dict[str, Any]:
        return await self.get_node(path.rsplit("/", 1)[-1])

    async def merge_patch(
        self, path: str, patch: dict[str, Any], *, resource_version: str | None = None
    ) -> dict[str, Any]:
        return await self.patch_node(path.rsplit("/", 1)[-1], patch, resource_version=resource_version)


def test_each_backend_brings_its_node_lock_codec() -> None:
    locks = registry().node_locks()
    assert locks["NVIDIA"] == HAMI_NODE_LOCK
    assert set(locks) == {"NVIDIA", "TOYTPL-a", "TOYTPL-b"}  # the whole-card toy takes no lock
    assert locks["TOYTPL-a"].key == "toy.example/lock"


async def test_shared_release_reads_the_backends_format() -> None:
    codec = registry().node_locks()["TOYTPL-a"]
    nodes = FakeNodes(
        {"toy.example/lock": "ns/p@1700000000", HAMI_NODE_LOCK.key: "2026-01-01T00:00:00Z,ns,p"}
    )
    assert await release_node_lock(nodes, "n1", "ns", "other", codec=codec) is False
    assert await release_node_lock(nodes, "n1", "ns", "p", codec=codec) is True
    assert nodes.annotations() == {HAMI_NODE_LOCK.key: "2026-01-01T00:00:00Z,ns,p"}  # NVIDIA's untouched
    assert await release_node_lock(nodes, "gone", "ns", "p", codec=codec) is False


async def test_extender_locker_writes_the_backends_key_and_format() -> None:
    codec = registry().node_locks()["TOYTPL-a"]
    nodes = FakeNodes({})
    when = datetime(2026, 1, 1, tzinfo=UTC)
    locker = NodeLocker(nodes, clock=lambda: when, codec=codec)  # type: ignore[arg-type]
    await locker.acquire("n1", "ns", "p")
    assert nodes.annotations() == {"toy.example/lock": f"ns/p@{int(when.timestamp())}"}
    assert await locker.release("n1", "ns", "p") is True
    assert nodes.annotations() == {}
