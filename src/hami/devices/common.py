"""Shapes most vendors share, so that a vendor module only states what is its own.

HAMi's non-NVIDIA backends are close variants of one another: a count resource (sometimes memory
and core resources beside it), a node inventory read from a register annotation (JSON or the legacy
colon form) or from the node's capacity, use/no-use annotations for card types and UUIDs, and the
decision written in HAMi's pod device encoding under a ``…-to-allocate`` and an ``…-allocated`` key.
:class:`VendorSpec` states those names; :class:`SpecBackend` implements the backend protocol from
it; :class:`WholeCards` (a mixin) makes every card exclusive. A vendor module subclasses
:class:`SpecBackend`, builds its spec from its config section and adds the hooks it needs.

Guarantees: pure (no I/O, no clocks); requests follow HAMi (limits before requests); out-of-range
values are rejected with a :class:`~hami.devices.base.RequestError`, never clamped.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Self, TypedDict

from hami.devices.base import (
    Card,
    CardPayload,
    CardSelector,
    DeviceRequest,
    NodeCards,
    Placement,
    RequestError,
    split_list,
)
from hami.devices.hooks import EXCLUSIVE_CONFLICT, QuotaNames
from hami.protocol import bodies
from hami.protocol.errors import ProtocolError
from hami.protocol.keys import MODE_MIG
from hami.protocol.node import (
    DeviceInfo,
    card_problem,
    decode_node_devices,
    encode_node_devices,
    encode_node_devices_legacy,
)
from hami.protocol.pod import ContainerDevice, decode_pod_devices, encode_pod_devices
from hami.protocol.quantity import parse_int_quantity

INT32_MAX = 2**31 - 1

__all__ = [
    "INT32_MAX",
    "SpecBackend",
    "VendorSpec",
    "WholeCards",
    "capacity",
    "int_resource",
    "node_annotations",
]


# ------------------------------------------------------------------------------------ resources


def resource_value(container: Mapping[str, Any], cname: str, name: str) -> Any:
    """The container's raw quantity of ``name`` (limits first, then requests), or None;
    raises RequestError when ``resources`` is malformed."""
    resources = container.get("resources") or {}
    if not isinstance(resources, Mapping):
        raise RequestError(container=cname, resource="resources", reason="must be an object")
    limits = resources.get("limits") or {}
    requests = resources.get("requests") or {}
    for part, value in (("limits", limits), ("requests", requests)):
        if not isinstance(value, Mapping):
            raise RequestError(container=cname, resource=f"resources.{part}", reason="must be an object")
    if name in limits:
        return limits[name]
    return requests.get(name)


def int_resource(
    container: Mapping[str, Any],
    cname: str,
    name: str,
    parse: Callable[[object], int] | None = None,
) -> int | None:
    """The container's integer quantity of ``name`` (limits first, then requests), or None.

    ``parse`` reads the raw quantity (default: its integer value; it raises ProtocolError); the
    result must be 0..int32, else a RequestError names the resource."""
    if not name:
        return None
    raw = resource_value(container, cname, name)
    if raw is None:
        return None
    try:
        value = parse(raw) if parse is not None else parse_int_quantity(raw, field=name)
    except ProtocolError as exc:
        raise RequestError(
            container=cname, resource=name, reason=str(exc).removeprefix(f"{name}: ")
        ) from None
    if value < 0:
        raise RequestError(container=cname, resource=name, reason=f"{raw!r} must not be negative")
    if value > INT32_MAX:
        raise RequestError(container=cname, resource=name, reason=f"{raw!r} is too large")
    return value


def node_annotations(node: Mapping[str, Any]) -> Mapping[str, str]:
    return bodies.annotations(node)


def capacity(node: Mapping[str, Any], name: str) -> int:
    """The node's integer capacity of resource ``name`` (0 when absent or not an integer)."""
    raw = (bodies.status(node).get("capacity") or {}).get(name)
    if raw is None:
        return 0
    try:
        return max(0, parse_int_quantity(raw, field=name))
    except ProtocolError:
        return 0


# ----------------------------------------------------------------------------------------- spec


@dataclass(frozen=True, slots=True)
class VendorSpec:
    """The names one vendor uses on the wire (HAMi v2.10), and its request rules.

    ``memory_name``/``core_name`` empty: the vendor hands out whole cards by count only.
    ``register_key`` empty: the inventory comes from the node's capacity (the vendor overrides
    :meth:`SpecBackend.node_cards`). ``lock_key`` None: the vendor takes no node lock.
    """

    vendor: str
    count_name: str
    to_allocate_key: str
    allocated_key: str
    memory_name: str = ""
    core_name: str = ""
    memory_factor: int = 1
    default_cores: int = 0
    register_key: str = ""
    handshake: str = ""
    lock: str | None = "hami.io/mutex.lock"
    use_type_key: str = ""
    nouse_type_key: str = ""
    use_uuid_key: str = ""
    nouse_uuid_key: str = ""
    #: False: the decision is written under ``allocated_key`` only (HAMi's Mthreads, AWS Neuron)
    write_to_allocate: bool = True
    #: True: the vendor's device plugin writes ``register_key`` in HAMi's legacy colon form (Hygon,
    #: Iluvatar), else JSON; the backend reads both, the fake device source writes this one
    legacy_register: bool = False


class ResourceFields(TypedDict):
    count_name: str
    memory_name: str
    core_name: str


class PodKeys(TypedDict):
    to_allocate_key: str
    allocated_key: str


class HamiKeys(PodKeys):
    register_key: str
    handshake: str


class FilterKeys(TypedDict, total=False):
    use_type_key: str
    nouse_type_key: str
    use_uuid_key: str
    nouse_uuid_key: str


def resource_fields(config: Any) -> ResourceFields:
    """``count_name``/``memory_name``/``core_name`` from a section's ``resourceCountName``,
    ``resourceMemoryName`` and ``resourceCoreName`` (absent ones empty)."""
    return {
        "count_name": config.resource_count_name,
        "memory_name": getattr(config, "resource_memory_name", ""),
        "core_name": getattr(config, "resource_core_name", ""),
    }


def hami_keys(node_word: str, pod_word: str, *, handshake: bool = True) -> HamiKeys:
    """HAMi's per-vendor annotation keys: ``hami.io/node-<node_word>-register``, the handshake
    ``hami.io/node-handshake-<node_word>`` and ``hami.io/<pod_word>-devices-to-allocate/-allocated``."""
    pods = pod_keys(pod_word)
    return {
        "to_allocate_key": pods["to_allocate_key"],
        "allocated_key": pods["allocated_key"],
        "register_key": f"hami.io/node-{node_word}-register",
        "handshake": f"hami.io/node-handshake-{node_word}" if handshake else "",
    }


def pod_keys(pod_word: str) -> PodKeys:
    return {
        "to_allocate_key": f"hami.io/{pod_word}-devices-to-allocate",
        "allocated_key": f"hami.io/{pod_word}-devices-allocated",
    }


def filter_keys(domain: str, type_word: str = "", uuid_word: str = "gpuuuid") -> FilterKeys:
    """The pod's card filters ``<domain>/use-<type_word>``, ``nouse-<type_word>`` (none when
    ``type_word`` is empty) and ``<domain>/use-<uuid_word>``, ``nouse-<uuid_word>``."""
    out: FilterKeys = {
        "use_uuid_key": f"{domain}/use-{uuid_word}",
        "nouse_uuid_key": f"{domain}/nouse-{uuid_word}",
    }
    if type_word:
        out["use_type_key"] = f"{domain}/use-{type_word}"
        out["nouse_type_key"] = f"{domain}/nouse-{type_word}"
    return out


def card_fields(d: DeviceInfo, vendor: str) -> dict[str, Any]:
    """The :class:`Card` keyword arguments for a registered device (mode defaults to hami-core)."""
    return {
        "uuid": d.id,
        "vendor": vendor,
        "type": d.type,
        "count": d.count,
        "totalmem": d.devmem,
        "totalcores": d.devcore,
        "index": d.index,
        "numa": d.numa,
        "mode": d.mode or "hami-core",
        "health": d.health,
    }


def usable_devices(
    devices: Sequence[DeviceInfo], *, needs_memory: bool
) -> tuple[list[DeviceInfo], tuple[str, ...]]:
    """The registered cards that can be scheduled onto, and why each other one is left out
    (``card 'GPU-x': field 'devmem' ...``). With ``needs_memory`` a card registered with 0 MiB
    is left out too (unless it is MIG, whose memory comes from its profiles): it can hold no slice,
    and scheduling onto it would hand out 0-MiB limits."""
    usable: list[DeviceInfo] = []
    rejected: list[str] = []
    for d in devices:
        problem = card_problem(d)
        if problem is None and needs_memory and d.devmem == 0 and d.mode != MODE_MIG:
            problem = "field 'devmem' is 0 MiB"
        if problem is None:
            usable.append(d)
        else:
            rejected.append(f"card {d.id!r}: {problem}")
    return usable, tuple(rejected)


def card_index(uuid: str) -> int:
    """The index of a capacity-derived card from its id ``<node>-<word>-<i>``."""
    return int(uuid.rsplit("-", 1)[-1])


def plugin_gone(node: Mapping[str, Any], count_name: str) -> bool:
    """kubelet lists the count resource with none allocatable: the vendor's device plugin is gone
    (uninstalled, crashed, restarting) and its register annotation is stale."""
    raw = bodies.allocatable(node).get(count_name)
    return raw is not None and str(raw).strip() == "0"


class SpecBackend:
    """A backend whose every required member comes from a :class:`VendorSpec`.

    Requests: the count resource (a container without it asks for none; memory or cores without it
    are refused), memory times ``memory_factor`` (none given: the whole card's memory), cores in
    percent of a card (none given: ``default_cores``). Cards: the register annotation, HAMi's JSON
    or legacy colon form; when kubelet lists the count resource with nothing allocatable the
    vendor's device plugin is gone and the node has no cards of this vendor. Decision: HAMi's pod
    device encoding under both the to-allocate and the allocated key.
    """

    #: the vendor's config section model (built with its defaults when no config is given)
    config_type: ClassVar[type[Any]]
    spec: VendorSpec

    def __init__(self, config: Any = None) -> None:
        self.config = config if config is not None else self.config_type()
        self.spec = self.make_spec(self.config)

    def make_spec(self, config: Any) -> VendorSpec:
        """The vendor's names, from its config section."""
        raise NotImplementedError

    # --- identity ----------------------------------------------------------------------------
    @property
    def vendor(self) -> str:
        return self.spec.vendor

    @property
    def resource_names(self) -> tuple[str, ...]:
        s = self.spec
        return tuple(n for n in (s.count_name, s.memory_name, s.core_name) if n)

    @property
    def memory_resource(self) -> str:
        return self.spec.memory_name or self.spec.count_name

    @property
    def quota_names(self) -> QuotaNames:
        s = self.spec
        return QuotaNames(s.memory_name, s.core_name, s.memory_factor)

    @property
    def allocated_key(self) -> str:
        return self.spec.allocated_key

    @property
    def to_allocate_key(self) -> str:
        return self.spec.to_allocate_key

    @property
    def encoding_keys(self) -> tuple[str, ...]:
        """The pod annotations that get HAMi's pod device encoding of the decision."""
        s = self.spec
        if not s.write_to_allocate:
            return (s.allocated_key,)
        return tuple(dict.fromkeys((s.to_allocate_key, s.allocated_key)))

    @property
    def decision_keys(self) -> tuple[str, ...]:
        return self.encoding_keys

    @property
    def lock_key(self) -> str | None:
        return self.spec.lock

    @property
    def handshake_key(self) -> str | None:
        """The node handshake annotation (``Requesting_<time>`` / ``Reported <time>``), if any."""
        return self.spec.handshake or None

    # --- requests ----------------------------------------------------------------------------
    def parse_container(self, container: Mapping[str, Any]) -> DeviceRequest | None:
        s = self.spec
        cname = str(container.get("name", "?"))
        count = int_resource(container, cname, s.count_name)
        mem = self.container_memory(container, cname)
        cores = int_resource(container, cname, s.core_name)
        if count is None:
            given = [n for n, v in ((s.memory_name, mem), (s.core_name, cores)) if v is not None]
            if given:
                raise RequestError(
                    container=cname,
                    resource=s.count_name,
                    reason=f"missing: {', '.join(given)} given without it",
                )
            return None
        if count == 0:
            return None
        return self.request(cname, count, mem, cores)

    def container_memory(self, container: Mapping[str, Any], cname: str) -> int | None:
        """The container's memory quantity, in the unit :meth:`request` takes (None: not given)."""
        return int_resource(container, cname, self.spec.memory_name)

    def request(self, cname: str, count: int, mem: int | None, cores: int | None) -> DeviceRequest:
        """The request for ``count`` cards with the given memory (in the vendor's unit) and cores."""
        s = self.spec
        if cores is not None and cores > 100:
            raise RequestError(
                container=cname, resource=s.core_name, reason=f"{cores} is more than 100 percent of a card"
            )
        mem_mib = (mem or 0) * s.memory_factor
        if mem_mib > INT32_MAX:
            raise RequestError(container=cname, resource=s.memory_name, reason=f"{mem} is too large")
        return DeviceRequest(
            vendor=s.vendor,
            count=count,
            mem=mem_mib,
            mem_percentage=None if mem_mib else 100,
            cores=s.default_cores if cores is None else cores,
        )

    # --- inventory ---------------------------------------------------------------------------
    def node_cards(self, node: Mapping[str, Any]) -> NodeCards | None:
        s = self.spec
        value = node_annotations(node).get(s.register_key) if s.register_key else None
        if not value or plugin_gone(node, s.count_name):
            return None
        devices, rejected = usable_devices(decode_node_devices(value), needs_memory=bool(s.memory_name))
        cards = tuple(Card(**card_fields(d, s.vendor)) for d in devices)
        return NodeCards(cards=cards, rejected=rejected) if cards or rejected else None

    def encode_register(self, devices: Sequence[DeviceInfo], custom: Sequence[Mapping[str, Any]] = ()) -> str:
        """The register annotation this vendor's device plugin writes for ``devices`` (HAMi's JSON, or
        the legacy colon form); ``custom[i]`` is card i's ``custominfo``, which only vendors whose
        registration carries one accept (ProtocolError otherwise)."""
        if any(custom):
            raise ProtocolError(f"custominfo: {self.vendor}'s register annotation carries none")
        if self.spec.legacy_register:
            return encode_node_devices_legacy(devices)
        return encode_node_devices(devices)

    def capacity_cards(
        self,
        node: Mapping[str, Any],
        n: int,
        *,
        type: str,
        count: int,
        mem: int,
        cores: int,
        id_word: str = "",
        payload: CardPayload | None = None,
    ) -> NodeCards | None:
        """``n`` cards derived from the node's capacity: ``<node>-<id_word or type>-<i>`` (HAMi's ids)."""
        if n <= 0:
            return None
        name = str(bodies.name(node))
        word = id_word or type
        return NodeCards(
            cards=tuple(
                Card(
                    uuid=f"{name}-{word}-{i}",
                    vendor=self.spec.vendor,
                    type=type,
                    count=count,
                    totalmem=mem,
                    totalcores=cores,
                    index=i,
                    payload=payload,
                )
                for i in range(n)
            )
        )

    def selector(self, annotations: Mapping[str, str]) -> CardSelector:
        s = self.spec

        def get(key: str, lower: bool = False) -> tuple[str, ...]:
            return split_list(annotations.get(key), lower=lower) if key else ()

        return CardSelector(
            use_types=get(s.use_type_key, lower=True),
            nouse_types=get(s.nouse_type_key, lower=True),
            use_uuids=frozenset(get(s.use_uuid_key)),
            nouse_uuids=frozenset(get(s.nouse_uuid_key)),
        )

    # --- decision ----------------------------------------------------------------------------
    def decision_annotations(self, containers: Sequence[Sequence[Placement]]) -> dict[str, str]:
        encoded = encode_pod_devices([[p.device for p in c] for c in containers])
        return dict.fromkeys(self.encoding_keys, encoded)

    def decode_allocation(self, annotations: Mapping[str, str]) -> list[tuple[Placement, ...]] | None:
        value = annotations.get(self.spec.allocated_key)
        if not value:
            return None
        return [tuple(Placement(device=d) for d in c) for c in decode_pod_devices(value)]


class WholeCards:
    """Sizing hook for vendors whose cards are exclusive: a card in use is refused
    (``ExclusiveDeviceAllocateConflict``) and a placement takes the card's whole memory and cores."""

    def fits(self, card: Card, request: DeviceRequest) -> str | None:
        return EXCLUSIVE_CONFLICT if card.used > 0 else None

    def size(self, card: Card, request: DeviceRequest, container_index: int, device_index: int) -> Placement:
        return Placement(
            device=ContainerDevice(
                uuid=card.uuid, type=request.vendor, usedmem=card.totalmem, usedcores=card.totalcores
            )
        )


class WholeDeviceBackend(WholeCards, SpecBackend):
    """A vendor that hands out whole devices by count, registered the HAMi way: its node word
    (``hami.io/node-<node_word>-register`` and handshake), its pod word (the decision keys) and
    its filter domain (``<domain>/use-<type_word>``, ``<domain>/use-gpuuuid``)."""

    vendor_word: ClassVar[str]
    node_word: ClassVar[str]
    domain: ClassVar[str]
    type_word: ClassVar[str]

    def make_spec(self, config: Any) -> VendorSpec:
        return VendorSpec(
            vendor=self.vendor_word,
            **resource_fields(config),
            **hami_keys(self.node_word, self.vendor_word),
            **filter_keys(self.domain, self.type_word),
        )


class ContainerAdmission:
    """Admission hook defaults for vendors that only edit containers: no pod-level edits, and the
    in-container core limit is never switched off. Subclasses implement ``admit_container``."""

    def admit_pod(self, spec: Mapping[str, Any], used: bool) -> list[dict[str, Any]]:
        return []

    def core_limit_off(self) -> bool:
        return False


class NodeFacts:
    """Base of an immutable card payload: facts about the node that ride on each of its cards (an
    instance type, topology tables). Trial copies share it; placements leave it alone."""

    __slots__ = ()

    def copy(self) -> Self:
        return self

    def add(self, placement_payload: Any) -> None:
        pass

    def remove(self, placement_payload: Any) -> None:
        pass
