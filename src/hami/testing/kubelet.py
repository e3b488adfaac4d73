"""A kubelet stand-in for device plugin tests: `Registration` server + `DevicePlugin` client.

Serves `v1beta1.Registration` on `<dir>/kubelet.sock` over a real unix socket. Like the real
kubelet, every successful Register makes it dial the plugin's endpoint (relative to the same
directory), read its options and keep a ListAndWatch stream open; the latest device list per
resource is kept in `devices[resource]` ({ID: health}). `restart()` mimics a kubelet restart: it
stops serving, wipes the directory's sockets and serves a new kubelet.sock.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from hami.deviceplugin.api import VERSION, api_pb2, api_pb2_grpc
from hami.deviceplugin.grpcsock import serve_unix


class PluginClient:
    """DevicePlugin client over the plugin's unix socket."""

    def __init__(self, socket_path: str | Path) -> None:
        self.socket_path = Path(socket_path)
        self.channel = grpc.aio.insecure_channel(f"unix://{self.socket_path}")
        self.stub: Any = api_pb2_grpc.DevicePluginStub(self.channel)  # type: ignore[no-untyped-call]

    async def options(self, timeout: float = 5) -> api_pb2.DevicePluginOptions:
        resp: api_pb2.DevicePluginOptions = await self.stub.GetDevicePluginOptions(
            api_pb2.Empty(), timeout=timeout
        )
        return resp

    def list_and_watch(self) -> Any:
        """The server stream call (async iterable of ListAndWatchResponse; `.cancel()`)."""
        return self.stub.ListAndWatch(api_pb2.Empty())

    async def preferred(
        self, available: list[str], size: int, must_include: list[str] | None = None, timeout: float = 5
    ) -> list[str]:
        req = api_pb2.PreferredAllocationRequest()
        req.container_requests.add(
            available_deviceIDs=available, must_include_deviceIDs=must_include or [], allocation_size=size
        )
        resp = await self.stub.GetPreferredAllocation(req, timeout=timeout)
        return list(resp.container_responses[0].deviceIDs)

    async def allocate(self, *containers: list[str], timeout: float = 10) -> api_pb2.AllocateResponse:
        req = api_pb2.AllocateRequest()
        for ids in containers:
            req.container_requests.add(devices_ids=ids)
        resp: api_pb2.AllocateResponse = await self.stub.Allocate(req, timeout=timeout)
        return resp

    async def pre_start(self, ids: list[str], timeout: float = 5) -> api_pb2.PreStartContainerResponse:
        req = api_pb2.PreStartContainerRequest(devices_ids=ids)
        resp: api_pb2.PreStartContainerResponse = await self.stub.PreStartContainer(req, timeout=timeout)
        return resp

    async def close(self) -> None:
        await self.channel.close()


@dataclass
class _Plugin:
    request: api_pb2.RegisterRequest
    client: PluginClient
    task: asyncio.Task[None] | None = None
    options: api_pb2.DevicePluginOptions | None = None


class _Registration(api_pb2_grpc.RegistrationServicer):
    def __init__(self, kubelet: FakeKubelet) -> None:
        self._k = kubelet

    async def Register(self, request: Any, context: Any) -> api_pb2.Empty:
        if request.version != VERSION:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, f"unsupported version {request.version!r}")
        if "/" in request.endpoint:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "endpoint must be a file name in the plugin dir"
            )
        await self._k._on_register(request)
        return api_pb2.Empty()


@dataclass
class FakeKubelet:
    plugin_dir: Path
    socket_name: str = "kubelet.sock"
    connect: bool = True  # dial registered plugins and run ListAndWatch, like the kubelet
    registrations: list[api_pb2.RegisterRequest] = field(default_factory=list)
    devices: dict[str, dict[str, str]] = field(default_factory=dict)
    topology: dict[str, dict[str, list[int]]] = field(default_factory=dict)
    updates: dict[str, int] = field(default_factory=dict)

    def __post_init__(self) -> None:
        self.plugin_dir = Path(self.plugin_dir)
        self._server: grpc.aio.Server | None = None
        self._plugins: dict[str, _Plugin] = {}
        self._cond = asyncio.Condition()

    @property
    def socket_path(self) -> Path:
        return self.plugin_dir / self.socket_name

    async def start(self) -> None:
        registration = _Registration(self)
        self._server = await serve_unix(
            self.socket_path,
            lambda server: api_pb2_grpc.add_RegistrationServicer_to_server(registration, server),  # type: ignore[no-untyped-call]
        )

    async def stop(self) -> None:
        for p in list(self._plugins.values()):
            await self._drop(p)
        self._plugins.clear()
        if self._server is not None:
            await self._server.stop(grace=0.2)
            self._server = None
        with contextlib.suppress(FileNotFoundError):
            self.socket_path.unlink()

    async def restart(self, wipe: bool = True, downtime: float = 0.0) -> None:
        """Stop, remove every socket in the directory (as kubelet does on start), serve again."""
        await self.stop()
        if wipe:
            for p in self.plugin_dir.glob("*.sock"):
                with contextlib.suppress(FileNotFoundError):
                    p.unlink()
        if downtime:
            await asyncio.sleep(downtime)
        await self.start()

    async def _drop(self, p: _Plugin) -> None:
        if p.task is not None:
            p.task.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await p.task
        await p.client.close()

    async def _on_register(self, request: api_pb2.RegisterRequest) -> None:
        req = api_pb2.RegisterRequest()
        req.CopyFrom(request)
        old = self._plugins.pop(req.resource_name, None)
        if old is not None:
            await self._drop(old)
        plugin = _Plugin(req, PluginClient(self.plugin_dir / req.endpoint))
        self._plugins[req.resource_name] = plugin
        if self.connect:
            plugin.task = asyncio.create_task(self._watch(plugin))
        async with self._cond:
            self.registrations.append(req)
            self._cond.notify_all()

    async def _watch(self, plugin: _Plugin) -> None:
        resource = plugin.request.resource_name
        plugin.options = await plugin.client.options()
        call = plugin.client.list_and_watch()
        try:
            async for resp in call:
                async with self._cond:
                    self.devices[resource] = {d.ID: d.health for d in resp.devices}
                    self.topology[resource] = {d.ID: [n.ID for n in d.topology.nodes] for d in resp.devices}
                    self.updates[resource] = self.updates.get(resource, 0) + 1
                    self._cond.notify_all()
        except grpc.aio.AioRpcError:
            pass  # plugin went away; the kubelet waits for a new Register
        finally:
            call.cancel()

    def client(self, resource: str) -> PluginClient:
        """The client of the plugin registered for `resource`."""
        return self._plugins[resource].client

    def options(self, resource: str) -> api_pb2.DevicePluginOptions | None:
        return self._plugins[resource].options

    async def wait_for(self, predicate: Callable[[], bool], timeout: float = 5.0) -> float:
        """Wait until `predicate()` holds (re-checked on every registration/update); returns seconds."""
        t0 = time.monotonic()
        async with self._cond:
            await asyncio.wait_for(self._cond.wait_for(predicate), timeout)
        return time.monotonic() - t0

    async def wait_registrations(self, n: int, timeout: float = 5.0) -> api_pb2.RegisterRequest:
        await self.wait_for(lambda: len(self.registrations) >= n, timeout)
        return self.registrations[n - 1]

    async def __aenter__(self) -> FakeKubelet:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()
