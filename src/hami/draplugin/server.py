"""The DRA plugin's two gRPC services on unix sockets, as the kubelet finds and calls them.

* `Registration` (pluginregistration) on `<registry dir>/<driver>-reg.sock`: the kubelet's plugin
  watcher sees the socket, calls GetInfo (type `DRAPlugin`, name = the driver, endpoint = the DRA
  socket, supported versions `v1.DRAPlugin`) and reports the outcome in NotifyRegistrationStatus.
* `DRAPlugin` (dra v1) on `<plugin dir>/dra.sock`: NodePrepareResources / NodeUnprepareResources,
  delegated claim by claim to a `ClaimPreparer`.

Guarantees: one claim's failure never fails the call or another claim — it is that claim's
`error` (the message names the claim and the reason); an unexpected exception is logged and
reported the same way; on stop both sockets are removed (only if they are still ours).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from pathlib import Path
from typing import Any

import grpc

from hami.draplugin.api import (
    DRA_SERVICE_V1,
    PLUGIN_TYPE_DRA,
    dra_pb2,
    dra_pb2_grpc,
    pluginregistration_pb2,
    pluginregistration_pb2_grpc,
)
from hami.draplugin.prepare import ClaimPreparer, PrepareError
from hami.protocol import keys

log = logging.getLogger(__name__)

DRA_SOCKET_NAME = "dra.sock"


def registration_socket_name(driver: str) -> str:
    return f"{driver}-reg.sock"


class _Registration(pluginregistration_pb2_grpc.RegistrationServicer):
    def __init__(self, plugin: DraPluginServer) -> None:
        self._plugin = plugin

    async def GetInfo(self, request: Any, context: Any) -> pluginregistration_pb2.PluginInfo:
        return pluginregistration_pb2.PluginInfo(
            type=PLUGIN_TYPE_DRA,
            name=self._plugin.driver,
            endpoint=str(self._plugin.dra_socket),
            supported_versions=[DRA_SERVICE_V1],
        )

    async def NotifyRegistrationStatus(
        self, request: Any, context: Any
    ) -> pluginregistration_pb2.RegistrationStatusResponse:
        self._plugin.registration_status(bool(request.plugin_registered), str(request.error))
        return pluginregistration_pb2.RegistrationStatusResponse()


class _DraPlugin(dra_pb2_grpc.DRAPluginServicer):
    def __init__(self, preparer: ClaimPreparer) -> None:
        self._preparer = preparer

    async def NodePrepareResources(self, request: Any, context: Any) -> dra_pb2.NodePrepareResourcesResponse:
        resp = dra_pb2.NodePrepareResourcesResponse()
        for c in request.claims:
            out = resp.claims[c.uid]
            try:
                prepared = await self._preparer.prepare(c.namespace, c.uid, c.name)
            except PrepareError as e:
                out.error = str(e)
                continue
            except Exception as e:
                log.exception("preparing claim %s/%s (%s) failed", c.namespace, c.name, c.uid)
                out.error = f"claim {c.namespace}/{c.name} ({c.uid}): internal error: {e!r}"
                continue
            for d in prepared.devices:
                out.devices.add(
                    request_names=list(d.request_names),
                    pool_name=d.pool_name,
                    device_name=d.device_name,
                    cdi_device_ids=list(d.cdi_device_ids),
                )
        return resp

    async def NodeUnprepareResources(
        self, request: Any, context: Any
    ) -> dra_pb2.NodeUnprepareResourcesResponse:
        resp = dra_pb2.NodeUnprepareResourcesResponse()
        for c in request.claims:
            out = resp.claims[c.uid]
            try:
                await self._preparer.unprepare(c.namespace, c.uid, c.name)
            except PrepareError as e:
                out.error = str(e)
            except Exception as e:
                log.exception("unpreparing claim %s/%s (%s) failed", c.namespace, c.name, c.uid)
                out.error = f"claim {c.namespace}/{c.name} ({c.uid}): internal error: {e!r}"
        return resp


class DraPluginServer:
    """Serves Registration and DRAPlugin for one driver on this node."""

    def __init__(
        self,
        preparer: ClaimPreparer,
        *,
        driver: str = keys.DRA_DRIVER,
        plugin_dir: str | Path,
        registry_dir: str | Path,
    ) -> None:
        self.preparer = preparer
        self.driver = driver
        self.dra_socket = Path(plugin_dir) / DRA_SOCKET_NAME
        self.registration_socket = Path(registry_dir) / registration_socket_name(driver)
        self.registered = asyncio.Event()
        self.last_registration_error = ""
        self._servers: list[tuple[grpc.aio.Server, Path, int]] = []

    def registration_status(self, registered: bool, error: str) -> None:
        """The kubelet's NotifyRegistrationStatus."""
        if registered:
            log.info("registered with the kubelet as DRA driver %s", self.driver)
            self.last_registration_error = ""
            self.registered.set()
        else:
            log.error("the kubelet refused DRA driver %s: %s", self.driver, error)
            self.last_registration_error = error
            self.registered.clear()

    async def _serve(self, path: Path, add: Any, servicer: Any) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        server = grpc.aio.server()
        add(servicer, server)
        server.add_insecure_port(f"unix://{path}")
        await server.start()
        self._servers.append((server, path, path.stat().st_ino))

    async def start(self) -> None:
        """Serve DRAPlugin first, then Registration (the kubelet calls the endpoint right away).
        When either cannot be served (e.g. a socket path longer than 107 bytes), nothing is left
        serving and the error is raised."""
        try:
            await self._serve(
                self.dra_socket, dra_pb2_grpc.add_DRAPluginServicer_to_server, _DraPlugin(self.preparer)
            )
            await self._serve(
                self.registration_socket,
                pluginregistration_pb2_grpc.add_RegistrationServicer_to_server,
                _Registration(self),
            )
        except BaseException:
            await self.stop()
            raise
        log.info(
            "serving DRA driver %s on %s (registration %s)",
            self.driver,
            self.dra_socket,
            self.registration_socket,
        )

    async def stop(self) -> None:
        servers, self._servers = self._servers, []
        for server, path, ino in reversed(servers):
            await server.stop(grace=0.5)
            with contextlib.suppress(FileNotFoundError):
                if path.stat().st_ino == ino:
                    path.unlink()
