"""The device source interface: what the device plugin needs to know about a node's GPUs.

A source lists physical cards, their pair topology, their MIG capability and profiles, streams
health events and creates/destroys MIG instances. Two implementations: `NvmlSource` (real
driver through nvidia-ml-py) and `FakeSource` (a YAML file, for tests and the sandbox).
Calls are synchronous and may block (NVML); the async server runs them in a worker thread.
"""

from __future__ import annotations

import abc
import enum
from collections.abc import AsyncIterator
from dataclasses import dataclass, field


class DeviceSourceError(RuntimeError):
    """A device source could not be read or could not perform an operation."""


class LinkType(enum.IntEnum):
    """PCIe relation of two GPUs, valued with HAMi's pair-score weights (`calculate_score.go`)."""

    CROSS_CPU = 10  # traverses the inter-socket link (SYS)
    SAME_CPU = 20  # same NUMA node / CPU (NODE)
    HOST_BRIDGE = 30  # same PCIe host bridge (PHB)
    MULTI_SWITCH = 40  # several PCIe switches, no host bridge (PXB)
    SINGLE_SWITCH = 50  # one PCIe switch (PIX)
    SAME_BOARD = 60  # same board (multi-GPU board)


#: Extra pair score per NVLink between two GPUs.
NVLINK_SCORE = 100

_LINK_ALIASES: dict[str, LinkType] = {
    "crosscpu": LinkType.CROSS_CPU,
    "sys": LinkType.CROSS_CPU,
    "samecpu": LinkType.SAME_CPU,
    "node": LinkType.SAME_CPU,
    "hostbridge": LinkType.HOST_BRIDGE,
    "phb": LinkType.HOST_BRIDGE,
    "multiswitch": LinkType.MULTI_SWITCH,
    "pxb": LinkType.MULTI_SWITCH,
    "singleswitch": LinkType.SINGLE_SWITCH,
    "pix": LinkType.SINGLE_SWITCH,
    "sameboard": LinkType.SAME_BOARD,
}


def parse_link_type(value: str) -> LinkType:
    """`SameBoard`, `same_board`, `PIX`, ... -> LinkType; ValueError names the accepted values."""
    key = value.replace("_", "").replace("-", "").lower()
    try:
        return _LINK_ALIASES[key]
    except KeyError:
        raise ValueError(
            f"unknown link type {value!r}; expected one of "
            "CrossCPU, SameCPU, HostBridge, MultiSwitch, SingleSwitch, SameBoard"
        ) from None


@dataclass(frozen=True)
class SourceCard:
    """One physical GPU as the source sees it (before the node config is applied)."""

    uuid: str
    index: int
    model: str  # driver name, e.g. "NVIDIA A100-SXM4-40GB"
    memory_mib: int
    numa: int = 0  # NUMA node; 0 when unknown (as HAMi reads /sys .../numa_node, -1 -> 0)
    healthy: bool = True
    mig_capable: bool = False
    mig_enabled: bool = False
    sm_count: int = 0


@dataclass(frozen=True)
class PairLink:
    """Connection between two GPUs (unordered)."""

    a: str
    b: str
    link: LinkType
    nvlinks: int = 0
    #: The two GPUs report different link data; HAMi scores such a pair 0.
    asymmetric: bool = False

    @property
    def score(self) -> int:
        return 0 if self.asymmetric else pair_score(self.link, self.nvlinks)


def pair_score(link: LinkType, nvlinks: int = 0) -> int:
    """HAMi pair score: PCIe link weight + 100 per NVLink."""
    return int(link) + NVLINK_SCORE * max(0, nvlinks)


@dataclass(frozen=True)
class MigPlacement:
    start: int
    size: int

    def overlaps(self, other: MigPlacement) -> bool:
        return self.start < other.start + other.size and other.start < self.start + self.size


@dataclass(frozen=True)
class SourceMigProfile:
    """A GPU-instance profile (`1g.10gb`, ...) with its legal placements."""

    name: str
    memory_mb: int
    core: int  # ceil(SM of the profile * 100 / SM of the card)
    slice_count: int
    placements: tuple[MigPlacement, ...] = ()
    instance_count: int = 0  # max instances of this profile on one card


@dataclass(frozen=True)
class MigInstance:
    """A GPU instance with its (single, full) compute instance."""

    gpu_uuid: str
    profile: str
    placement: MigPlacement
    mig_uuid: str
    gpu_instance_id: int
    compute_instance_id: int


@dataclass(frozen=True)
class HealthEvent:
    """A card changed health. `xid` is set for XID errors."""

    uuid: str
    healthy: bool
    xid: int | None = None
    reason: str = ""


#: XIDs caused by applications, not by the card; they never mark a card unhealthy
#: (the upstream NVIDIA device plugin's list, `rm/health.go`).
APPLICATION_XIDS: frozenset[int] = frozenset({13, 31, 43, 45, 68, 109})


def xid_is_critical(
    xid: int, *, skipped: frozenset[int] = frozenset(), forced: frozenset[int] = frozenset()
) -> bool:
    """True when XID `xid` marks the card unhealthy.

    `skipped` adds XIDs to ignore (env DP_DISABLE_HEALTHCHECKS), `forced` re-enables XIDs
    that would be ignored (env DP_ENABLE_HEALTHCHECKS).
    """
    if xid in forced:
        return True
    return xid not in APPLICATION_XIDS and xid not in skipped


@dataclass(frozen=True)
class DriverEdits:
    """What a container needs from the node's GPU driver besides hami's own edits: environment and
    read-only bind mounts (container path, host path). Data, rendered into an Allocate response."""

    env: dict[str, str] = field(default_factory=dict)
    mounts: tuple[tuple[str, str], ...] = ()


class DeviceSource(abc.ABC):
    """Everything the device plugin reads from or does to the GPUs of one node."""

    @abc.abstractmethod
    def cards(self) -> list[SourceCard]:
        """All physical cards, sorted by index, with their current health."""

    @abc.abstractmethod
    def links(self) -> list[PairLink]:
        """Pair topology of the cards (one entry per unordered pair that has data)."""

    @abc.abstractmethod
    def mig_profiles(self, uuid: str) -> list[SourceMigProfile]:
        """MIG GPU-instance profiles the card supports; [] when it is not MIG capable."""

    @abc.abstractmethod
    def health_events(self) -> AsyncIterator[HealthEvent]:
        """Async stream of health changes; runs until the consumer stops iterating."""

    @abc.abstractmethod
    def create_mig_instance(self, uuid: str, profile: str, placement: MigPlacement) -> MigInstance:
        """Create a GPU instance of `profile` at `placement` plus a full compute instance."""

    @abc.abstractmethod
    def destroy_mig_instance(self, uuid: str, gpu_instance_id: int) -> None:
        """Destroy the GPU instance (and its compute instances)."""

    @abc.abstractmethod
    def list_mig_instances(self, uuid: str | None = None) -> list[MigInstance]:
        """Existing MIG instances, on one card or on all."""

    def close(self) -> None:  # noqa: B027 - optional hook
        """Release driver resources."""

    def driver_edits(self, uuids: list[str]) -> DriverEdits:
        """The driver's part of a container that gets these cards. On a real node the container
        runtime's NVIDIA hook provides the driver, so nothing; a simulated node hands out its own."""
        return DriverEdits()

    def device_nodes(self, uuids: list[str]) -> tuple[str, ...]:
        """The `/dev` nodes a container needs for these cards when no runtime hook adds them (the
        DRA plugin's CDI specs). A simulated node has none."""
        return ()

    def vendor_annotations(self) -> dict[str, str]:
        """Other vendors' register annotations this node carries (a simulated node only; on a real
        node each vendor's own device plugin writes its annotation)."""
        return {}

    def vendor_capacity(self) -> dict[str, int]:
        """Other vendors' capacity resources this node serves to kubelet, name -> devices (a
        simulated node only; on a real node each vendor's own device plugin serves them)."""
        return {}

    def pair_scores(self) -> dict[str, dict[str, int]]:
        """Symmetric map uuid -> {other uuid -> pair score} from `links()`."""
        scores: dict[str, dict[str, int]] = {c.uuid: {} for c in self.cards()}
        for link in self.links():
            scores.setdefault(link.a, {})[link.b] = link.score
            scores.setdefault(link.b, {})[link.a] = link.score
        return scores
