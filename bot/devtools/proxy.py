"""A small counting HTTP proxy between the bot and its homeserver, for outage tests: it
counts every request (so a test can prove the bot backs off instead of looping) and answers
502 while the homeserver is down. `RecordingProxy` also keeps each request's method and
path, for the high-availability tests (which node sent what, and when)."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import aiohttp
from aiohttp import web

HOP_HEADERS = {
    "connection",
    "keep-alive",
    "transfer-encoding",
    "content-length",
    "host",
    "content-encoding",
}


@dataclass
class CountingProxy:
    upstream: str
    times: list[float] = field(default_factory=list)
    _runner: web.AppRunner | None = None
    _session: aiohttp.ClientSession | None = None
    port: int = 0

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def count_between(self, start: float, end: float) -> int:
        return sum(1 for t in self.times if start <= t < end)

    async def start(self, port: int = 0) -> None:
        """Listen on `port`; 0 (the default): any free one, held from the bind on (`port`
        then says which)."""
        self._session = aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120))
        app = web.Application(client_max_size=10 * 1024 * 1024)
        app.router.add_route("*", "/{tail:.*}", self._forward)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", port).start()
        self.port = int(self._runner.addresses[0][1])

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
        if self._session is not None:
            await self._session.close()

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        self.times.append(time.monotonic())
        assert self._session is not None
        headers = {k: v for k, v in request.headers.items() if k.lower() not in HOP_HEADERS}
        body = await request.read()
        try:
            async with self._session.request(
                request.method, self.upstream + request.path_qs, headers=headers, data=body
            ) as upstream:
                payload = await upstream.read()
                out = {k: v for k, v in upstream.headers.items() if k.lower() not in HOP_HEADERS}
                return web.Response(status=upstream.status, body=payload, headers=out)
        except (aiohttp.ClientError, OSError):
            return web.json_response(
                {"errcode": "M_UNKNOWN", "error": "homeserver unreachable"}, status=502
            )


class RecordingProxy(CountingProxy):
    """The counting proxy, also keeping each request's time, method and path."""

    def __init__(self, upstream: str) -> None:
        super().__init__(upstream)
        self.requests: list[tuple[float, str, str]] = []

    async def _forward(self, request: web.Request) -> web.StreamResponse:
        self.requests.append((time.monotonic(), request.method, request.path))
        return await super()._forward(request)

    def sends(self, room_id: str | None = None, since: float = 0.0) -> list[float]:
        """When events were put into a room (any room: None) through here, since then."""
        marker = f"/rooms/{room_id}/" if room_id else "/rooms/"
        return [
            t
            for t, method, path in self.requests
            if t >= since and method == "PUT" and marker in path and "/send/" in path
        ]

    def after(self, since: float) -> list[tuple[float, str, str]]:
        return [r for r in self.requests if r[0] >= since]
