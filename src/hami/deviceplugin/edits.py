"""What a container receives — env, mounts, device nodes, annotations — as one immutable value.

`ContainerEdits` is built once per container (see `hami.deviceplugin.modes`) and rendered by
whichever path hands it to the runtime: `allocate_response` for the kubelet's Allocate,
`cdi_spec` for a CDI spec file (the lock-free path and DRA prepare results use CDI's
`containerEdits` shape too). Guarantees: pure (no I/O, no clocks); env names and annotation keys
are unique (rejected with ValueError otherwise); mounts and device nodes keep the order they were
built in (env too, where the target has an order: CDI's list; protobuf maps have none); rendering
the same value twice gives equal results.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from typing import Any

from hami.deviceplugin.api import api_pb2

#: The CDI specification version `cdi_spec` writes (0.6.0 added device annotations).
CDI_VERSION = "0.6.0"


@dataclass(frozen=True)
class Mount:
    """A bind mount of `host_path` at `container_path`."""

    container_path: str
    host_path: str
    read_only: bool


@dataclass(frozen=True)
class DeviceNode:
    """A device node made available in the container (`/dev/...`)."""

    #: Path in the container.
    path: str
    #: Path on the host; empty means the same as `path`.
    host_path: str = ""
    #: cgroup device access: any of r (read), w (write), m (mknod).
    permissions: str = "rw"

    @property
    def source(self) -> str:
        return self.host_path or self.path


def _unique(pairs: tuple[tuple[str, str], ...], what: str) -> None:
    seen: set[str] = set()
    for k, _ in pairs:
        if k in seen:
            raise ValueError(f"container edits: {what} {k!r} given twice")
        seen.add(k)


@dataclass(frozen=True)
class ContainerEdits:
    """Env, mounts, device nodes and annotations for one container, in the order they apply."""

    env: tuple[tuple[str, str], ...] = ()
    mounts: tuple[Mount, ...] = ()
    device_nodes: tuple[DeviceNode, ...] = ()
    annotations: tuple[tuple[str, str], ...] = ()

    def __post_init__(self) -> None:
        _unique(self.env, "env variable")
        _unique(self.annotations, "annotation")

    @property
    def env_map(self) -> dict[str, str]:
        return dict(self.env)

    def with_defaults(
        self,
        env: Mapping[str, str] | None = None,
        mounts: Iterable[Mount] = (),
        device_nodes: Iterable[DeviceNode] = (),
    ) -> ContainerEdits:
        """These edits plus `env` entries whose names are not set yet (those already set win), then
        `mounts` and `device_nodes` after the existing ones."""
        have = self.env_map
        return ContainerEdits(
            env=self.env + tuple((k, v) for k, v in (env or {}).items() if k not in have),
            mounts=self.mounts + tuple(mounts),
            device_nodes=self.device_nodes + tuple(device_nodes),
            annotations=self.annotations,
        )


def allocate_response(edits: ContainerEdits) -> api_pb2.ContainerAllocateResponse:
    """The kubelet's ContainerAllocateResponse (device plugin API v1beta1) for these edits."""
    car = api_pb2.ContainerAllocateResponse()
    for k, v in edits.env:
        car.envs[k] = v
    for m in edits.mounts:
        car.mounts.add(container_path=m.container_path, host_path=m.host_path, read_only=m.read_only)
    for d in edits.device_nodes:
        car.devices.add(container_path=d.path, host_path=d.source, permissions=d.permissions)
    for k, v in edits.annotations:
        car.annotations[k] = v
    return car


def cdi_container_edits(edits: ContainerEdits) -> dict[str, Any]:
    """CDI `containerEdits` (env as `K=V`; bind mounts with options; device nodes)."""
    out: dict[str, Any] = {}
    if edits.env:
        out["env"] = [f"{k}={v}" for k, v in edits.env]
    if edits.device_nodes:
        nodes: list[dict[str, Any]] = []
        for d in edits.device_nodes:
            node: dict[str, Any] = {"path": d.path}
            if d.host_path and d.host_path != d.path:
                node["hostPath"] = d.host_path
            node["permissions"] = d.permissions
            nodes.append(node)
        out["deviceNodes"] = nodes
    if edits.mounts:
        out["mounts"] = [
            {
                "hostPath": m.host_path,
                "containerPath": m.container_path,
                "options": ["ro" if m.read_only else "rw", "nosuid", "nodev", "bind"],
            }
            for m in edits.mounts
        ]
    return out


def cdi_spec(kind: str, devices: Mapping[str, ContainerEdits]) -> dict[str, Any]:
    """A CDI spec (JSON-able, cdiVersion 0.6.0) declaring `kind=<name>` for each named edits; a
    device's annotations become the CDI device's annotations."""
    out: list[dict[str, Any]] = []
    for name, edits in devices.items():
        dev: dict[str, Any] = {"name": name}
        if edits.annotations:
            dev["annotations"] = dict(edits.annotations)
        dev["containerEdits"] = cdi_container_edits(edits)
        out.append(dev)
    return {"cdiVersion": CDI_VERSION, "kind": kind, "devices": out}
