"""The kubelet's side of a DRA plugin, over real unix sockets: what the kubelet's plugin watcher
and DRA manager do, for contract and integration tests.

`DraKubelet.register()` waits for a registration socket in the plugins_registry directory, calls
`GetInfo`, checks it as kubelet 1.34 does (type `DRAPlugin`, the expected driver name, an absolute
endpoint, a supported service among `v1.DRAPlugin`/`v1beta1.DRAPlugin`; the first one it knows
wins) and reports the verdict with `NotifyRegistrationStatus`. `prepare`/`unprepare` then call the
plugin's DRAPlugin service at the endpoint it gave, with claims as (namespace, uid, name).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import grpc

from hami.draplugin.api import dra_pb2, dra_pb2_grpc, pluginregistration_pb2, pluginregistration_pb2_grpc

#: The DRA services kubelet 1.34 speaks, most recent first (pkg/kubelet/cm/dra/plugin).
KUBELET_SERVICES = ("v1.DRAPlugin", "v1beta1.DRAPlugin")

Claim = tuple[str, str, str]


class RegistrationRefused(AssertionError):
    """The plugin's PluginInfo is not what the kubelet accepts."""


class DraKubelet:
    """A kubelet that registers one DRA driver and calls it."""

    def __init__(self, registry_dir: str | Path, driver: str) -> None:
        self.registry_dir = Path(registry_dir)
        self.driver = driver
        self.endpoint: str | None = None
        self.service: str | None = None

    async def _socket(self, timeout: float) -> Path:
        deadline = asyncio.get_running_loop().time() + timeout
        while True:
            found = sorted(p for p in self.registry_dir.glob("*.sock") if p.is_socket())
            if found:
                return found[0]
            if asyncio.get_running_loop().time() > deadline:
                raise TimeoutError(f"no registration socket appeared in {self.registry_dir}")
            await asyncio.sleep(0.05)

    async def register(self, timeout: float = 30.0) -> pluginregistration_pb2.PluginInfo:
        """Find, validate and acknowledge the plugin; RegistrationRefused (after telling the
        plugin) when the kubelet would refuse it."""
        sock = await self._socket(timeout)
        async with grpc.aio.insecure_channel(f"unix://{sock}") as ch:
            reg = pluginregistration_pb2_grpc.RegistrationStub(ch)  # type: ignore[no-untyped-call]
            info: pluginregistration_pb2.PluginInfo = await reg.GetInfo(
                pluginregistration_pb2.InfoRequest(), timeout=timeout
            )
            error = self._validate(info)
            await reg.NotifyRegistrationStatus(
                pluginregistration_pb2.RegistrationStatus(plugin_registered=not error, error=error),
                timeout=timeout,
            )
        if error:
            raise RegistrationRefused(error)
        self.endpoint = info.endpoint
        return info

    def _validate(self, info: pluginregistration_pb2.PluginInfo) -> str:
        if info.type != "DRAPlugin":
            return f"plugin type {info.type!r} is not DRAPlugin"
        if info.name != self.driver:
            return f"driver name {info.name!r}, expected {self.driver!r}"
        if not info.endpoint.startswith("/"):
            return f"endpoint {info.endpoint!r} is not an absolute socket path"
        chosen = next((s for s in info.supported_versions if s in KUBELET_SERVICES), None)
        if chosen is None:
            return f"none of the services {list(info.supported_versions)} is supported by the kubelet"
        self.service = chosen
        return ""

    def _channel(self) -> grpc.aio.Channel:
        if self.endpoint is None:
            raise RuntimeError("register() first")
        return grpc.aio.insecure_channel(f"unix://{self.endpoint}")

    async def prepare(self, *claims: Claim, timeout: float = 45.0) -> dra_pb2.NodePrepareResourcesResponse:
        req = dra_pb2.NodePrepareResourcesRequest(
            claims=[dra_pb2.Claim(namespace=ns, uid=uid, name=name) for ns, uid, name in claims]
        )
        async with self._channel() as ch:
            stub = dra_pb2_grpc.DRAPluginStub(ch)  # type: ignore[no-untyped-call]
            resp: dra_pb2.NodePrepareResourcesResponse = await stub.NodePrepareResources(req, timeout=timeout)
            return resp

    async def unprepare(
        self, *claims: Claim, timeout: float = 45.0
    ) -> dra_pb2.NodeUnprepareResourcesResponse:
        req = dra_pb2.NodeUnprepareResourcesRequest(
            claims=[dra_pb2.Claim(namespace=ns, uid=uid, name=name) for ns, uid, name in claims]
        )
        async with self._channel() as ch:
            stub = dra_pb2_grpc.DRAPluginStub(ch)  # type: ignore[no-untyped-call]
            resp: dra_pb2.NodeUnprepareResourcesResponse = await stub.NodeUnprepareResources(
                req, timeout=timeout
            )
            return resp
