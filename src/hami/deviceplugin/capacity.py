"""Other vendors' capacity on a simulated node: one fake device-plugin resource per name.

Cambricon, whole Metax GPUs, Mthreads, Enflame GCU, AWS Neuron and whole Kunlun XPUs publish their
inventory as the node's capacity, which kubelet sets only for a resource a device plugin serves.
For each ``name: devices`` of the fake source's capacity (``DeviceSource.vendor_capacity``, from its
``vendors:`` section) the node agent runs one more
:class:`~hami.deviceplugin.server.DevicePluginServer`: same plugin directory, its own socket
(:func:`socket_name`), registered with kubelet under ``name``, listing ``devices`` healthy devices
``<name>-fake-<node>-<i>-0``. kubelet then publishes capacity and allocatable ``devices`` of
``name``, which the vendor's scheduler backend reads as the node's cards.

Guarantees: Allocate answers one empty container response per container asked — hami does not
implement other vendors' allocation (no device node, environment or mount reaches the container;
the vendors' own plugins do that) —, and refuses a device ID it does not list (the server's own
check); no node lock, node or pod annotation is touched; the server re-registers after a kubelet
restart exactly as NVIDIA's does (it is that server class, with its own source and settings).
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncIterator
from pathlib import Path

from hami.deviceplugin.api import KUBELET_SOCKET_NAME, api_pb2
from hami.deviceplugin.server import DevicePluginServer
from hami.deviceplugin.settings import NodeSettings
from hami.deviceplugin.sources.base import (
    DeviceSource,
    DeviceSourceError,
    HealthEvent,
    MigInstance,
    MigPlacement,
    PairLink,
    SourceCard,
    SourceMigProfile,
)

#: the file name prefix of a capacity resource's socket in the plugin directory
SOCKET_PREFIX = "hami-capacity-"


def socket_name(resource: str) -> str:
    """The socket file of ``resource``'s server: ``hami-capacity-<resource, / as _>.sock``."""
    return f"{SOCKET_PREFIX}{re.sub(r'[^A-Za-z0-9_.-]', '_', resource)}.sock"


class CapacitySource(DeviceSource):
    """``count`` identical healthy devices of one capacity resource; never a health event, no MIG."""

    def __init__(self, resource: str, count: int, node_name: str) -> None:
        if count < 1:
            raise ValueError(f"{resource}: expected a positive number of devices, got {count}")
        self.resource = resource
        self._cards = [
            SourceCard(uuid=f"{resource}-fake-{node_name}-{i}", index=i, model=resource, memory_mib=1)
            for i in range(count)
        ]

    def cards(self) -> list[SourceCard]:
        return list(self._cards)

    def links(self) -> list[PairLink]:
        return []

    def mig_profiles(self, uuid: str) -> list[SourceMigProfile]:
        return []

    async def health_events(self) -> AsyncIterator[HealthEvent]:
        await asyncio.Event().wait()  # the devices never change health: block until cancelled
        return
        yield  # an async generator

    def _no_mig(self) -> DeviceSourceError:
        return DeviceSourceError(f"{self.resource}: a capacity resource's fake devices have no MIG")

    def create_mig_instance(self, uuid: str, profile: str, placement: MigPlacement) -> MigInstance:
        raise self._no_mig()

    def destroy_mig_instance(self, uuid: str, gpu_instance_id: int) -> None:
        raise self._no_mig()

    def list_mig_instances(self, uuid: str | None = None) -> list[MigInstance]:
        return []


class EmptyAllocator:
    """Allocate for another vendor's resource: an empty response per container (see module doc)."""

    pre_start_required = False

    async def allocate(self, request: api_pb2.AllocateRequest) -> api_pb2.AllocateResponse:
        resp = api_pb2.AllocateResponse()
        for _ in request.container_requests:
            resp.container_responses.add()
        return resp

    async def preferred_cards(self, size: int) -> list[str] | None:
        return None

    async def prestart(self, device_ids: list[str]) -> None:
        return None


def capacity_servers(
    capacity: dict[str, int],
    node_name: str,
    *,
    plugin_dir: str | Path,
    kubelet_socket_name: str = KUBELET_SOCKET_NAME,
    watch_interval: float = 0.5,
) -> list[DevicePluginServer]:
    """One server per capacity resource (in name order), each its own socket in ``plugin_dir``."""
    return [
        DevicePluginServer(
            CapacitySource(name, count, node_name),
            NodeSettings(node_name=node_name, resource_name=name, split_count=1),
            plugin_dir=plugin_dir,
            socket_name=socket_name(name),
            kubelet_socket_name=kubelet_socket_name,
            allocator=EmptyAllocator(),
            watch_interval=watch_interval,
        )
        for name, count in sorted(capacity.items())
    ]
