"""Moore Threads (HAMi CommonWord ``Mthreads``): ``mthreads.com/vgpu`` cards, ``sgpu-memory`` in units
of 512 MiB (one of 2, 4, 8, 16, 32, 64, 96), ``sgpu-core`` out of 16 per GPU.

Inventory from the node's capacity (HAMi): ``sgpu-core`` / 16 GPUs ``<node>-mthreads-<i>``, each
with ``sgpu-memory`` x 512 x 16 / cores MiB, 16 cores and 100 slots. A container's memory and cores
are divided among the cards it asks for; asking more than one card, or one card without memory,
takes whole GPUs (HAMi's webhook sets 16 cores and 96 units per card). Filters:
``mthreads.ai/use-gpuuuid`` / ``nouse-gpuuuid``. Decision: ``hami.io/mthreads-vgpu-devices-allocated``
only, ``mthreads.com/gpu-index`` (the card indices, comma-separated), ``mthreads.com/predicate-node``
and ``predicate-time`` (the decision's node and Unix nanoseconds); no node lock. The webhook writes
``mthreads.com/request-gpu-num`` (the card count of the last container asking for more than one
card), as HAMi's does.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from hami.devices.base import DeviceRequest, NodeCards, Placement, RequestError
from hami.devices.common import (
    ContainerAdmission,
    SpecBackend,
    VendorSpec,
    capacity,
    card_index,
    filter_keys,
    pod_keys,
    resource_fields,
)
from hami.devices.hooks import AdmissionOutcome, ContainerEditor
from hami.devices.mthreads_config import MthreadsConfig

VENDOR = "Mthreads"
CORES_PER_GPU = 16
MEMORY_UNIT_MIB = 512
#: memory units of a whole GPU, as HAMi's webhook sets them (MTT S4000: 48 GiB)
WHOLE_GPU_UNITS = 96
LEGAL_MEMORY_UNITS = (2, 4, 8, 16, 32, 64, 96)
GPU_INDEX_KEY = "mthreads.com/gpu-index"
PREDICATE_NODE_KEY = "mthreads.com/predicate-node"
PREDICATE_TIME_KEY = "mthreads.com/predicate-time"
#: set by HAMi's webhook to a container's card count when it asks for more than one card
REQUEST_GPU_NUM_KEY = "mthreads.com/request-gpu-num"


class MthreadsBackend(ContainerAdmission, SpecBackend):
    config_type = MthreadsConfig
    #: HAMi: every container of a pod on the same GPU
    one_card_per_pod = True

    def make_spec(self, config: MthreadsConfig) -> VendorSpec:
        return VendorSpec(
            vendor=VENDOR,
            **resource_fields(config),
            memory_factor=MEMORY_UNIT_MIB,
            **pod_keys("mthreads-vgpu"),
            lock=None,
            **filter_keys("mthreads.ai"),
            write_to_allocate=False,
        )

    @property
    def decision_keys(self) -> tuple[str, ...]:
        return (self.spec.allocated_key, GPU_INDEX_KEY, PREDICATE_NODE_KEY, PREDICATE_TIME_KEY)

    def request(self, cname: str, count: int, mem: int | None, cores: int | None) -> DeviceRequest:
        s = self.spec
        if count > 1 or mem is None:
            # whole GPUs: HAMi's webhook rewrites the limits to 16 cores and 96 units per card
            return DeviceRequest(vendor=s.vendor, count=count, mem_percentage=100, cores=CORES_PER_GPU)
        if mem not in LEGAL_MEMORY_UNITS:
            raise RequestError(
                container=cname,
                resource=s.memory_name,
                reason=f"{mem} is not a valid sGPU memory size (one of {', '.join(map(str, LEGAL_MEMORY_UNITS))})",
            )
        if cores is not None and cores > CORES_PER_GPU:
            raise RequestError(
                container=cname,
                resource=s.core_name,
                reason=f"{cores} is more than the {CORES_PER_GPU} cores of a GPU",
            )
        return DeviceRequest(vendor=s.vendor, count=1, mem=mem * MEMORY_UNIT_MIB, cores=cores or 0)

    def node_cards(self, node: Mapping[str, Any]) -> NodeCards | None:
        cores = capacity(node, self.spec.core_name)
        if cores == 0:
            return None
        memory = capacity(node, self.spec.memory_name)
        return self.capacity_cards(
            node,
            -(-cores // CORES_PER_GPU),
            type=VENDOR,
            id_word="mthreads",
            count=100,
            mem=memory * MEMORY_UNIT_MIB * CORES_PER_GPU // cores,
            cores=CORES_PER_GPU,
        )

    def decision_annotations(self, containers: Sequence[Sequence[Placement]]) -> dict[str, str]:
        out = super().decision_annotations(containers)
        last = [c for c in containers if c]
        if last:
            out[GPU_INDEX_KEY] = ",".join(str(card_index(p.device.uuid)) for p in last[-1])
        return out

    def placed_annotations(
        self, pod: Mapping[str, Any], containers: Sequence[Sequence[Placement]], node: str, now_ns: int
    ) -> dict[str, str]:
        """HAMi writes the node and the time (ns) beside ``gpu-index``, at the decision."""
        if not any(containers):
            return {}
        return {PREDICATE_NODE_KEY: node, PREDICATE_TIME_KEY: str(now_ns)}

    # --- hook: Admission (HAMi's limits rewrite and memory-size check) --------------------------
    def admit_annotations(
        self, annotations: Mapping[str, str], requests: Sequence[DeviceRequest], out: AdmissionOutcome
    ) -> dict[str, str]:
        """HAMi's webhook records a multi-card container's count on the pod (the last one wins)."""
        counts = [r.count for r in requests if r.count > 1]
        return {REQUEST_GPU_NUM_KEY: str(counts[-1])} if counts else {}

    def admit_container(
        self, request: DeviceRequest | None, edit: ContainerEditor, out: AdmissionOutcome
    ) -> None:
        if request is None or request.mem_percentage != 100:
            return
        edit.set_limit(self.spec.core_name, str(request.count * CORES_PER_GPU))
        edit.set_limit(self.spec.memory_name, str(request.count * WHOLE_GPU_UNITS))
