"""A device source described by a YAML file: cards, links, MIG profiles, injected failures.

Used by the contract tests and the local sandbox. Schema (every key but `cards` optional)::

    cards:
      - uuid: GPU-00000000-0000-0000-0000-000000000000   # default GPU-fake-<node>-<index>
        index: 0                                         # default: position in the list
        model: NVIDIA A100-SXM4-40GB
        memory: 40960                                    # MiB
        numa: 0
        healthy: true
        mig: true                                        # MIG capable
        sm: 108
        mig_profiles: a100-40gb                          # key of mig_profile_sets
        device_node: /dev/...                            # host node a DRA CDI spec hands out
    links:
      - {a: GPU-..., b: GPU-..., type: SameBoard, nvlinks: 12}
    mig_profile_sets:
      a100-40gb:
        - {name: 1g.5gb, memory: 4864, core: 13, slices: 1, instances: 7,
           placements: [[0, 1], [1, 1], [2, 1]]}
    failures:                                            # applied after N seconds
      - {uuid: GPU-..., after_seconds: 2, xid: 79}
    health_file: health.txt                              # relative to the YAML file
    nodes:                                               # per node: these keys replace the top-level ones
      node2: {cards: [...], links: [...], vendors: {...}}
    vendors:                                             # other vendors' cards (sources/vendors.py)
      hygon: {count: 2, card: {type: DCU-Z100, memory: 65520}}
      mthreads: {resources: {mthreads.com/sgpu-core: 32}}  # capacity vendors: served to kubelet
    fail_mig_create: [GPU-...]                           # MIG creation errors on these cards
    driver:                                              # the simulated driver GPU containers get
      root: /var/lib/hami-sandbox/driver                 # host dir with libcuda.so.1, libnvidia-ml.so.1
      libdir: /usr/lib/x86_64-linux-gnu                  # where a real driver's libraries appear

With ``driver`` set, every GPU container gets the fake driver's libraries mounted where the NVIDIA
container runtime would put the real ones, and ``FAKECUDA_DEVICES`` / ``FAKECUDA_TOTAL_MEM`` /
``FAKECUDA_SM_COUNT`` describing its cards, so unmodified CUDA programs run against it (with
``libvgpu.so`` preloaded, as on a GPU node).

The health file is re-read whenever it changes: each non-empty line `<uuid> [xid]` marks that
card unhealthy; removing the line makes it healthy again. `inject_health()` does the same from
code. MIG instances are simulated in memory.
"""

from __future__ import annotations

import asyncio
import threading
import time
import uuid as uuidlib
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import yaml

from hami.deviceplugin.sources.base import (
    DeviceSource,
    DeviceSourceError,
    DriverEdits,
    HealthEvent,
    MigInstance,
    MigPlacement,
    PairLink,
    SourceCard,
    SourceMigProfile,
    parse_link_type,
    xid_is_critical,
)
from hami.deviceplugin.sources.spec import FakeSpecError, req
from hami.deviceplugin.sources.vendors import vendor_annotations, vendor_capacity

__all__ = ["FakeSource", "FakeSpecError"]


@dataclass(frozen=True)
class _Failure:
    uuid: str
    after_seconds: float
    xid: int


def _for_node(spec: dict[str, Any], node_name: str, origin: str) -> dict[str, Any]:
    """The spec as node ``node_name`` sees it: the top-level keys, with those of
    ``nodes.<node_name>`` (when present) in their place — one file describes a whole cluster."""
    nodes = spec.get("nodes")
    if nodes is None:
        return spec
    if not isinstance(nodes, dict) or not all(isinstance(v, dict) for v in nodes.values()):
        raise FakeSpecError(f"{origin}: 'nodes' must map node names to mappings, got {nodes!r}")
    own: dict[str, Any] = nodes.get(node_name) or {}
    return {**{k: v for k, v in spec.items() if k != "nodes"}, **own}


class FakeSource(DeviceSource):
    """Deterministic, in-memory device source."""

    def __init__(
        self,
        spec: dict[str, Any],
        *,
        origin: str = "<fake source>",
        base_dir: Path | None = None,
        node_name: str = "node",
        poll_interval: float = 0.1,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._origin = origin
        self._clock = clock
        self._started = clock()
        self.poll_interval = poll_interval
        self._lock = threading.Lock()
        if not isinstance(spec, dict):
            raise FakeSpecError(f"{origin}: expected a mapping at the top level, got {spec!r}")
        spec = _for_node(spec, node_name, origin)
        profile_sets = self._parse_profile_sets(spec.get("mig_profile_sets") or {})
        self._cards: dict[str, SourceCard] = {}
        self._device_nodes: dict[str, str] = {}
        self._profiles: dict[str, list[SourceMigProfile]] = {}
        raw_cards = spec.get("cards")
        if not isinstance(raw_cards, list) or not raw_cards:
            raise FakeSpecError(f"{origin}: 'cards' must be a non-empty list, got {raw_cards!r}")
        for pos, raw in enumerate(raw_cards):
            where = f"{origin}: cards[{pos}]"
            if not isinstance(raw, dict):
                raise FakeSpecError(f"{where}: expected a mapping, got {raw!r}")
            index = req(where, raw, "index", int, pos)
            card = SourceCard(
                uuid=req(where, raw, "uuid", str, f"GPU-fake-{node_name}-{index}"),
                index=index,
                model=req(where, raw, "model", str, "NVIDIA A100-SXM4-40GB"),
                memory_mib=req(where, raw, "memory", int, 40960),
                numa=req(where, raw, "numa", int, 0),
                healthy=req(where, raw, "healthy", bool, True),
                mig_capable=req(where, raw, "mig", bool, False),
                mig_enabled=req(where, raw, "mig_enabled", bool, False),
                sm_count=req(where, raw, "sm", int, 0),
            )
            if card.memory_mib <= 0:
                raise FakeSpecError(f"{where}.memory: must be > 0, got {card.memory_mib}")
            if card.uuid in self._cards:
                raise FakeSpecError(f"{where}.uuid: duplicate card {card.uuid!r}")
            if any(c.index == card.index for c in self._cards.values()):
                raise FakeSpecError(f"{where}.index: duplicate index {card.index}")
            self._cards[card.uuid] = card
            node = req(where, raw, "device_node", str, "")
            if node and not node.startswith("/"):
                raise FakeSpecError(f"{where}.device_node: must be an absolute path, got {node!r}")
            if node:
                self._device_nodes[card.uuid] = node
            set_name = raw.get("mig_profiles")
            if set_name is not None:
                if set_name not in profile_sets:
                    raise FakeSpecError(
                        f"{where}.mig_profiles: unknown profile set {set_name!r}; "
                        f"defined: {sorted(profile_sets)}"
                    )
                self._profiles[card.uuid] = profile_sets[set_name]
        self._driver = self._parse_driver(spec.get("driver"))
        self._vendor_annotations = vendor_annotations(spec.get("vendors"), node_name=node_name, origin=origin)
        self._vendor_capacity = vendor_capacity(spec.get("vendors"), origin=origin)
        self._base_health = {u: c.healthy for u, c in self._cards.items()}
        self._links = self._parse_links(spec.get("links") or [])
        self._failures = self._parse_failures(spec.get("failures") or [])
        self._fired: set[int] = set()
        self._failed: dict[str, int | None] = {}  # uuid -> xid, from failures/injection
        self._file_failed: dict[str, int | None] = {}
        health_file = spec.get("health_file")
        self.health_file: Path | None = None
        if health_file is not None:
            if not isinstance(health_file, str):
                raise FakeSpecError(f"{origin}: health_file: expected a path, got {health_file!r}")
            p = Path(health_file)
            self.health_file = p if p.is_absolute() or base_dir is None else base_dir / p
        self._health_file_stamp: tuple[int, int, int] | None = None
        fail_mig = spec.get("fail_mig_create") or []
        if not isinstance(fail_mig, list):
            raise FakeSpecError(f"{origin}: fail_mig_create: expected a list, got {fail_mig!r}")
        self.fail_mig_create: set[str] = {str(u) for u in fail_mig}
        self._instances: dict[str, dict[int, MigInstance]] = {}
        self._generation = 0

    # ---- construction -------------------------------------------------------------------

    @classmethod
    def from_file(cls, path: str | Path, *, node_name: str = "node", **kw: Any) -> FakeSource:
        p = Path(path)
        try:
            text = p.read_text()
        except OSError as e:
            raise FakeSpecError(f"{p}: cannot read fake node file: {e}") from e
        try:
            spec = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise FakeSpecError(f"{p}: invalid YAML: {e}") from e
        return cls(spec, origin=str(p), base_dir=p.parent, node_name=node_name, **kw)

    DRIVER_LIBS = ("libcuda.so.1", "libnvidia-ml.so.1")
    #: the simulated device state of a container given the fake driver (inside the container)
    CONTAINER_STATE = "/tmp/.hami-fake-gpu.state"

    def _parse_driver(self, raw: Any) -> tuple[str, str] | None:
        if raw is None:
            return None
        where = f"{self._origin}: driver"
        if not isinstance(raw, dict):
            raise FakeSpecError(f"{where}: expected a mapping with 'root', got {raw!r}")
        root = req(where, raw, "root", str, "")
        libdir = req(where, raw, "libdir", str, "/usr/lib/x86_64-linux-gnu")
        for key, value in (("root", root), ("libdir", libdir)):
            if not value.startswith("/"):
                raise FakeSpecError(f"{where}.{key}: must be an absolute path, got {value!r}")
        return root, libdir

    def driver_edits(self, uuids: list[str]) -> DriverEdits:
        if self._driver is None or not uuids:
            return DriverEdits()
        root, libdir = self._driver
        cards = [self._cards[u] for u in uuids if u in self._cards]
        # one simulated device state for the whole container, as a real card is one device: the
        # fake CUDA and NVML libraries of every process share it, so NVML sees the kernels CUDA
        # ran (libvgpu's core limiter measures them) and the memory it holds
        env = {"FAKECUDA_DEVICES": str(len(uuids)), "FAKECUDA_STATE": self.CONTAINER_STATE}
        if cards:
            # the fake driver models one card size; a container given several models sees the smallest
            env["FAKECUDA_TOTAL_MEM"] = f"{min(c.memory_mib for c in cards)}m"
            sms = [c.sm_count for c in cards if c.sm_count > 0]
            if sms:
                env["FAKECUDA_SM_COUNT"] = str(min(sms))
        mounts = tuple((f"{libdir}/{lib}", f"{root}/{lib}") for lib in self.DRIVER_LIBS)
        return DriverEdits(env=env, mounts=mounts)

    def device_nodes(self, uuids: list[str]) -> tuple[str, ...]:
        return tuple(self._device_nodes[u] for u in uuids if u in self._device_nodes)

    def _parse_profile_sets(self, raw: Any) -> dict[str, list[SourceMigProfile]]:
        if not isinstance(raw, dict):
            raise FakeSpecError(f"{self._origin}: mig_profile_sets: expected a mapping, got {raw!r}")
        out: dict[str, list[SourceMigProfile]] = {}
        for set_name, items in raw.items():
            where = f"{self._origin}: mig_profile_sets.{set_name}"
            if not isinstance(items, list):
                raise FakeSpecError(f"{where}: expected a list, got {items!r}")
            profiles = []
            for i, item in enumerate(items):
                w = f"{where}[{i}]"
                if not isinstance(item, dict):
                    raise FakeSpecError(f"{w}: expected a mapping, got {item!r}")
                placements = []
                for pl in req(w, item, "placements", list, []):
                    if (
                        not isinstance(pl, list | tuple)
                        or len(pl) != 2
                        or not all(isinstance(x, int) for x in pl)
                    ):
                        raise FakeSpecError(f"{w}.placements: expected [start, size], got {pl!r}")
                    placements.append(MigPlacement(pl[0], pl[1]))
                profiles.append(
                    SourceMigProfile(
                        name=req(w, item, "name", str),
                        memory_mb=req(w, item, "memory", int),
                        core=req(w, item, "core", int, 0),
                        slice_count=req(w, item, "slices", int),
                        placements=tuple(placements),
                        instance_count=req(w, item, "instances", int, len(placements)),
                    )
                )
            out[str(set_name)] = profiles
        return out

    def _parse_links(self, raw: Any) -> list[PairLink]:
        if not isinstance(raw, list):
            raise FakeSpecError(f"{self._origin}: links: expected a list, got {raw!r}")
        links: dict[frozenset[str], PairLink] = {}
        for i, item in enumerate(raw):
            w = f"{self._origin}: links[{i}]"
            if not isinstance(item, dict):
                raise FakeSpecError(f"{w}: expected a mapping, got {item!r}")
            a, b = req(w, item, "a", str), req(w, item, "b", str)
            for key, u in (("a", a), ("b", b)):
                if u not in self._cards:
                    raise FakeSpecError(f"{w}.{key}: unknown card {u!r}")
            if a == b:
                raise FakeSpecError(f"{w}: a link needs two different cards, got {a!r} twice")
            try:
                link_type = parse_link_type(req(w, item, "type", str))
            except ValueError as e:
                raise FakeSpecError(f"{w}.type: {e}") from None
            nvlinks = req(w, item, "nvlinks", int, 0)
            if nvlinks < 0:
                raise FakeSpecError(f"{w}.nvlinks: must be >= 0, got {nvlinks}")
            links[frozenset((a, b))] = PairLink(a, b, link_type, nvlinks)
        return list(links.values())

    def _parse_failures(self, raw: Any) -> list[_Failure]:
        if not isinstance(raw, list):
            raise FakeSpecError(f"{self._origin}: failures: expected a list, got {raw!r}")
        out = []
        for i, item in enumerate(raw):
            w = f"{self._origin}: failures[{i}]"
            if not isinstance(item, dict):
                raise FakeSpecError(f"{w}: expected a mapping, got {item!r}")
            u = req(w, item, "uuid", str)
            if u not in self._cards:
                raise FakeSpecError(f"{w}.uuid: unknown card {u!r}")
            out.append(_Failure(u, req(w, item, "after_seconds", float, 0.0), req(w, item, "xid", int, 79)))
        return out

    # ---- health -------------------------------------------------------------------------

    def inject_health(self, uuid: str, healthy: bool, xid: int | None = None) -> None:
        """Mark a card (un)healthy now, as if the driver reported it."""
        if uuid not in self._cards:
            raise DeviceSourceError(f"unknown card {uuid!r}")
        with self._lock:
            if healthy:
                self._failed.pop(uuid, None)
            elif xid is None or xid_is_critical(xid):
                self._failed[uuid] = xid

    def _poll(self) -> None:
        now = self._clock() - self._started
        with self._lock:
            for i, f in enumerate(self._failures):
                if i not in self._fired and now >= f.after_seconds:
                    self._fired.add(i)
                    if xid_is_critical(f.xid):
                        self._failed[f.uuid] = f.xid
        self._read_health_file()

    def _read_health_file(self) -> None:
        if self.health_file is None:
            return
        try:
            st = self.health_file.stat()
        except FileNotFoundError:
            stamp = None
        else:
            stamp = (st.st_ino, st.st_mtime_ns, st.st_size)
        if stamp == self._health_file_stamp:
            return
        self._health_file_stamp = stamp
        failed: dict[str, int | None] = {}
        if stamp is not None:
            for line in self.health_file.read_text().splitlines():
                parts = line.split("#", 1)[0].split()
                if not parts or parts[0] not in self._cards:
                    continue
                xid = int(parts[1]) if len(parts) > 1 and parts[1].isdigit() else None
                if xid is None or xid_is_critical(xid):
                    failed[parts[0]] = xid
        with self._lock:
            self._file_failed = failed

    def _is_healthy(self, uuid: str) -> bool:
        return self._base_health[uuid] and uuid not in self._failed and uuid not in self._file_failed

    async def health_events(self) -> AsyncIterator[HealthEvent]:
        # Start from the file's health, not the current one: a change that happened before the
        # consumer subscribed is still reported (consumers treat events as idempotent triggers).
        seen = dict(self._base_health)
        while True:
            for c in self.cards():
                if c.healthy != seen[c.uuid]:
                    seen[c.uuid] = c.healthy
                    xid = self._failed.get(c.uuid, self._file_failed.get(c.uuid))
                    reason = "healthy" if c.healthy else f"XID {xid}" if xid is not None else "unhealthy"
                    yield HealthEvent(c.uuid, c.healthy, None if c.healthy else xid, reason)
            await asyncio.sleep(self.poll_interval)

    # ---- inventory ----------------------------------------------------------------------

    def cards(self) -> list[SourceCard]:
        self._poll()
        with self._lock:
            out = [replace(c, healthy=self._is_healthy(c.uuid)) for c in self._cards.values()]
        return sorted(out, key=lambda c: c.index)

    def links(self) -> list[PairLink]:
        return list(self._links)

    def vendor_annotations(self) -> dict[str, str]:
        return dict(self._vendor_annotations)

    def vendor_capacity(self) -> dict[str, int]:
        return dict(self._vendor_capacity)

    def mig_profiles(self, uuid: str) -> list[SourceMigProfile]:
        card = self._card(uuid)
        return list(self._profiles.get(uuid, [])) if card.mig_capable else []

    def _card(self, uuid: str) -> SourceCard:
        try:
            return self._cards[uuid]
        except KeyError:
            raise DeviceSourceError(f"unknown card {uuid!r}") from None

    # ---- MIG ----------------------------------------------------------------------------

    def create_mig_instance(self, uuid: str, profile: str, placement: MigPlacement) -> MigInstance:
        card = self._card(uuid)
        if not card.mig_capable:
            raise DeviceSourceError(f"card {uuid} is not MIG capable")
        if uuid in self.fail_mig_create:
            raise DeviceSourceError(f"injected MIG creation failure on {uuid}")
        prof = next((p for p in self.mig_profiles(uuid) if p.name == profile), None)
        if prof is None:
            raise DeviceSourceError(f"card {uuid} has no MIG profile {profile!r}")
        if prof.placements and placement not in prof.placements:
            raise DeviceSourceError(
                f"placement {placement.start}+{placement.size} is not legal for {profile} on {uuid}"
            )
        with self._lock:
            existing = self._instances.setdefault(uuid, {})
            clash = [i for i in existing.values() if i.placement.overlaps(placement)]
            if clash:
                raise DeviceSourceError(
                    f"placement {placement.start}+{placement.size} on {uuid} overlaps "
                    f"GPU instance {clash[0].gpu_instance_id} ({clash[0].profile})"
                )
            gi = next(i for i in range(1, len(existing) + 2) if i not in existing)
            self._generation += 1
            mig_uuid = "MIG-" + str(uuidlib.uuid5(uuidlib.NAMESPACE_URL, f"{uuid}/{gi}/{self._generation}"))
            inst = MigInstance(uuid, profile, placement, mig_uuid, gi, 0)
            existing[gi] = inst
            return inst

    def destroy_mig_instance(self, uuid: str, gpu_instance_id: int) -> None:
        self._card(uuid)
        with self._lock:
            if self._instances.get(uuid, {}).pop(gpu_instance_id, None) is None:
                raise DeviceSourceError(f"card {uuid} has no GPU instance {gpu_instance_id}")

    def list_mig_instances(self, uuid: str | None = None) -> list[MigInstance]:
        with self._lock:
            if uuid is not None:
                self._card(uuid)
                return sorted(self._instances.get(uuid, {}).values(), key=lambda i: i.gpu_instance_id)
            return [
                i
                for u in sorted(self._instances)
                for i in sorted(self._instances[u].values(), key=lambda i: i.gpu_instance_id)
            ]
