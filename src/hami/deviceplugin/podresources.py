"""The kubelet's PodResources API (v1) as the lock-free mode reads it: who holds which replica IDs.

The kubelet's device manager records a container's device IDs when it calls the plugin's Allocate
(at pod admission, before any container of the pod starts) and keeps them, across kubelet restarts
(its checkpoint), until the pod is gone; `List` reports them per pod and container. Verified
against kubelet v1.34 (pkg/kubelet/apis/podresources/server_v1.go): `List` reports a pod's app
containers and its restartable (sidecar) init containers, not its regular init containers, whose
IDs the app containers after them reuse (pkg/kubelet/cm/devicemanager: `devicesToReuse`).

Guarantees: `PodResourcesClient.list` is one unary call with a timeout over the unix socket; it
raises `PodResourcesError` naming the socket and the gRPC status. `pods_holding` is pure: the
pods whose listed containers hold any of the IDs, with the containers holding exactly them.
"""

from __future__ import annotations

from collections.abc import Collection, Iterable
from dataclasses import dataclass

import grpc

from hami.deviceplugin.podresources_api import api_pb2, api_pb2_grpc


class PodResourcesError(Exception):
    """The kubelet's PodResources API could not be read."""


@dataclass(frozen=True)
class PodHolding:
    """A pod some of whose listed containers hold some of the IDs asked about."""

    namespace: str
    name: str
    #: Listed containers whose IDs (for the resource) are exactly the IDs asked about.
    exact: tuple[str, ...]
    #: Every listed container holding any of them, with its IDs: for messages.
    overlapping: tuple[tuple[str, tuple[str, ...]], ...]

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


class PodResourcesClient:
    """`v1.PodResourcesLister` on the kubelet's socket."""

    def __init__(self, socket: str, *, timeout: float = 10.0) -> None:
        self.socket = socket
        self.timeout = timeout

    async def list(self) -> api_pb2.ListPodResourcesResponse:
        try:
            async with grpc.aio.insecure_channel(f"unix://{self.socket}") as channel:
                stub = api_pb2_grpc.PodResourcesListerStub(channel)  # type: ignore[no-untyped-call]
                resp: api_pb2.ListPodResourcesResponse = await stub.List(
                    api_pb2.ListPodResourcesRequest(), timeout=self.timeout
                )
                return resp
        except grpc.aio.AioRpcError as e:
            raise PodResourcesError(
                f"kubelet PodResources API on {self.socket}: {e.code().name}: {e.details()}"
            ) from e


def container_ids(container: api_pb2.ContainerResources, resource: str) -> tuple[str, ...]:
    """The IDs of `resource` a listed container holds (sorted)."""
    return tuple(sorted(i for d in container.devices if d.resource_name == resource for i in d.device_ids))


def pods_holding(
    resp: api_pb2.ListPodResourcesResponse, resource: str, device_ids: Collection[str]
) -> list[PodHolding]:
    """Every pod one of whose listed containers holds any of `device_ids` of `resource`."""
    want = set(device_ids)
    out = []
    for pod in resp.pod_resources:
        overlapping = []
        exact = []
        for c in pod.containers:
            ids = container_ids(c, resource)
            if want & set(ids):
                overlapping.append((c.name, ids))
                if set(ids) == want:
                    exact.append(c.name)
        if overlapping:
            out.append(PodHolding(pod.namespace, pod.name, tuple(exact), tuple(overlapping)))
    return out


def live_id_sets(resp: api_pb2.ListPodResourcesResponse, resource: str) -> set[tuple[str, ...]]:
    """The ID sets of `resource` that listed containers hold (sorted tuples)."""
    return {ids for pod in resp.pod_resources for c in pod.containers if (ids := container_ids(c, resource))}


def describe(resp: api_pb2.ListPodResourcesResponse, resource: str, limit: int = 8) -> str:
    """What PodResources reported for `resource`, short enough for an error message."""
    rows: list[str] = []
    for pod in resp.pod_resources:
        for c in pod.containers:
            ids = container_ids(c, resource)
            if ids:
                rows.append(f"{pod.namespace}/{pod.name}/{c.name}: {list(ids)}")
    if not rows:
        return f"no container holds {resource}"
    more = f" (+{len(rows) - limit} more)" if len(rows) > limit else ""
    return "; ".join(rows[:limit]) + more


def holders_text(holdings: Iterable[PodHolding]) -> str:
    return "; ".join(
        f"{h.key}: {', '.join(f'{c} {list(ids)}' for c, ids in h.overlapping)}" for h in holdings
    )
