"""Huawei Ascend (issue 13) through the real scheduling core (``Scheduler.decide``) and the real
webhook (``mutate_pod``): vNPU templates, hami-core vs template mode, whole-card multi-device
requests, NetworkID topology, 910C module pairs, filters, the node lock and the exact wire values.
Facts: ../shared/reference/hami-control-plane.md §4 row "Ascend" and HAMi's chart device config."""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Any

import orjson
import pytest
from vendorkit import bound, card, chosen, pod, scheduler

from hami.config import DeviceConfig, parse_device_config
from hami.devices.ascend import AscendBackend, decode_network_ids, encode_register
from hami.devices.base import RequestError
from hami.devices.hooks import resolve_hooks
from hami.devices.registry import BackendRegistry, default_registry
from hami.protocol.errors import ProtocolError
from hami.protocol.node import DeviceInfo
from hami.protocol.nodelock import NodeLock
from hami.protocol.pod import decode_pod_devices
from hami.scheduling import Scheduler
from hami.webhook.mutate import WebhookPolicy, mutate_pod

B3 = "Ascend910B3"
B3_REG = "hami.io/node-register-Ascend910B3"
NPU, MEM, CORE = "huawei.com/Ascend910B3", "huawei.com/Ascend910B3-memory", "huawei.com/Ascend910B3-core"
C_NPU, C_MEM = "huawei.com/Ascend910C", "huawei.com/Ascend910C-memory"


def chips(text: str = "vnpus: {}\n") -> dict[str, AscendBackend]:
    cfg, _ = parse_device_config(text)
    return {b.vendor: b for b in default_registry(cfg) if isinstance(b, AscendBackend)}


def b3(hami_core: bool = False) -> AscendBackend:
    return chips(f"vnpus: {{hamiVnpuCore: {str(hami_core).lower()}}}\n")[B3]


def npu_node(
    name: str = "n1",
    *,
    word: str = B3,
    n: int = 4,
    mem: int = 65536,
    cores: int = 20,
    networks: list[int] | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    cards = [card(f"{name}-npu-{i}", index=i, type=word, mem=mem, cores=cores, count=4) for i in range(n)]
    custom = [{"NetworkID": nid} for nid in networks] if networks is not None else []
    ann = {f"hami.io/node-register-{word}": encode_register(cards, custom), **(annotations or {})}
    return {"metadata": {"name": name, "annotations": ann}}


def runtime(d: Any, word: str = B3) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = orjson.loads(d.annotations[f"huawei.com/{word}"])
    return out


def admit(p: dict[str, Any], text: str = "vnpus: {}\n") -> Any:
    cfg, _ = parse_device_config(text)
    return mutate_pod(p, namespace="ns", namespace_labels={}, policy=WebhookPolicy.from_config(cfg))


def limits_set(d: Any) -> dict[str, str]:
    return {
        op["path"].rsplit("/", 1)[-1].replace("~1", "/"): op["value"]
        for op in d.patch
        if "/resources/limits/" in op["path"] and op["op"] in ("add", "replace")
    }


# --- the section ---------------------------------------------------------------------------------


def test_one_backend_per_chip_with_hamis_names() -> None:
    backends = chips()
    # one per chip of the section, in its order (the chart's defaults: config tests)
    assert list(backends) == [c.common_word for c in DeviceConfig.default().ascend.configs]
    assert len(backends) == 7 and "Ascend910C" in backends
    b = backends[B3]
    assert b.resource_names == (NPU, MEM, CORE)
    assert b.spec.register_key == B3_REG
    assert b.to_allocate_key == "hami.io/Ascend910B3-devices-to-allocate"
    assert b.allocated_key == "hami.io/Ascend910B3-devices-allocated"
    assert b.decision_keys == (
        "hami.io/Ascend910B3-devices-to-allocate",
        "hami.io/Ascend910B3-devices-allocated",
        "huawei.com/Ascend910B3",
        "predicate-time",
    )
    hooks = resolve_hooks(b)
    assert hooks.handshake_key == "hami.io/node-handshake-Ascend910B3"
    assert hooks.placed is not None


def test_the_node_lock_is_hamis_mutex_lock() -> None:
    cfg, _ = parse_device_config("vnpus: {}\n")
    locks = default_registry(cfg).node_locks()
    assert {v: c.key for v, c in locks.items() if v.startswith("Ascend")} == dict.fromkeys(
        chips(), "hami.io/mutex.lock"
    )
    codec = locks[B3]
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    value = codec.encode(NodeLock(time=when, namespace="ns", name="p"))
    assert value == "2026-01-02T03:04:05Z,ns,p"
    assert codec.decode(value) == NodeLock(time=when, namespace="ns", name="p")


# --- templates and modes -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("word", "asked", "mib"),
    [
        (B3, 1, 16384),  # vir05_1c_16g
        (B3, 2000, 16384),
        (B3, 16385, 32768),  # vir10_3c_32g
        (B3, 40000, 65536),  # no template holds it: the whole card (memoryAllocatable)
        ("Ascend310P", 3000, 3072),  # vir01
        ("Ascend310P", 13000, 21527),  # over vir04 but within memoryCapacity 24576: allocatable 21527
        ("Ascend910A", 2000, 2184),  # vir02
    ],
)
def test_memory_is_rounded_up_to_the_smallest_template(word: str, asked: int, mib: int) -> None:
    b = chips()[word]
    r = b.parse_container(
        {"name": "c", "resources": {"limits": {f"huawei.com/{word}": 1, f"huawei.com/{word}-memory": asked}}}
    )
    assert r is not None and (r.mem, r.mem_percentage, r.cores) == (mib, None, 0)


def test_memory_beyond_the_chip_is_refused_naming_the_resource() -> None:
    with pytest.raises(
        RequestError, match=r"huawei\.com/Ascend310P-memory: 30000 is more than memoryCapacity \(24576 MiB\)"
    ):
        chips()["Ascend310P"].parse_container(
            {
                "name": "c",
                "resources": {"limits": {"huawei.com/Ascend310P": 1, "huawei.com/Ascend310P-memory": 30000}},
            }
        )
    with pytest.raises(RequestError, match=r"Ascend910B3-core: 101 is more than 100 percent"):
        b3().parse_container({"name": "c", "resources": {"limits": {NPU: 1, MEM: 10, CORE: 101}}})


def test_a_core_request_is_hami_core_soft_slicing_with_memory_as_given() -> None:
    r = b3().parse_container({"name": "c", "resources": {"limits": {NPU: 1, MEM: 2000, CORE: 30}}})
    assert r is not None and (r.mem, r.cores) == (2000, 30)
    whole = b3().parse_container({"name": "c", "resources": {"limits": {NPU: 1}}})
    assert whole is not None and (whole.mem, whole.mem_percentage) == (0, 100)


def test_template_placement_and_its_exact_annotations() -> None:
    sched = scheduler(b3(), npu_node())
    d = sched.decide(pod("p", {NPU: 1, MEM: 2000}), now=1700000000)
    assert d.node == "n1"
    assert d.annotations["hami.io/Ascend910B3-devices-to-allocate"] == "n1-npu-3,Ascend910B3,16384,0:;"
    assert d.annotations["hami.io/Ascend910B3-devices-allocated"] == "n1-npu-3,Ascend910B3,16384,0:;"
    assert (
        d.annotations["huawei.com/Ascend910B3"]
        == '[{"UUID":"n1-npu-3","temp":"vir05_1c_16g","memory":16384}]'
    )
    assert d.annotations["predicate-time"] == "1700000000"
    assert d.annotations["hami.io/vgpu-time"] == "1700000000"


def test_hami_core_placement_writes_memory_and_core_without_a_template() -> None:
    sched = scheduler(b3(hami_core=True), npu_node())
    d = sched.decide(
        pod("p", {NPU: 1, MEM: 2000, CORE: 30}, annotations={"huawei.com/vnpu-mode": "hami-core"})
    )
    assert d.annotations["hami.io/Ascend910B3-devices-allocated"] == "n1-npu-3,Ascend910B3,2000,30:;"
    assert runtime(d) == [{"UUID": "n1-npu-3", "memory": 2000, "core": 30}]


def test_a_whole_card_has_no_template_name() -> None:
    sched = scheduler(b3(), npu_node())
    d = sched.decide(pod("p", {NPU: 2}))
    assert runtime(d) == [{"UUID": "n1-npu-3", "memory": 65536}, {"UUID": "n1-npu-2", "memory": 65536}]


@pytest.mark.parametrize(
    ("section_default", "node_flag", "pod_mode", "fits"),
    [
        (False, None, "template", True),
        (False, None, "hami-core", False),
        (True, None, "hami-core", True),
        (True, None, "template", False),
        (False, "true", "hami-core", True),  # the node's annotation overrides the section
        (True, "false", "hami-core", False),
        (True, "false", None, True),  # no mode named: any node
        (False, "true", None, True),
    ],
)
def test_the_pods_vnpu_mode_must_be_the_nodes(
    section_default: bool, node_flag: str | None, pod_mode: str | None, fits: bool
) -> None:
    ann = {} if node_flag is None else {"hami-vnpu-core": node_flag}
    sched = scheduler(b3(hami_core=section_default), npu_node(annotations=ann))
    p = pod(
        "p", {NPU: 1, MEM: 2000}, annotations={} if pod_mode is None else {"huawei.com/vnpu-mode": pod_mode}
    )
    d = sched.decide(p)
    if fits:
        assert d.node == "n1", d.failed
    else:
        assert d.node is None and d.failed == {"n1": "4/4 ModeNotFit"}


def test_hami_core_cards_count_cores_in_percent() -> None:
    # registered with devcore 20 (AI cores), a hami-core node's card still takes 100 percent
    sched = scheduler(b3(hami_core=True), npu_node(n=1))
    mode = {"huawei.com/vnpu-mode": "hami-core"}
    first = sched.decide(pod("a", {NPU: 1, MEM: 1000, CORE: 60}, annotations=mode))
    assert first.node == "n1"
    over = sched.decide(pod("b", {NPU: 1, MEM: 1000, CORE: 50}, annotations=mode))
    assert over.node is None and over.failed == {"n1": "1/1 CardInsufficientCore"}
    assert sched.decide(pod("c", {NPU: 1, MEM: 1000, CORE: 40}, annotations=mode)).node == "n1"


def test_cards_registered_without_cores_take_template_slices() -> None:
    sched = scheduler(b3(), npu_node(n=1, cores=0))
    assert sched.decide(pod("a", {NPU: 1, MEM: 2000})).node == "n1"
    assert sched.decide(pod("b", {NPU: 1, MEM: 2000})).node == "n1"


def test_usage_fills_cards_and_is_restored_from_the_allocated_annotation() -> None:
    sched = scheduler(b3(), npu_node(n=1))
    p = pod("p", {NPU: 1, MEM: 40000})
    d = sched.decide(p)
    assert d.node == "n1"
    full = sched.decide(pod("q", {NPU: 1, MEM: 1}))
    assert full.node is None and full.failed == {"n1": "1/1 CardInsufficientMemory"}
    again = scheduler(b3(), npu_node(n=1))
    alloc = again.allocation_of(bound(p, d.annotations), "n1")
    assert alloc is not None
    again.state.add_pod(alloc)
    assert again.decide(pod("q", {NPU: 1, MEM: 1})).failed == {"n1": "1/1 CardInsufficientMemory"}


# --- filters -------------------------------------------------------------------------------------


def test_uuid_filters() -> None:
    sched = scheduler(b3(), npu_node())
    d = sched.decide(pod("p", {NPU: 1, MEM: 1}, annotations={"hami.io/use-Ascend910B3-uuid": "n1-npu-1"}))
    assert chosen(d, B3) == [["n1-npu-1"]]
    d = sched.decide(
        pod(
            "q",
            {NPU: 1, MEM: 1},
            annotations={"hami.io/no-use-Ascend910B3-uuid": "n1-npu-0,n1-npu-1,n1-npu-2,n1-npu-3"},
        )
    )
    assert d.node is None and d.failed == {"n1": "4/4 CardUuidMismatch"}


# --- NetworkID topology --------------------------------------------------------------------------


def test_network_ids_are_read_from_custominfo() -> None:
    node = npu_node(networks=[0, 1, 1, 0])
    assert decode_network_ids(node["metadata"]["annotations"][B3_REG]) == {
        "n1-npu-0": 0,
        "n1-npu-1": 1,
        "n1-npu-2": 1,
        "n1-npu-3": 0,
    }
    assert decode_network_ids("a,1,1,1,t,0,true:") == {}  # the legacy form has no custominfo
    with pytest.raises(ProtocolError, match=r"device\[0\]: field 'custominfo.NetworkID' must be an integer"):
        decode_network_ids('[{"id":"a","custominfo":{"NetworkID":"x"}}]')


def test_a_corrupt_network_id_marks_only_that_node() -> None:
    bad = npu_node("bad")
    bad["metadata"]["annotations"][B3_REG] = (
        '[{"id":"a","count":1,"devmem":1,"devcore":1,"type":"t","custominfo":{"NetworkID":1.5}}]'
    )
    sched = Scheduler(BackendRegistry([b3()]), node_policy="binpack", gpu_policy="spread")
    assert sched.observe_node(bad) is not None
    assert sched.observe_node(npu_node("good")) is None
    assert sched.decide(pod("p", {NPU: 1, MEM: 1})).node == "good"


def test_multi_card_requests_take_the_fullest_network_first() -> None:
    # the spread order alone would take npu-3 and npu-2 (different networks)
    sched = scheduler(b3(), npu_node(networks=[0, 1, 1, 2]))
    d = sched.decide(pod("p", {NPU: 2}))
    assert sorted(chosen(d, B3)[0]) == ["n1-npu-1", "n1-npu-2"]
    # the same node without NetworkIDs: the policy order
    d = scheduler(b3(), npu_node()).decide(pod("p", {NPU: 2}))
    assert chosen(d, B3) == [["n1-npu-3", "n1-npu-2"]]


def test_node_score_prefers_the_node_keeping_a_container_in_one_network() -> None:
    split = npu_node("split", n=2, networks=[0, 1])
    same = npu_node("same", n=2, networks=[0, 0])
    for order in ((split, same), (same, split)):
        d = scheduler(b3(), *order).decide(pod("p", {NPU: 2}))
        assert d.node == "same"
    assert b3().node_score([], []) == 0.0


# --- 910C module pairs ---------------------------------------------------------------------------


def test_910c_multi_card_requests_take_whole_modules() -> None:
    c = chips()["Ascend910C"]
    node = npu_node("c", word="Ascend910C", n=4)
    sched = scheduler(c, node)
    # npu-3 is taken by a slice: module {2, 3} is broken, so a 2-card request takes module {0, 1}
    first = sched.decide(
        pod("a", {C_NPU: 1, C_MEM: 1}, annotations={"hami.io/use-Ascend910C-uuid": "c-npu-3"})
    )
    assert chosen(first, "Ascend910C") == [["c-npu-3"]]
    d = sched.decide(pod("b", {C_NPU: 2}))
    assert sorted(chosen(d, "Ascend910C")[0]) == ["c-npu-0", "c-npu-1"]
    # npu-1 and npu-2 are free but in two modules: no whole module for a 2-card request
    sched = scheduler(c, node)
    for name, uuid in (("x", "c-npu-0"), ("y", "c-npu-3")):
        taken = sched.decide(
            pod(name, {C_NPU: 1, C_MEM: 1}, annotations={"hami.io/use-Ascend910C-uuid": uuid})
        )
        assert chosen(taken, "Ascend910C") == [[uuid]]
    d = sched.decide(pod("c", {C_NPU: 2}))
    assert d.node is None
    assert d.failed == {"c": "1/4 AllocatedCardsInsufficientRequest, 2/4 CardInsufficientMemory"}


def test_910c_odd_counts_are_refused_and_one_becomes_two_at_admission() -> None:
    c = chips()["Ascend910C"]
    with pytest.raises(
        RequestError, match=r"huawei\.com/Ascend910C: 3: a Ascend910C request must be 1 or an even number"
    ):
        c.parse_container({"name": "c", "resources": {"limits": {C_NPU: 3}}})
    d = admit(pod("p", {C_NPU: 1, C_MEM: 16384}))
    assert d.allowed
    assert limits_set(d) == {C_NPU: "2"}
    assert any("raised to 2" in w for w in d.warnings)
    odd = admit(pod("p", {C_NPU: 3}))
    assert not odd.allowed and "must be 1 or an even number" in odd.message


# --- webhook -------------------------------------------------------------------------------------


def test_webhook_rounds_memory_to_its_template_and_sets_the_request_too() -> None:
    p = pod("p", {NPU: 1, MEM: 2000})
    p["spec"]["containers"][0]["resources"]["requests"] = {NPU: 1, MEM: 2000}
    d = admit(p)
    assert d.allowed and d.managed
    assert limits_set(d) == {MEM: "16384"}
    # the request is dropped so that kube defaults it to the new limit
    assert {
        "op": "remove",
        "path": "/spec/containers/0/resources/requests/huawei.com~1Ascend910B3-memory",
    } in d.patch
    assert any("rounded up to 16384" in w for w in d.warnings)
    whole = admit(pod("p", {NPU: 1}))
    assert limits_set(whole) == {MEM: "65536"}  # no memory: the whole card (memoryAllocatable)
    soft = admit(pod("p", {NPU: 1, MEM: 2000, CORE: 30}))
    assert limits_set(soft) == {}  # hami-core keeps its memory


def test_webhook_refuses_vnpu_slices_of_several_devices() -> None:
    d = admit(pod("p", {NPU: 2, MEM: 2000}))
    assert not d.allowed
    assert "Ascend910B3-memory: vNPU slices are not supported for multiple devices" in d.message
    ok = admit(pod("p", {NPU: 2, MEM: 65536}))
    assert ok.allowed


def test_webhook_runtime_class_and_overwrite_env() -> None:
    text = (
        "vnpus:\n  configs:\n  - {chipName: 910B3, commonWord: Ascend910B3, memoryAllocatable: 65536,"
        " memoryCapacity: 65536, runtimeClassName: ascend, overwriteEnv: true}\n"
    )
    d = admit(pod("p", {NPU: 1}, {"cpu": "1"}), text)
    assert {"op": "add", "path": "/spec/runtimeClassName", "value": "ascend"} in d.patch
    env_ops = [op for op in d.patch if "/env" in op["path"]]
    # only the container asking for no NPU gets ASCEND_VISIBLE_DEVICES blanked
    assert env_ops == [
        {
            "op": "add",
            "path": "/spec/containers/1/env",
            "value": [{"name": "ASCEND_VISIBLE_DEVICES", "value": ""}],
        }
    ]


def test_fake_device_source_registers_ascend_cards_with_the_backends_codec() -> None:
    from hami.deviceplugin.sources.vendors import vendor_annotations

    ann = vendor_annotations(
        {
            "vnpus": {
                "chip": B3,
                "annotations": {"hami-vnpu-core": "true"},
                "count": 2,
                "card": {"memory": 65536, "cores": 20, "slots": 4, "custominfo": {"NetworkID": 7}},
            }
        },
        node_name="n",
        origin="spec",
    )
    assert ann["hami-vnpu-core"] == "true"
    assert decode_network_ids(ann[B3_REG]) == {"Ascend910B3-fake-n-0": 7, "Ascend910B3-fake-n-1": 7}
    nc = b3().node_cards({"metadata": {"name": "n", "annotations": ann}})
    assert nc is not None
    assert [(c.uuid, c.mode, c.totalmem, c.totalcores) for c in nc.cards] == [
        ("Ascend910B3-fake-n-0", "hami-core", 65536, 100),
        ("Ascend910B3-fake-n-1", "hami-core", 65536, 100),
    ]


def test_decoded_placements_round_trip() -> None:
    sched = scheduler(b3(), npu_node())
    d = sched.decide(pod("p", {NPU: 1, MEM: 2000}, {NPU: 1}))
    (c0, c1) = decode_pod_devices(d.annotations["hami.io/Ascend910B3-devices-allocated"])[:2]
    assert [(x.uuid, x.usedmem) for x in c0] == [("n1-npu-3", 16384)]
    assert [x.usedmem for x in c1] == [65536]
    assert [r["UUID"] for r in runtime(d)] == [c0[0].uuid, c1[0].uuid]


def test_encode_register_without_custominfo_is_plain_hami_json() -> None:
    devs = [DeviceInfo(id="a", count=1, devmem=1, devcore=1, type="t")]
    assert encode_register(devs) == '[{"id":"a","count":1,"devmem":1,"devcore":1,"type":"t","health":true}]'


@pytest.mark.parametrize(
    ("text", "error"),
    [
        (
            "vnpus:\n  configs:\n  - {chipName: x, commonWord: 'Ascend 910', resourceName: huawei.com/npu}\n",
            'vnpus.configs[0].commonWord = "Ascend 910": must be letters, digits',
        ),
        (
            "vnpus:\n  configs:\n  - {chipName: x, commonWord: A, superPod: maybe}\n",
            "vnpus.configs[0].superPod",
        ),
        ("vnpus:\n  hamiVnpuCore: 3\n", "vnpus.hamiVnpuCore"),
    ],
)
def test_bad_ascend_config_names_the_key(text: str, error: str) -> None:
    with pytest.raises(ValueError, match=re.escape(error)):
        parse_device_config(text, source="dc.yaml")


def test_a_core_request_without_a_mode_needs_a_hami_core_node() -> None:
    """HAMi's webhook names the pod hami-core when it asks for -core; the scheduler holds the
    request to that even when the pod came without the webhook."""
    soft = {NPU: 1, MEM: 2000, CORE: 30}
    d = scheduler(b3(), npu_node()).decide(pod("p", soft))
    assert d.node is None and d.failed == {"n1": "4/4 ModeNotFit"}
    assert scheduler(b3(hami_core=True), npu_node()).decide(pod("p", soft)).node == "n1"


def test_webhook_reads_the_pods_vnpu_mode() -> None:
    template = {"huawei.com/vnpu-mode": "template"}
    d = admit(pod("p", {NPU: 1, MEM: 2000, CORE: 30}, annotations=template))
    assert not d.allowed
    assert "huawei.com/Ascend910B3-core: only for hami-core soft slicing" in d.message
    # a hami-core pod keeps its memory as given, -core or not
    d = admit(pod("p", {NPU: 1, MEM: 2000}, annotations={"huawei.com/vnpu-mode": "hami-core"}))
    assert d.allowed and limits_set(d) == {}
    assert limits_set(admit(pod("p", {NPU: 1, MEM: 2000}, annotations=template))) == {MEM: "16384"}
