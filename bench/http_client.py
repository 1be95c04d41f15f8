"""A small keep-alive HTTP/1.1 client on asyncio streams: the benchmark's load generator for Baton.

Only what the harness needs: POST a JSON body, read the status and a `Content-Length` body, keep
the connection for the next request. Up to `size` connections are opened on demand and reused;
a request waits for a free one, until `send_by` (then `NotSent`: the open loop counts it). The
time returned is the request alone, from its first byte written to its answer read, so a
kickoff's "POST alone" figure excludes the client's own queueing.
"""

from __future__ import annotations

import asyncio
import time

from bench.load import NotSent


class HttpError(Exception):
    pass


class HttpPool:
    def __init__(self, host: str, port: int, size: int, headers: dict[str, str]) -> None:
        self.host, self.port, self.size = host, port, size
        self._head = "".join(f"{k}: {v}\r\n" for k, v in {
            "Host": f"{host}:{port}", "Content-Type": "application/json", **headers}.items())
        self._free: asyncio.LifoQueue[tuple[asyncio.StreamReader, asyncio.StreamWriter]] | None = None
        self._opened = 0
        self._all: set[asyncio.StreamWriter] = set()

    async def _get(self, send_by: float, fresh: bool = False,
                   ) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
        if self._free is None:
            self._free = asyncio.LifoQueue()
        if fresh or (self._free.empty() and self._opened < self.size):
            self._opened += 1
            try:
                reader, writer = await asyncio.open_connection(self.host, self.port)
            except BaseException:
                self._opened -= 1
                raise
            self._all.add(writer)
            return reader, writer
        left = send_by - time.perf_counter()
        try:
            return await asyncio.wait_for(self._free.get(), None if left == float("inf") else max(0, left))
        except TimeoutError:
            raise NotSent from None

    async def post(self, path: str, body: bytes, send_by: float = float("inf")) -> tuple[int, bytes, float]:
        """(status, body, ms of the request alone). A kept connection the server closed while it was
        idle (gunicorn's keep-alive timeout) answers nothing: the request goes again on a new one."""
        request = f"POST {path} HTTP/1.1\r\n{self._head}Content-Length: {len(body)}\r\n\r\n".encode() + body
        try:
            return await self._send(request, await self._get(send_by))
        except _Stale:
            return await self._send(request, await self._get(send_by, fresh=True))

    async def _send(self, request: bytes, conn: tuple[asyncio.StreamReader, asyncio.StreamWriter],
                    ) -> tuple[int, bytes, float]:
        reader, writer = conn
        ok = False
        try:
            t0 = time.perf_counter()
            writer.write(request)
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError) as exc:
                if isinstance(exc, asyncio.IncompleteReadError) and exc.partial:
                    raise
                raise _Stale from exc
            status, text, keep = await _response(head, reader)
            ms = (time.perf_counter() - t0) * 1000
            ok = keep
            return status, text, ms
        finally:
            if ok:
                assert self._free is not None
                self._free.put_nowait((reader, writer))
            else:
                self._opened -= 1
                self._all.discard(writer)
                writer.close()

    async def close(self) -> None:
        for writer in self._all:
            writer.close()
        self._all.clear()


class _Stale(Exception):
    """The connection was closed before the request got any answer."""


async def _response(head: bytes, reader: asyncio.StreamReader) -> tuple[int, bytes, bool]:
    lines = head.decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
        raise HttpError(f"not an HTTP response: {lines[0]!r}")
    length, keep = 0, parts[0] == "HTTP/1.1"
    for line in lines[1:]:
        name, _, value = line.partition(":")
        name = name.strip().lower()
        if name == "content-length":
            length = int(value)
        elif name == "connection":
            keep = value.strip().lower() == "keep-alive" or (keep and value.strip().lower() != "close")
        elif name == "transfer-encoding":
            raise HttpError("chunked answers are not supported by the benchmark's client")
    body = await reader.readexactly(length) if length else b""
    return int(parts[1]), body, keep
