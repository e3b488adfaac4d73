"""Huawei Ascend (``vnpus:``): one backend per configured chip, HAMi CommonWord = the entry's
``commonWord`` (``Ascend910B3``, ``Ascend310P``, ``Ascend910C``, ...), as in HAMi v2.10.

Resources: ``huawei.com/<cw>`` NPUs, ``<cw>-memory`` MiB (times ``memoryFactor``) and ``<cw>-core``
percent. Two vNPU modes: *template* (the memory is rounded up to the smallest of the chip's vNPU
templates that holds it, or to ``memoryAllocatable`` when none does but it fits ``memoryCapacity``)
and *hami-core* soft slicing (a ``-core`` request: the memory is taken as given, cores in percent of
a card). A node runs one mode: its ``hami-vnpu-core`` annotation (``true``/``false``), else the
section's ``hamiVnpuCore``; a pod naming a mode (``huawei.com/vnpu-mode``) is placed only on nodes
running it (``ModeNotFit``).

Inventory: ``hami.io/node-register-<cw>`` (HAMi's JSON with ``custominfo.NetworkID`` per card);
handshake ``hami.io/node-handshake-<cw>``. Filters ``hami.io/use-<cw>-uuid`` /
``hami.io/no-use-<cw>-uuid``. Decision: ``hami.io/<cw>-devices-to-allocate`` / ``-allocated``
(HAMi's pod device encoding), ``huawei.com/<cw>`` (JSON ``[{"UUID","temp","memory","core"}]``, zero
fields left out as Go's ``omitempty`` does) and ``predicate-time``; lock ``hami.io/mutex.lock``.

Topology: on a 910 chip whose every card registers a NetworkID, a multi-card request takes the
cards of the fullest network first, and the node score adds ``10 x max(same network)/n`` per
container (HAMi's ``ScoreNode``). A ``superPod`` chip (910C) hands out whole modules (cards
``2k, 2k+1``): a request of several cards takes full modules only; admission turns a request of 1
into 2 and refuses other odd counts.

Guarantees: pure; bad requests raise :class:`~hami.devices.base.RequestError` naming the resource.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import orjson

from hami.devices.ascend_config import AscendConfig, VNPUConfig
from hami.devices.base import Card, CardSelector, DeviceRequest, NodeCards, Placement, RequestError
from hami.devices.common import (
    NodeFacts,
    SpecBackend,
    VendorSpec,
    card_fields,
    int_resource,
    node_annotations,
    plugin_gone,
    pod_keys,
    usable_devices,
)
from hami.devices.hooks import (
    CARD_COMPUTE_EXHAUSTED,
    AdmissionOutcome,
    ContainerEditor,
    default_fits,
    default_size,
)
from hami.protocol import bodies, keys
from hami.protocol.errors import ProtocolError
from hami.protocol.node import DeviceInfo, decode_node_devices, encode_node_devices

if TYPE_CHECKING:
    from hami.scheduling.policy import CardPolicy

__all__ = [
    "MODE_NOT_FIT",
    "AscendBackend",
    "NetworkFacts",
    "ascend_backends",
    "decode_network_ids",
    "encode_register",
]

#: HAMi's reason for a node whose vNPU mode is not the pod's
MODE_NOT_FIT = "ModeNotFit"
#: chips whose cards are grouped by NetworkID (HAMi ``Ascend910Prefix``)
NETWORK_CHIP_PREFIX = "Ascend910"
NETWORK_WEIGHT = 10
NETWORK_ID = "NetworkID"
NS_PER_S = 1_000_000_000
#: NPUs per 910C module
MODULE_SIZE = 2
#: what a container asks for when it names no mode: any node
_MODES = (keys.MODE_HAMI_CORE, keys.ASCEND_MODE_TEMPLATE)


# ------------------------------------------------------------------------------------- register codec


def decode_network_ids(value: str) -> dict[str, int]:
    """Each card's ``custominfo.NetworkID`` from a register annotation (cards without one left out).

    The legacy colon form carries none (``{}``). Raises ProtocolError when the JSON is broken or a
    NetworkID is not an integer."""
    if not value.lstrip().startswith("["):
        return {}
    try:
        raw = orjson.loads(value)
    except orjson.JSONDecodeError as exc:
        raise ProtocolError(f"node register annotation is not valid JSON: {exc}") from None
    out: dict[str, int] = {}
    for i, item in enumerate(raw if isinstance(raw, list) else []):
        custom = item.get("custominfo") if isinstance(item, dict) else None
        if not isinstance(custom, dict) or NETWORK_ID not in custom:
            continue
        nid = custom[NETWORK_ID]
        if isinstance(nid, bool) or not isinstance(nid, int | float) or nid != int(nid):
            raise ProtocolError(f"device[{i}]: field 'custominfo.NetworkID' must be an integer, got {nid!r}")
        out[str(item.get("id", ""))] = int(nid)
    return out


def encode_register(devices: Sequence[DeviceInfo], custom: Sequence[Mapping[str, Any]] = ()) -> str:
    """HAMi's JSON register annotation with each card's ``custominfo`` (``custom[i]``; empty or
    absent: none), as the Ascend device plugin writes it."""
    rows = orjson.loads(encode_node_devices(devices))
    for row, extra in zip(rows, custom, strict=False):
        if extra:
            row["custominfo"] = dict(extra)
    return orjson.dumps(rows).decode()


@dataclass(frozen=True, slots=True)
class NetworkFacts(NodeFacts):
    """A card's NetworkID, and whether every card of its node has one (HAMi's ``hasNetworkID``)."""

    network_id: int
    node_complete: bool


def _network(card: Card) -> NetworkFacts | None:
    p = card.payload
    return p if isinstance(p, NetworkFacts) else None


# ------------------------------------------------------------------------------------------ selector


@dataclass(frozen=True, slots=True)
class VNPUModeSelector(CardSelector):
    """The pod's card filters plus its ``huawei.com/vnpu-mode``: a card on a node running another
    mode is refused with HAMi's ``ModeNotFit``."""

    vnpu_mode: str | None = None

    def __post_init__(self) -> None:
        CardSelector.__post_init__(self)
        if self.vnpu_mode is not None:
            object.__setattr__(self, "empty", False)

    def rejection(self, card: Card) -> str | None:
        if self.vnpu_mode is not None and card.mode != self.vnpu_mode:
            return MODE_NOT_FIT
        return CardSelector.rejection(self, card)


# ------------------------------------------------------------------------------------------- choice


def _by_network(ordered: list[Card], need: int) -> list[Card]:
    """HAMi's ``computeBestCombination``: the fullest network's cards first (ties: first seen)."""
    groups: dict[int, list[Card]] = {}
    for c in ordered:
        facts = _network(c)
        assert facts is not None
        groups.setdefault(facts.network_id, []).append(c)
    chosen = [c for g in sorted(groups.values(), key=len, reverse=True) for c in g]
    return chosen[:need]


def _by_module(ordered: list[Card], need: int) -> list[Card]:
    """Whole modules (cards ``2k`` and ``2k+1`` both eligible), best first, until ``need`` cards."""
    modules: dict[int, list[Card]] = {}
    for c in ordered:
        modules.setdefault(c.index // MODULE_SIZE, []).append(c)
    chosen: list[Card] = []
    for m in modules.values():
        if len(chosen) >= need:
            break
        if len(m) == MODULE_SIZE:
            chosen += m
    return chosen


# ------------------------------------------------------------------------------------------ backend


class AscendBackend(SpecBackend):
    """One Ascend chip type (one ``vnpus.configs`` entry)."""

    config_type = VNPUConfig
    config: VNPUConfig

    def __init__(self, config: VNPUConfig | None = None, *, hami_vnpu_core: bool = False) -> None:
        super().__init__(config)
        #: the section's default node mode (a node's ``hami-vnpu-core`` annotation overrides it)
        self.hami_vnpu_core = hami_vnpu_core
        self.templates = sorted(self.config.templates, key=lambda t: t.memory)
        cw = self.spec.vendor
        self.runtime_key = f"huawei.com/{cw}"
        self.topology = cw.startswith(NETWORK_CHIP_PREFIX)

    def make_spec(self, config: VNPUConfig) -> VendorSpec:
        cw = config.common_word
        return VendorSpec(
            vendor=cw,
            count_name=config.resource_name,
            memory_name=config.resource_memory_name,
            core_name=config.resource_core_name,
            memory_factor=config.memory_factor,
            register_key=f"hami.io/node-register-{cw}",
            handshake=f"hami.io/node-handshake-{cw}",
            **pod_keys(cw),
            use_uuid_key=f"hami.io/use-{cw}-uuid",
            nouse_uuid_key=f"hami.io/no-use-{cw}-uuid",
        )

    @property
    def decision_keys(self) -> tuple[str, ...]:
        return (*self.encoding_keys, self.runtime_key, keys.PREDICATE_TIME)

    # --- hook: PlacedAnnotations -------------------------------------------------------------------
    def placed_annotations(
        self, pod: Mapping[str, Any], containers: Sequence[Sequence[Placement]], node: str, now_ns: int
    ) -> dict[str, str]:
        """HAMi writes ``predicate-time`` (unix seconds) beside the Ascend decision."""
        return {keys.PREDICATE_TIME: str(now_ns // NS_PER_S)}

    # --- templates -------------------------------------------------------------------------------
    def trim_memory(self, mib: int) -> tuple[int, str]:
        """HAMi's ``trimMemory``: the smallest template holding ``mib`` (MiB, name), else the whole
        allocatable memory when ``mib`` fits ``memoryCapacity`` (no name), else ``(0, "")``."""
        for t in self.templates:
            if mib <= t.memory:
                return t.memory, t.name
        if mib <= self.config.memory_capacity:
            return self.config.memory_allocatable, ""
        return 0, ""

    # --- requests --------------------------------------------------------------------------------
    def request(self, cname: str, count: int, mem: int | None, cores: int | None) -> DeviceRequest:
        s = self.spec
        if self.config.super_pod and count > 1 and count % MODULE_SIZE:
            raise RequestError(container=cname, resource=s.count_name, reason=self._odd(count))
        if cores is not None and cores > 100:
            raise RequestError(
                container=cname, resource=s.core_name, reason=f"{cores} is more than 100 percent of a card"
            )
        mib = 0
        if mem is not None:
            mib = mem * s.memory_factor
            # a -core request is soft slicing: its memory is taken as given; else a template's
            if cores is None:
                mib, _ = self.trim_memory(mib)
                if mib <= 0:
                    raise RequestError(container=cname, resource=s.memory_name, reason=self._too_big(mem))
        return DeviceRequest(
            vendor=s.vendor,
            count=count,
            mem=mib,
            mem_percentage=None if mib else 100,
            cores=cores or 0,
            # a -core request is hami-core soft slicing (HAMi's webhook writes the pod's mode for it)
            payload=None if cores is None else keys.MODE_HAMI_CORE,
        )

    def _odd(self, count: int) -> str:
        return f"{count}: a {self.vendor} request must be 1 or an even number (whole 2-NPU modules)"

    def _too_big(self, mem: int) -> str:
        return (
            f"{mem} is more than memoryCapacity ({self.config.memory_capacity} MiB) and than every vNPU "
            f"template of {self.vendor}"
        )

    # --- inventory -------------------------------------------------------------------------------
    def encode_register(self, devices: Sequence[DeviceInfo], custom: Sequence[Mapping[str, Any]] = ()) -> str:
        return encode_register(devices, custom)

    def node_mode(self, node: Mapping[str, Any]) -> str:
        """The node's vNPU mode: its ``hami-vnpu-core`` annotation, else the section's default."""
        flag = node_annotations(node).get(keys.ASCEND_NODE_HAMI_CORE)
        soft = self.hami_vnpu_core if flag is None else flag == "true"
        return keys.MODE_HAMI_CORE if soft else keys.ASCEND_MODE_TEMPLATE

    def node_cards(self, node: Mapping[str, Any]) -> NodeCards | None:
        s = self.spec
        value = node_annotations(node).get(s.register_key)
        if not value or plugin_gone(node, s.count_name):
            return None
        devices, rejected = usable_devices(decode_node_devices(value), needs_memory=True)
        networks = decode_network_ids(value)
        complete = bool(devices) and all(d.id in networks for d in devices)
        mode = self.node_mode(node)
        cards = []
        for d in devices:
            fields = card_fields(d, s.vendor)
            fields["mode"] = mode
            if mode == keys.MODE_HAMI_CORE:
                fields["totalcores"] = 100  # soft slicing counts cores in percent of a card
            nid = networks.get(d.id)
            cards.append(Card(**fields, payload=None if nid is None else NetworkFacts(nid, complete)))
        return NodeCards(cards=tuple(cards), rejected=rejected) if cards or rejected else None

    def selector(self, annotations: Mapping[str, str]) -> CardSelector:
        base = super().selector(annotations)
        mode = annotations.get(keys.ASCEND_VNPU_MODE)
        return VNPUModeSelector(
            use_uuids=base.use_uuids,
            nouse_uuids=base.nouse_uuids,
            vnpu_mode=mode if mode in _MODES else None,
        )

    # --- hook: CardRejection (a soft-slicing request needs a hami-core node) ----------------------
    def reject_card(self, card: Card, request: DeviceRequest) -> str | None:
        if request.payload == keys.MODE_HAMI_CORE and card.mode != keys.MODE_HAMI_CORE:
            return MODE_NOT_FIT
        return None

    # --- hook: Sizing (a card registered with no cores takes core-less requests) -----------------
    def fits(self, card: Card, request: DeviceRequest) -> str | None:
        reason = default_fits(card, request)
        if reason == CARD_COMPUTE_EXHAUSTED and card.totalcores == 0:
            return None
        return reason

    def size(self, card: Card, request: DeviceRequest, container_index: int, device_index: int) -> Placement:
        return default_size(card, request, container_index, device_index)

    # --- hook: CardChoice --------------------------------------------------------------------------
    def choose_cards(
        self, ordered: list[Card], need: int, policy: CardPolicy, pair_scores: Mapping[str, Mapping[str, int]]
    ) -> list[Card]:
        return self.choose(ordered, need)

    def choose(self, ordered: list[Card], need: int) -> list[Card]:
        """The cards (of ``ordered``, best first) a request of ``need`` takes: whole modules on a
        superPod chip, the fullest networks first on a networked 910 node, else in order."""
        if need <= 1 or (len(ordered) <= need and not self.config.super_pod):
            return ordered
        if self.config.super_pod:
            return _by_module(ordered, need)
        if self.topology and self._networked(ordered):
            return _by_network(ordered, need)
        return ordered

    @staticmethod
    def _networked(cards: Sequence[Card]) -> bool:
        return all((f := _network(c)) is not None and f.node_complete for c in cards)

    # --- hook: NodeScore ---------------------------------------------------------------------------
    def node_score(self, cards: Sequence[Card], requests: Sequence[DeviceRequest]) -> float:
        """HAMi's ``ScoreNode`` on the cards this pod would take: ``10 x Σ max(same NetworkID)/n``."""
        if not self.topology or not cards or not self._networked(cards):
            return 0.0
        score = 0.0
        for r in requests:
            free = [
                c
                for c in cards
                if c.health and c.used < c.count and c.totalmem - c.usedmem >= r.mem_for(c.totalmem)
            ]
            picked = self.choose(free, r.count)[: r.count]
            if not picked:
                continue
            counts: dict[int, int] = {}
            for c in picked:
                facts = _network(c)
                assert facts is not None
                counts[facts.network_id] = counts.get(facts.network_id, 0) + 1
            score += max(counts.values()) / len(picked)
        return score * NETWORK_WEIGHT

    # --- hook: PodAnnotations ----------------------------------------------------------------------
    def pod_decision_annotations(
        self, pod: Mapping[str, Any], containers: Sequence[Sequence[Placement]]
    ) -> dict[str, str]:
        out = self.decision_annotations(containers)
        hami_core = bodies.annotations(pod).get(keys.ASCEND_VNPU_MODE) == keys.MODE_HAMI_CORE
        infos: list[dict[str, Any]] = []
        for placements in containers:
            for p in placements:
                d = p.device
                info: dict[str, Any] = {"UUID": d.uuid}
                if not hami_core:
                    _, temp = self.trim_memory(d.usedmem)
                    if temp:
                        info["temp"] = temp
                if d.usedmem:
                    info["memory"] = d.usedmem
                if d.usedcores:
                    info["core"] = d.usedcores
                infos.append(info)
        out[self.runtime_key] = orjson.dumps(infos).decode()
        return out

    # --- hook: Admission ---------------------------------------------------------------------------
    def admit_container(
        self, request: DeviceRequest | None, edit: ContainerEditor, out: AdmissionOutcome
    ) -> None:
        s = self.spec
        name = edit.name
        if request is None:
            if self.config.overwrite_env and not _asks_any_npu(edit.container):
                edit.set_env(keys.ENV_ASCEND_VISIBLE_DEVICES, "")
            return
        mode = out.pod_annotations.get(keys.ASCEND_VNPU_MODE)
        soft = edit.has_resource(s.core_name)
        if soft and mode == keys.ASCEND_MODE_TEMPLATE:
            out.invalid.append(
                f"container {name!r}: {s.core_name}: only for hami-core soft slicing, and the pod asks for "
                f"{keys.ASCEND_VNPU_MODE}: {keys.ASCEND_MODE_TEMPLATE}"
            )
            return
        count = int_resource(edit.container, name, s.count_name) or request.count
        if self.config.super_pod and count == 1:
            self._set(edit, s.count_name, "2")
            out.warnings.append(
                f"container {name!r}: {s.count_name} 1 raised to 2 (a {self.vendor} module is 2 NPUs)"
            )
        given = int_resource(edit.container, name, s.memory_name)
        # hami-core soft slicing (a -core request, or the pod's mode) keeps its memory as given; a
        # template vNPU gets its template; no memory: the whole card
        hami_core = soft or mode == keys.MODE_HAMI_CORE
        if given is None:
            memory = self.config.memory_allocatable
        elif hami_core:
            memory = given * s.memory_factor
        else:
            memory = request.mem
        if count > 1 and memory != self.config.memory_allocatable:
            out.invalid.append(
                f"container {name!r}: {s.memory_name}: vNPU slices are not supported for multiple devices "
                f"(ask for {self.config.memory_allocatable} MiB, a whole card, or for one device)"
            )
            return
        if s.memory_factor == 1 and memory and given != memory:
            self._set(edit, s.memory_name, str(memory))
            if given is not None:
                out.warnings.append(
                    f"container {name!r}: {s.memory_name} {given} rounded up to {memory} (a vNPU template)"
                )

    @staticmethod
    def _set(edit: ContainerEditor, resource: str, value: str) -> None:
        """Set the limit and, by dropping any request, the request (kube defaults it to the limit)."""
        edit.remove_resource(resource)
        edit.set_limit(resource, value)

    def admit_pod(self, spec: Mapping[str, Any], used: bool) -> list[dict[str, Any]]:
        rc = self.config.runtime_class_name
        if used and rc and not spec.get("runtimeClassName"):
            return [{"op": "add", "path": "/spec/runtimeClassName", "value": rc}]
        return []

    def core_limit_off(self) -> bool:
        return False


def _asks_any_npu(container: Mapping[str, Any]) -> bool:
    resources = container.get("resources")
    if not isinstance(resources, Mapping):
        return False
    for part in ("limits", "requests"):
        values = resources.get(part)
        if isinstance(values, Mapping) and any(str(k).startswith("huawei.com/Ascend") for k in values):
            return True
    return False


def ascend_backends(config: AscendConfig) -> list[AscendBackend]:
    """The ``vnpus:`` section's backends, one per chip config, in file order."""
    return [AscendBackend(c, hami_vnpu_core=config.hami_vnpu_core) for c in config.configs]
