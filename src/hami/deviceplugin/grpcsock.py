"""gRPC over a unix socket, the way the kubelet's APIs are served (device plugin, Registration,
PodResources)."""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import grpc


async def serve_unix(path: Path, add_servicers: Callable[[grpc.aio.Server], None]) -> grpc.aio.Server:
    """A started `grpc.aio` server on the unix socket `path`, with the servicers `add_servicers`
    adds: the socket's directory is created and a stale socket at `path` replaced."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    server = grpc.aio.server()
    add_servicers(server)
    server.add_insecure_port(f"unix://{path}")
    await server.start()
    return server
