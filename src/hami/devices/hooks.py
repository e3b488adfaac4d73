"""Optional backend hooks, kube-scheduler style: small protocols, each with a shared default.

A backend implements only the hooks its vendor needs; :func:`resolve_hooks` checks each protocol
with ``isinstance`` once, when the backend is registered, and stores plain callables (or None for
"use the shared default") in a :class:`VendorHooks`. The scheduling core reads that record and never
checks a type or names a vendor on its hot path.

=========================  ========================================  ===================================
hook                       what the backend decides                  shared default
=========================  ========================================  ===================================
:class:`CardRejection`     an extra reason a card is refused         none
:class:`HealthReason`      the reason an unhealthy card is refused   ``CardNotHealth``
                           with (Metax sGPU: ``CardUnhealthy``)
:class:`ModeScoped`        card modes the card-level hooks apply to  every card
:class:`Sizing`            whether a request fits a card's free      HAMi's memory/core checks; the
                           capacity, and what one slice takes        request's MiB and cores, no payload
:class:`MultiSlice`        how many slices of one container's        one (distinct cards)
                           request one card may hold
:class:`CardChoice`        which of the ordered eligible cards a     NVLink topology pick when the
                           multi-card request takes                  policy asks for it, else in order
:class:`RequestChoice`     the same, knowing the request             ``CardChoice``'s
:class:`CardUsage`         per-card usage add/remove                 counters, then the card payload
                                                                     absorbs/releases placement payloads
:class:`NodeScore`         a term added to the node's score          none
:class:`PolicyNodeScore`   the same, knowing the node policy         none
:class:`ScoreScope`        whether the node score term applies to    always (when a score hook exists)
                           this pod at all
:class:`Admission`         webhook defaulting/validation             none
:class:`PodAdmission`      webhook validation of the pod's           none
                           annotations, and annotations to default
:class:`PodScoped`         the request completed from the pod's      the container's request as parsed
                           annotations (QoS policy, app class)
:class:`PodAnnotations`    decision annotations that see the pod     ``decision_annotations``
:class:`PlacedAnnotations` decision annotations that see the node    none
                           and the time of the decision
:class:`NodeLockFormat`    the node-lock codec                       HAMi's value under ``lock_key``
:class:`NodeHandshake`     the node handshake annotation             none
:class:`OneCardPod`        every container of a pod on one card      containers choose freely
:class:`QuotaScoped`       the memory/cores resources a namespace's  none (no quota for the vendor)
                           ResourceQuota limits (``limits.<name>``)
=========================  ========================================  ===================================

Guarantees: resolving is pure and done once per backend; every default is a plain function here or
in :mod:`hami.scheduling.fit`, usable by a backend that wraps it.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, NamedTuple, Protocol, runtime_checkable

from hami.devices.base import Card, DeviceBackend, DeviceRequest, Placement
from hami.protocol.nodelock import HAMI_NODE_LOCK, NodeLockCodec
from hami.protocol.pod import ContainerDevice

if TYPE_CHECKING:
    from hami.scheduling.policy import CardPolicy


class CardUse(NamedTuple):
    """What one pod holds on one card: collapsed slots, MiB and cores, plus every placement payload."""

    slots: int
    mem: int
    cores: int
    payloads: tuple[Any, ...] = ()


# --------------------------------------------------------------------------------------- protocols


class QuotaNames(NamedTuple):
    """The resources a namespace's ResourceQuota limits for a vendor (HAMi: ``limits.<name>``).

    Empty names: that dimension has no quota. ``memory_factor`` turns the quota's memory figure into
    MiB (the unit cards and placements count in), exactly as it turns a container's request.
    """

    memory: str
    cores: str
    memory_factor: int = 1


@runtime_checkable
class QuotaScoped(Protocol):
    """The vendor's resources that namespace quota applies to (HAMi's ``GetResourceNames``)."""

    @property
    def quota_names(self) -> QuotaNames: ...


@runtime_checkable
class CardRejection(Protocol):
    """An extra reason to refuse a card, checked after the shared gates (health, cordon, selector,
    slots, mutex) and before the capacity check. Return a reason name, or None to go on."""

    def reject_card(self, card: Card, request: DeviceRequest) -> str | None: ...


@runtime_checkable
class HealthReason(Protocol):
    """The reason name an unhealthy card is refused with, when the vendor's is not the shared
    ``CardNotHealth`` (HAMi's Metax sGPU says ``CardUnhealthy``)."""

    @property
    def unhealthy_reason(self) -> str: ...


@runtime_checkable
class Sizing(Protocol):
    """What a request takes on a card. ``fits`` replaces the shared memory/core checks (call
    :func:`hami.scheduling.fit.default_fits` for cards the vendor treats normally); ``size`` is
    called only on a card ``fits`` accepted and returns one slice's placement (wire record + payload)
    without changing the card (the usage hook does that)."""

    def fits(self, card: Card, request: DeviceRequest) -> str | None: ...

    def size(
        self, card: Card, request: DeviceRequest, container_index: int, device_index: int
    ) -> Placement: ...


@runtime_checkable
class ModeScoped(Protocol):
    """The card modes (``Card.mode``) the card-level hooks (rejection, sizing, multi-slice) apply
    to; cards in other modes take the shared defaults without a call (NVIDIA: only ``mig``)."""

    @property
    def hooked_modes(self) -> frozenset[str]: ...


@runtime_checkable
class MultiSlice(Protocol):
    """How many slices of one container's request ``card`` may hold, or None for "one" (the
    default: a multi-card request takes distinct cards)."""

    def card_slices(self, card: Card) -> int | None: ...


@runtime_checkable
class CardChoice(Protocol):
    """Which of the eligible cards (best first) a request of ``need`` cards takes; may return fewer
    cards than ``ordered`` holds, in the order they are to be used."""

    def choose_cards(
        self, ordered: list[Card], need: int, policy: CardPolicy, pair_scores: Mapping[str, Mapping[str, int]]
    ) -> list[Card]: ...


@runtime_checkable
class RequestChoice(Protocol):
    """:class:`CardChoice` for vendors whose pick depends on the request (its cores, its
    payload): which of the eligible cards (best first) ``request`` takes. Wins over CardChoice."""

    def choose_for_request(
        self,
        ordered: list[Card],
        request: DeviceRequest,
        policy: CardPolicy,
        pair_scores: Mapping[str, Mapping[str, int]],
    ) -> list[Card]: ...


@runtime_checkable
class PodScoped(Protocol):
    """A vendor whose card-level rules read pod annotations: the container's parsed request is
    completed from them (into its ``payload``), once per container that asks. Raises RequestError
    naming ``container`` and the annotation when its value is invalid."""

    def pod_request(
        self, request: DeviceRequest, annotations: Mapping[str, str], container: str
    ) -> DeviceRequest: ...


@runtime_checkable
class CardUsage(Protocol):
    """Add (``sign`` 1) or remove (``sign`` -1) one pod's use of a card. The ledger keeps the
    init/app collapse rule and the node totals (from the card's change); this is the per-card part."""

    def apply_usage(self, card: Card, use: CardUse, sign: int) -> None: ...


@runtime_checkable
class NodeScore(Protocol):
    """A term added to a node's score (higher means fuller: binpack prefers it, spread avoids it)
    for a pod asking this vendor for ``requests``; called once per candidate node."""

    def node_score(self, cards: Sequence[Card], requests: Sequence[DeviceRequest]) -> float: ...


@runtime_checkable
class PolicyNodeScore(Protocol):
    """A node score term that depends on the pod's node policy (``binpack`` or ``spread``), for
    vendors whose node annotations give different figures per policy (Metax: losses vs scores).
    Same sign convention as :class:`NodeScore`; a backend implements one or the other."""

    def policy_node_score(
        self, cards: Sequence[Card], requests: Sequence[DeviceRequest], node_policy: str
    ) -> float: ...


@runtime_checkable
class ScoreScope(Protocol):
    """Whether the vendor's node score term (:class:`NodeScore`/:class:`PolicyNodeScore`) can be
    non-zero for a pod asking ``requests``; False skips the term on every node (Metax sGPU scores
    only online and topology-aware exclusive pods)."""

    def scores(self, requests: Sequence[DeviceRequest]) -> bool: ...


@runtime_checkable
class PodAnnotations(Protocol):
    """Decision annotations that see the pod (replaces ``decision_annotations`` when implemented)."""

    def pod_decision_annotations(
        self, pod: Mapping[str, Any], containers: Sequence[Sequence[Placement]]
    ) -> dict[str, str]: ...


@runtime_checkable
class PlacedAnnotations(Protocol):
    """Decision annotations that depend on where and when the pod was placed (HAMi's
    ``predicate-node`` / ``predicate-time`` family), merged after the decision annotations.

    ``node`` is the chosen node; ``now_ns`` the decision time in Unix nanoseconds (HAMi writes
    ``time.Now().UnixNano()`` at Filter). Every key written must be in ``decision_keys``.
    """

    def placed_annotations(
        self, pod: Mapping[str, Any], containers: Sequence[Sequence[Placement]], node: str, now_ns: int
    ) -> dict[str, str]: ...


@runtime_checkable
class NodeLockFormat(Protocol):
    """The backend's node-lock key and value format (when it is not HAMi's ``<time>,<ns>,<name>``)."""

    @property
    def node_lock(self) -> NodeLockCodec: ...


@runtime_checkable
class OneCardPod(Protocol):
    """HAMi's "whole pod on one device" rule (Mthreads, Metax GPUs): a card is refused
    (``CardNotFoundCustomFilterRule``, after the capacity checks) unless every card the pod's
    earlier containers took of this vendor is that card."""

    @property
    def one_card_per_pod(self) -> bool: ...


@runtime_checkable
class NodeHandshake(Protocol):
    """The node annotation the scheduler and the vendor's device plugin handshake on
    (``hami.io/node-handshake`` for NVIDIA; ``Requesting_<time>`` / ``Reported <time>``)."""

    @property
    def handshake_key(self) -> str: ...


@runtime_checkable
class Admission(Protocol):
    """The webhook's per-vendor part: defaulting (JSON-patch edits) and validation of one container.

    ``request`` is this vendor's parsed request for the container (None when it asks for none).
    Denials go into ``out.invalid`` (bad request, 400) or ``out.denials`` (policy, 403); edits are
    made through ``edit``. ``admit_pod`` runs once after every container when the pod asks this
    vendor for a device (``used``), to add pod-level edits (e.g. ``runtimeClassName``).
    """

    def admit_container(
        self, request: DeviceRequest | None, edit: ContainerEditor, out: AdmissionOutcome
    ) -> None: ...

    def admit_pod(self, spec: Mapping[str, Any], used: bool) -> list[dict[str, Any]]: ...

    def core_limit_off(self) -> bool:
        """The administrator switched the in-container core limit off for every pod of this vendor."""
        ...


@runtime_checkable
class PodAdmission(Protocol):
    """The webhook's pod-level part for a vendor the pod uses: validates the pod's annotations
    against the vendor's ``requests`` (one per container that asks; problems go into
    ``out.invalid`` naming the annotation) and returns the annotations to default (key -> value)."""

    def admit_annotations(
        self, annotations: Mapping[str, str], requests: Sequence[DeviceRequest], out: AdmissionOutcome
    ) -> dict[str, str]: ...


class ContainerEditor(Protocol):
    """One container as submitted (``container``, named ``name``) and JSON-patch edits to it
    (implemented by the webhook)."""

    @property
    def container(self) -> Mapping[str, Any]: ...

    @property
    def name(self) -> str: ...

    def set_limit(self, name: str, value: str) -> None: ...

    def set_env(self, name: str, value: str) -> bool: ...

    def env_value(self, name: str) -> str | None: ...

    def has_resource(self, name: str) -> bool: ...

    def remove_resource(self, name: str) -> None:
        """Drop ``name`` from the container's limits and requests (so a later ``set_limit`` also
        sets the request: kube defaults an absent request to the limit)."""
        ...


@dataclass(slots=True)
class AdmissionOutcome:
    """What admission hooks report for one pod (the webhook collects it), and the pod's annotations
    as submitted (read-only; e.g. Ascend's ``huawei.com/vnpu-mode``)."""

    opted_out: bool
    invalid: list[str]
    denials: list[str]
    warnings: list[str]
    pod_annotations: Mapping[str, Any] = field(default_factory=dict)


# ----------------------------------------------------------------------------------------- defaults

CARD_NOT_HEALTHY = "CardNotHealth"
CARD_INSUFFICIENT_MEMORY = "CardInsufficientMemory"
CARD_INSUFFICIENT_CORE = "CardInsufficientCore"
CARD_COMPUTE_EXHAUSTED = "CardComputeUnitsExhausted"
EXCLUSIVE_CONFLICT = "ExclusiveDeviceAllocateConflict"


def default_fits(card: Card, request: DeviceRequest) -> str | None:
    """HAMi's capacity checks, in its order: free memory, free cores, exclusive use, compute left."""
    if card.totalmem - card.usedmem < request.mem_for(card.totalmem):
        return CARD_INSUFFICIENT_MEMORY
    if card.totalcores - card.usedcores < request.cores:
        return CARD_INSUFFICIENT_CORE
    if card.totalcores == 100 and request.cores == 100 and card.used > 0:
        return EXCLUSIVE_CONFLICT
    if card.usedcores >= card.totalcores and request.cores == 0:
        return CARD_COMPUTE_EXHAUSTED
    return None


def default_size(card: Card, request: DeviceRequest, _container_index: int, _device_index: int) -> Placement:
    """One slice takes the request's memory (MiB, or its percentage of the card) and cores."""
    return Placement(
        device=ContainerDevice(
            uuid=card.uuid,
            type=request.vendor,
            usedmem=request.mem_for(card.totalmem),
            usedcores=request.cores,
        )
    )


def default_apply_usage(card: Card, use: CardUse, sign: int) -> None:
    """Counters move by ``sign`` times the use; the card payload absorbs/releases placement payloads."""
    card.used += sign * use.slots
    card.usedmem += sign * use.mem
    card.usedcores += sign * use.cores
    if use.payloads and card.payload is not None:
        if sign > 0:
            for p in use.payloads:
                card.payload.add(p)
        else:
            for p in use.payloads:
                card.payload.remove(p)


def hami_decision_annotations(
    backend: DeviceBackend,
) -> Callable[[Mapping[str, Any], Sequence[Sequence[Placement]]], dict[str, str]]:
    def annotate(_pod: Mapping[str, Any], containers: Sequence[Sequence[Placement]]) -> dict[str, str]:
        return backend.decision_annotations(containers)

    return annotate


# ----------------------------------------------------------------------------------------- resolved


@dataclass(frozen=True, slots=True)
class VendorHooks:
    """One backend's hooks resolved to callables; None means "the shared default" (the fast path)."""

    #: the card-level hooks (reject, fits, size, slices) apply to cards in these modes (None: all)
    modes: frozenset[str] | None = None
    reject: Callable[[Card, DeviceRequest], str | None] | None = None
    unhealthy: str = CARD_NOT_HEALTHY
    fits: Callable[[Card, DeviceRequest], str | None] | None = None
    size: Callable[[Card, DeviceRequest, int, int], Placement] | None = None
    slices: Callable[[Card], int | None] | None = None
    choose: Callable[[list[Card], int, CardPolicy, Mapping[str, Mapping[str, int]]], list[Card]] | None = None
    choose_request: (
        Callable[[list[Card], DeviceRequest, CardPolicy, Mapping[str, Mapping[str, int]]], list[Card]] | None
    ) = None
    pod_request: Callable[[DeviceRequest, Mapping[str, str], str], DeviceRequest] | None = None
    pod_admission: PodAdmission | None = None
    usage: Callable[[Card, CardUse, int], None] = default_apply_usage
    score: Callable[[Sequence[Card], Sequence[DeviceRequest]], float] | None = None
    policy_score: Callable[[Sequence[Card], Sequence[DeviceRequest], str], float] | None = None
    score_scope: Callable[[Sequence[DeviceRequest]], bool] | None = None
    annotate: Callable[[Mapping[str, Any], Sequence[Sequence[Placement]]], dict[str, str]] | None = None
    placed: Callable[[Mapping[str, Any], Sequence[Sequence[Placement]], str, int], dict[str, str]] | None = (
        None
    )
    admission: Admission | None = None
    node_lock: NodeLockCodec | None = None
    handshake_key: str | None = None
    one_card: bool = False

    def on(self, card: Card) -> bool:
        """Do the card-level hooks apply to ``card``?"""
        return self.modes is None or card.mode in self.modes

    def card_slices(self, card: Card) -> int | None:
        """The multi-slice hook's answer for ``card`` (None: one slice, the default)."""
        if self.slices is None or (self.modes is not None and card.mode not in self.modes):
            return None
        return self.slices(card)


DEFAULT_HOOKS = VendorHooks()


def resolve_hooks(backend: DeviceBackend) -> VendorHooks:
    """Check every hook protocol once and keep what the backend implements."""
    b: Any = backend
    lock_key = backend.lock_key
    if isinstance(b, NodeLockFormat):
        node_lock: NodeLockCodec | None = b.node_lock
    elif lock_key is not None:
        node_lock = HAMI_NODE_LOCK.with_key(lock_key)
    else:
        node_lock = None
    return VendorHooks(
        modes=b.hooked_modes if isinstance(b, ModeScoped) else None,
        reject=b.reject_card if isinstance(b, CardRejection) else None,
        unhealthy=b.unhealthy_reason if isinstance(b, HealthReason) else CARD_NOT_HEALTHY,
        fits=b.fits if isinstance(b, Sizing) else None,
        size=b.size if isinstance(b, Sizing) else None,
        slices=b.card_slices if isinstance(b, MultiSlice) else None,
        choose=b.choose_cards if isinstance(b, CardChoice) else None,
        choose_request=b.choose_for_request if isinstance(b, RequestChoice) else None,
        pod_request=b.pod_request if isinstance(b, PodScoped) else None,
        pod_admission=b if isinstance(b, PodAdmission) else None,
        usage=b.apply_usage if isinstance(b, CardUsage) else default_apply_usage,
        score=b.node_score if isinstance(b, NodeScore) else None,
        policy_score=b.policy_node_score if isinstance(b, PolicyNodeScore) else None,
        score_scope=b.scores if isinstance(b, ScoreScope) else None,
        annotate=b.pod_decision_annotations
        if isinstance(b, PodAnnotations)
        else hami_decision_annotations(backend),
        placed=b.placed_annotations if isinstance(b, PlacedAnnotations) else None,
        admission=b if isinstance(b, Admission) else None,
        node_lock=node_lock,
        handshake_key=b.handshake_key if isinstance(b, NodeHandshake) else None,
        one_card=isinstance(b, OneCardPod) and b.one_card_per_pod,
    )
