"""A kubelet PodResources API server (v1) over a real unix socket, for tests.

`FakePodResources` serves `v1.PodResourcesLister` from a table the test edits, shaped like what
the kubelet records at Allocate: pod -> listed containers -> device IDs per resource. `List` reports
every pod (`Get` one), `GetAllocatableResources` nothing; `fail_with` makes every call fail with a
gRPC status, as a kubelet that is down or restarting would.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from hami.deviceplugin.grpcsock import serve_unix
from hami.deviceplugin.podresources_api import api_pb2, api_pb2_grpc

#: (namespace, pod) -> container name -> resource -> device IDs, in insertion order.
Table = dict[tuple[str, str], dict[str, dict[str, list[str]]]]


class _Lister(api_pb2_grpc.PodResourcesListerServicer):
    def __init__(self, fake: FakePodResources) -> None:
        self._f = fake

    async def List(self, request: Any, context: Any) -> api_pb2.ListPodResourcesResponse:
        await self._f.check(context)
        self._f.list_calls += 1
        resp = api_pb2.ListPodResourcesResponse()
        for key in self._f.pods:
            resp.pod_resources.append(self._f.pod_resources(key))
        return resp

    async def Get(self, request: Any, context: Any) -> api_pb2.GetPodResourcesResponse:
        await self._f.check(context)
        key = (request.pod_namespace, request.pod_name)
        if key not in self._f.pods:
            await context.abort(grpc.StatusCode.NOT_FOUND, f"pod {request.pod_name} in namespace not found")
        return api_pb2.GetPodResourcesResponse(pod_resources=self._f.pod_resources(key))

    async def GetAllocatableResources(
        self, request: Any, context: Any
    ) -> api_pb2.AllocatableResourcesResponse:
        await self._f.check(context)
        return api_pb2.AllocatableResourcesResponse()


@dataclass
class FakePodResources:
    socket: Path
    pods: Table = field(default_factory=dict)
    #: When set, every call fails with this status code.
    fail_with: grpc.StatusCode | None = None
    list_calls: int = 0
    _server: grpc.aio.Server | None = None

    def hold(self, namespace: str, pod: str, container: str, resource: str, ids: list[str]) -> None:
        """Record that `container` of `namespace/pod` holds `ids` of `resource`."""
        self.pods.setdefault((namespace, pod), {}).setdefault(container, {})[resource] = list(ids)

    def forget(self, namespace: str, pod: str) -> None:
        self.pods.pop((namespace, pod), None)

    def pod_resources(self, key: tuple[str, str]) -> api_pb2.PodResources:
        out = api_pb2.PodResources(namespace=key[0], name=key[1])
        for name, resources in self.pods[key].items():
            c = out.containers.add(name=name)
            for resource, ids in resources.items():
                c.devices.add(resource_name=resource, device_ids=ids)
        return out

    async def check(self, context: Any) -> None:
        if self.fail_with is not None:
            await context.abort(self.fail_with, "pod resources unavailable")

    async def start(self) -> None:
        lister = _Lister(self)
        self._server = await serve_unix(
            self.socket,
            lambda server: api_pb2_grpc.add_PodResourcesListerServicer_to_server(lister, server),  # type: ignore[no-untyped-call]
        )

    async def stop(self) -> None:
        if self._server is not None:
            await self._server.stop(grace=0.2)
            self._server = None
