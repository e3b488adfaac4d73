"""HAMi's pod-level vendor rules through the real core (``Scheduler.decide``): the "whole pod on one
device" rule (Mthreads, Metax GPUs: ``customFilterRule``) and the annotations HAMi's Filter writes
with the decision's node and time (``mthreads.com/predicate-*``, ``NEURON_ALLOC_TIME``,
``aws.amazon.com/predicate-node``)."""

from __future__ import annotations

from typing import Any

from vendorkit import capacity_node, chosen, pod, scheduler

from hami.devices.awsneuron import AWSNeuronBackend
from hami.devices.hygon import HygonBackend
from hami.devices.metax import MetaxGPUBackend
from hami.devices.mthreads import MthreadsBackend
from hami.protocol.node import DeviceInfo, encode_node_devices

NOW = 1_765_000_000
NOW_NS = f"{NOW}000000000"


def mt_node(name: str = "mt") -> dict[str, Any]:
    # two GPUs of 16 cores and 49152 MiB
    return capacity_node(name, {"mthreads.com/sgpu-core": "32", "mthreads.com/sgpu-memory": "192"})


def mt(memory: int, cores: int) -> dict[str, int]:
    return {"mthreads.com/vgpu": 1, "mthreads.com/sgpu-memory": memory, "mthreads.com/sgpu-core": cores}


def test_mthreads_puts_every_container_of_a_pod_on_one_gpu() -> None:
    sched = scheduler(MthreadsBackend(), mt_node())
    d = sched.decide(pod("p", mt(8, 4), {}, mt(8, 4)))
    assert chosen(d, "Mthreads") == [["mt-mthreads-1"], [], ["mt-mthreads-1"]]


def test_mthreads_refuses_other_gpus_once_the_first_is_full() -> None:
    sched = scheduler(MthreadsBackend(), mt_node())
    # the first container takes all 16 cores of GPU 1; GPU 0 is free but is not the pod's GPU
    d = sched.decide(pod("p", mt(8, 16), mt(8, 1)))
    assert d.node is None
    assert d.failed == {"mt": "1/2 CardInsufficientCore, 1/2 CardNotFoundCustomFilterRule"}
    # nothing is left reserved by the failed pod
    assert all(c.used == 0 for c in sched.state.nodes["mt"].cards)
    # a later container asking for two GPUs cannot have them: only the pod's GPU is allowed
    d = sched.decide(pod("q", mt(8, 4), {"mthreads.com/vgpu": 2}))
    assert d.failed == {"mt": "1/2 CardInsufficientMemory, 1/2 CardNotFoundCustomFilterRule"}


def test_metax_gpus_cannot_be_shared_by_two_containers_of_a_pod() -> None:
    sched = scheduler(MetaxGPUBackend(), capacity_node("mx", {"metax-tech.com/gpu": "4"}))
    d = sched.decide(pod("p", {"metax-tech.com/gpu": 1}, {"metax-tech.com/gpu": 1}))
    assert d.failed == {"mx": "3/4 CardNotFoundCustomFilterRule, 1/4 CardTimeSlicingExhausted"}
    assert sched.decide(pod("q", {"metax-tech.com/gpu": 1})).node == "mx"


def test_other_vendors_spread_containers_freely() -> None:
    cards = [
        DeviceInfo(id=f"DCU-{i}", index=i, count=1, devmem=16384, devcore=100, type="DCU-Z100", health=True)
        for i in range(2)
    ]
    node = {
        "metadata": {"name": "dcu", "annotations": {"hami.io/node-dcu-register": encode_node_devices(cards)}}
    }
    sched = scheduler(HygonBackend(), node)
    d = sched.decide(pod("p", {"hygon.com/dcunum": 1}, {"hygon.com/dcunum": 1}))
    assert chosen(d, "DCU") == [["DCU-1"], ["DCU-0"]]


def test_mthreads_writes_the_predicate_node_and_time_with_the_decision() -> None:
    sched = scheduler(MthreadsBackend(), mt_node())
    d = sched.decide(pod("p", mt(8, 4)), now=NOW)
    assert d.annotations["mthreads.com/predicate-node"] == "mt"
    assert d.annotations["mthreads.com/predicate-time"] == NOW_NS
    assert d.annotations["mthreads.com/gpu-index"] == "1"


def test_neuron_writes_the_alloc_time_and_predicate_node_with_the_decision() -> None:
    node = capacity_node(
        "trn",
        {"aws.amazon.com/neuron": "2", "aws.amazon.com/neuroncore": "4"},
        labels={"node.kubernetes.io/instance-type": "trn1.2xlarge"},
    )
    sched = scheduler(AWSNeuronBackend(), node)
    d = sched.decide(pod("p", {"aws.amazon.com/neuroncore": 1}), now=NOW)
    assert {k: d.annotations[k] for k in ("AWS_NEURON_IDS", "NEURON_ALLOCATED", "NEURON_ALLOC_TIME")} == {
        "AWS_NEURON_IDS": "2",
        "NEURON_ALLOCATED": "false",
        "NEURON_ALLOC_TIME": NOW_NS,
    }
    assert d.annotations["aws.amazon.com/predicate-node"] == "trn"
    # every key written is one the backend may clear
    assert set(d.annotations) - {"hami.io/vgpu-node", "hami.io/vgpu-time"} <= set(
        AWSNeuronBackend().decision_keys
    )
