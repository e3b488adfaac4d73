"""Node registration: the `hami.io/node-nvidia-register` (+ pair-score) node annotations, and
`hami.io/allocation-mode` (`cdi` while the plugin runs lock-free; a `cdi` left by an earlier run is
set back to `lock`, and a node that never ran lock-free gets no such annotation).

The scheduler reads these to know the node's inventory (HAMi §2.1). Written on every inventory
change and re-checked periodically (default 30 s, as HAMi); a patch is sent only when the node's
current value differs, so a deleted or overwritten annotation is restored on the next pass.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable

from hami.deviceplugin.kubeops import KubeOps
from hami.deviceplugin.settings import PhysicalDevice
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
        want = register_annotations(self._devices(), scores)
        if self._extra is not None:
            # other vendors' annotations (a simulated node); never in place of NVIDIA's own
            want = {**self._extra(), **want}
        node = await self.kube.get_node(self.node_name)
        have = bodies.annotations(node)
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
