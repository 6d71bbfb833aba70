"""The sync loop: the token is stored only after every event it covers was
handled; a gap in a `limited` timeline is back-filled first; the first sync after start
asks for full state; homeserver errors back off exponentially with a cap, never a tight loop.

A restart does not ask for full state when it can restore the rooms instead: with every sync
token the bot stores, in the same transaction, a sealed snapshot of each room that sync
touched (members, encryption). A restart opens them, and syncs on from the token: only what
changed since comes, and with a thousand rooms the first event is handled in about a second
instead of after every room's full state. A snapshot that does not open (another key, an
altered row) makes the restart sync in full, as before.

A snapshot is sealed for its room *and the token it was stored with* (written beside it),
and each stored token comes with a sealed list, bound to that token, of which token each
room's row was stored with: a row of the same room from an older sync, written back, does
not match the list and does not open (a full sync instead). A room without a row (joined
after the token) is read from the server, as before.

nio's own processing of a sync can fail (`ClientStateLost`): nio has by then taken the
sync's token and may hold state its store does not. The client is then replaced by one
loaded afresh from the store, the rooms restored again, and the sync repeated from the
stored token, so that nothing it carried (room keys in to-device messages) is lost.
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import json
import logging
import time
from collections.abc import Awaitable, Callable, Iterable
from typing import Any

from nio import SyncError, SyncResponse

from bot.backoff import Backoff
from bot.matrix.cryptostore import ClientStateLost
from bot.matrix.gateway import Gateway
from bot.storage import Store, in_thread
from bot.storage.sealing import Sealer, SealError
from bot.tasks import Supervisor

log = logging.getLogger(__name__)

SYNC_FILTER = {"room": {"timeline": {"limit": 100}, "state": {"lazy_load_members": False}}}
SYNC_TIMEOUT_MS = 30_000
MAX_MISSING = 50  # rooms without a snapshot read one by one at a restart; more: a full sync
# The row that lists which token each room's snapshot was stored with (not a room id: those
# start with "!" and hold a ":").
MANIFEST = "manifest"
MAX_RELOADS = 3  # nio failing on the same sync this often: its failure is tolerated once

# (the sync, the token it follows, whether this is the very first sync of a new bot)
Handler = Callable[[SyncResponse, str | None, bool], Awaitable[None]]


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
        sealer: Sealer,
    ) -> None:
        self.sealer = sealer  # purpose "room-snapshot"
        self.gateway = gateway
        self.store = store
        self.tasks = tasks
        self.progress = progress
        self.handle = handle
        self.first_synced = first_synced  # after the first sync is handled and stored
        # room id -> the token its stored snapshot was sealed with (what MANIFEST lists)
        self._bound: dict[str, str] = {}
        self._started = False  # the first sync after start is handled (first_synced ran)

    async def run(self) -> None:
        token = await in_thread(self.store.sync_token)
        backoff = Backoff()
        lost = 0  # reloads in a row from the same stored token
        while not self.tasks.stopping.is_set():
            try:
                await self._sync_from(token, backoff)
                return
            except ClientStateLost as exc:
                log.error(
                    "nio failed processing a sync (%s): reloading the client from its store "
                    "and syncing again from the stored token",
                    exc,
                )
                stored = await in_thread(self.store.sync_token)
                lost = lost + 1 if stored == token else 1
                token = stored
                await self.gateway.reload()
                if lost >= MAX_RELOADS:
                    # The same sync fails every time: take what nio makes of it once, as
                    # nio itself would, rather than stall the bot on it for ever.
                    log.error("nio fails on the same sync %d times: taking it as it comes", lost)
                    self.gateway.client.strict = False
                await self.tasks.sleep(backoff.next())

    async def _sync_from(self, token: str | None, backoff: Backoff) -> None:
        """Sync on from `token` with the gateway's current client until stopped; raises
        ClientStateLost when nio fails in the middle of a sync (that client is done)."""
        client = self.gateway.client
        initial = token is None  # never synced: the timeline is history, not commands
        # (rows of rooms left while the bot was down, rooms read from the server instead)
        restored = await self._restore(token) if token is not None else None
        left, fetched = restored or (set(), set())
        full = restored is None  # a first sync without snapshots asks for every room's state
        if full:
            self._bound = {}
        first = True
        while not self.tasks.stopping.is_set():
            try:
                response: Any = await client.sync(
                    timeout=0 if first else SYNC_TIMEOUT_MS,
                    sync_filter=SYNC_FILTER,
                    since=token,
                    full_state=True if first and full else None,
                )
            except ClientStateLost:
                raise
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
            everything = first and full  # the full state of every joined room
            touched = (
                self.gateway.joined_room_ids() if everything else {*response.rooms.join, *fetched}
            )
            forgotten = [*response.rooms.leave, *left]
            snapshots, bound = self._sealed_snapshots(token, touched, forgotten, everything)
            save = functools.partial(
                self.store.save_sync_token, token, snapshots, forgotten, complete=everything
            )
            await in_thread(save)
            self._bound = bound
            client.strict = True
            left, fetched = set(), set()
            if first and restored is not None:  # members as stored are checked with the server
                self.tasks.spawn(self.gateway.check_restored_members(), "restored-members")
            if not self._started:
                self._started = True
                self.progress.first_handled()
                await self.first_synced()
            first = initial = False
            self.progress.handled()

    async def _restore(self, token: str) -> tuple[set[str], set[str]] | None:
        """The rooms as of the stored token, from their sealed snapshots; None (sync in
        full) when there are none or one does not open. A room the bot is in without a
        snapshot (joined after the token, or its row deleted) is read from the server; one
        with a snapshot that the bot has left is not restored. Returns the rows whose rooms
        were left (to drop) and the rooms read from the server (to store)."""
        stored = await in_thread(self.store.room_snapshots)
        manifest = stored.pop(MANIFEST, None)
        if not stored:
            return None
        joined = await self.gateway.joined_rooms()
        missing = sorted(joined - set(stored))
        if len(missing) > MAX_MISSING:
            log.warning(
                "%d rooms the bot is in have no snapshot: syncing every room in full",
                len(missing),
            )
            return None
        opened = {}
        bound: dict[str, str] = {}
        try:
            for room_id, row in stored.items():
                written, _, sealed = row.partition(" ")
                bound[room_id] = written
            if manifest is None:
                raise ValueError("no list of the stored snapshots")
            if self.sealer.open_text(manifest, f"{MANIFEST}\n{token}") != _digest(bound):
                raise ValueError("the stored snapshots are not those stored with the token")
            for room_id, row in stored.items():
                sealed = row.partition(" ")[2]
                snapshot = json.loads(self.sealer.open_text(sealed, f"{room_id}\n{bound[room_id]}"))
                if not valid_snapshot(snapshot):
                    raise ValueError(f"unreadable snapshot of {room_id}")
                if room_id in joined:
                    opened[room_id] = snapshot
        except (SealError, ValueError) as exc:
            log.warning("room snapshots do not open (%s): syncing every room in full", exc)
            return None
        for room_id in missing:
            log.info("room %s has no snapshot: its state read from the server", room_id)
            opened[room_id] = await self.gateway.snapshot_from_server(room_id)
        self.gateway.restore(opened)
        self._bound = bound
        log.info("%d room(s) restored from their snapshots", len(opened) - len(missing))
        return set(stored) - joined, set(missing)

    def _sealed_snapshots(
        self, token: str, room_ids: Iterable[str], forgotten: Iterable[str], complete: bool
    ) -> tuple[dict[str, str], dict[str, str]]:
        """The rows to store with `token`: each touched room's snapshot sealed for the room
        and the token, and MANIFEST, sealed for the token, over which token every row
        that will then be stored was written with. Returns the rows and that list."""
        bound = {} if complete else dict(self._bound)
        for room_id in forgotten:  # the store deletes these first, then writes the rest
            bound.pop(room_id, None)
        out = {}
        for room_id in room_ids:
            snapshot = self.gateway.snapshot(room_id)
            if snapshot is not None:
                sealed = self.sealer.seal_text(json.dumps(snapshot), f"{room_id}\n{token}")
                out[room_id] = f"{token} {sealed}"
                bound[room_id] = token
        out[MANIFEST] = seal_manifest(self.sealer, token, bound)
        return out, bound


def seal_manifest(sealer: Sealer, token: str, bound: dict[str, str]) -> str:
    """MANIFEST's row for `token`: which token each stored room snapshot was sealed with."""
    return sealer.seal_text(_digest(bound), f"{MANIFEST}\n{token}")


def _digest(bound: dict[str, str]) -> str:
    """One hash over every (room, token) pair, in order: a set hash that adds or XORs
    per-room hashes could be matched by picking old rows, this cannot."""
    text = "".join(f"{room_id}\n{token}\n" for room_id, token in sorted(bound.items()))
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def valid_snapshot(snapshot: Any) -> bool:
    """The shape `Gateway.snapshot` writes (version 1)."""
    return (
        isinstance(snapshot, dict)
        and snapshot.get("v") == 1
        and isinstance(snapshot.get("encrypted"), bool)
        and isinstance(snapshot.get("members"), dict)
        and all(isinstance(u, str) and v in (0, 1) for u, v in snapshot["members"].items())
    )
