"""Everything `hami dra-plugin` runs on one node: slices, the kubelet services, health.

`DraNodePlugin.run` reads the node's inventory (the device plugin's settings and device sources:
node config, memory scaling, filtered cards), publishes the ResourceSlice, serves the kubelet
(`server.DraPluginServer`), and re-publishes on every health event and every `refresh_interval`
(which also retries a failed write). Prepared claims live in `<state dir>/checkpoint.json`, so a
restarted plugin answers unprepare for claims prepared before it. On a node that is not in DRA mode
(`operatingmode` other than `dra`) it serves nothing: the device plugin owns the cards there.
"""

from __future__ import annotations

import asyncio
import logging
import os
from pathlib import Path

from hami.deviceplugin.server import cancel_tasks, follow_health, refresh_periodically
from hami.deviceplugin.settings import DRA, NodeSettings, PhysicalDevice, build_inventory
from hami.deviceplugin.sources.base import DeviceSource
from hami.draplugin.api import PLUGINS_DIR, PLUGINS_REGISTRY_DIR
from hami.draplugin.checkpoint import Checkpoint
from hami.draplugin.kubeops import DraKube
from hami.draplugin.prepare import ClaimPreparer
from hami.draplugin.publisher import SlicePublisher
from hami.draplugin.server import DraPluginServer
from hami.protocol import keys

log = logging.getLogger(__name__)

DEFAULT_PLUGIN_DIR = f"{PLUGINS_DIR}/{keys.DRA_DRIVER}"
DEFAULT_CDI_DIR = "/var/run/cdi"
CHECKPOINT_NAME = "checkpoint.json"


class DraNodePlugin:
    """The DRA kubelet plugin of one node."""

    def __init__(
        self,
        source: DeviceSource,
        settings: NodeSettings,
        kube: DraKube,
        *,
        plugin_dir: str | Path = DEFAULT_PLUGIN_DIR,
        registry_dir: str | Path = PLUGINS_REGISTRY_DIR,
        cdi_dir: str = DEFAULT_CDI_DIR,
        state_dir: str | Path | None = None,
        refresh_interval: float = 30.0,
        make_dirs: bool = True,
    ) -> None:
        self.source = source
        self.settings = settings
        self.refresh_interval = refresh_interval
        self.checkpoint = Checkpoint(os.path.join(state_dir or plugin_dir, CHECKPOINT_NAME))
        self._devices: list[PhysicalDevice] = []
        self.preparer = ClaimPreparer(
            kube,
            settings,
            source,
            lambda: self._devices,
            cdi_dir=cdi_dir,
            checkpoint=self.checkpoint,
            make_dirs=make_dirs,
        )
        self.server = DraPluginServer(self.preparer, plugin_dir=plugin_dir, registry_dir=registry_dir)
        self.publisher = SlicePublisher(kube, settings.node_name, source)
        self._tasks: list[asyncio.Task[None]] = []
        self._stopping = False

    @property
    def devices(self) -> list[PhysicalDevice]:
        return list(self._devices)

    async def refresh(self) -> bool:
        """Re-read the inventory and publish it; True when the slice is current."""
        self._devices = await asyncio.to_thread(build_inventory, self.source, self.settings)
        return await self.publisher.try_publish(self._devices)

    async def start(self) -> None:
        await self.refresh()
        await self.server.start()
        self._tasks = [
            asyncio.create_task(
                follow_health(self.source, self.refresh, stopping=lambda: self._stopping), name="dra-health"
            ),
            asyncio.create_task(
                refresh_periodically(self.refresh_interval, self.refresh, stopping=lambda: self._stopping),
                name="dra-refresh",
            ),
        ]

    async def stop(self) -> None:
        self._stopping = True
        await cancel_tasks(self._tasks)
        self._tasks = []
        await self.server.stop()

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until `stop`; on a node not in DRA mode, serve nothing."""
        if self.settings.operating_mode != DRA:
            log.info(
                "node %s is not in DRA mode (operatingmode: %s): the DRA plugin serves nothing",
                self.settings.node_name,
                self.settings.operating_mode,
            )
            await stop.wait()
            return
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.stop()
