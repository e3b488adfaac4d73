"""HAMi v2.10's own ``examples/<vendor>/`` pods, applied unchanged to a simulated mixed cluster with
``hami simulate``: each lands on its vendor's node, on that vendor's cards, with that vendor's
decision annotations.

The examples are transcribed as data (names, images, commands, resources, annotations, labels;
HAMi's comments left out). A Deployment example is its pod template, as the ReplicaSet would create
it. The cluster's nodes register the way each vendor's device plugin does: a register annotation
in the vendor's format — written by the fake device source's ``vendors:`` section, the sandbox's
node side — or the node's capacity. The device config is the one a cluster running these
examples has: Cambricon's MLU370 resource names (``mlu370.smlu.*``, as its ``default_use`` asks) and
HAMi's chart's ``enflame.resourceNameVGCU`` (so ``enflame.com/vgcu`` asks for DRS slices), and
Iluvatar's three chips plus an entry with the chip-less names HAMi's unsuffixed Iluvatar examples ask
for (``iluvatar.ai/vgpu``, ``vcuda-memory``, ``vcuda-core``: HAMi's pre-2.6 defaults, commonWord
``iluvatar``). HAMi's AMD UUID examples carry a ``<GPU UUID>`` placeholder: the simulated AMD node's
``AMD-w7900`` is put in its place.
"""

from __future__ import annotations

import json
from typing import Any

import pytest

from hami.config.device import parse_device_config
from hami.deviceplugin.sources.vendors import vendor_annotations
from hami.devices.registry import default_registry
from hami.protocol import keys
from hami.protocol.node import DeviceInfo, encode_node_devices
from hami.protocol.pod import decode_pod_devices
from hami.simulate import SimulationResult, render_table, simulate

DEVICE_CONFIG = """\
cambricon:
  resourceMemoryName: cambricon.com/mlu370.smlu.vmemory
  resourceCoreName: cambricon.com/mlu370.smlu.vcore
hygon: {}
metax: {}
iluvatars:
  - {chipName: BI-V100}
  - {chipName: BI-V150}
  - {chipName: MR-V100}
  - chipName: Iluvatar
    commonWord: iluvatar
    resourceCountName: iluvatar.ai/vgpu
    resourceMemoryName: iluvatar.ai/vcuda-memory
    resourceCoreName: iluvatar.ai/vcuda-core
mthreads: {}
enflame:
  resourceNameVGCU: enflame.com/vgcu
kunlun: {}
amd: {}
awsneuron: {}
vastai: {}
biren: {}
"""

#: the UUID put for HAMi's AMD ``<GPU UUID>`` placeholder (a card of the simulated AMD node)
AMD_UUID = "AMD-w7900"
#: the card HAMi's Metax ``sgpu/allocate_specific_gpu`` names
METAX_UUID = "36beae85-c835-6b14-6ab2-02671837a59c"
#: Metax sGPU cards: MetaLink zone 1 (4 cards), zone 2 (2 cards), then 6 in no zone, one of them METAX_UUID
SGPU_CARDS: list[dict[str, Any]] = [
    *({"uuid": f"sgpu-{i}", "custominfo": {"linkZone": 1}} for i in range(4)),
    *({"uuid": f"sgpu-{i}", "custominfo": {"linkZone": 2}} for i in (4, 5)),
    {"uuid": METAX_UUID},
    *({"uuid": f"sgpu-{i}"} for i in range(7, 12)),
]

#: the UUIDs HAMi's Hygon examples name, and three more K100_AI cards
DCU_Z100, DCU_K100 = "DCU-TPXS320016070601", "DCU-TPXS320010040501"
DCU_MORE = ("DCU-TPXS320010040502", "DCU-TPXS320010040503", "DCU-TPXS320010040504")


# ----------------------------------------------------------------------------------- the cluster


def _registered(name: str, vendors: dict[str, Any]) -> dict[str, Any]:
    """A node whose vendors' device plugins wrote their register annotations (as the fake source does)."""
    ann = vendor_annotations(vendors, node_name=name, origin="cluster")
    return {"kind": "Node", "apiVersion": "v1", "metadata": {"name": name, "annotations": ann}}


def _capacity(name: str, resources: dict[str, int], labels: dict[str, str] | None = None) -> dict[str, Any]:
    """A node whose vendor's device plugin serves these resources to kubelet (capacity inventory)."""
    quantities = {k: str(v) for k, v in resources.items()}
    return {
        "kind": "Node",
        "apiVersion": "v1",
        "metadata": {"name": name, "labels": labels or {}},
        "status": {"capacity": quantities, "allocatable": quantities},
    }


def _drs(name: str) -> dict[str, Any]:
    """A node as Enflame's DRS device plugin registers it: two S60 GCUs of 6 slices."""
    capacity = {
        "devices": [{"index": str(i), "minor": str(i), "capacity": 6} for i in range(2)],
        "profiles": {"1g.6gb": "0", "3g.20gb": "1", "6g.40gb": "2"},
    }
    annotations = {"enflame.com/gcu-drs-capacity": json.dumps(capacity)}
    return {"kind": "Node", "apiVersion": "v1", "metadata": {"name": name, "annotations": annotations}}


#: node -> the ``iluvatars:`` entry its device plugin registers (as DEVICE_CONFIG lists them)
ILUVATAR_NODES: dict[str, dict[str, str]] = {
    "iluvatar-node": {"chipName": "BI-V100"},
    "bi-v150-node": {"chipName": "BI-V150"},
    "mr-v100-node": {"chipName": "MR-V100"},
    "iluvatar-legacy-node": {
        "chipName": "Iluvatar",
        "commonWord": "iluvatar",
        "resourceCountName": "iluvatar.ai/vgpu",
        "resourceMemoryName": "iluvatar.ai/vcuda-memory",
        "resourceCoreName": "iluvatar.ai/vcuda-core",
    },
}


def iluvatar_nodes() -> list[dict[str, Any]]:
    """One node per Iluvatar chip, six 32 GiB cards each (room for every example of the chip at once)."""
    return [
        _registered(
            name,
            {
                "iluvatars": {
                    "config": config,
                    "count": 6,
                    "card": {"type": config["chipName"], "memory": 32768},
                }
            },
        )
        for name, config in ILUVATAR_NODES.items()
    ]


def mixed_cluster() -> list[dict[str, Any]]:
    nvidia = _registered("nvidia-node", {})
    nvidia["metadata"]["annotations"][keys.NODE_NVIDIA_REGISTER] = encode_node_devices(
        [DeviceInfo(id="GPU-t4-0", count=10, devmem=15360, devcore=100, type="NVIDIA-Tesla T4", health=True)]
    )
    return [
        nvidia,
        _registered(
            "dcu-node",
            {
                "hygon": {
                    "cards": [
                        {"uuid": DCU_Z100, "type": "DCU-Z100", "memory": 32768},
                        *({"uuid": u, "type": "DCU-K100_AI", "memory": 65536} for u in (DCU_K100, *DCU_MORE)),
                    ]
                }
            },
        ),
        *iluvatar_nodes(),
        _registered(
            "amd-node",
            {
                "amd": {
                    "cards": [
                        {"uuid": AMD_UUID, "type": "AMD Radeon PRO W7900", "memory": 49152, "cores": 96},
                        {"uuid": "AMD-mi300x", "type": "AMD Instinct MI300X", "memory": 196608, "cores": 304},
                    ]
                }
            },
        ),
        _registered("vxpu-node", {"kunlun": {"count": 8, "card": {"type": "P800", "memory": 98304}}}),
        _registered(
            "sgpu-node",
            {
                "metax": {
                    "cards": [
                        {
                            **c,
                            "memory": 65536,
                            "slots": 16,
                            "custominfo": {**c.get("custominfo", {}), "model": "C500"},
                        }
                        for c in SGPU_CARDS
                    ]
                }
            },
        ),
        # one node, two vendors
        _registered("biren-vastai-node", {"biren": {"count": 2}, "vastai": {"count": 2}}),
        *ascend_nodes(),
        _capacity("xpu-node", {"kunlunxin.com/xpu": 8}),
        _capacity(
            "mlu-node", {"cambricon.com/mlu370.smlu.vcore": 200, "cambricon.com/mlu370.smlu.vmemory": 192}
        ),
        _capacity("metax-node", {"metax-tech.com/gpu": 2}),
        _capacity("mthreads-node", {"mthreads.com/sgpu-core": 64, "mthreads.com/sgpu-memory": 384}),
        _capacity("gcu-node", {"enflame.com/gcu": 4}),
        _drs("gcu-drs-node"),
        _capacity(
            "neuron-node",
            {"aws.amazon.com/neuron": 2, "aws.amazon.com/neuroncore": 4},
            {"node.kubernetes.io/instance-type": "inf2.xlarge"},
        ),
    ]


# ---------------------------------------------------------------------------------- the examples


def _pod(
    name: str,
    containers: list[dict[str, Any]],
    *,
    annotations: dict[str, str] | None = None,
    labels: dict[str, str] | None = None,
    namespace: str | None = None,
    **spec: Any,
) -> dict[str, Any]:
    meta: dict[str, Any] = {"name": name}
    for key, value in (("namespace", namespace), ("annotations", annotations), ("labels", labels)):
        if value:
            meta[key] = value
    return {"apiVersion": "v1", "kind": "Pod", "metadata": meta, "spec": {**spec, "containers": containers}}


def _c(name: str, image: str, limits: dict[str, Any], **fields: Any) -> dict[str, Any]:
    resources: dict[str, Any] = {"limits": limits}
    if "requests" in fields:
        resources["requests"] = fields.pop("requests")
    return {"name": name, "image": image, **fields, "resources": resources}


def _vgcu(name: str, container: str, *, percentage: int | None = None) -> dict[str, Any]:
    """One of HAMi's ``examples/enflame`` vGCU pods (namespace kube-system, as they are written)."""
    limits: dict[str, Any] = {"enflame.com/vgcu": 1}
    if percentage is not None:
        limits["enflame.com/vgcu-percentage"] = percentage
    return _pod(
        name,
        [_c(container, "ubuntu:18.04", limits, **GCU)],
        namespace="kube-system",
        terminationGracePeriodSeconds=0,
    )


DCU_IMAGE = "image.sourcefind.cn:5000/dcu/admin/base/pytorch:2.1.0-ubuntu22.04-dtk24.04.2-py3.10"
DCU_SLICE = {"hygon.com/dcunum": 1, "hygon.com/dcucores": 60, "hygon.com/dcumem": 2000}
DCU_ARGS = {"command": ["/bin/bash", "-c", "--"], "args": ["sleep infinity & wait"]}
ALEXNET = {"workingDir": "/root", "command": ["sleep", "infinity"]}
ROCM = ("rocm", "rocm/dev-ubuntu-24.04:7.2.4")
ROCM_CMD: dict[str, Any] = {"command": ["bash", "-c", "sleep infinity"]}
MT_IMAGE = "core.harbor.zlidc.mthreads.com:30003/mt-ai/lm-qy2:v17-mpc "
MT = {"imagePullPolicy": "IfNotPresent", "command": ["sleep"], "args": ["100000"]}
NEURON_IMAGE = "public.ecr.aws/neuron/pytorch-inference-neuron:1.13.1-neuron-py310-sdk2.20.2-ubuntu20.04"
NEURON_CPU = {"cpu": "4", "memory": "4Gi"}
NEURON_REQ = {"cpu": "1", "memory": "1Gi"}
GCU = {"imagePullPolicy": "IfNotPresent", "command": ["sleep"], "args": ["100000"]}
MLU = {"command": ["sleep"], "args": ["100000"]}
ILU_SCRIPT = (
    "set -ex\n"
    'echo "export LD_LIBRARY_PATH=/usr/local/corex/lib64:$LD_LIBRARY_PATH">> /root/.bashrc\n'
    "cp -f /usr/local/iluvatar/lib64/libcuda.* /usr/local/corex/lib64/\n"
    "cp -f /usr/local/iluvatar/lib64/libixml.* /usr/local/corex/lib64/\n"
    "source /root/.bashrc\n"
    "sleep 360000\n"
)
ILU_COREX = "harbor.4pd.io/vgpu/corex_transformers@sha256:36a01ec452e6ee63c7aa08bfa1fa16d469ad19cc1e6000cf120ada83e4ceec1e"
ILU_BI100 = "registry.iluvatar.com.cn:10443/saas/bi100-3.2.0-x86-ubuntu20.04-py3.10-poc-llm-finetune:v1.1"
ILU_MR = "registry.iluvatar.com.cn:10443/saas/mr-bi150-4.3.0-x86-ubuntu22.04-py3.10-base-base:v1.0"
#: file suffix -> (pod name, (count, memory, core) resource names, images of: default_use,
#: multi-containers' two containers, multi-devices); "" is the unsuffixed files' chip-less names
ILU_CHIPS: dict[str, tuple[str, tuple[str, str, str], tuple[str, str, str, str]]] = {
    "": (
        "poddemo",
        ("iluvatar.ai/vgpu", "iluvatar.ai/vcuda-memory", "iluvatar.ai/vcuda-core"),
        (ILU_COREX,) * 4,
    ),
    **{
        f"_{chip}": (
            f"{chip}-poddemo",
            (f"iluvatar.ai/{chip}-vgpu", f"iluvatar.ai/{chip}.vMem", f"iluvatar.ai/{chip}.vCore"),
            images,
        )
        for chip, images in (
            ("BI-V100", (ILU_BI100,) * 4),
            ("BI-V150", (ILU_MR, ILU_COREX, ILU_MR, ILU_MR)),
            ("MR-V100", (ILU_MR,) * 4),
        )
    },
}


def iluvatar_examples() -> dict[str, dict[str, Any]]:
    """HAMi's ``examples/iluvatar/{default_use,multi-containers,multi-devices}[_<chip>].yaml``: every
    container asks the same in requests and limits (a slice: 1 card, 50 % cores, 64 x 256 MiB; the
    multi-device pod: 2 whole cards). ``default_use_BI-V150.yaml`` lacks its ``command:`` line (it
    does not parse as YAML); it is transcribed with ``command: [bash]`` as its siblings have it."""
    out: dict[str, dict[str, Any]] = {}
    for suffix, (name, (count, memory, core), images) in ILU_CHIPS.items():
        slice_ = {count: 1, core: 50, memory: 64}

        def ctr(cname: str, image: str, res: dict[str, Any]) -> dict[str, Any]:
            return _c(cname, image, res, requests=res, command=["bash"], args=["-c", ILU_SCRIPT])

        pods = {
            "default_use": [ctr(name, images[0], slice_)],
            "multi-containers": [ctr(name, images[1], slice_), ctr(f"{name}1", images[2], slice_)],
            "multi-devices": [ctr(name, images[3], {count: 2})],
        }
        out |= {
            f"iluvatar/{kind}{suffix}": _pod(name, containers, restartPolicy="Never")
            for kind, containers in pods.items()
        }
    return out


TF_LABELS = {"purpose": "demo-tf-amdgpu"}
AMD_4G = {"amd.com/gpu": 1, "amd.com/gpumem": 4096}

MX_IMAGE = "cr.metax-tech.com/public-ai-release/c500/colossalai:2.24.0.5-py38-ubuntu20.04-amd64 "
MX: dict[str, Any] = {"imagePullPolicy": "IfNotPresent", "command": ["sleep", "infinity"]}


def _mx(limits: dict[str, Any], image: str = MX_IMAGE, **annotations: str) -> dict[str, Any]:
    """A Metax sGPU example: pod ``gpu-pod``, one ``ubuntu-container`` asking ``limits``."""
    return _pod("gpu-pod", [_c("ubuntu-container", image, limits, **MX)], annotations=annotations)


SGPU_60_4 = {"metax-tech.com/sgpu": 1, "metax-tech.com/vcore": 60, "metax-tech.com/vmemory": 4}
METAX_SGPU: dict[str, dict[str, Any]] = {
    "allocate_exclusive": _mx({"metax-tech.com/sgpu": 1}),
    "allocate_specific_gpu": _mx(SGPU_60_4, **{"metax-tech.com/use-gpuuuid": METAX_UUID}),
    "allocate_specific_qos": _mx(
        SGPU_60_4, "ubuntu:22.04", **{"metax-tech.com/sgpu-qos-policy": "best-effort"}
    ),
    "allocate_vmemory_MiB": _mx({**SGPU_60_4, "metax-tech.com/vmemory": "2048Mi"}),
    "default_use": _mx(SGPU_60_4),
    "enable_topology_aware": _mx(
        {"metax-tech.com/sgpu": 4}, "ubuntu:22.04", **{"metax-tech.com/sgpu-topology-aware": "true"}
    ),
    "multi-containers": _pod(
        "gpu-pod",
        [
            _c("ubuntu-container-1", MX_IMAGE, SGPU_60_4, **MX),
            _c(
                "ubuntu-container-2",
                MX_IMAGE,
                {"metax-tech.com/sgpu": 1, "metax-tech.com/vcore": 30, "metax-tech.com/vmemory": 8},
                **MX,
            ),
        ],
    ),
    "offline": _mx(SGPU_60_4, "ubuntu:22.04", **{"metax-tech.com/sgpu-app-class": "offline"}),
    "online": _mx(
        {"metax-tech.com/sgpu": 1, "metax-tech.com/vmemory": 4},
        "ubuntu:22.04",
        **{"metax-tech.com/sgpu-app-class": "online"},
    ),
}

HAMI_EXAMPLES: dict[str, dict[str, Any]] = {
    "hygon/default_use": _pod(
        "alexnet-tf-gpu-pod-mem",
        [_c("alexnet-tf-gpu-container", "pytorch:resnet50", DCU_SLICE, **ALEXNET)],
        labels=TF_LABELS,
    ),
    "hygon/specify_card_type_to_use": _pod(
        "alexnet-tf-gpu-pod-mem",
        [_c("alexnet-tf-gpu-container", "pytorch:resnet50", DCU_SLICE, **ALEXNET)],
        annotations={"hygon.com/use-dcutype": "Z100"},
        labels=TF_LABELS,
    ),
    "hygon/specify_card_type_not_use": _pod(
        "vdcu-pytorch-demo",
        [_c("vdcu-pytorch-demo", DCU_IMAGE, DCU_SLICE, **DCU_ARGS)],
        annotations={"hygon.com/nouse-dcutype": "DCU-K100_AI"},
    ),
    "hygon/specify_uuid_to_use": _pod(
        "vdcu-pytorch-demo",
        [_c("vdcu-pytorch-demo", DCU_IMAGE, DCU_SLICE, **DCU_ARGS)],
        annotations={"hygon.com/use-gpuuuid": DCU_Z100},
    ),
    "hygon/specify_uuid_not_use": _pod(
        "vdcu-pytorch-demo",
        [_c("vdcu-pytorch-demo", DCU_IMAGE, DCU_SLICE, **DCU_ARGS)],
        annotations={"hygon.com/nouse-gpuuuid": f"{DCU_Z100},{DCU_K100}"},
    ),
    "hygon/use_exclusive_card": _pod(
        "dcu-pytorch-demo", [_c("dcu-pytorch-demo", DCU_IMAGE, {"hygon.com/dcunum": 2}, **DCU_ARGS)]
    ),
    "amd/default_use": _pod("amd-gpu-pod", [_c(*ROCM, {"amd.com/gpu": 1}, **ROCM_CMD)]),
    "amd/specify_card_type_to_use": _pod(
        "amd-gpu-type-to-use",
        [_c(*ROCM, {"amd.com/gpu": 1, "amd.com/gpumem": 4096}, **ROCM_CMD)],
        annotations={"amd.com/use-gputype": "Radeon"},
    ),
    "amd/use_cores": _pod(
        "amd-gpu-cores",
        [_c(*ROCM, {"amd.com/gpu": 1, "amd.com/gpumem": 4096, "amd.com/gpucores": 25}, **ROCM_CMD)],
    ),
    "amd/use_memory_percentage": _pod(
        "amd-gpu-memory-percentage",
        [_c(*ROCM, {"amd.com/gpu": 1, "amd.com/gpumem-percentage": 25}, **ROCM_CMD)],
    ),
    "amd/use_memory": _pod("amd-gpu-memory", [_c(*ROCM, AMD_4G, **ROCM_CMD)]),
    "amd/specify_card_type_not_use": _pod(
        "amd-gpu-type-not-use",
        [_c(*ROCM, AMD_4G, **ROCM_CMD)],
        annotations={"amd.com/nouse-gputype": "Radeon"},
    ),
    # <GPU UUID> in HAMi's files: the simulated node's W7900 (not the card the pod would get anyway)
    "amd/specify_uuid_to_use": _pod(
        "amd-gpu-uuid-to-use", [_c(*ROCM, AMD_4G, **ROCM_CMD)], annotations={"amd.com/use-gpu-uuid": AMD_UUID}
    ),
    "amd/specify_uuid_not_use": _pod(
        "amd-gpu-uuid-not-use",
        [_c(*ROCM, AMD_4G, **ROCM_CMD)],
        annotations={"amd.com/nouse-gpu-uuid": AMD_UUID},
    ),
    "kunlun/default_use": _pod(
        "xpu-pod",
        [
            _c(
                "ubuntu-container",
                "ubuntu:22.04",
                {"kunlunxin.com/vxpu": 1, "kunlunxin.com/vxpu-memory": 24576},
                imagePullPolicy="IfNotPresent",
                command=["sleep", "infinity"],
            )
        ],
    ),
    "kunlun/allocate_exclusive": _pod(
        "xpu-pod",
        [
            _c(
                "ubuntu-container",
                "ubuntu:22.04",
                {"kunlunxin.com/vxpu": 1},
                imagePullPolicy="IfNotPresent",
                command=["sleep", "infinity"],
            )
        ],
    ),
    "kunlunxin/default_use": _pod(
        "vxpu-pod-demo",
        [
            _c(
                "vxpu-pod-demo",
                "pytorch:resnet50",
                {"kunlunxin.com/xpu": 1, "kunlunxin.com/xpu-memory": 24576},
                **ALEXNET,
            )
        ],
    ),
    "biren/default_use": _pod(
        "pod1",
        [_c("pod1", "ubuntu", {"birentech.com/gpu": 1}, command=["sleep"], args=["infinity"])],
        restartPolicy="OnFailure",
    ),
    "vastai/default_use": _pod(
        "vastai-pod",
        [
            _c(
                "test",
                "harbor.vastaitech.com/ai_deliver/vllm_vacc:VVI-25.12.SP2",
                {"vastaitech.com/va": 1},
                command=["sleep", "infinity"],
            )
        ],
    ),
    "mlu/allocate_whole": _pod(
        "binpack-1",
        [_c("c-1", "ubuntu:18.04", {"cambricon.com/vmlu": "1"}, **MLU)],
        labels={"app": "binpack-1"},
    ),
    "mlu/default_use": _pod(
        "binpack-1",
        [
            _c(
                "c-1",
                "ubuntu:18.04",
                {
                    "cambricon.com/vmlu": "1",
                    "cambricon.com/mlu370.smlu.vmemory": "20",
                    "cambricon.com/mlu370.smlu.vcore": "10",
                },
                **MLU,
            )
        ],
        labels={"app": "binpack-1"},
    ),
    "enflame/vgcu_use#1": _vgcu("vgcu-pod-1", "pod-gcu-example1"),
    "enflame/vgcu_use#2": _vgcu("vgcu-pod-2", "pod-gcu-example1", percentage=22),
    "enflame/default_use": _vgcu("gcushare-pod-2", "pod-gcu-example1", percentage=22),
    "enflame/use_exclusive": _vgcu("gcushare-pod-4", "pod-gcu-example3"),
    "metax/gpu/default_use": _pod(
        "gpu-pod1",
        [
            _c(
                "ubuntu-container",
                "ubuntu:22.04",
                {"metax-tech.com/gpu": 1},
                imagePullPolicy="IfNotPresent",
                command=["sleep", "infinity"],
            )
        ],
    ),
    **{f"metax/sgpu/{name}": example for name, example in METAX_SGPU.items()},
    "mthreads/default_use": _pod(
        "gpushare-pod-default",
        [
            _c(
                "gpushare-pod-1",
                MT_IMAGE,
                {"mthreads.com/vgpu": 1, "mthreads.com/sgpu-memory": 32, "mthreads.com/sgpu-core": 8},
                **MT,
            )
        ],
        restartPolicy="OnFailure",
    ),
    "mthreads/use_exclusive": _pod(
        "gpushare-pod-exclusive",
        [_c("gpushare-pod-1", MT_IMAGE, {"mthreads.com/vgpu": 1}, **MT)],
        restartPolicy="OnFailure",
    ),
    "mthreads/multi_cards": _pod(
        "gpushare-pod-multi-cards",
        [_c("gpushare-pod-1", MT_IMAGE, {"mthreads.com/vgpu": 2}, **MT)],
        restartPolicy="OnFailure",
    ),
    "enflame/gcu_use#1": _pod(
        "gcu-pod-1",
        [_c("pod-gcu-example1", "ubuntu:18.04", {"enflame.com/gcu": 1}, **GCU)],
        namespace="kube-system",
        terminationGracePeriodSeconds=0,
    ),
    "enflame/gcu_use#2": _pod(
        "gcu-pod-2",
        [_c("pod-gcu-example1", "ubuntu:18.04", {"enflame.com/gcu": 2}, **GCU)],
        namespace="kube-system",
        terminationGracePeriodSeconds=0,
    ),
    "awsneuron/allocate_dev": _pod(
        "nuropod",
        [
            _c(
                "nuropod",
                NEURON_IMAGE,
                {**NEURON_CPU, "aws.amazon.com/neuron": 1},
                requests=NEURON_REQ,
                command=["sleep", "infinity"],
            )
        ],
        restartPolicy="Never",
    ),
    "awsneuron/allocate_core": _pod(
        "npod",
        [
            _c(
                "npod",
                NEURON_IMAGE,
                {**NEURON_CPU, "aws.amazon.com/neuroncore": 1},
                requests=NEURON_REQ,
                command=["sleep", "infinity"],
            )
        ],
        restartPolicy="Never",
    ),
}

HAMI_EXAMPLES.update(iluvatar_examples())


def iluvatar_expected() -> dict[str, tuple[str, str, str]]:
    """Each chip's examples on its node: a slice on the highest card (16384 MiB, 50 %), the two
    containers on two cards (spread), the two devices whole (HAMi's webhook: 100 % cores each)."""
    out: dict[str, tuple[str, str, str]] = {}
    for node, config in ILUVATAR_NODES.items():
        cw = config.get("commonWord", config["chipName"])
        suffix = "" if "commonWord" in config else f"_{cw}"
        card = [f"{cw}-fake-{node}-{i},{cw}" for i in (5, 4)]
        allocated = {
            "default_use": f"{card[0]},16384,50:;",
            "multi-containers": f"{card[0]},16384,50:;{card[1]},16384,50:;",
            "multi-devices": f"{card[0]},32768,100:{card[1]},32768,100:;",
        }
        out |= {
            f"iluvatar/{kind}{suffix}": (node, f"hami.io/{cw}-devices-allocated", value)
            for kind, value in allocated.items()
        }
    return out


#: example -> (node, the vendor's allocated key, its value: HAMi's pod device encoding). Equal cards:
#: the highest index first (HAMi); Kunlun's topology takes the lowest; AWS Neuron the devices' order.
EXPECTED: dict[str, tuple[str, str, str]] = {
    "amd/default_use": (
        "amd-node",
        "hami.io/amd-devices-allocated",
        "AMD-mi300x,AMD Instinct MI300X,196608,304:;",
    ),
    "amd/specify_card_type_to_use": (
        "amd-node",
        "hami.io/amd-devices-allocated",
        "AMD-w7900,AMD Radeon PRO W7900,4096,0:;",
    ),
    "amd/use_cores": (
        "amd-node",
        "hami.io/amd-devices-allocated",
        "AMD-mi300x,AMD Instinct MI300X,4096,76:;",
    ),
    "amd/use_memory_percentage": (
        "amd-node",
        "hami.io/amd-devices-allocated",
        "AMD-mi300x,AMD Instinct MI300X,49152,0:;",
    ),
    **dict.fromkeys(
        ("amd/use_memory", "amd/specify_card_type_not_use", "amd/specify_uuid_not_use"),
        ("amd-node", "hami.io/amd-devices-allocated", "AMD-mi300x,AMD Instinct MI300X,4096,0:;"),
    ),
    "amd/specify_uuid_to_use": (
        "amd-node",
        "hami.io/amd-devices-allocated",
        f"{AMD_UUID},AMD Radeon PRO W7900,4096,0:;",
    ),
    "awsneuron/allocate_core": (
        "neuron-node",
        "hami.io/aws-neuron-devices-allocated",
        "neuron-node-AWSNeuron-1,AWSNeuron,0,1:;",
    ),
    "awsneuron/allocate_dev": (
        "neuron-node",
        "hami.io/aws-neuron-devices-allocated",
        "neuron-node-AWSNeuron-1,AWSNeuron,0,3:;",
    ),
    "biren/default_use": (
        "biren-vastai-node",
        "hami.io/Biren-devices-allocated",
        "Biren-fake-biren-vastai-node-1,Biren,16384,100:;",
    ),
    **dict.fromkeys(
        ("enflame/default_use", "enflame/use_exclusive", "enflame/vgcu_use#1", "enflame/vgcu_use#2"),
        (
            "gcu-drs-node",
            "hami.io/enflame-vgpu-devices-allocated",
            "gcu-drs-node-enflame-drs-1,Enflame,6144,17:;",
        ),
    ),
    "enflame/gcu_use#1": (
        "gcu-node",
        "hami.io/enflame-gcu-devices-allocated",
        "gcu-node-GCU-3,GCU,100,100:;",
    ),
    "enflame/gcu_use#2": (
        "gcu-node",
        "hami.io/enflame-gcu-devices-allocated",
        "gcu-node-GCU-3,GCU,100,100:gcu-node-GCU-2,GCU,100,100:;",
    ),
    "hygon/default_use": ("dcu-node", "hami.io/dcu-devices-allocated", "DCU-TPXS320010040504,DCU,2000,60:;"),
    "hygon/specify_card_type_not_use": (
        "dcu-node",
        "hami.io/dcu-devices-allocated",
        "DCU-TPXS320016070601,DCU,2000,60:;",
    ),
    "hygon/specify_card_type_to_use": (
        "dcu-node",
        "hami.io/dcu-devices-allocated",
        "DCU-TPXS320016070601,DCU,2000,60:;",
    ),
    "hygon/specify_uuid_not_use": (
        "dcu-node",
        "hami.io/dcu-devices-allocated",
        "DCU-TPXS320010040504,DCU,2000,60:;",
    ),
    "hygon/specify_uuid_to_use": (
        "dcu-node",
        "hami.io/dcu-devices-allocated",
        "DCU-TPXS320016070601,DCU,2000,60:;",
    ),
    "hygon/use_exclusive_card": (
        "dcu-node",
        "hami.io/dcu-devices-allocated",
        "DCU-TPXS320010040504,DCU,65536,100:DCU-TPXS320010040503,DCU,65536,100:;",
    ),
    "kunlun/allocate_exclusive": (
        "vxpu-node",
        "hami.io/xpu-devices-allocated",
        "XPU-fake-vxpu-node-0,XPU,98304,100:;",
    ),
    "kunlun/default_use": (
        "vxpu-node",
        "hami.io/xpu-devices-allocated",
        "XPU-fake-vxpu-node-0,XPU,24576,25:;",
    ),
    "kunlunxin/default_use": ("xpu-node", "hami.io/kunlun-allocated", "xpu-node-kunlun-0,kunlun,98304,100:;"),
    "metax/gpu/default_use": (
        "metax-node",
        "hami.io/metax-gpu-devices-allocated",
        "metax-node-metax-1,Metax-GPU,65536,100:;",
    ),
    **{
        f"metax/sgpu/{name}": ("sgpu-node", "hami.io/metax-sgpu-devices-allocated", value)
        for name, value in {
            # exclusive: the smallest MetaLink zone (2), its highest index first
            "allocate_exclusive": "sgpu-5,Metax-SGPU,65536,100:;",
            "allocate_specific_gpu": f"{METAX_UUID},Metax-SGPU,4096,60:;",
            "allocate_specific_qos": "sgpu-11,Metax-SGPU,4096,60:;",
            "allocate_vmemory_MiB": "sgpu-11,Metax-SGPU,2048,60:;",
            "default_use": "sgpu-11,Metax-SGPU,4096,60:;",
            # four exclusive cards: the one zone with four
            "enable_topology_aware": (
                "sgpu-3,Metax-SGPU,65536,100:sgpu-2,Metax-SGPU,65536,100:"
                "sgpu-1,Metax-SGPU,65536,100:sgpu-0,Metax-SGPU,65536,100:;"
            ),
            "multi-containers": "sgpu-11,Metax-SGPU,4096,60:;sgpu-10,Metax-SGPU,8192,30:;",
            "offline": "sgpu-11,Metax-SGPU,4096,60:;",
            # an online pod takes no cores
            "online": "sgpu-11,Metax-SGPU,4096,0:;",
        }.items()
    },
    "mlu/allocate_whole": (
        "mlu-node",
        "hami.io/cambricon-mlu-devices-allocated",
        "mlu-node-cambricon-mlu-1,MLU,24576,100:;",
    ),
    "mlu/default_use": (
        "mlu-node",
        "hami.io/cambricon-mlu-devices-allocated",
        "mlu-node-cambricon-mlu-1,MLU,5120,10:;",
    ),
    "mthreads/default_use": (
        "mthreads-node",
        "hami.io/mthreads-vgpu-devices-allocated",
        "mthreads-node-mthreads-3,Mthreads,16384,8:;",
    ),
    "mthreads/multi_cards": (
        "mthreads-node",
        "hami.io/mthreads-vgpu-devices-allocated",
        "mthreads-node-mthreads-3,Mthreads,49152,16:mthreads-node-mthreads-2,Mthreads,49152,16:;",
    ),
    "mthreads/use_exclusive": (
        "mthreads-node",
        "hami.io/mthreads-vgpu-devices-allocated",
        "mthreads-node-mthreads-3,Mthreads,49152,16:;",
    ),
    "vastai/default_use": (
        "biren-vastai-node",
        "hami.io/Vastai-devices-allocated",
        "Vastai-fake-biren-vastai-node-1,Vastai,16384,100:;",
    ),
}


# ---------------------------------------------------------------------------------- Huawei Ascend

DEVICE_CONFIG += "vnpus: {}\n"

#: chip (CommonWord) -> the card memory its device plugin registers (HAMi chart: memoryAllocatable)
ASCEND_CHIPS = {
    "Ascend310P": 21527,
    "Ascend910A": 32768,
    "Ascend910B2": 65536,
    "Ascend910B3": 65536,
    "Ascend910B4": 32768,
    "Ascend910C": 65536,
}


def ascend_nodes() -> list[dict[str, Any]]:
    """One node per chip, two NPUs each, every card with a NetworkID (as the Ascend plugin registers)."""
    return [
        _registered(
            f"{word.lower()}-node",
            {
                "vnpus": {
                    "chip": word,
                    "count": 2,
                    "card": {"memory": mem, "cores": 20, "slots": 4, "custominfo": {"NetworkID": 0}},
                }
            },
        )
        for word, mem in ASCEND_CHIPS.items()
    ]


ASCEND_IMAGE = "ascendhub.huawei.com/public-ascendhub/ascend-mindspore:23.0.RC3-centos7"
ASCEND_CMD = {"command": ["bash", "-c", "sleep 86400"]}
#: examples/ascend/job-<chip>.yaml: (pod name, chip, memory asked); 910C asks 16384 (vir05_1c_16g)
ASCEND_JOBS = {
    "310P": ("ascend310p-job", "Ascend310P", 2000),
    "910A": ("ascend910a-job", "Ascend910A", 2000),
    "910B2": ("ascend910b2-job", "Ascend910B2", 2000),
    "910B3": ("ascend910b3-job", "Ascend910B3", 2000),
    "910B4": ("ascend910b4-job", "Ascend910B4", 2000),
    "910C": ("ascend910c-job", "Ascend910C", 16384),
}
HAMI_EXAMPLES.update(
    {
        f"ascend/job-{job}": _pod(
            name,
            [
                _c(
                    "ubuntu-container",
                    ASCEND_IMAGE,
                    {f"huawei.com/{word}": 1, f"huawei.com/{word}-memory": mem},
                    **ASCEND_CMD,
                )
            ],
        )
        for job, (name, word, mem) in ASCEND_JOBS.items()
    }
)
#: the template each example's memory is rounded up to (HAMi chart's vnpus templates)
ASCEND_TEMPLATE_MIB = {
    "310P": 3072,
    "910A": 2184,
    "910B2": 8192,
    "910B3": 16384,
    "910B4": 8192,
    "910C": 16384,
}
EXPECTED.update(
    {
        f"ascend/job-{job}": (
            f"{word.lower()}-node",
            f"hami.io/{word}-devices-allocated",
            f"{word}-fake-{word.lower()}-node-1,{word},{ASCEND_TEMPLATE_MIB[job]},0:;",
        )
        for job, (_, word, _mem) in ASCEND_JOBS.items()
    }
)
EXPECTED.update(iluvatar_expected())


def run(pods: list[dict[str, Any]]) -> SimulationResult:
    config, _ = parse_device_config(DEVICE_CONFIG)
    return simulate(
        mixed_cluster(), pods, registry=default_registry(config), node_policy="binpack", gpu_policy="spread"
    )


def vendor_keys(allocated_key: str) -> set[str]:
    """Every decision annotation the vendor whose allocated key this is may write."""
    config, _ = parse_device_config(DEVICE_CONFIG)
    (backend,) = [b for b in default_registry(config) if b.allocated_key == allocated_key]
    return {keys.VGPU_NODE, keys.VGPU_TIME, *backend.decision_keys}


def test_every_example_is_covered() -> None:
    assert sorted(EXPECTED) == sorted(HAMI_EXAMPLES)


@pytest.mark.parametrize("example", sorted(HAMI_EXAMPLES))
def test_each_example_lands_on_its_vendors_node_and_cards(example: str) -> None:
    result = run([HAMI_EXAMPLES[example]])
    assert not result.warnings
    (placed,) = result.placements
    node, allocated_key, allocated = EXPECTED[example]
    assert placed["node"] == node, placed["reason"]
    ann = placed["annotations"]
    assert ann[allocated_key] == allocated
    # only the vendor's own decision keys: no other vendor's, no NVIDIA's
    assert set(ann) <= vendor_keys(allocated_key), sorted(ann)
    if allocated_key != keys.VGPU_DEVICES_ALLOCATED:
        assert keys.VGPU_DEVICES_ALLOCATED not in ann
    # the cards are that node's, as the simulated cluster lists them
    cards = {d["uuid"] for n in result.nodes if n["name"] == node for d in n["devices"]}
    assert {d.uuid for c in decode_pod_devices(allocated) for d in c} <= cards


def _namespace(example: str) -> str:
    return example.replace("/", "-").replace("#", "-").replace("_", "-").lower()


def test_all_examples_together_on_one_mixed_cluster() -> None:
    """Applied together in file order (each in its own namespace, as names repeat), every example
    lands on its vendor's node — except those that want a card an earlier example took: two Hygon
    examples want the one Z100 after ``specify_card_type_to_use`` took 60 % of its cores, two AMD
    examples the MI300X after ``default_use`` took it whole. They are refused for that, on their
    vendor's node only."""
    pods = [
        {**pod, "metadata": {**pod["metadata"], "namespace": _namespace(e)}}
        for e, pod in HAMI_EXAMPLES.items()
    ]
    result = run(pods)
    assert not result.warnings
    got = {p["pod"].split("/")[0]: p for p in result.placements}
    z100, mi300x = (
        "1 node (dcu-node): 1/5 CardInsufficientCore, 4/5",
        "1 node (amd-node): 1/2 CardInsufficientMemory, 1/2",
    )
    taken = {
        "hygon/specify_card_type_not_use": f"{z100} CardTypeMismatch",
        "hygon/specify_uuid_to_use": f"{z100} CardUuidMismatch",
        "amd/specify_card_type_not_use": f"{mi300x} CardTypeMismatch",
        "amd/specify_uuid_not_use": f"{mi300x} CardUuidMismatch",
    }
    for example in HAMI_EXAMPLES:
        placed = got[_namespace(example)]
        if example in taken:
            assert placed["node"] is None
            assert placed["reason"].endswith(taken[example]), placed["reason"]
        else:
            assert (placed["node"], placed["reason"]) == (EXPECTED[example][0], None), example


def test_metax_sgpu_examples_write_metax_json_and_predicate_time() -> None:
    """Beside HAMi's encoding, Metax's device plugin reads ``metax-tech.com/gpu-devices-allocated``
    (one list per container, ``compute``/``vRam`` left out when 0) and ``predicate-time``."""
    examples = ("metax/sgpu/multi-containers", "metax/sgpu/online")
    result = run(
        [
            {**HAMI_EXAMPLES[e], "metadata": {**HAMI_EXAMPLES[e]["metadata"], "namespace": _namespace(e)}}
            for e in examples
        ]
    )
    multi, online = (p["annotations"] for p in result.placements)
    assert multi["metax-tech.com/gpu-devices-allocated"] == (
        '[[{"uuid":"sgpu-11","compute":60,"vRam":4096}],[{"uuid":"sgpu-10","compute":30,"vRam":8192}]]'
    )
    assert multi["hami.io/metax-sgpu-devices-to-allocate"] == multi["hami.io/metax-sgpu-devices-allocated"]
    assert multi["metax-tech.com/predicate-time"].isdigit()
    # the online pod keeps off the two cards the multi-container pod (no app class) shares
    assert online["metax-tech.com/gpu-devices-allocated"] == '[[{"uuid":"sgpu-9","vRam":4096}]]'


def test_the_table_shows_every_vendors_cards() -> None:
    table = render_table(run([HAMI_EXAMPLES["hygon/default_use"], HAMI_EXAMPLES["kunlunxin/default_use"]]))
    assert "[DCU-TPXS320010040504 2000MiB 60%]" in table
    assert "[xpu-node-kunlun-0 98304MiB 100%]" in table


@pytest.mark.parametrize("job", sorted(ASCEND_JOBS))
def test_ascend_examples_carry_every_decision_annotation_exactly(job: str) -> None:
    """Beside the encoding under both keys: ``huawei.com/<chip>`` names the card and its vNPU
    template (the 310P's vir01 is 3072 MiB), and ``predicate-time`` is the decision's time."""
    _, word, _ = ASCEND_JOBS[job]
    result = run([HAMI_EXAMPLES[f"ascend/job-{job}"]])
    (placed,) = result.placements
    node, _, encoded = EXPECTED[f"ascend/job-{job}"]
    templates = {"310P": "vir01", "910A": "vir02", "910B2": "vir03_1c_8g", "910B3": "vir05_1c_16g"}
    templates |= {"910B4": "vir05_1c_8g", "910C": "vir05_1c_16g"}
    uuid = f"{word}-fake-{node}-1"
    assert placed["annotations"] == {
        keys.VGPU_NODE: node,
        keys.VGPU_TIME: "0",
        f"hami.io/{word}-devices-to-allocate": encoded,
        f"hami.io/{word}-devices-allocated": encoded,
        f"huawei.com/{word}": (
            f'[{{"UUID":"{uuid}","temp":"{templates[job]}","memory":{ASCEND_TEMPLATE_MIB[job]}}}]'
        ),
        "predicate-time": "0",
    }
