"""The sync loop (DESIGN §7): the token is stored only after every event it covers was
handled; a gap in a `limited` timeline is back-filled first; the first sync after start
asks for full state; homeserver errors back off exponentially with a cap, never a tight loop.
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

from nio import SyncError, SyncResponse

from bot.matrix.gateway import Gateway
from bot.storage import Store, in_thread
from bot.tasks import Supervisor

log = logging.getLogger(__name__)

SYNC_FILTER = {"room": {"timeline": {"limit": 100}, "state": {"lazy_load_members": False}}}
SYNC_TIMEOUT_MS = 30_000

# (the sync, the token it follows, whether this is the very first sync of a new bot)
Handler = Callable[[SyncResponse, str | None, bool], Awaitable[None]]


class Backoff:
    """Exponential delays with jitter and a cap: 1, 2, 4 … 30 s."""

    def __init__(self, first: float = 1.0, cap: float = 30.0) -> None:
        self.first, self.cap, self.failures = first, cap, 0

    def next(self) -> float:
        delay = min(self.cap, self.first * 2**self.failures)
        self.failures += 1
        return float(delay * random.uniform(0.8, 1.0))

    def reset(self) -> None:
        self.failures = 0


class SyncProgress:
    """How far the bot has synced: for the health check and for work that waits for the
    next sync (a reply that waits for its reader to join)."""

    def __init__(self) -> None:
        self.started_at = time.monotonic()
        self.last_sync: float | None = None
        self.first_sync_s: float | None = None
        self._done = asyncio.Event()  # replaced after every handled sync

    def age(self) -> float | None:
        """Seconds since the last handled sync (None before the first)."""
        return None if self.last_sync is None else time.monotonic() - self.last_sync

    async def next_sync(self, timeout: float) -> None:
        """Wait until the next sync is handled (TimeoutError after `timeout` seconds)."""
        await asyncio.wait_for(self._done.wait(), timeout)

    def first_handled(self) -> None:
        """The first sync is handled and stored (before the start-up sweep it triggers)."""
        self.first_sync_s = time.monotonic() - self.started_at
        log.info("first sync after %.2f s", self.first_sync_s)

    def handled(self) -> None:
        self.last_sync = time.monotonic()
        done, self._done = self._done, asyncio.Event()
        done.set()


class SyncLoop:
    def __init__(
        self,
        gateway: Gateway,
        store: Store,
        tasks: Supervisor,
        progress: SyncProgress,
        handle: Handler,
        first_synced: Callable[[], Awaitable[None]],
    ) -> None:
        self.gateway = gateway
        self.store = store
        self.tasks = tasks
        self.progress = progress
        self.handle = handle
        self.first_synced = first_synced  # after the first sync is handled and stored

    async def run(self) -> None:
        client = self.gateway.client
        token = await in_thread(self.store.sync_token)
        initial = token is None  # never synced: the timeline is history, not commands
        first = True
        backoff = Backoff()
        while not self.tasks.stopping.is_set():
            try:
                response: Any = await client.sync(
                    timeout=0 if first else SYNC_TIMEOUT_MS,
                    sync_filter=SYNC_FILTER,
                    since=token,
                    full_state=True if first else None,
                )
            except Exception as exc:  # nio raises aiohttp's connection errors after retries
                delay = backoff.next()
                log.warning(
                    "sync failed (%s: %s); retrying in %.1f s", type(exc).__name__, exc, delay
                )
                await self.tasks.sleep(delay)
                continue
            if isinstance(response, SyncError):
                delay = backoff.next()
                log.warning(
                    "sync refused: %s %s; retrying in %.1f s",
                    response.status_code,
                    response.message,
                    delay,
                )
                await self.tasks.sleep(delay)
                continue
            backoff.reset()
            try:
                await self.gateway.after_sync()
                await self.handle(response, token, initial)
                await self.tasks.flush_deferred()
            except Exception:
                log.exception("handling a sync failed; the same events will be retried")
                await self.tasks.sleep(backoff.next())
                continue
            token = response.next_batch
            await in_thread(self.store.save_sync_token, token)
            if first:
                self.progress.first_handled()
                await self.first_synced()
            first = initial = False
            self.progress.handled()
