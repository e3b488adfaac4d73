"""Metax sGPU (HAMi CommonWord ``Metax-SGPU``, ``pkg/device/metax/sdevice.go``): shared slices of
Metax cards, ``metax-tech.com/sgpu`` (count), ``vcore`` (percent, default 100: a whole card) and
``vmemory`` (a bare number is GiB, a number with a unit bytes; none: the whole card's memory).

* Inventory: ``metax-tech.com/node-gpu-devices``, the JSON Metax's device plugin writes
  (:mod:`hami.devices.metax_sgpu_wire`); each card keeps its QoS policy and MetaLink zone.
* Pod annotations (:mod:`hami.devices.metax_sgpu_rules`): ``metax-tech.com/sgpu-qos-policy``
  (``best-effort``, the webhook's default, ``fixed-share``, ``burst-share``) must match the
  policy a shared card is in; ``sgpu-app-class`` (``online``/``offline``, one card per container)
  keeps such pods among themselves, offline pods off cards with online pods, and lets online pods
  take no cores; ``sgpu-topology-aware`` (or ``sgpuTopologyAware`` in the config) scores exclusive
  multi-card requests by MetaLink zone. ``use-gpuuuid``/``nouse-gpuuuid`` filter cards.
* Decision: HAMi's pod device encoding under ``hami.io/metax-sgpu-devices-to-allocate`` and
  ``-allocated``, Metax's JSON under ``metax-tech.com/gpu-devices-allocated`` and the Unix-ns
  ``metax-tech.com/predicate-time`` (the decision time, from the core: ``PlacedAnnotations``).
* Node lock ``hami.io/mutex.lock``. Node score: HAMi's "policy-neutral" term, the same preference
  under binpack and spread (±10000 times the online or MetaLink score of the cards the pod would take).

Differs from HAMi: the shared gates (health, cordon, UUID filters, slots, mutex) come before the
app-class and QoS checks, so a card failing several is counted under another reason; the node score is computed from the cards each container would take on
the node as it is, before the fit (HAMi scores the fit's result; they differ only when a pod's
containers compete for the same cards or a UUID filter or cordon excludes the preferred ones).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import replace
from typing import TYPE_CHECKING, Any

from hami.devices.base import Card, DeviceRequest, NodeCards, Placement, RequestError
from hami.devices.common import (
    SpecBackend,
    VendorSpec,
    card_fields,
    filter_keys,
    int_resource,
    node_annotations,
    plugin_gone,
    pod_keys,
)
from hami.devices.hooks import CARD_INSUFFICIENT_MEMORY, AdmissionOutcome, default_fits
from hami.devices.metax_config import MetaxConfig
from hami.devices.metax_sgpu_rules import (
    CARD_APP_CLASS_MISMATCH,
    CARD_QOS_POLICY_MISMATCH,
    CARD_UNHEALTHY,
    SGPUAsk,
    SGPUCardState,
    app_class_fits,
    exclusive_score,
    hold_for,
    online_score,
    prioritize_exclusive,
    prioritize_online,
    qos_fits,
)
from hami.devices.metax_sgpu_wire import (
    SGPUDevice,
    decode_sgpu_devices,
    encode_sgpu_allocation,
    encode_sgpu_devices,
    vmemory_mib,
)
from hami.protocol import keys
from hami.protocol.errors import ProtocolError
from hami.protocol.node import DeviceInfo, card_problem
from hami.protocol.pod import ContainerDevice, decode_pod_devices

if TYPE_CHECKING:
    from hami.scheduling.policy import CardPolicy

VENDOR = "Metax-SGPU"
#: a bare ``vmemory`` is GiB
MEMORY_FACTOR = 1024
QOS_POLICIES = (keys.METAX_QOS_BEST_EFFORT, keys.METAX_QOS_FIXED_SHARE, keys.METAX_QOS_BURST_SHARE)
APP_CLASSES = (keys.METAX_APP_ONLINE, keys.METAX_APP_OFFLINE)
#: HAMi's weight of the policy-neutral score (negated under spread, so both prefer a higher score)
NEUTRAL_WEIGHT = 10000
_TRUE = frozenset({"1", "t", "T", "TRUE", "true", "True"})
_FALSE = frozenset({"0", "f", "F", "FALSE", "false", "False"})


def _go_bool(value: str | None) -> bool | None:
    """Go's ``strconv.ParseBool``; None when ``value`` is absent or not a boolean."""
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    return None


def annotation_problems(annotations: Mapping[str, Any], counts: Sequence[int]) -> list[tuple[str, str]]:
    """HAMi MutateAdmission's checks of a pod asking sGPUs ``counts`` (per container):
    ``(field, reason)`` for each invalid annotation."""
    app_class = annotations.get(keys.METAX_SGPU_APP_CLASS)
    qos = annotations.get(keys.METAX_SGPU_QOS_POLICY)
    app_reason: str | None = None
    if app_class is not None and app_class not in APP_CLASSES:
        app_reason = f"{app_class!r} must be one of {', '.join(APP_CLASSES)}"
    elif app_class is not None and any(n != 1 for n in counts):
        app_reason = "an online/offline pod must ask for one sGPU per container"
    qos_reason: str | None = None
    if app_class != keys.METAX_APP_ONLINE and qos is not None and qos not in QOS_POLICIES:
        qos_reason = f"{qos!r} must be one of {', '.join(QOS_POLICIES)}"
    found = ((keys.METAX_SGPU_APP_CLASS, app_reason), (keys.METAX_SGPU_QOS_POLICY, qos_reason))
    return [(f"metadata.annotations[{key}]", reason) for key, reason in found if reason is not None]


class MetaxSGPUBackend(SpecBackend):
    """The Metax sGPU backend (one per ``metax:`` section, beside :class:`~hami.devices.metax.MetaxGPUBackend`)."""

    config_type = MetaxConfig
    #: HAMi's Metax reason for an unhealthy card (the HealthReason hook)
    unhealthy_reason = CARD_UNHEALTHY

    def make_spec(self, config: MetaxConfig) -> VendorSpec:
        return VendorSpec(
            vendor=VENDOR,
            count_name=config.resource_vcount_name,
            memory_name=config.resource_vmemory_name,
            core_name=config.resource_vcore_name,
            memory_factor=MEMORY_FACTOR,
            default_cores=100,
            register_key=keys.METAX_SGPU_DEVICES,
            **pod_keys("metax-sgpu"),
            **filter_keys("metax-tech.com"),
        )

    @property
    def decision_keys(self) -> tuple[str, ...]:
        return (*self.encoding_keys, keys.METAX_SGPU_ALLOCATED, keys.METAX_PREDICATE_TIME)

    # --- requests ----------------------------------------------------------------------------
    def request(self, cname: str, count: int, mem: int | None, cores: int | None) -> DeviceRequest:
        """``mem`` in MiB (:meth:`container_memory`): 0 or None is the whole card."""
        request = super().request(cname, count, None, cores)
        return replace(request, mem=mem, mem_percentage=None) if mem else request

    def container_memory(self, container: Mapping[str, Any], cname: str) -> int | None:
        """``vmemory`` in MiB, by HAMi's rule (:func:`~hami.devices.metax_sgpu_wire.vmemory_mib`)."""
        name = self.spec.memory_name
        return int_resource(container, cname, name, lambda raw: vmemory_mib(raw, field=name))

    # --- hook: PodScoped ---------------------------------------------------------------------
    def pod_request(
        self, request: DeviceRequest, annotations: Mapping[str, str], container: str
    ) -> DeviceRequest:
        problems = annotation_problems(annotations, [request.count])
        if problems:
            field, reason = problems[0]
            raise RequestError(container=container, resource=field, reason=reason)
        aware = _go_bool(annotations.get(keys.METAX_SGPU_TOPOLOGY_AWARE))
        ask = SGPUAsk(
            app_class=annotations.get(keys.METAX_SGPU_APP_CLASS, ""),
            qos=annotations.get(keys.METAX_SGPU_QOS_POLICY, ""),
            topology_aware=self.config.sgpu_topology_aware if aware is None else aware,
        )
        return replace(request, payload=ask)

    # --- hook: PodAdmission ------------------------------------------------------------------
    def admit_annotations(
        self, annotations: Mapping[str, str], requests: Sequence[DeviceRequest], out: AdmissionOutcome
    ) -> dict[str, str]:
        problems = annotation_problems(annotations, [r.count for r in requests])
        out.invalid += [f"pod: {field}: {reason}" for field, reason in problems]
        app_class = annotations.get(keys.METAX_SGPU_APP_CLASS)
        if problems or app_class == keys.METAX_APP_ONLINE or keys.METAX_SGPU_QOS_POLICY in annotations:
            return {}
        return {keys.METAX_SGPU_QOS_POLICY: keys.METAX_QOS_BEST_EFFORT}

    # --- inventory ---------------------------------------------------------------------------
    def node_cards(self, node: Mapping[str, Any]) -> NodeCards | None:
        value = node_annotations(node).get(keys.METAX_SGPU_DEVICES)
        if not value or plugin_gone(node, self.spec.count_name):
            return None
        cards: list[Card] = []
        rejected: list[str] = []
        for index, d in enumerate(decode_sgpu_devices(value)):
            info = self._device_info(d, index)
            problem = card_problem(info)
            if problem is None and d.total_vram == 0:
                problem = "field 'totalVRam' is 0 MiB"
            if problem is not None:
                rejected.append(f"card {d.uuid!r}: {problem}")
                continue
            state = SGPUCardState(reported_qos=d.qos_policy, link_zone=d.link_zone, model=d.model)
            cards.append(Card(**card_fields(info, VENDOR), payload=state))
        return NodeCards(cards=tuple(cards), rejected=tuple(rejected)) if cards or rejected else None

    @staticmethod
    def _device_info(d: SGPUDevice, index: int) -> DeviceInfo:
        return DeviceInfo(
            id=d.uuid,
            count=d.total_dev_count,
            devmem=d.total_vram,
            devcore=d.total_compute,
            type=VENDOR,
            index=index,
            numa=d.numa,
            mode=keys.MODE_HAMI_CORE,
            health=d.healthy,
        )

    def encode_register(self, devices: Sequence[DeviceInfo], custom: Sequence[Mapping[str, Any]] = ()) -> str:
        """The ``node-gpu-devices`` value Metax's device plugin writes for these cards; card i's
        ``custom[i]`` may give its ``qosPolicy``, ``linkZone`` and ``model`` (ProtocolError naming
        the field otherwise)."""
        extras = list(custom) or [{}] * len(devices)
        return encode_sgpu_devices(
            SGPUDevice(
                uuid=d.id,
                total_dev_count=d.count,
                total_compute=d.devcore,
                total_vram=d.devmem,
                numa=d.numa,
                healthy=d.health,
                **_register_extras(x, f"custominfo of card {d.id!r}"),
            )
            for d, x in zip(devices, extras, strict=True)
        )

    # --- hooks: CardRejection, Sizing, RequestChoice -----------------------------------------
    def reject_card(self, card: Card, request: DeviceRequest) -> str | None:
        return _rule_refusal(card, request, _ask(request))

    def fits(self, card: Card, request: DeviceRequest) -> str | None:
        return _capacity_refusal(card, request, _ask(request))

    def size(self, card: Card, request: DeviceRequest, container_index: int, device_index: int) -> Placement:
        ask = _ask(request)
        cores = 0 if ask.online else request.cores
        return Placement(
            device=ContainerDevice(
                uuid=card.uuid, type=VENDOR, usedmem=request.mem_for(card.totalmem), usedcores=cores
            ),
            payload=hold_for(ask, cores),
        )

    def choose_for_request(
        self,
        ordered: list[Card],
        request: DeviceRequest,
        policy: CardPolicy,
        pair_scores: Mapping[str, Mapping[str, int]],
    ) -> list[Card]:
        return _pick(ordered, request)

    # --- hooks: PolicyNodeScore, ScoreScope ---------------------------------------------------
    def scores(self, requests: Sequence[DeviceRequest]) -> bool:
        """Only online pods and topology-aware exclusive requests get a node score term."""
        return any(_ask(r).online for r in requests) or bool(_topology_aware(requests))

    def policy_node_score(
        self, cards: Sequence[Card], requests: Sequence[DeviceRequest], node_policy: str
    ) -> float:
        weight = -NEUTRAL_WEIGHT if node_policy == "spread" else NEUTRAL_WEIGHT
        if any(_ask(r).online for r in requests):
            return float(weight * online_score(self._would_take(cards, requests)))
        exclusive = _topology_aware(requests)
        if exclusive:
            return float(weight * exclusive_score(self._would_take(cards, exclusive), cards))
        return 0.0

    def _would_take(self, cards: Sequence[Card], requests: Sequence[DeviceRequest]) -> list[Card]:
        """The cards each request would take on the node as it is (for the node score)."""
        taken: list[Card] = []
        for r in requests:
            ask = _ask(r)
            eligible = [
                c
                for c in cards
                if c.health
                and c.used < c.count
                and _rule_refusal(c, r, ask) is None
                and _capacity_refusal(c, r, ask) is None
            ]
            taken += _pick(eligible, r)[: r.count]
        return taken

    # --- decision ----------------------------------------------------------------------------
    def pod_decision_annotations(
        self, pod: Mapping[str, Any], containers: Sequence[Sequence[Placement]]
    ) -> dict[str, str]:
        out = self.decision_annotations(containers)
        out[keys.METAX_SGPU_ALLOCATED] = encode_sgpu_allocation(
            [[(p.device.uuid, p.device.usedcores, p.device.usedmem) for p in c] for c in containers]
        )
        return out

    def placed_annotations(
        self, pod: Mapping[str, Any], containers: Sequence[Sequence[Placement]], node: str, now_ns: int
    ) -> dict[str, str]:
        """HAMi writes ``predicate-time`` (Unix ns) with every Metax sGPU decision."""
        return {keys.METAX_PREDICATE_TIME: str(now_ns)}

    def decode_allocation(self, annotations: Mapping[str, str]) -> list[tuple[Placement, ...]] | None:
        value = annotations.get(self.spec.allocated_key)
        if not value:
            return None
        ask = SGPUAsk(
            app_class=annotations.get(keys.METAX_SGPU_APP_CLASS, ""),
            qos=annotations.get(keys.METAX_SGPU_QOS_POLICY, ""),
        )
        return [
            tuple(Placement(device=d, payload=hold_for(ask, d.usedcores)) for d in c)
            for c in decode_pod_devices(value)
        ]


#: the Metax-only card fields a registration may set (name -> SGPUDevice field, type)
_EXTRAS: dict[str, tuple[str, type]] = {
    "qosPolicy": ("qos_policy", str),
    "linkZone": ("link_zone", int),
    "model": ("model", str),
}


def _register_extras(custom: Mapping[str, Any], where: str) -> dict[str, Any]:
    """``qosPolicy``/``linkZone``/``model`` from a card's custominfo as SGPUDevice fields; raises
    ProtocolError naming an unknown or mistyped field."""
    out: dict[str, Any] = {}
    for name, value in custom.items():
        if name not in _EXTRAS:
            raise ProtocolError(f"{where}: unknown field {name!r} (one of {', '.join(_EXTRAS)})")
        field, kind = _EXTRAS[name]
        if not isinstance(value, kind) or isinstance(value, bool):
            raise ProtocolError(f"{where}: field {name!r} must be {kind.__name__}, got {value!r}")
        out[field] = value
    return out


def _rule_refusal(card: Card, request: DeviceRequest, ask: SGPUAsk) -> str | None:
    """HAMi's app-class and QoS checks (the CardRejection hook)."""
    if not app_class_fits(card, ask.app_class):
        return CARD_APP_CLASS_MISMATCH
    if not ask.online and not qos_fits(card, ask, request.cores):
        return CARD_QOS_POLICY_MISMATCH
    return None


def _capacity_refusal(card: Card, request: DeviceRequest, ask: SGPUAsk) -> str | None:
    """HAMi's capacity checks (the Sizing hook): online pods take no cores, so only their memory
    is checked."""
    if ask.online:
        short = card.totalmem - card.usedmem < request.mem_for(card.totalmem)
        return CARD_INSUFFICIENT_MEMORY if short else None
    return default_fits(card, request)


def _pick(ordered: list[Card], request: DeviceRequest) -> list[Card]:
    """HAMi's pick among eligible cards, best first: online pods by co-location, exclusive
    requests of pods with no app class by MetaLink zone, others the first ones."""
    ask = _ask(request)
    if len(ordered) <= request.count:
        return ordered
    if ask.online:
        return prioritize_online(ordered, request.count)
    if not ask.app_class and request.cores == 100:
        return prioritize_exclusive(ordered, request.count)
    return ordered[: request.count]


def _topology_aware(requests: Sequence[DeviceRequest]) -> list[DeviceRequest]:
    """The exclusive requests (vcore 100) when the pod asked for MetaLink scoring (HAMi reads the
    flag from the first exclusive device), else none."""
    exclusive = [r for r in requests if r.cores == 100]
    return exclusive if exclusive and _ask(exclusive[0]).topology_aware else []


def _ask(request: DeviceRequest) -> SGPUAsk:
    """The request's pod context (a request parsed without its pod: no annotations)."""
    return request.payload if isinstance(request.payload, SGPUAsk) else SGPUAsk()


__all__ = ["MEMORY_FACTOR", "VENDOR", "MetaxSGPUBackend", "annotation_problems"]
