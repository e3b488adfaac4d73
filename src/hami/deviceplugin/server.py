"""`hami device-plugin`: the kubelet DevicePlugin gRPC server (grpc.aio over a unix socket).

Lifecycle: build the inventory from the device source, serve `DevicePlugin` on
`<plugin dir>/<socket name>`, call `Registration.Register` on `<plugin dir>/kubelet.sock`, then
 * stream the replica list in ListAndWatch, re-sent whenever a card's health changes;
 * watch kubelet.sock (inode/ctime) and our own socket: when the kubelet restarts (it wipes the
   directory and recreates kubelet.sock) restart the gRPC server and register again;
 * on stop (SIGTERM), stop serving and remove our socket.
Allocate is delegated to an `Allocator` (see `hami.deviceplugin.allocate`).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import grpc

from hami.deviceplugin.api import HEALTHY, KUBELET_SOCKET_NAME, UNHEALTHY, VERSION, api_pb2, api_pb2_grpc
from hami.deviceplugin.grpcsock import serve_unix
from hami.deviceplugin.preferred import card_of, preferred_allocation, replica_id
from hami.deviceplugin.settings import NodeSettings, PhysicalDevice, build_inventory
from hami.deviceplugin.sources.base import DeviceSource

log = logging.getLogger(__name__)

DEFAULT_SOCKET_NAME = "nvidia-gpu.sock"


class AllocationError(Exception):
    """Allocate failed; the message is returned to the kubelet (and the pod's event)."""


class Allocator(Protocol):
    """Serves Allocate (and PreStartContainer) for the plugin (node registration + pod annotations
    live behind it)."""

    #: Register with `pre_start_required` (the lock-free mode prepares containers at PreStart).
    pre_start_required: bool

    async def allocate(self, request: api_pb2.AllocateRequest) -> api_pb2.AllocateResponse:
        """Raise AllocationError with a clear message on failure."""
        ...

    async def preferred_cards(self, size: int) -> list[str] | None:
        """Physical cards the scheduler chose for the container being admitted, if known."""
        ...

    async def prestart(self, device_ids: list[str]) -> None:
        """Prepare the container about to start with `device_ids`; AllocationError on failure."""
        ...


@dataclass(frozen=True)
class _FileStamp:
    ino: int
    ctime_ns: int


def _stamp(path: Path) -> _FileStamp | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return _FileStamp(st.st_ino, st.st_ctime_ns)


class _Servicer(api_pb2_grpc.DevicePluginServicer):
    def __init__(self, plugin: DevicePluginServer) -> None:
        self._p = plugin

    async def GetDevicePluginOptions(self, request: Any, context: Any) -> api_pb2.DevicePluginOptions:
        return self._p.options()

    async def ListAndWatch(self, request: Any, context: Any) -> AsyncIterator[api_pb2.ListAndWatchResponse]:
        async for resp in self._p.watch_devices():
            yield resp

    async def GetPreferredAllocation(self, request: Any, context: Any) -> api_pb2.PreferredAllocationResponse:
        return await self._p.get_preferred_allocation(request)

    async def Allocate(self, request: Any, context: Any) -> api_pb2.AllocateResponse:
        try:
            return await self._p.allocate(request)
        except AllocationError as e:
            await context.abort(grpc.StatusCode.UNKNOWN, str(e))
            raise  # unreachable: abort raises

    async def PreStartContainer(self, request: Any, context: Any) -> api_pb2.PreStartContainerResponse:
        try:
            await self._p.prestart(request)
        except AllocationError as e:
            await context.abort(grpc.StatusCode.FAILED_PRECONDITION, str(e))
            raise  # unreachable: abort raises
        return api_pb2.PreStartContainerResponse()


class DevicePluginServer:
    """One resource (`nvidia.com/gpu`) served to the local kubelet."""

    def __init__(
        self,
        source: DeviceSource,
        settings: NodeSettings,
        *,
        plugin_dir: str | Path = "/var/lib/kubelet/device-plugins/",
        socket_name: str = DEFAULT_SOCKET_NAME,
        kubelet_socket_name: str = KUBELET_SOCKET_NAME,
        allocator: Allocator | None = None,
        watch_interval: float = 0.5,
        register_timeout: float = 5.0,
        refresh_interval: float = 30.0,
    ) -> None:
        self.source = source
        self.settings = settings
        self.plugin_dir = Path(plugin_dir)
        self.socket_path = self.plugin_dir / socket_name
        self.kubelet_socket = self.plugin_dir / kubelet_socket_name
        self.allocator = allocator
        self.watch_interval = watch_interval
        self.register_timeout = register_timeout
        self.refresh_interval = refresh_interval
        self._devices: list[PhysicalDevice] = []
        self._version = 0
        self._changed = asyncio.Condition()
        self._refresh_lock = asyncio.Lock()
        self._server: grpc.aio.Server | None = None
        self._own_stamp: _FileStamp | None = None
        self._kubelet_stamp: _FileStamp | None = None
        self._tasks: list[asyncio.Task[None]] = []
        self._registered = asyncio.Event()
        self._stopping = False
        self.registrations = 0  # successful Register calls (observability, tests)
        self._listeners: list[Callable[[list[PhysicalDevice]], None]] = []

    # ---- inventory ----------------------------------------------------------------------

    @property
    def devices(self) -> list[PhysicalDevice]:
        """Current registered physical devices (after node config)."""
        return list(self._devices)

    @property
    def version(self) -> int:
        return self._version

    def add_listener(self, fn: Callable[[list[PhysicalDevice]], None]) -> None:
        """Call `fn(devices)` whenever the inventory changes (e.g. node registration writer)."""
        self._listeners.append(fn)

    async def refresh(self) -> bool:
        """Re-read the source; notify ListAndWatch streams when anything changed."""
        async with self._refresh_lock:  # concurrent refreshes never apply an older snapshot last
            return await self._refresh()

    async def _refresh(self) -> bool:
        devices = await asyncio.to_thread(build_inventory, self.source, self.settings)
        if devices == self._devices:
            return False
        before = {d.uuid: d.healthy for d in self._devices}
        for d in devices:
            if before.get(d.uuid, True) != d.healthy:
                log.warning("card %s is now %s", d.uuid, "healthy" if d.healthy else "unhealthy")
        async with self._changed:
            self._devices = devices
            self._version += 1
            self._changed.notify_all()
        for fn in self._listeners:
            try:
                fn(list(devices))
            except Exception:
                log.exception("inventory listener failed")
        return True

    def list_response(self) -> api_pb2.ListAndWatchResponse:
        resp = api_pb2.ListAndWatchResponse()
        for d in self._devices:
            for i in range(d.count):
                dev = resp.devices.add(ID=replica_id(d.uuid, i), health=HEALTHY if d.healthy else UNHEALTHY)
                if self.settings.enable_numa_topology:
                    dev.topology.nodes.add(ID=d.card.numa)
        return resp

    async def watch_devices(self) -> AsyncIterator[api_pb2.ListAndWatchResponse]:
        seen = [-1]
        while not self._stopping:
            async with self._changed:
                await self._changed.wait_for(lambda: self._version != seen[0] or self._stopping)
                if self._stopping:
                    return
                seen[0] = self._version
                resp = self.list_response()
            yield resp

    # ---- RPC bodies ---------------------------------------------------------------------

    def options(self) -> api_pb2.DevicePluginOptions:
        return api_pb2.DevicePluginOptions(
            pre_start_required=self.allocator is not None and self.allocator.pre_start_required,
            get_preferred_allocation_available=self.settings.enable_preferred_allocation,
        )

    async def get_preferred_allocation(
        self, request: api_pb2.PreferredAllocationRequest
    ) -> api_pb2.PreferredAllocationResponse:
        unhealthy = frozenset(d.uuid for d in self._devices if not d.healthy)
        resp = api_pb2.PreferredAllocationResponse()
        for creq in request.container_requests:
            preferred = None
            if self.allocator is not None:
                try:
                    preferred = await self.allocator.preferred_cards(creq.allocation_size)
                except Exception as e:
                    log.info("no scheduler hint for preferred allocation: %s", e)
            ids = preferred_allocation(
                list(creq.available_deviceIDs),
                list(creq.must_include_deviceIDs),
                creq.allocation_size,
                preferred_cards=preferred,
                unhealthy_cards=unhealthy,
            )
            resp.container_responses.add(deviceIDs=ids)
        return resp

    async def allocate(self, request: api_pb2.AllocateRequest) -> api_pb2.AllocateResponse:
        if self.allocator is None:
            raise AllocationError(
                "hami device plugin: Allocate needs the Kubernetes API (node lock and pod annotations); "
                "this plugin runs without an allocator"
            )
        known = {d.uuid for d in self._devices}
        for creq in request.container_requests:
            unknown = [i for i in creq.devices_ids if card_of(i) not in known]
            if unknown:
                raise AllocationError(f"unknown device IDs {unknown}")
        return await self.allocator.allocate(request)

    async def prestart(self, request: api_pb2.PreStartContainerRequest) -> None:
        """PreStartContainer: the allocator prepares the container (lock-free mode only)."""
        if self.allocator is None or not self.allocator.pre_start_required:
            return
        await self.allocator.prestart(list(request.devices_ids))

    # ---- lifecycle ----------------------------------------------------------------------

    async def _serve(self) -> None:
        servicer = _Servicer(self)
        self._server = await serve_unix(
            self.socket_path,
            lambda server: api_pb2_grpc.add_DevicePluginServicer_to_server(servicer, server),  # type: ignore[no-untyped-call]
        )
        self._own_stamp = _stamp(self.socket_path)
        log.info("serving DevicePlugin on %s", self.socket_path)

    async def _stop_serving(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            await server.stop(grace=0.5)
        # Remove our socket, but never a newer one that is not ours.
        if self._own_stamp is not None and _stamp(self.socket_path) == self._own_stamp:
            with contextlib.suppress(FileNotFoundError):
                self.socket_path.unlink()
        self._own_stamp = None

    async def register(self) -> None:
        """Call Registration.Register on kubelet.sock (raises grpc.aio.AioRpcError on failure)."""
        req = api_pb2.RegisterRequest(
            version=VERSION,
            endpoint=self.socket_path.name,
            resource_name=self.settings.resource_name,
            options=self.options(),
        )
        stamp = _stamp(self.kubelet_socket)
        async with grpc.aio.insecure_channel(f"unix://{self.kubelet_socket}") as channel:
            stub = api_pb2_grpc.RegistrationStub(channel)  # type: ignore[no-untyped-call]
            await stub.Register(req, timeout=self.register_timeout)
        self._kubelet_stamp = stamp
        self.registrations += 1
        log.info("registered %s with kubelet (%s)", self.settings.resource_name, self.kubelet_socket)

    async def start(self) -> None:
        """Serve and start the background loops (registration with the kubelet included).

        Returns once the socket is served; use `wait_registered()` to wait for the kubelet.
        Registration is retried until it succeeds, so a missing kubelet never blocks stop().
        """
        self._stopping = False
        await self.refresh()
        await self._serve()
        self._tasks = [
            asyncio.create_task(self._registration_loop(), name="dp-registration"),
            asyncio.create_task(self._health_loop(), name="dp-health"),
            asyncio.create_task(self._refresh_loop(), name="dp-refresh"),
        ]

    async def wait_registered(self, timeout: float | None = None) -> None:
        await asyncio.wait_for(self._registered.wait(), timeout)

    async def restart(self) -> None:
        """Restart the gRPC server (new socket); the registration loop registers again."""
        log.info("restarting device plugin server")
        self._registered.clear()
        self._kubelet_stamp = None
        await self._stop_serving()
        await self.refresh()
        await self._serve()

    async def _registration_loop(self) -> None:
        """Register; then watch kubelet.sock and our socket and restart + re-register on change."""
        delay = 0.2
        while not self._stopping:
            if not self._registered.is_set():
                try:
                    await self.register()
                    self._registered.set()
                    delay = 0.2
                except (grpc.aio.AioRpcError, OSError) as e:
                    log.warning(
                        "kubelet registration failed (%s); retrying in %.1fs",
                        e.details() if isinstance(e, grpc.aio.AioRpcError) else e,
                        delay,
                    )
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 5.0)
                    continue
            await asyncio.sleep(self.watch_interval)
            kubelet = _stamp(self.kubelet_socket)
            own = _stamp(self.socket_path)
            if kubelet is None:
                continue  # kubelet down: wait for it to come back
            if kubelet != self._kubelet_stamp or own != self._own_stamp:
                why = "kubelet.sock recreated" if kubelet != self._kubelet_stamp else "our socket vanished"
                log.info("%s: restarting and registering again", why)
                try:
                    await self.restart()
                except Exception:
                    log.exception("restart after %s failed", why)
                    await asyncio.sleep(1.0)

    async def stop(self) -> None:
        """Stop serving, end ListAndWatch streams, remove the socket."""
        self._stopping = True
        async with self._changed:
            self._changed.notify_all()
        for t in self._tasks:
            t.cancel()
        for t in self._tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t
        self._tasks = []
        await self._stop_serving()
        with contextlib.suppress(Exception):
            await asyncio.to_thread(self.source.close)
        log.info("device plugin stopped")

    async def _health_loop(self) -> None:
        while not self._stopping:
            try:
                async for ev in self.source.health_events():
                    log.warning(
                        "health event: card %s %s (%s)",
                        ev.uuid,
                        "healthy" if ev.healthy else "unhealthy",
                        ev.reason,
                    )
                    await self.refresh()
            except asyncio.CancelledError:
                raise
            except Exception:
                log.exception("health event stream failed; restarting it in 1s")
                await asyncio.sleep(1.0)

    async def _refresh_loop(self) -> None:
        while not self._stopping:
            await asyncio.sleep(self.refresh_interval)
            try:
                await self.refresh()
            except Exception:
                log.exception("periodic inventory refresh failed")

    async def run(self, stop: asyncio.Event) -> None:
        """Start, then serve until `stop` is set, then stop cleanly."""
        await self.start()
        try:
            await stop.wait()
        finally:
            await self.stop()
