"""The node agent: device plugin server + node registration + Allocate + MIG reconciler.

`NodeAgent` wires the pieces together; `hami device-plugin` and the sandbox call it. Without a
`KubeOps` (standalone) only the kubelet side runs: ListAndWatch works, Allocate answers an error.
In the lock-free allocation mode (`cdi`) the server's allocator is a `LockFreeAllocator` around
the lock mode's `PodAllocator`, and a collector removes the CDI specs of gone allocations. On a node
whose `operatingmode` is `dra` the agent serves nothing (docs/dra.md). A simulated node whose source
gives other vendors' capacity also serves one fake resource per name (`hami.deviceplugin.capacity`),
started and stopped with the NVIDIA server.
"""

from __future__ import annotations

import asyncio
import logging
from pathlib import Path

from hami.deviceplugin.allocate import PodAllocator
from hami.deviceplugin.api import KUBELET_SOCKET_NAME
from hami.deviceplugin.capacity import capacity_servers
from hami.deviceplugin.cdi import SpecStore
from hami.deviceplugin.kubeletcheckpoint import CHECKPOINT_NAME
from hami.deviceplugin.kubeops import KubeOps
from hami.deviceplugin.lockfree import LockFreeAllocator
from hami.deviceplugin.podresources import PodResourcesClient
from hami.deviceplugin.register import NodeRegistrar
from hami.deviceplugin.server import DEFAULT_SOCKET_NAME, DevicePluginServer, cancel_tasks
from hami.deviceplugin.settings import CDI, DRA, MIG, NodeSettings
from hami.deviceplugin.sources.base import DeviceSource

log = logging.getLogger(__name__)


class NodeAgent:
    """Everything the device plugin runs on one node."""

    def __init__(
        self,
        source: DeviceSource,
        settings: NodeSettings,
        *,
        kube: KubeOps | None = None,
        plugin_dir: str | Path = "/var/lib/kubelet/device-plugins/",
        socket_name: str = DEFAULT_SOCKET_NAME,
        kubelet_socket_name: str = KUBELET_SOCKET_NAME,
        register_interval: float = 30.0,
        mig_reconcile_interval: float = 5.0,
        watch_interval: float = 0.5,
        cdi_collect_interval: float = 30.0,
    ) -> None:
        self.settings = settings
        self.server = DevicePluginServer(
            source,
            settings,
            plugin_dir=plugin_dir,
            socket_name=socket_name,
            kubelet_socket_name=kubelet_socket_name,
            watch_interval=watch_interval,
        )
        #: other vendors' capacity resources (a simulated node's ``vendors:``), one server each
        self.capacity = capacity_servers(
            source.vendor_capacity(),
            settings.node_name,
            plugin_dir=plugin_dir,
            kubelet_socket_name=kubelet_socket_name,
            watch_interval=watch_interval,
        )
        self.allocator: PodAllocator | None = None
        self.lockfree: LockFreeAllocator | None = None
        self.registrar: NodeRegistrar | None = None
        self.mig_reconcile_interval = mig_reconcile_interval
        self.cdi_collect_interval = cdi_collect_interval
        if kube is not None:
            self.allocator = PodAllocator(kube, settings, source, lambda: self.server.devices)
            self.server.allocator = self.allocator
            if settings.allocation_mode == CDI:
                self.lockfree = LockFreeAllocator(
                    self.allocator,
                    PodResourcesClient(settings.pod_resources_socket),
                    SpecStore(settings.cdi_spec_dir),
                    checkpoint=Path(plugin_dir) / CHECKPOINT_NAME,
                )
                self.server.allocator = self.lockfree
            self.registrar = NodeRegistrar(
                kube,
                settings.node_name,
                lambda: self.server.devices,
                pair_scores=source.pair_scores if settings.topology_score else None,
                extra=source.vendor_annotations,
                interval=register_interval,
                allocation_mode=settings.allocation_mode,
            )
            registrar = self.registrar
            self.server.add_listener(lambda _devices: registrar.poke())
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        await self.server.start()
        for server in self.capacity:
            await server.start()
        if self.registrar is not None:
            self._tasks.append(asyncio.create_task(self.registrar.run(), name="node-register"))
        if self.allocator is not None and self.settings.operating_mode == MIG:
            self._tasks.append(
                asyncio.create_task(
                    self.allocator.run_mig_reconciler(self.mig_reconcile_interval), name="mig-reconcile"
                )
            )

        if self.lockfree is not None:
            await self.lockfree.core.kube.start_pod_cache(self.settings.node_name)
            self._tasks.append(
                asyncio.create_task(
                    self.lockfree.run_collector(self.cdi_collect_interval), name="cdi-collect"
                )
            )

    async def stop(self) -> None:
        await cancel_tasks(self._tasks)
        self._tasks = []
        for server in self.capacity:
            await server.stop()
        await self.server.stop()
        if self.lockfree is not None:
            await self.lockfree.core.kube.stop_pod_cache()

    async def run(self, stop: asyncio.Event) -> None:
        """Serve until `stop`; on a node in DRA mode, serve nothing (no socket, no registration,
        no `nvidia.com/gpu`): `hami dra-plugin` owns its cards, and a registration left from before
        the switch is removed (best effort: a failure is logged)."""
        if self.settings.operating_mode == DRA:
            log.info(
                "node %s is in DRA mode (operatingmode: %s): the device plugin advertises nothing",
                self.settings.node_name,
                DRA,
            )
            if self.registrar is not None:
                try:
                    await self.registrar.withdraw()
                except Exception as e:
                    log.warning(
                        "node %s: could not remove the old registration: %s", self.settings.node_name, e
                    )
            await stop.wait()
            return
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.stop()
