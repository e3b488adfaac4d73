"""Cambricon MLU (HAMi CommonWord ``MLU``): ``cambricon.com/vmlu`` cards,
``cambricon.com/mlu.smlu.vmemory`` in units of 256 MiB (none given: the whole card),
``cambricon.com/mlu.smlu.vcore`` percent (default 100).

Inventory from the node's capacity (HAMi): ``mlu.smlu.vcore`` / 100 cards
``<node>-cambricon-mlu-<i>``, 100 slots, 100 cores, ``mlu.smlu.vmemory`` x 256 x 100 / vcore MiB.
Filters: ``cambricon.com/use-gpuuuid`` / ``nouse-gpuuuid`` (HAMi defines ``use-mlutype`` but never
checks it; neither does hami). Decision: ``hami.io/cambricon-mlu-devices-to-allocate`` /
``-allocated``, and the dynamic-sMLU profile of the pod's first device
``CAMBRICON_DSMLU_PROFILE=<index>_<cores>_<memory / 256>`` with ``CAMBRICON_DSMLU_ASSIGNED=false``
for Cambricon's device plugin. Lock: its own ``cambricon.com/dsmlu.lock``, a bare RFC3339 time with
no owner (HAMi expires it after 2 minutes).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from hami.devices.base import NodeCards, Placement
from hami.devices.cambricon_config import CambriconConfig
from hami.devices.common import (
    SpecBackend,
    VendorSpec,
    capacity,
    card_index,
    filter_keys,
    pod_keys,
    resource_fields,
)
from hami.protocol.nodelock import NodeLock, NodeLockCodec, format_rfc3339, parse_rfc3339

VENDOR = "MLU"
MEMORY_UNIT_MIB = 256
PROFILE_KEY = "CAMBRICON_DSMLU_PROFILE"
ASSIGNED_KEY = "CAMBRICON_DSMLU_ASSIGNED"
LOCK_KEY = "cambricon.com/dsmlu.lock"


def _encode_lock(lock: NodeLock) -> str:
    return format_rfc3339(lock.time)


def _decode_lock(value: str) -> NodeLock:
    return NodeLock(time=parse_rfc3339(value))


#: ``cambricon.com/dsmlu.lock``: ``<RFC3339>`` only (no owner: any binder may release it)
DSMLU_LOCK = NodeLockCodec(key=LOCK_KEY, encode=_encode_lock, decode=_decode_lock)


class CambriconBackend(SpecBackend):
    config_type = CambriconConfig
    node_lock = DSMLU_LOCK

    def make_spec(self, config: CambriconConfig) -> VendorSpec:
        return VendorSpec(
            vendor=VENDOR,
            **resource_fields(config),
            memory_factor=MEMORY_UNIT_MIB,
            default_cores=100,
            **pod_keys("cambricon-mlu"),
            lock=LOCK_KEY,
            **filter_keys("cambricon.com"),
        )

    @property
    def decision_keys(self) -> tuple[str, ...]:
        return (*self.encoding_keys, PROFILE_KEY, ASSIGNED_KEY)

    def node_cards(self, node: Mapping[str, Any]) -> NodeCards | None:
        cores = capacity(node, self.spec.core_name)
        if cores == 0:
            return None
        memory = capacity(node, self.spec.memory_name)
        return self.capacity_cards(
            node,
            -(-cores // 100),
            type=VENDOR,
            id_word="cambricon-mlu",
            count=100,
            mem=memory * MEMORY_UNIT_MIB * 100 // cores,
            cores=100,
        )

    def decision_annotations(self, containers: Sequence[Sequence[Placement]]) -> dict[str, str]:
        out = super().decision_annotations(containers)
        first = next((p.device for c in containers for p in c), None)
        if first is not None:
            out[ASSIGNED_KEY] = "false"
            out[PROFILE_KEY] = (
                f"{card_index(first.uuid)}_{first.usedcores}_{first.usedmem // MEMORY_UNIT_MIB}"
            )
        return out
