"""The bot's background work: named tasks that log their failure instead of vanishing, work
deferred to the end of a sync batch, and one stop signal every loop watches."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable
from typing import Any

log = logging.getLogger(__name__)


class Supervisor:
    def __init__(self) -> None:
        self.stopping = asyncio.Event()
        self._tasks: set[asyncio.Task[Any]] = set()
        self._deferred: list[asyncio.Task[Any]] = []

    def spawn(self, coro: Awaitable[Any], name: str) -> None:
        task = asyncio.ensure_future(coro)
        task.set_name(name)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[Any]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("background task %s failed", task.get_name(), exc_info=task.exception())

    def defer(self, coro: Awaitable[Any]) -> None:
        """Work of the current sync batch that may overlap the next event's handling; the
        batch waits for it (`flush_deferred`) before its sync token is stored."""
        self._deferred.append(asyncio.ensure_future(coro))

    async def flush_deferred(self) -> None:
        tasks, self._deferred = self._deferred, []
        for result in await asyncio.gather(*tasks, return_exceptions=True):
            if isinstance(result, BaseException):
                log.error("a reply of the last sync batch failed", exc_info=result)

    async def sleep(self, seconds: float) -> None:
        """Sleep, but wake at once when the bot stops."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self.stopping.wait(), timeout=seconds)

    async def close(self) -> None:
        self.stopping.set()
        for task in list(self._tasks):
            task.cancel()
        if self._tasks:
            await asyncio.gather(*self._tasks, return_exceptions=True)
