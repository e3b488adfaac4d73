"""Per-vendor rules (issue 13) scheduled through the real core (``Scheduler.decide``): resources and
defaults, node inventory in the vendor's format, card filters, reject reasons, decision keys, locks.
The facts come from ../shared/reference/hami-control-plane.md §4."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest
from vendorkit import bound, capacity_node, card, chosen, pod, register_node, scheduler

from hami.config import DeviceConfig, parse_device_config
from hami.config.device import IluvatarConfig
from hami.devices.amd import AMDBackend
from hami.devices.awsneuron import AWSNeuronBackend
from hami.devices.base import RequestError
from hami.devices.biren import BirenBackend
from hami.devices.cambricon import CambriconBackend
from hami.devices.enflame import EnflameGCUBackend
from hami.devices.hooks import resolve_hooks
from hami.devices.hygon import HygonBackend
from hami.devices.iluvatar import IluvatarBackend
from hami.devices.kunlun import KunlunVXPUBackend, KunlunXPUBackend, bubble_score, graph_select, vxpu_memory
from hami.devices.metax import MetaxGPUBackend
from hami.devices.mthreads import MthreadsBackend
from hami.devices.registry import default_registry, section_warnings
from hami.devices.vastai import VastaiBackend
from hami.protocol.nodelock import NodeLock
from hami.protocol.pod import decode_pod_devices
from hami.webhook.mutate import WebhookPolicy, mutate_pod

LOCK = "hami.io/mutex.lock"

# --- Hygon DCU -------------------------------------------------------------------------------------

DCU_REG = "hami.io/node-dcu-register"


def dcu_node(name: str = "n1") -> dict:
    cards = [card(f"DCU-{i}", index=i, type="DCU-Z100", mem=16384) for i in range(2)]
    return register_node(name, DCU_REG, cards, legacy=True)


def test_hygon_reads_the_legacy_register_and_writes_dcu_keys() -> None:
    b = HygonBackend()
    sched = scheduler(b, dcu_node())
    d = sched.decide(pod("p", {"hygon.com/dcunum": 1, "hygon.com/dcumem": 2000, "hygon.com/dcucores": 30}))
    assert d.node == "n1"
    assert chosen(d, "DCU") == [["DCU-1"]]  # equal cards: the highest index, as HAMi
    assert d.annotations["hami.io/dcu-devices-to-allocate"] == "DCU-1,DCU,2000,30:;"
    assert d.annotations["hami.io/dcu-devices-allocated"] == "DCU-1,DCU,2000,30:;"
    assert b.lock_key == LOCK
    assert resolve_hooks(b).handshake_key == "hami.io/node-handshake-dcu"


def test_hygon_without_memory_takes_the_whole_card_and_applies_the_memory_factor() -> None:
    cfg, _ = parse_device_config("hygon:\n  memoryFactor: 1024\n")
    b = HygonBackend(cfg.hygon)
    r = b.parse_container(
        {"name": "c", "resources": {"limits": {"hygon.com/dcunum": 1, "hygon.com/dcumem": 4}}}
    )
    assert r is not None and r.mem == 4096 and r.mem_percentage is None
    assert r.cores == 100  # HAMi v2.10: dcucores defaults to 100
    whole = b.parse_container({"name": "c", "resources": {"limits": {"hygon.com/dcunum": 1}}})
    assert whole is not None and whole.mem_percentage == 100


def test_hygon_type_and_uuid_filters() -> None:
    sched = scheduler(HygonBackend(), dcu_node())
    d = sched.decide(pod("p", {"hygon.com/dcunum": 1}, annotations={"hygon.com/use-gpuuuid": "DCU-0"}))
    assert chosen(d, "DCU") == [["DCU-0"]]
    d = sched.decide(pod("q", {"hygon.com/dcunum": 1}, annotations={"hygon.com/nouse-dcutype": "z100"}))
    assert d.node is None and d.failed == {"n1": "2/2 CardTypeMismatch"}


def test_hygon_memory_without_count_is_refused() -> None:
    with pytest.raises(RequestError, match=r"hygon\.com/dcunum: missing: hygon\.com/dcumem"):
        HygonBackend().parse_container({"name": "c", "resources": {"limits": {"hygon.com/dcumem": 10}}})


def test_hygon_cores_over_100_are_refused() -> None:
    with pytest.raises(RequestError, match="more than 100 percent"):
        HygonBackend().parse_container(
            {"name": "c", "resources": {"limits": {"hygon.com/dcunum": 1, "hygon.com/dcucores": 101}}}
        )


def test_hygon_usage_is_restored_from_the_allocated_annotation() -> None:
    b = HygonBackend()
    sched = scheduler(b, dcu_node())
    p = pod("p", {"hygon.com/dcunum": 2, "hygon.com/dcumem": 16384})
    d = sched.decide(p)
    assert d.node == "n1"
    again = scheduler(HygonBackend(), dcu_node())
    alloc = again.allocation_of(bound(p, d.annotations), "n1")
    assert alloc is not None
    again.state.add_pod(alloc)
    full = again.decide(pod("q", {"hygon.com/dcunum": 1, "hygon.com/dcumem": 100}))
    assert full.node is None and full.failed == {"n1": "2/2 CardInsufficientMemory"}


def test_hygon_node_without_allocatable_devices_has_no_cards() -> None:
    n = dcu_node()
    n["status"] = {"allocatable": {"hygon.com/dcunum": "0"}}
    assert HygonBackend().node_cards(n) is None


# --- Iluvatar ------------------------------------------------------------------------------------


def test_iluvatar_gives_one_backend_per_chip_with_its_common_word() -> None:
    cfg, _ = parse_device_config(
        "iluvatars:\n  - chipName: BI-V100\n  - chipName: MR-V100\n    commonWord: MR\n"
    )
    vendors = [b.vendor for b in default_registry(cfg)]
    assert vendors == ["NVIDIA", "BI-V100", "MR"]
    mr = default_registry(cfg).get("MR")
    assert mr.resource_names == (
        "iluvatar.ai/MR-V100-vgpu",
        "iluvatar.ai/MR-V100.vMem",
        "iluvatar.ai/MR-V100.vCore",
    )
    assert mr.allocated_key == "hami.io/MR-devices-allocated"
    assert resolve_hooks(mr).handshake_key == "hami.io/node-handshake-MR"


def test_iluvatar_memory_is_in_256_mib_units_and_multi_card_takes_all_cores() -> None:
    b = IluvatarBackend(IluvatarConfig(chip_name="BI-V100"))
    sched = scheduler(
        b,
        register_node(
            "n1",
            "hami.io/node-BI-V100-register",
            [card(f"IL-{i}", index=i, type="BI-V100", mem=32768) for i in range(2)],
            legacy=True,
        ),
    )
    d = sched.decide(pod("p", {"iluvatar.ai/BI-V100-vgpu": 1, "iluvatar.ai/BI-V100.vMem": 16}))
    assert d.annotations["hami.io/BI-V100-devices-allocated"] == "IL-1,BI-V100,4096,0:;"
    two = sched.decide(pod("q", {"iluvatar.ai/BI-V100-vgpu": 2, "iluvatar.ai/BI-V100.vMem": 4}))
    assert two.node is None  # both cards need all 100 cores; IL-1 ... holds a slice but cores are free
    three = scheduler(
        IluvatarBackend(IluvatarConfig(chip_name="BI-V100")),
        register_node(
            "n1",
            "hami.io/node-BI-V100-register",
            [card(f"IL-{i}", index=i, type="BI-V100", mem=32768) for i in range(2)],
        ),
    ).decide(pod("r", {"iluvatar.ai/BI-V100-vgpu": 2, "iluvatar.ai/BI-V100.vMem": 4}))
    assert [
        d.usedcores
        for c in decode_pod_devices(three.annotations["hami.io/BI-V100-devices-allocated"])
        for d in c
    ] == [100, 100]


def test_iluvatar_uuid_filters() -> None:
    b = IluvatarBackend(IluvatarConfig(chip_name="BI-V100"))
    n = register_node("n1", "hami.io/node-BI-V100-register", [card(f"IL-{i}", index=i) for i in range(2)])
    d = scheduler(b, n).decide(
        pod("p", {"iluvatar.ai/BI-V100-vgpu": 1}, annotations={"hami.io/no-use-BI-V100-uuid": "IL-1"})
    )
    assert chosen(d, "BI-V100") == [["IL-0"]]
    d = scheduler(b, n).decide(
        pod("p", {"iluvatar.ai/BI-V100-vgpu": 1}, annotations={"hami.io/use-BI-V100-uuid": "IL-9"})
    )
    assert d.failed == {"n1": "2/2 CardUuidMismatch"}


# --- whole-device vendors: Biren, Vastai, Enflame GCU -----------------------------------------------


@pytest.mark.parametrize(
    ("backend", "register", "resource", "to_allocate", "allocated", "use_type", "use_uuid"),
    [
        (
            BirenBackend(),
            "hami.io/node-biren-register",
            "birentech.com/gpu",
            "hami.io/Biren-devices-to-allocate",
            "hami.io/Biren-devices-allocated",
            "birentech.com/use-biren",
            "birentech.com/use-gpuuuid",
        ),
        (
            VastaiBackend(),
            "hami.io/node-va-register",
            "vastaitech.com/va",
            "hami.io/Vastai-devices-to-allocate",
            "hami.io/Vastai-devices-allocated",
            "vastaitech.com/use-va",
            "vastaitech.com/use-gpuuuid",
        ),
    ],
)
def test_whole_device_vendors(
    backend, register: str, resource: str, to_allocate: str, allocated: str, use_type: str, use_uuid: str
) -> None:
    n = register_node("n1", register, [card(f"D-{i}", index=i, type=f"T{i}", count=1) for i in range(3)])
    sched = scheduler(backend, n)
    d = sched.decide(pod("p", {resource: 2}))
    assert chosen(d, backend.vendor) == [["D-2", "D-1"]]
    assert (
        d.annotations[to_allocate]
        == d.annotations[allocated]
        == (f"D-2,{backend.vendor},16384,100:D-1,{backend.vendor},16384,100:;")
    )
    # a card in use is refused as a whole
    busy = sched.decide(pod("q", {resource: 2}))
    assert busy.node is None
    assert busy.failed == {"n1": "1/3 AllocatedCardsInsufficientRequest, 2/3 CardTimeSlicingExhausted"}
    assert sched.decide(pod("r", {resource: 1}, annotations={use_type: "t0"})).node == "n1"
    # filters run before the slot check (HAMi's order): D-0 and D-2 mismatch, D-1 is taken
    assert sched.decide(pod("s", {resource: 1}, annotations={use_uuid: "D-1"})).failed == {
        "n1": "1/3 CardTimeSlicingExhausted, 2/3 CardUuidMismatch"
    }
    assert backend.lock_key == LOCK


def test_whole_device_cards_with_several_slots_are_still_exclusive() -> None:
    n = register_node("n1", "hami.io/node-biren-register", [card("D-0", count=4)])
    sched = scheduler(BirenBackend(), n)
    assert sched.decide(pod("p", {"birentech.com/gpu": 1})).node == "n1"
    d = sched.decide(pod("q", {"birentech.com/gpu": 1}))
    assert d.failed == {"n1": "1/1 ExclusiveDeviceAllocateConflict"}


def test_enflame_gcu_cards_come_from_capacity_and_are_exclusive() -> None:
    b = EnflameGCUBackend()
    sched = scheduler(b, capacity_node("gcu-node", {"enflame.com/gcu": "2"}))
    d = sched.decide(pod("p", {"enflame.com/gcu": 1}))
    assert d.annotations["hami.io/enflame-gcu-devices-allocated"] == "gcu-node-GCU-1,GCU,100,100:;"
    assert d.annotations["hami.io/enflame-gcu-devices-to-allocate"] == "gcu-node-GCU-1,GCU,100,100:;"
    # HAMi names the busy card ExclusiveDeviceAllocateConflict; its one slot is checked first here
    assert sched.decide(pod("q", {"enflame.com/gcu": 2})).failed == {
        "gcu-node": "1/2 AllocatedCardsInsufficientRequest, 1/2 CardTimeSlicingExhausted"
    }
    assert b.lock_key is None
    assert b.node_cards(capacity_node("none", {})) is None


# --- AMD -------------------------------------------------------------------------------------------


def amd_node() -> dict:
    cards = [card(f"AMD-{i}", index=i, type="AMD-MI300X", mem=196608, cores=304, count=10) for i in range(2)]
    return register_node("n1", "hami.io/node-amd-register", cards)


def test_amd_percent_cores_become_compute_units_and_type_is_the_product() -> None:
    sched = scheduler(AMDBackend(), amd_node())
    d = sched.decide(pod("p", {"amd.com/gpu": 1, "amd.com/gpumem": 8192, "amd.com/gpucores": 50}))
    assert d.annotations["hami.io/amd-devices-allocated"] == "AMD-1,AMD-MI300X,8192,152:;"
    assert d.annotations["hami.io/amd-devices-to-allocate"] == "AMD-1,AMD-MI300X,8192,152:;"
    # 60 % more does not fit AMD-1 (152 CUs left, 183 needed): AMD-0 takes it
    e = sched.decide(
        pod(
            "q",
            {"amd.com/gpu": 1, "amd.com/gpumem": 8192, "amd.com/gpucores": 60},
            annotations={"amd.com/use-gpu-uuid": "AMD-1"},
        )
    )
    assert e.failed == {"n1": "1/2 CardInsufficientCore, 1/2 CardUuidMismatch"}


def test_amd_whole_card_by_default_and_cores_range() -> None:
    b = AMDBackend()
    r = b.parse_container({"name": "c", "resources": {"limits": {"amd.com/gpu": 1}}})
    assert r is not None and r.mem_percentage == 100 and r.cores == 100
    with pytest.raises(RequestError, match="1 to 100 percent"):
        b.parse_container({"name": "c", "resources": {"limits": {"amd.com/gpu": 1, "amd.com/gpucores": 0}}})
    sched = scheduler(b, amd_node())
    d = sched.decide(pod("p", {"amd.com/gpu": 1}, annotations={"amd.com/nouse-gputype": "mi300"}))
    assert d.failed == {"n1": "2/2 CardTypeMismatch"}


# --- mixed clusters and configuration -----------------------------------------------------------------


def test_default_config_registers_only_nvidia() -> None:
    assert [b.vendor for b in default_registry(DeviceConfig.default())] == ["NVIDIA"]


def test_configured_sections_register_their_backends_in_order() -> None:
    cfg, _ = parse_device_config("hygon: {}\nbiren: {}\nenflame: {}\nvastai: {}\namd: {}\n")
    assert [b.vendor for b in default_registry(cfg)] == [
        "NVIDIA",
        "DCU",
        "GCU",
        "Enflame",
        "AMD",
        "Vastai",
        "Biren",
    ]
    assert "hygon.com/dcunum" in default_registry(cfg).resource_names()


def test_sections_without_a_backend_are_reported_by_name() -> None:
    # every vendor section has a backend now (vnpus: Ascend); an empty list still gives none
    cfg, _ = parse_device_config("vnpus: {}\nhygon: {}\niluvatars: []\n", source="dc.yaml")
    warnings = section_warnings(cfg, source="dc.yaml")
    assert warnings == ["dc.yaml: iluvatars: empty list, no backend registered for this vendor"]


def test_unmanaged_resource_is_named_when_a_pod_requests_no_managed_device() -> None:
    sched = scheduler(HygonBackend(), dcu_node())
    d = sched.decide(pod("p", {"cambricon.com/vmlu": 1, "cpu": "1"}))
    assert d.invalid
    assert d.reason is not None and d.reason.startswith("pod requests no managed device (cambricon.com/vmlu:")


def test_a_pod_asking_two_vendors_lands_on_a_node_with_both() -> None:
    gpu = register_node(
        "both",
        "hami.io/node-nvidia-register",
        [card("GPU-0", type="NVIDIA-A100")],
    )
    gpu["metadata"]["annotations"].update(dcu_node("x")["metadata"]["annotations"])
    # its own cards: one card id on two nodes is kept by the first node only
    only_dcu = register_node(
        "dcu-only", DCU_REG, [card(f"DCU-9{i}", index=i, type="DCU-Z100") for i in range(2)], legacy=True
    )
    sched = scheduler(HygonBackend(), gpu, only_dcu)
    d = sched.decide(pod("p", {"nvidia.com/gpu": 1, "hygon.com/dcunum": 1}))
    assert d.node == "both"
    assert chosen(d, "NVIDIA") == [["GPU-0"]] and chosen(d, "DCU") == [["DCU-1"]]
    there = sched.decide(pod("q", {"nvidia.com/gpu": 1, "hygon.com/dcunum": 1}), candidates=["dcu-only"])
    assert there.node is None and there.failed == {"dcu-only": "0/0 NVIDIA NodeInsufficientDevice"}


# --- Mthreads ------------------------------------------------------------------------------------


def mt_node(name: str = "mt") -> dict:
    # two GPUs: 32 cores, 192 memory units (48 GiB each)
    return capacity_node(name, {"mthreads.com/sgpu-core": "32", "mthreads.com/sgpu-memory": "192"})


def test_mthreads_cards_come_from_core_capacity() -> None:
    cards = MthreadsBackend().node_cards(mt_node())
    assert cards is not None
    assert [(c.uuid, c.count, c.totalmem, c.totalcores) for c in cards.cards] == [
        ("mt-mthreads-0", 100, 49152, 16),
        ("mt-mthreads-1", 100, 49152, 16),
    ]
    assert MthreadsBackend().node_cards(capacity_node("x", {})) is None


def test_mthreads_slice_memory_units_and_gpu_index() -> None:
    b = MthreadsBackend()
    sched = scheduler(b, mt_node())
    d = sched.decide(
        pod("p", {"mthreads.com/vgpu": 1, "mthreads.com/sgpu-memory": 8, "mthreads.com/sgpu-core": 4})
    )
    assert d.annotations["hami.io/mthreads-vgpu-devices-allocated"] == "mt-mthreads-1,Mthreads,4096,4:;"
    assert (
        "hami.io/mthreads-vgpu-devices-to-allocate" not in d.annotations
    )  # HAMi writes the allocated key only
    assert d.annotations["mthreads.com/gpu-index"] == "1"
    assert b.lock_key is None


def test_mthreads_multi_gpu_takes_whole_gpus_and_bad_memory_is_refused() -> None:
    sched = scheduler(MthreadsBackend(), mt_node())
    d = sched.decide(pod("p", {"mthreads.com/vgpu": 2}))
    assert d.annotations["hami.io/mthreads-vgpu-devices-allocated"] == (
        "mt-mthreads-1,Mthreads,49152,16:mt-mthreads-0,Mthreads,49152,16:;"
    )
    assert d.annotations["mthreads.com/gpu-index"] == "1,0"
    with pytest.raises(RequestError, match="not a valid sGPU memory size"):
        MthreadsBackend().parse_container(
            {"name": "c", "resources": {"limits": {"mthreads.com/vgpu": 1, "mthreads.com/sgpu-memory": 3}}}
        )


def test_mthreads_webhook_writes_whole_gpu_limits() -> None:
    cfg, _ = parse_device_config("mthreads: {}\n")
    policy = WebhookPolicy.from_config(cfg)
    d = mutate_pod(pod("p", {"mthreads.com/vgpu": 2}), namespace="ns", namespace_labels={}, policy=policy)
    assert d.allowed
    limits = {
        op["path"].rsplit("/", 1)[-1].replace("~1", "/"): op["value"]
        for op in d.patch
        if "limits/" in op["path"]
    }
    assert limits == {"mthreads.com/sgpu-core": "32", "mthreads.com/sgpu-memory": "192"}
    assert {"op": "replace", "path": "/spec/schedulerName", "value": "hami-scheduler"} in d.patch or any(
        op["path"] == "/spec/schedulerName" and op["value"] == "hami-scheduler" for op in d.patch
    )
    # HAMi's webhook records a multi-card request's count on the pod; a one-card pod gets nothing
    annotations = [op for op in d.patch if op["path"].startswith("/metadata/annotations")]
    assert annotations == [
        {"op": "add", "path": "/metadata/annotations/mthreads.com~1request-gpu-num", "value": "2"}
    ]
    one = mutate_pod(pod("q", {"mthreads.com/vgpu": 1}), namespace="ns", namespace_labels={}, policy=policy)
    assert not [op for op in one.patch if op["path"].startswith("/metadata/annotations")]


def test_a_vendor_pod_is_sent_to_hamis_scheduler_by_the_webhook() -> None:
    cfg, _ = parse_device_config("hygon: {}\n")
    policy = WebhookPolicy.from_config(cfg)
    d = mutate_pod(pod("p", {"hygon.com/dcunum": 1}), namespace="ns", namespace_labels={}, policy=policy)
    assert d.allowed and d.managed
    assert any(op["path"] == "/spec/schedulerName" and op["value"] == "hami-scheduler" for op in d.patch)
    plain = mutate_pod(
        pod("p", {"hygon.com/dcunum": 1}), namespace="ns", namespace_labels={}, policy=WebhookPolicy.default()
    )
    assert not plain.managed  # without the section, hami leaves the pod alone


# --- AWS Neuron ----------------------------------------------------------------------------------


def neuron_node(name: str = "trn", devices: int = 8, instance: str = "trn1.32xlarge") -> dict:
    return capacity_node(
        name,
        {"aws.amazon.com/neuron": str(devices), "aws.amazon.com/neuroncore": str(2 * devices)},
        labels={"node.kubernetes.io/instance-type": instance},
    )


def test_neuron_devices_are_core_bitmasks() -> None:
    cards = AWSNeuronBackend().node_cards(neuron_node(devices=2))
    assert cards is not None
    assert [(c.uuid, c.count, c.totalcores, c.totalmem) for c in cards.cards] == [
        ("trn-AWSNeuron-0", 2, 3, 0),
        ("trn-AWSNeuron-1", 2, 3, 0),
    ]


def test_neuron_single_cores_fill_a_device_bit_by_bit() -> None:
    b = AWSNeuronBackend()
    sched = scheduler(b, neuron_node(devices=1))
    one = sched.decide(pod("a", {"aws.amazon.com/neuroncore": 1}))
    assert one.annotations["hami.io/aws-neuron-devices-allocated"] == "trn-AWSNeuron-0,AWSNeuron,0,1:;"
    assert one.annotations["AWS_NEURON_IDS"] == "0"
    assert one.annotations["NEURON_RESOURCE_TYPE"] == "aws.amazon.com/neuroncore"
    assert one.annotations["NEURON_ALLOCATED"] == "false"
    two = sched.decide(pod("b", {"aws.amazon.com/neuroncore": 1}))
    assert two.annotations["hami.io/aws-neuron-devices-allocated"] == "trn-AWSNeuron-0,AWSNeuron,0,2:;"
    assert two.annotations["AWS_NEURON_IDS"] == "1"
    full = sched.decide(pod("c", {"aws.amazon.com/neuroncore": 1}))
    assert full.failed == {"trn": "1/1 CardTimeSlicingExhausted"}
    assert b.lock_key is None


def test_neuron_whole_device_request_needs_an_idle_device() -> None:
    sched = scheduler(AWSNeuronBackend(), neuron_node(devices=1))
    assert sched.decide(pod("a", {"aws.amazon.com/neuroncore": 1})).node == "trn"
    d = sched.decide(pod("b", {"aws.amazon.com/neuron": 1}))
    assert d.failed == {"trn": "1/1 CardInsufficientCore"}


def test_neuron_multi_device_runs_are_aligned_outside_inf() -> None:
    sched = scheduler(AWSNeuronBackend(), neuron_node(devices=8))
    # device 1 busy: the aligned run of 4 starting at 0 is broken, so 4..7 is taken
    assert sched.decide(
        pod(
            "w",
            {"aws.amazon.com/neuron": 1},
            annotations={"aws.amazon.com/use-neuron-uuid": "trn-AWSNeuron-1"},
        )
    ).node
    d = sched.decide(pod("p", {"aws.amazon.com/neuron": 4}))
    assert chosen(d, "AWSNeuron") == [[f"trn-AWSNeuron-{i}" for i in (4, 5, 6, 7)]]
    assert d.annotations["AWS_NEURON_IDS"] == "4,5,6,7"
    assert "NEURON_RESOURCE_TYPE" not in d.annotations
    # 3 devices is not an aligned size on trn
    assert sched.decide(pod("q", {"aws.amazon.com/neuron": 3})).node is None


def test_neuron_inf_instances_take_any_contiguous_run() -> None:
    sched = scheduler(AWSNeuronBackend(), neuron_node("inf", devices=4, instance="inf2.24xlarge"))
    assert sched.decide(
        pod(
            "w",
            {"aws.amazon.com/neuron": 1},
            annotations={"aws.amazon.com/use-neuron-uuid": "inf-AWSNeuron-0"},
        )
    ).node
    d = sched.decide(pod("p", {"aws.amazon.com/neuron": 3}))
    assert chosen(d, "AWSNeuron") == [["inf-AWSNeuron-1", "inf-AWSNeuron-2", "inf-AWSNeuron-3"]]


def test_neuron_core_pairs_take_whole_devices_and_name_core_ids() -> None:
    sched = scheduler(AWSNeuronBackend(), neuron_node("inf", devices=4, instance="inf2.24xlarge"))
    d = sched.decide(pod("p", {"aws.amazon.com/neuroncore": 4}))
    assert chosen(d, "AWSNeuron") == [["inf-AWSNeuron-0", "inf-AWSNeuron-1"]]
    assert d.annotations["AWS_NEURON_IDS"] == "0,1,2,3"
    with pytest.raises(RequestError, match="even number"):
        AWSNeuronBackend().parse_container(
            {"name": "c", "resources": {"limits": {"aws.amazon.com/neuroncore": 3}}}
        )


# --- Cambricon MLU -------------------------------------------------------------------------------


def mlu_node(name: str = "mlu") -> dict:
    # two cards: 200 vcores, 256 memory units -> 32768 MiB each
    return capacity_node(
        name, {"cambricon.com/mlu.smlu.vcore": "200", "cambricon.com/mlu.smlu.vmemory": "256"}
    )


def test_cambricon_cards_from_capacity() -> None:
    cards = CambriconBackend().node_cards(mlu_node())
    assert cards is not None
    assert [(c.uuid, c.count, c.totalmem, c.totalcores) for c in cards.cards] == [
        ("mlu-cambricon-mlu-0", 100, 32768, 100),
        ("mlu-cambricon-mlu-1", 100, 32768, 100),
    ]


def test_cambricon_profile_annotations_and_default_cores() -> None:
    sched = scheduler(CambriconBackend(), mlu_node())
    d = sched.decide(
        pod(
            "p",
            {
                "cambricon.com/vmlu": 1,
                "cambricon.com/mlu.smlu.vmemory": 8,
                "cambricon.com/mlu.smlu.vcore": 20,
            },
        )
    )
    assert d.annotations["hami.io/cambricon-mlu-devices-to-allocate"] == "mlu-cambricon-mlu-1,MLU,2048,20:;"
    assert d.annotations["hami.io/cambricon-mlu-devices-allocated"] == "mlu-cambricon-mlu-1,MLU,2048,20:;"
    assert d.annotations["CAMBRICON_DSMLU_PROFILE"] == "1_20_8"
    assert d.annotations["CAMBRICON_DSMLU_ASSIGNED"] == "false"
    # no vcore: 100 (the whole card's compute), no memory: the whole card
    whole = sched.decide(pod("q", {"cambricon.com/vmlu": 1}))
    assert whole.annotations["CAMBRICON_DSMLU_PROFILE"] == "0_100_128"
    full = sched.decide(pod("r", {"cambricon.com/vmlu": 1}))
    assert full.failed == {"mlu": "2/2 CardInsufficientMemory"}


def test_cambricon_takes_its_own_lock_without_owner() -> None:
    b = CambriconBackend()
    hooks = resolve_hooks(b)
    assert b.lock_key == "cambricon.com/dsmlu.lock"
    assert hooks.node_lock is not None and hooks.node_lock.key == "cambricon.com/dsmlu.lock"
    when = datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)
    value = hooks.node_lock.encode(NodeLock(time=when, namespace="ns", name="p"))
    assert value == "2026-01-02T03:04:05Z"  # HAMi writes the time only
    assert hooks.node_lock.decode(value) == NodeLock(time=when)
    assert hooks.node_lock.releasable_by(value, "other", "pod")
    sched = scheduler(b, mlu_node())
    d = sched.decide(
        pod("p", {"cambricon.com/vmlu": 1}, annotations={"cambricon.com/use-gpuuuid": "mlu-cambricon-mlu-0"})
    )
    assert chosen(d, "MLU") == [["mlu-cambricon-mlu-0"]]


def test_the_extender_takes_each_vendors_own_lock_in_key_order() -> None:
    """A bind locks hami.io/mutex.lock for Hygon (HAMi's shared key), cambricon.com/dsmlu.lock for
    Cambricon (its own, which its device plugin releases), both for a pod with both (in key order,
    as HAMi's lockAllDevices), and nothing for lock-free vendors. A key without a locker is never
    written (the NVIDIA codec would write Cambricon's lock under the wrong key)."""
    from types import SimpleNamespace

    from hami.devices.cambricon import DSMLU_LOCK
    from hami.extender.service import ExtenderService
    from hami.protocol.nodelock import HAMI_NODE_LOCK

    sched = scheduler(HygonBackend(), dcu_node())
    sched.registry.register(CambriconBackend())
    sched.registry.register(EnflameGCUBackend())
    svc = ExtenderService.__new__(ExtenderService)
    svc.scheduler = sched
    mutex = SimpleNamespace(codec=HAMI_NODE_LOCK)
    dsmlu = SimpleNamespace(codec=DSMLU_LOCK)
    svc.locker = mutex  # type: ignore[assignment]
    svc.lockers = {}
    assert svc._lockers_for({"DCU": [("x",)]}) == [mutex]
    assert svc._lockers_for({"MLU": [("x",)]}) == []
    svc.lockers = {DSMLU_LOCK.key: dsmlu}  # type: ignore[dict-item]
    assert svc._lockers_for({"MLU": [(), ("x",)]}) == [dsmlu]
    assert svc._lockers_for({"DCU": [("x",)], "MLU": [("x",)]}) == [dsmlu, mutex]
    assert svc._lockers_for({"GCU": [("x",)], "MLU": [()]}) == []
    assert not DSMLU_LOCK.records_owner and HAMI_NODE_LOCK.records_owner


# --- Kunlun ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("free", "count", "expected"),
    [
        (set(range(8)), 1, [0]),  # both wings have 4: count 1 tries wing sizes 1, 3, 2, 4 -> left
        ({0, 1, 2, 4}, 1, [4]),  # the right wing has exactly one free card: take it, keep 0-2 whole
        ({0, 1, 4, 5, 6}, 2, [0, 1]),  # a wing with exactly two free first
        ({0, 4, 6, 7}, 2, [4, 6]),  # right wing has 3, left 1: sizes 2, 3 -> right wing's first two
        ({0, 4}, 2, [0, 4]),  # no wing holds two: a cross-wing pair
        ({1, 2, 4, 7}, 2, [1, 2]),
        ({0, 1, 4, 5}, 4, [0, 1, 4, 5]),  # no whole wing: an interconnected quad
        ({0, 1, 2, 4, 5, 6}, 4, [0, 1, 4, 5]),  # six free: a quad leaving a connected pair (2, 6)
        ({0, 1, 2, 3, 5}, 4, [0, 1, 2, 3]),
        (set(range(8)), 8, list(range(8))),
        (set(range(7)), 8, []),
        (set(range(8)), 3, []),  # HAMi takes only 1, 2, 4 or 8 cards
    ],
)
def test_kunlun_graph_selection(free: set[int], count: int, expected: list[int]) -> None:
    assert graph_select(free, count) == expected


def test_kunlun_bubble_score() -> None:
    # HAMi's bubble count per wing: 4 cards -> 0, 1 card -> 2, otherwise (0, 2, 3) -> 1; none at all -> 1
    assert bubble_score([], [0, 1, 2, 3]) == 2000  # 1 -> 1
    assert bubble_score([0], [0, 1, 2]) == 3000  # 2 + 1 = 3 -> 1 + 1 = 2
    assert bubble_score([0, 1, 2, 3], [4]) == 0  # 0 + 1 = 1 -> 1 + 2 = 3
    assert bubble_score([0, 1], [4]) == 1000  # 2 -> 3
    assert bubble_score([0, 1, 2, 3, 4, 5, 6, 7], [0, 4]) == 1000  # 0 -> 4: not listed


def xpu_node(name: str = "xpu", n: int = 8) -> dict:
    return capacity_node(name, {"kunlunxin.com/xpu": str(n)})


def test_kunlun_section_gives_two_backends() -> None:
    cfg, _ = parse_device_config("kunlun: {}\n")
    assert [b.vendor for b in default_registry(cfg)] == ["NVIDIA", "kunlun", "XPU"]


def test_kunlun_whole_xpus_follow_the_topology_and_write_device_idx() -> None:
    b = KunlunXPUBackend()
    cards = b.node_cards(xpu_node())
    assert cards is not None
    assert [(c.uuid, c.numa, c.totalmem) for c in cards.cards][3:5] == [
        ("xpu-kunlun-3", 0, 98304),
        ("xpu-kunlun-4", 1, 98304),
    ]
    sched = scheduler(b, xpu_node())
    d = sched.decide(pod("p", {"kunlunxin.com/xpu": 2}))
    assert chosen(d, "kunlun") == [["xpu-kunlun-0", "xpu-kunlun-1"]]
    assert (
        d.annotations["hami.io/kunlun-allocated"]
        == "xpu-kunlun-0,kunlun,98304,100:xpu-kunlun-1,kunlun,98304,100:;"
    )
    assert d.annotations["BAIDU_COM_DEVICE_IDX"] == "0,1"
    assert "hami.io/kunlun-devices-to-allocate" not in d.annotations
    # left wing has 2 free now: a 2-card request takes them (exact fit), not the whole right wing
    assert chosen(sched.decide(pod("q", {"kunlunxin.com/xpu": 2})), "kunlun") == [
        ["xpu-kunlun-2", "xpu-kunlun-3"]
    ]
    assert sched.decide(pod("r", {"kunlunxin.com/xpu": 8})).node is None
    assert b.lock_key is None


def test_kunlun_node_score_prefers_the_node_the_pod_keeps_whole() -> None:
    # n-frag has one busy card in each wing; n-clean is idle: a 4-card pod scores higher on n-clean
    # (fills a wing: bubbles 1 -> 0) than on n-frag, so binpack (highest first) picks n-clean
    b = KunlunXPUBackend()
    sched = scheduler(b, xpu_node("n-clean"), xpu_node("n-frag"))
    for u in ("n-frag-kunlun-0", "n-frag-kunlun-4"):
        assert (
            sched.decide(pod(u, {"kunlunxin.com/xpu": 1}, annotations={"baidu.com/use-gpuuuid": u})).node
            == "n-frag"
        )
    d = sched.decide(pod("p", {"kunlunxin.com/xpu": 4}))
    assert d.node == "n-clean"


def xpu_register_node(name: str = "vx") -> dict:
    cards = [card(f"XPU-{i}", index=i, type="P800", mem=98304, cores=100, count=4) for i in range(8)]
    return register_node(name, "hami.io/node-register-xpu", cards)


def test_kunlun_vxpu_memory_templates_and_same_size_slices() -> None:
    assert [vxpu_memory(m) for m in (1, 24576, 24577, 60000, 200000)] == [24576, 24576, 49152, 98304, 98304]
    b = KunlunVXPUBackend()
    sched = scheduler(b, xpu_register_node())
    d = sched.decide(pod("p", {"kunlunxin.com/vxpu": 1, "kunlunxin.com/vxpu-memory": 20000}))
    assert d.annotations["hami.io/xpu-devices-allocated"] == "XPU-0,XPU,24576,25:;"
    assert d.annotations["hami.io/xpu-devices-to-allocate"] == "XPU-0,XPU,24576,25:;"
    # XPU-0 holds a 24576 slice: a 49152 slice must go elsewhere
    pinned = {"hami.io/use-xpu-uuid": "XPU-0"}
    other = sched.decide(
        pod("q", {"kunlunxin.com/vxpu": 1, "kunlunxin.com/vxpu-memory": 40000}, annotations=pinned)
    )
    assert other.failed == {"vx": "1/8 CardSliceSizeMismatch, 7/8 CardUuidMismatch"}
    same = sched.decide(
        pod("r", {"kunlunxin.com/vxpu": 1, "kunlunxin.com/vxpu-memory": 24576}, annotations=pinned)
    )
    assert chosen(same, "XPU") == [["XPU-0"]]
    assert b.lock_key == LOCK
    assert resolve_hooks(b).handshake_key == "hami.io/node-handshake-xpu"


def test_kunlun_vxpu_webhook_rounds_memory_up() -> None:
    cfg, _ = parse_device_config("kunlun: {}\n")
    d = mutate_pod(
        pod("p", {"kunlunxin.com/vxpu": 1, "kunlunxin.com/vxpu-memory": 30000}),
        namespace="ns",
        namespace_labels={},
        policy=WebhookPolicy.from_config(cfg),
    )
    assert d.allowed
    assert any(op["path"].endswith("vxpu-memory") and op["value"] == "49152" for op in d.patch)
    assert any("rounded up to 49152" in w for w in d.warnings)


# --- Metax whole GPUs ------------------------------------------------------------------------------


def metax_node(name: str, losses: str | None = None, scores: str | None = None) -> dict:
    n = capacity_node(name, {"metax-tech.com/gpu": "4"})
    if losses is not None:
        n["metadata"]["annotations"]["metax-tech.com/gpu.topology.losses"] = losses
    if scores is not None:
        n["metadata"]["annotations"]["metax-tech.com/gpu.topology.scores"] = scores
    return n


def test_metax_gpus_from_capacity_are_exclusive() -> None:
    b = MetaxGPUBackend()
    sched = scheduler(b, metax_node("mx"))
    d = sched.decide(pod("p", {"metax-tech.com/gpu": 2}))
    assert d.annotations["hami.io/metax-gpu-devices-allocated"] == (
        "mx-metax-3,Metax-GPU,65536,100:mx-metax-2,Metax-GPU,65536,100:;"
    )
    assert (
        d.annotations["hami.io/metax-gpu-devices-to-allocate"]
        == d.annotations["hami.io/metax-gpu-devices-allocated"]
    )
    assert sched.decide(pod("q", {"metax-tech.com/gpu": 3})).failed == {
        "mx": "2/4 AllocatedCardsInsufficientRequest, 2/4 CardTimeSlicingExhausted"
    }
    assert b.lock_key is None


@pytest.mark.parametrize(("policy", "expected"), [("binpack", "low-loss"), ("spread", "high-score")])
def test_metax_node_score_reads_losses_for_binpack_and_scores_for_spread(policy: str, expected: str) -> None:
    # low-loss: losing 10 for two cards (binpack: 2000 - 10); high-score: score 900 (spread: 2000 - 900)
    nodes = [
        metax_node("low-loss", losses='{"1": 0, "2": 10}', scores='{"1": 100, "2": 100}'),
        metax_node("high-score", losses='{"1": 0, "2": 500}', scores='{"1": 100, "2": 900}'),
    ]
    sched = scheduler(MetaxGPUBackend(), *nodes)
    p = pod("p", {"metax-tech.com/gpu": 2}, annotations={"hami.io/node-scheduler-policy": policy})
    assert sched.decide(p).node == expected


def test_metax_bad_topology_annotation_scores_nothing() -> None:
    cards = MetaxGPUBackend().node_cards(metax_node("mx", losses="not json"))
    assert cards is not None
    from hami.devices.base import DeviceRequest

    req = [DeviceRequest(vendor="Metax-GPU", count=1)]
    assert MetaxGPUBackend().policy_node_score(cards.cards, req, "binpack") == 0.0


def test_amd_memory_percentage_and_gpumem_wins() -> None:
    b = AMDBackend()
    assert "amd.com/gpumem-percentage" in b.resource_names

    def parse(**limits: int) -> object:
        return b.parse_container({"name": "c", "resources": {"limits": {"amd.com/gpu": 1, **limits}}})

    pct = parse(**{"amd.com/gpumem-percentage": 25})
    assert pct is not None and pct.mem_percentage == 25 and pct.cores == 0  # type: ignore[attr-defined]
    both = parse(**{"amd.com/gpumem-percentage": 25, "amd.com/gpumem": 4096})
    assert both is not None and both.mem == 4096 and both.mem_percentage is None  # type: ignore[attr-defined]
    with pytest.raises(RequestError, match="1 to 100 percent"):
        parse(**{"amd.com/gpumem-percentage": 101})
    sched = scheduler(b, amd_node())
    d = sched.decide(pod("p", {"amd.com/gpu": 1, "amd.com/gpumem-percentage": 25}))
    assert d.annotations["hami.io/amd-devices-allocated"] == "AMD-1,AMD-MI300X,49152,0:;"
