"""Annotation keys, label keys and well-known values of HAMi v2.10, in one place."""

from typing import Final

# --- node annotations -------------------------------------------------------------------------
NODE_NVIDIA_REGISTER: Final = "hami.io/node-nvidia-register"
NODE_NVIDIA_SCORE: Final = "hami.io/node-nvidia-score"
NODE_HANDSHAKE: Final = "hami.io/node-handshake"
NODE_LOCK: Final = "hami.io/mutex.lock"
DEVICE_CORDON: Final = "hami.io/device-cordon"
#: hami's own (not HAMi's): how this node's device plugin identifies the pod of an allocation.
#: ``cdi`` = lock-free (Allocate returns a CDI name, PreStartContainer maps the device IDs to the
#: container through the kubelet PodResources API); absent or any other value = HAMi's node lock.
NODE_ALLOCATION_MODE: Final = "hami.io/allocation-mode"
ALLOCATION_MODE_CDI: Final = "cdi"
ALLOCATION_MODE_LOCK: Final = "lock"
#: hami's own: the other vendors' annotations the node agent wrote for a simulated node (the fake
#: source's ``vendors:`` section), comma-separated, so that it removes one the spec no longer has
NODE_SIMULATED_VENDOR_KEYS: Final = "hami.io/simulated-vendor-annotations"

# --- pod annotations written by the scheduler / device plugin ---------------------------------
VGPU_NODE: Final = "hami.io/vgpu-node"
VGPU_TIME: Final = "hami.io/vgpu-time"
VGPU_DEVICES_TO_ALLOCATE: Final = "hami.io/vgpu-devices-to-allocate"
VGPU_DEVICES_ALLOCATED: Final = "hami.io/vgpu-devices-allocated"
VGPU_MIG_ALLOCATIONS: Final = "hami.io/vgpu-mig-allocations"
BIND_PHASE: Final = "hami.io/bind-phase"
BIND_TIME: Final = "hami.io/bind-time"
BIND_PHASE_ALLOCATING: Final = "allocating"
BIND_PHASE_SUCCESS: Final = "success"
BIND_PHASE_FAILED: Final = "failed"

# --- pod annotations set by users -------------------------------------------------------------
NODE_SCHEDULER_POLICY: Final = "hami.io/node-scheduler-policy"
GPU_SCHEDULER_POLICY: Final = "hami.io/gpu-scheduler-policy"
DEVICE_SCORING_WEIGHTS: Final = "hami.io/device-scoring-weights"
NVIDIA_USE_GPUTYPE: Final = "nvidia.com/use-gputype"
NVIDIA_NOUSE_GPUTYPE: Final = "nvidia.com/nouse-gputype"
NVIDIA_USE_GPUUUID: Final = "nvidia.com/use-gpuuuid"
NVIDIA_NOUSE_GPUUUID: Final = "nvidia.com/nouse-gpuuuid"
NVIDIA_NUMA_BIND: Final = "nvidia.com/numa-bind"
NVIDIA_VGPU_MODE: Final = "nvidia.com/vgpu-mode"

# --- DRA (names shared with HAMi's DRA driver and webhook, Project-HAMi/k8s-dra-driver) --------
DRA_DRIVER: Final = "hami-core-gpu.project-hami.io"
DRA_DEVICE_CLASS: Final = "hami-core-gpu.project-hami.io"
DRA_CAPACITY_MEMORY: Final = "memory"
DRA_CAPACITY_CORES: Final = "cores"
DRA_ATTR_PRODUCT_NAME: Final = "productName"
#: node config ``operatingmode`` values: a node runs the device plugin or the DRA kubelet plugin
OPERATING_MODE_DEVICE_PLUGIN: Final = "device-plugin"
OPERATING_MODE_DRA: Final = "dra"
#: hami's own: a node's operating mode as a *node label* (the DRA kubelet plugin's nodes carry
#: ``dra``; a converted pod gets it as a nodeSelector), and the same key as a pod annotation or a
#: namespace label choosing the mode for the pod when the webhook runs in DRA mode
OPERATING_MODE: Final = "hami.io/operating-mode"
#: device attributes the DRA kubelet plugin publishes beside ``productName`` (slice contract)
DRA_ATTR_UUID: Final = "uuid"
DRA_ATTR_INDEX: Final = "index"
DRA_ATTR_NUMA_NODE: Final = "numaNode"
#: ``type`` attribute: ``gpu`` for a whole card (consumable memory/cores), ``mig`` for a MIG profile
#: placement of a MIG-capable card (a partitionable device consuming the card's shared counters)
DRA_ATTR_TYPE: Final = "type"
DRA_TYPE_GPU: Final = "gpu"
DRA_TYPE_MIG: Final = "mig"
#: a MIG device's profile (``1g.5gb``) and its placement in memory slices (NVML's start and size)
DRA_ATTR_MIG_PROFILE: Final = "profile"
DRA_ATTR_MIG_START: Final = "placementStart"
DRA_ATTR_MIG_SIZE: Final = "placementSize"
#: hami's DeviceClass for MIG devices (the driver's ``type == "mig"`` devices); the hami-core class
#: selects ``type == "gpu"`` so a claim for a share of a card never lands on a MIG device
DRA_MIG_DEVICE_CLASS: Final = "mig.hami-core-gpu.project-hami.io"
#: hami's own extended resource on a converted pod's container: no node advertises it (the kubelet
#: ignores extended resources its node does not have), the hami-scheduler profile lists it as the
#: DRA extender's managed resource (``ignoredByScheduler``), so kube-scheduler asks hami to filter
#: and score the nodes of exactly the converted pods
DRA_STEER_RESOURCE: Final = "hami.io/dra"
#: label on the ResourceClaimTemplates the webhook creates
DRA_TEMPLATE_LABEL: Final = "hami.io/dra-template"

# --- labels -----------------------------------------------------------------------------------
WEBHOOK_LABEL: Final = "hami.io/webhook"
WEBHOOK_IGNORE: Final = "ignore"
SCHEDULER_ROLE_LABEL: Final = "hami.io/scheduler-role"
POD_GROUP_LABEL: Final = "scheduling.x-k8s.io/pod-group"

# --- vendor keys (HAMi "CommonWord") ----------------------------------------------------------
VENDOR_NVIDIA: Final = "NVIDIA"

# --- device modes -----------------------------------------------------------------------------
MODE_HAMI_CORE: Final = "hami-core"
MODE_MIG: Final = "mig"
MODE_MPS: Final = "mps"

# --- container environment (HAMi-core / device plugin) ----------------------------------------
ENV_VISIBLE_DEVICES: Final = "NVIDIA_VISIBLE_DEVICES"
ENV_MEMORY_LIMIT: Final = "CUDA_DEVICE_MEMORY_LIMIT"
ENV_SM_LIMIT: Final = "CUDA_DEVICE_SM_LIMIT"
ENV_SHARED_CACHE: Final = "CUDA_DEVICE_MEMORY_SHARED_CACHE"
ENV_CORE_POLICY: Final = "GPU_CORE_UTILIZATION_POLICY"
ENV_TASK_PRIORITY: Final = "CUDA_TASK_PRIORITY"
ENV_LOG_LEVEL: Final = "LIBCUDA_LOG_LEVEL"
ENV_DISABLE_CONTROL: Final = "CUDA_DISABLE_CONTROL"
ENV_OVERSUBSCRIBE: Final = "CUDA_OVERSUBSCRIBE"

# --- Metax sGPU (HAMi pkg/device/metax/protocol.go) -------------------------------------------
#: node: the JSON list of sGPU-capable cards Metax's device plugin writes
METAX_SGPU_DEVICES: Final = "metax-tech.com/node-gpu-devices"
#: pod: the decision as Metax's device plugin reads it (``[[{"uuid","compute","vRam"}]]``)
METAX_SGPU_ALLOCATED: Final = "metax-tech.com/gpu-devices-allocated"
#: pod: when the decision was made (Unix nanoseconds)
METAX_PREDICATE_TIME: Final = "metax-tech.com/predicate-time"
METAX_USE_UUID: Final = "metax-tech.com/use-gpuuuid"
METAX_NOUSE_UUID: Final = "metax-tech.com/nouse-gpuuuid"
METAX_SGPU_QOS_POLICY: Final = "metax-tech.com/sgpu-qos-policy"
METAX_SGPU_TOPOLOGY_AWARE: Final = "metax-tech.com/sgpu-topology-aware"
METAX_SGPU_APP_CLASS: Final = "metax-tech.com/sgpu-app-class"
METAX_QOS_BEST_EFFORT: Final = "best-effort"
METAX_QOS_FIXED_SHARE: Final = "fixed-share"
METAX_QOS_BURST_SHARE: Final = "burst-share"
METAX_APP_ONLINE: Final = "online"
METAX_APP_OFFLINE: Final = "offline"

# --- Huawei Ascend (HAMi pkg/device/ascend) ---------------------------------------------------
#: pod annotation choosing the vNPU mode: ``hami-core`` (soft slicing) or ``template`` (vNPU templates)
ASCEND_VNPU_MODE: Final = "huawei.com/vnpu-mode"
ASCEND_MODE_TEMPLATE: Final = "template"
#: node annotation (``true``/``false``) saying whether the node runs hami-core soft slicing
ASCEND_NODE_HAMI_CORE: Final = "hami-vnpu-core"
#: pod annotation with the decision time (unix seconds), written beside the Ascend decision
PREDICATE_TIME: Final = "predicate-time"
#: container env the webhook blanks (``overwriteEnv``) in containers that ask for no NPU
ENV_ASCEND_VISIBLE_DEVICES: Final = "ASCEND_VISIBLE_DEVICES"
