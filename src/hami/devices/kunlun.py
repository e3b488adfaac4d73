"""Kunlun (``kunlun:``): two backends, as in HAMi — whole XPUs (CommonWord ``kunlun``) and vXPU
slices (CommonWord ``XPU``) — sharing HAMi's 8-card topology choice.

Whole XPUs: ``kunlunxin.com/xpu``; cards from the node's capacity, ``<node>-kunlun-<i>`` with 98304
MiB and NUMA 1 for the upper half; a card in use is refused. Filters ``baidu.com/use-gpuuuid`` /
``nouse-gpuuuid``; decision ``hami.io/kunlun-allocated`` only and ``BAIDU_COM_DEVICE_IDX`` (the card
indices of the last container with cards); no lock. Node score: HAMi's "bubble" term (0-3000) that
prefers placements keeping the two 4-card wings whole.

vXPU: ``kunlunxin.com/vxpu`` with ``kunlunxin.com/vxpu-memory`` rounded up to a template (24576,
49152 or 98304 MiB; none given: the whole card), cores = memory x 100 / 98304. Inventory
``hami.io/node-register-xpu`` (JSON), handshake ``hami.io/node-handshake-xpu``; a card holds slices
of one size only. Filters ``hami.io/use-xpu-uuid`` / ``hami.io/no-use-xpu-uuid``; decision
``hami.io/xpu-devices-to-allocate`` / ``-allocated``; lock ``hami.io/mutex.lock``. The webhook
rounds the memory limit up to its template.

Topology (HAMi ``graghSelect``): cards 0-3 and 4-7 are two wings. 1, 2 or 4 cards come from one wing
when a wing has enough eligible cards — the wing whose eligible count is tried first in the order
``count..4`` (odd counts: 1, 3, 2, 4), lowest indices first; else 2 cards take a cross-wing pair
(0-4, 1-5, 2-6, 3-7) and 4 cards one of HAMi's interconnected quads; 8 cards need all eight.
Other counts, and cards with index 8 or more, are never chosen.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from hami.devices.base import Card, DeviceRequest, NodeCards, Placement
from hami.devices.common import (
    ContainerAdmission,
    SpecBackend,
    VendorSpec,
    WholeCards,
    capacity,
    card_index,
    filter_keys,
    int_resource,
)
from hami.devices.hooks import AdmissionOutcome, ContainerEditor
from hami.devices.kunlun_config import KunlunConfig
from hami.scheduling.policy import CardPolicy

XPU_VENDOR = "kunlun"
VXPU_VENDOR = "XPU"
CARD_MEMORY_MIB = 98304
VXPU_TEMPLATES_MIB = (24576, 49152, CARD_MEMORY_MIB)
DEVICE_IDX_KEY = "BAIDU_COM_DEVICE_IDX"
SLICE_SIZE_MISMATCH = "CardSliceSizeMismatch"

_WING = 4
_ODD_ORDER = (1, 3, 2, 4)
_CROSS_PAIRS = ((0, 4), (1, 5), (2, 6), (3, 7))
_WING_PAIRS = ((0, 1), (0, 2), (0, 3), (1, 2), (1, 3), (2, 3), (4, 5), (4, 6), (4, 7), (5, 6), (5, 7), (6, 7))
_QUADS = ((0, 1, 4, 5), (2, 3, 6, 7), (0, 2, 4, 6), (1, 3, 5, 7), (0, 3, 4, 7), (1, 2, 5, 6))


# ------------------------------------------------------------------------------------------ topology


def graph_select(eligible: set[int], count: int) -> list[int]:
    """HAMi's choice of ``count`` card indices among ``eligible`` on an 8-card node ([] = none)."""
    left = sorted(i for i in eligible if i < _WING)
    right = sorted(i for i in eligible if _WING <= i < 2 * _WING)
    if count == 2 * _WING:
        return [*left, *right] if len(left) + len(right) == count else []
    if count not in (1, 2, 4):
        return []
    if len(left) >= count or len(right) >= count:
        for slots in range(count, _WING + 1):
            num = _ODD_ORDER[slots - 1] if count % 2 else slots
            if len(left) == num:
                return left[:count]
            if len(right) == num:
                return right[:count]
    return _interconnect(sorted([*left, *right]), count)


def _interconnect(free: list[int], count: int) -> list[int]:
    have = set(free)
    if count == 2:
        for i in free:
            for a, b in _CROSS_PAIRS:
                if i in (a, b) and {a, b} <= have:
                    return [i, b if i == a else a]
        return []
    if count == 4 and len(free) in (4, 5):
        return next((list(q) for q in _QUADS if set(q) <= have), [])
    if count == 4 and len(free) == 6:
        chosen: list[int] = []
        for q in _QUADS:
            if set(q) <= have:
                chosen = list(q)
                rest = have - set(q)
                if any(set(p) <= rest for p in (*_CROSS_PAIRS, *_WING_PAIRS)):
                    return chosen
        return chosen
    return []


def _bubbles(indices: Sequence[int]) -> int:
    left = sum(1 for i in indices if i < _WING)
    right = len(indices) - left
    if left == 0 and right == 0:
        return 1

    def value(n: int) -> int:
        return 0 if n == _WING else 2 if n == 1 else 1

    return value(left) + value(right)


def bubble_score(previous: Sequence[int], current: Sequence[int]) -> float:
    """HAMi's Kunlun node score: how the pod's cards change the wings' fragmentation."""
    return {-1: 3000.0, 0: 2000.0, 1: 1000.0, 2: 0.0}.get(_bubbles(current) - _bubbles(previous), 1000.0)


class _GraphChoice:
    """CardChoice hook: HAMi's topology choice over the eligible cards, by card index."""

    def choose_cards(
        self, ordered: list[Card], need: int, policy: CardPolicy, pair_scores: Mapping[str, Mapping[str, int]]
    ) -> list[Card]:
        by_index = {c.index: c for c in ordered}
        return [by_index[i] for i in graph_select(set(by_index), need)]


# --------------------------------------------------------------------------------------- whole XPUs


class KunlunXPUBackend(_GraphChoice, WholeCards, SpecBackend):
    config_type = KunlunConfig

    def make_spec(self, config: KunlunConfig) -> VendorSpec:
        return VendorSpec(
            vendor=XPU_VENDOR,
            count_name=config.resource_count_name,
            to_allocate_key="hami.io/kunlun-allocated",
            allocated_key="hami.io/kunlun-allocated",
            lock=None,
            **filter_keys("baidu.com"),
            write_to_allocate=False,
        )

    @property
    def decision_keys(self) -> tuple[str, ...]:
        return (self.spec.allocated_key, DEVICE_IDX_KEY)

    def node_cards(self, node: Mapping[str, Any]) -> NodeCards | None:
        n = capacity(node, self.spec.count_name)
        found = self.capacity_cards(node, n, type=XPU_VENDOR, count=100, mem=CARD_MEMORY_MIB, cores=100)
        if found is None:
            return None
        for c in found.cards:
            c.numa = 1 if c.index >= n // 2 else 0
        return found

    def decision_annotations(self, containers: Sequence[Sequence[Placement]]) -> dict[str, str]:
        out = super().decision_annotations(containers)
        with_cards = [c for c in containers if c]
        if with_cards:
            out[DEVICE_IDX_KEY] = ",".join(str(card_index(p.device.uuid)) for p in with_cards[-1])
        return out

    # --- hook: NodeScore ------------------------------------------------------------------------
    def node_score(self, cards: Sequence[Card], requests: Sequence[DeviceRequest]) -> float:
        previous = [c.index for c in cards if c.used > 0]
        free = {c.index for c in cards if c.used == 0 and c.health}
        current: list[int] = []
        for r in requests:
            picked = graph_select(free, r.count)
            current += picked
            free -= set(picked)
        return bubble_score(previous, current)


# -------------------------------------------------------------------------------------------- vXPU


def vxpu_memory(mem: int) -> int:
    """The template (MiB) a vXPU memory request is rounded up to (HAMi's ``trimMemory``)."""
    return next((t for t in VXPU_TEMPLATES_MIB if mem <= t), CARD_MEMORY_MIB)


class KunlunVXPUBackend(ContainerAdmission, _GraphChoice, SpecBackend):
    config_type = KunlunConfig

    def make_spec(self, config: KunlunConfig) -> VendorSpec:
        return VendorSpec(
            vendor=VXPU_VENDOR,
            count_name=config.resource_vcount_name,
            memory_name=config.resource_vmemory_name,
            register_key="hami.io/node-register-xpu",
            handshake="hami.io/node-handshake-xpu",
            to_allocate_key="hami.io/xpu-devices-to-allocate",
            allocated_key="hami.io/xpu-devices-allocated",
            use_uuid_key="hami.io/use-xpu-uuid",
            nouse_uuid_key="hami.io/no-use-xpu-uuid",
        )

    def request(self, cname: str, count: int, mem: int | None, cores: int | None) -> DeviceRequest:
        mib = vxpu_memory(mem) if mem else CARD_MEMORY_MIB
        return DeviceRequest(vendor=VXPU_VENDOR, count=count, mem=mib, cores=mib * 100 // CARD_MEMORY_MIB)

    # --- hook: CardRejection (one slice size per card) ----------------------------------------
    def reject_card(self, card: Card, request: DeviceRequest) -> str | None:
        if card.used and card.usedmem // card.used != request.mem:
            return SLICE_SIZE_MISMATCH
        return None

    # --- hook: Admission (round the memory limit up to its template) --------------------------
    def admit_container(
        self, request: DeviceRequest | None, edit: ContainerEditor, out: AdmissionOutcome
    ) -> None:
        container = edit.container
        name = edit.name
        if request is None:
            return
        given = int_resource(container, name, self.spec.memory_name)
        if given is not None and given != request.mem:
            edit.set_limit(self.spec.memory_name, str(request.mem))
            out.warnings.append(
                f"container {name!r}: {self.spec.memory_name} {given} rounded up to {request.mem} (a vXPU template)"
            )


def kunlun_backends(config: KunlunConfig) -> list[SpecBackend]:
    """The ``kunlun:`` section's two backends (whole XPUs, then vXPUs)."""
    return [KunlunXPUBackend(config), KunlunVXPUBackend(config)]


__all__ = [
    "KunlunVXPUBackend",
    "KunlunXPUBackend",
    "bubble_score",
    "graph_select",
    "kunlun_backends",
    "vxpu_memory",
]
