"""A loopback TCP proxy for fault injection: cut every connection through it, refuse new ones, resume.

Point a client at ``proxy.port`` instead of the real server (TLS passes through untouched, so
the server certificate must cover ``127.0.0.1``)::

    async with TcpProxy("127.0.0.1", apiserver_port) as proxy:
        cfg = dataclasses.replace(kube_config, server=f"https://127.0.0.1:{proxy.port}")
        ...
        proxy.pause()    # drop open connections; new ones are closed at once
        ...
        proxy.resume()
"""

from __future__ import annotations

import asyncio
import contextlib
from types import TracebackType
from typing import Self

__all__ = ["TcpProxy"]


class TcpProxy:
    def __init__(self, target_host: str, target_port: int, *, listen_host: str = "127.0.0.1") -> None:
        self.target_host = target_host
        self.target_port = target_port
        self.listen_host = listen_host
        self.port = 0
        self.paused = False
        self.connections = 0
        self._server: asyncio.Server | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task[None]] = set()

    async def start(self) -> Self:
        self._server = await asyncio.start_server(self._handle, self.listen_host, 0)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    async def __aenter__(self) -> Self:
        return await self.start()

    async def __aexit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.stop()

    def pause(self) -> None:
        """Abort every proxied connection and refuse new ones until :meth:`resume`."""
        self.paused = True
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()

    def resume(self) -> None:
        self.paused = False

    async def stop(self) -> None:
        self.pause()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()
        for t in list(self._tasks):
            t.cancel()
        for t in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self.paused:
            writer.transport.abort()
            return
        try:
            up_reader, up_writer = await asyncio.open_connection(self.target_host, self.target_port)
        except OSError:
            writer.transport.abort()
            return
        self.connections += 1
        self._writers.update((writer, up_writer))
        t1 = asyncio.create_task(self._pipe(reader, up_writer))
        t2 = asyncio.create_task(self._pipe(up_reader, writer))
        self._tasks.update((t1, t2))
        try:
            await asyncio.wait({t1, t2}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for t in (t1, t2):
                t.cancel()
            for w in (writer, up_writer):
                w.transport.abort()
                self._writers.discard(w)
            self._tasks.difference_update((t1, t2))

    @staticmethod
    async def _pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError, asyncio.IncompleteReadError):
            while data := await reader.read(65536):
                writer.write(data)
                await writer.drain()
