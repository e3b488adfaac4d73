"""Node registration: the `hami.io/node-nvidia-register` (+ pair-score) node annotations, and
`hami.io/allocation-mode` (`cdi` while the plugin runs lock-free; a `cdi` left by an earlier run is
set back to `lock`, and a node that never ran lock-free gets no such annotation).

The scheduler reads these to know the node's inventory (HAMi §2.1). Written on every inventory
change and re-checked periodically (default 30 s, as HAMi); a patch is sent only when the node's
current value differs, so a deleted or overwritten annotation is restored on the next pass.
On a simulated node it also writes the other vendors' register annotations of the fake source's
``vendors:`` section, lists their keys in ``hami.io/simulated-vendor-annotations`` and removes a
listed one the section no longer has (a vendor taken out of the spec is withdrawn).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Mapping

from hami.deviceplugin.kubeops import KubeOps
from hami.deviceplugin.settings import PhysicalDevice
from hami.devices.base import split_list
from hami.protocol import bodies, keys
from hami.protocol.node import DeviceInfo, encode_node_devices, encode_pair_scores
from hami.protocol.node import MigPlacement as WireMigPlacement
from hami.protocol.node import MigProfile as WireMigProfile

log = logging.getLogger(__name__)


def device_info(d: PhysicalDevice) -> DeviceInfo:
    """HAMi DeviceInfo of one registered card."""
    return DeviceInfo(
        id=d.uuid,
        index=d.card.index,
        count=d.count,
        devmem=d.devmem,
        devcore=d.devcore,
        type=d.type,
        numa=d.card.numa,
        mode=d.mode,
        health=d.healthy,
        mig_profiles=tuple(
            WireMigProfile(
                name=p.name,
                memory_mb=p.memory_mb,
                core=p.core,
                slice_count=p.slice_count,
                placements=tuple(WireMigPlacement(pl.start, pl.size) for pl in p.placements),
            )
            for p in d.mig_profiles
        ),
    )


def register_annotations(
    devices: list[PhysicalDevice], pair_scores: dict[str, dict[str, int]] | None = None
) -> dict[str, str]:
    """Annotation values for the node: the register JSON, plus pair scores when given."""
    out = {keys.NODE_NVIDIA_REGISTER: encode_node_devices(device_info(d) for d in devices)}
    if pair_scores is not None:
        uuids = {d.uuid for d in devices}
        scores = {
            u: {peer: s for peer, s in row.items() if peer in uuids and peer != u}
            for u, row in pair_scores.items()
            if u in uuids
        }
        out[keys.NODE_NVIDIA_SCORE] = encode_pair_scores(scores)
    return out


def simulated_vendor_patch(extra: Mapping[str, str], have: Mapping[str, str]) -> dict[str, str | None]:
    """The node annotations for the other vendors ``extra`` of a simulated node: their values, the
    list of their keys (:data:`keys.NODE_SIMULATED_VENDOR_KEYS`), and None (removal) for every key
    that list held before and ``extra`` no longer has. A node that never had simulated vendors gets
    nothing, so a real vendor plugin's annotations are never touched."""
    before = split_list(have.get(keys.NODE_SIMULATED_VENDOR_KEYS))
    out: dict[str, str | None] = {k: None for k in before if k not in extra}
    out.update(extra)
    if extra or before:
        out[keys.NODE_SIMULATED_VENDOR_KEYS] = ",".join(sorted(extra)) or None
    return out


class NodeRegistrar:
    """Keeps the node's register annotations equal to the plugin's inventory."""

    def __init__(
        self,
        kube: KubeOps,
        node_name: str,
        devices: Callable[[], list[PhysicalDevice]],
        *,
        pair_scores: Callable[[], dict[str, dict[str, int]]] | None = None,
        extra: Callable[[], dict[str, str]] | None = None,
        interval: float = 30.0,
        retry: float = 5.0,
        allocation_mode: str = keys.ALLOCATION_MODE_LOCK,
    ) -> None:
        self.kube = kube
        self.node_name = node_name
        self._devices = devices
        self._pair_scores = pair_scores
        self._extra = extra
        self.interval = interval
        self.retry = retry
        self.allocation_mode = allocation_mode
        self._wake = asyncio.Event()
        self.patches = 0

    def poke(self) -> None:
        """Inventory changed: sync soon."""
        self._wake.set()

    async def sync(self) -> bool:
        """Patch the node if its annotations differ; returns True when a patch was sent."""
        scores = await asyncio.to_thread(self._pair_scores) if self._pair_scores is not None else None
        nvidia = register_annotations(self._devices(), scores)
        extra = self._extra() if self._extra is not None else {}
        node = await self.kube.get_node(self.node_name)
        have = bodies.annotations(node)
        # other vendors' annotations (a simulated node), never in place of NVIDIA's own; those
        # written before and no longer wanted are removed
        want: dict[str, str | None] = {**simulated_vendor_patch(extra, have), **nvidia}
        mode = self.allocation_mode
        if mode != keys.ALLOCATION_MODE_LOCK or have.get(keys.NODE_ALLOCATION_MODE, mode) != mode:
            want[keys.NODE_ALLOCATION_MODE] = mode
        diff = {k: v for k, v in want.items() if have.get(k) != v}
        if not diff:
            return False
        await self.kube.patch_node(self.node_name, {"metadata": {"annotations": diff}})
        self.patches += 1
        log.info("node %s: wrote %s", self.node_name, ", ".join(sorted(diff)))
        return True

    async def withdraw(self) -> bool:
        """Remove this plugin's NVIDIA annotations (register, pair scores, allocation mode) from the
        node: it serves no card here any more (a node switched to DRA mode), and the extender must
        not count cards from a stale registration. Returns True when a patch was sent."""
        node = await self.kube.get_node(self.node_name)
        have = bodies.annotations(node)
        owned = (keys.NODE_NVIDIA_REGISTER, keys.NODE_NVIDIA_SCORE, keys.NODE_ALLOCATION_MODE)
        gone: dict[str, str | None] = {k: None for k in owned if k in have}
        if not gone:
            return False
        await self.kube.patch_node(self.node_name, {"metadata": {"annotations": gone}})
        self.patches += 1
        log.info("node %s: removed %s", self.node_name, ", ".join(sorted(gone)))
        return True

    async def run(self) -> None:
        """Sync now, on every poke and every `interval`; retry after `retry` s on errors."""
        while True:
            self._wake.clear()
            delay = self.interval
            try:
                await self.sync()
            except asyncio.CancelledError:
                raise
            except Exception as e:
                log.warning("node registration failed: %s; retrying in %.0fs", e, self.retry)
                delay = self.retry
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), delay)
