"""The shared inventory: `!search` over stored items, never showing what the room may not see.

Item text is sealed at rest, so there is no plaintext index on disk: the search opens the
items of a bounded window (newest first, at most MAX_SCANNED) in memory and matches them
there; every match is filtered by `may_release` into the asking room first.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from datetime import UTC, datetime, timedelta

from bot.services.digest import DigestItem, select_items
from bot.services.ports import Audit
from bot.services.render import EXERCISE_LINE, target_banner
from bot.services.rooms import ManagedRoom, RoomDirectory
from bot.services.schedule import parse_duration
from bot.storage import IntelItem, Store, in_thread
from commands.context import CommandError, PermissionDenied
from commands.document import Banner, Block, Document, doc, heading, items, para
from policy.ids import RoomKey, UserId

MAX_SCANNED = 10_000
DEFAULT_SPAN = timedelta(days=30)
MAX_SPAN = timedelta(days=365)
SEARCHES_PER_MINUTE = 6  # per person: each opens up to MAX_SCANNED sealed items
SHOWN = 10
SNIPPET = 300


def search(
    room: ManagedRoom,
    candidates: Iterable[DigestItem],
    words: Sequence[str],
    topic: str | None,
    exercise: bool,
) -> list[DigestItem]:
    """Items that fit `room`, contain every word (case-insensitive), carry the topic, and are
    real traffic unless exercise is asked for; newest first."""
    wanted = [w.casefold() for w in words if w.strip()]
    tag = topic.casefold().lstrip("#") if topic else None
    found = []
    for item in select_items(room, candidates):
        if item.exercise != exercise:
            continue
        if tag is not None and tag not in item.topics:
            continue
        text = item.text.casefold()
        if all(w in text for w in wanted):
            found.append(item)
    return sorted(found, key=lambda i: i.created_at, reverse=True)


def results_document(
    room: ManagedRoom,
    query: str,
    found: Sequence[DigestItem],
    since: datetime,
    scanned: int,
    exercise: bool,
) -> Document:
    title = f"Search “{query}” in {room.key}: {len(found)} match(es) since {since:%Y-%m-%d}"
    blocks: list[Block] = [heading(title)]
    if exercise:
        blocks.append(para(Banner(EXERCISE_LINE, 0)))
    if not found:
        blocks.append(para("No stored item this room may see matches."))
    rows = []
    for item in found[:SHOWN]:
        banner, rank = target_banner(item.label, room.policy.scheme)
        text = item.text if len(item.text) <= SNIPPET else item.text[:SNIPPET] + "…"
        rows.append(
            (Banner(banner, rank), f" {item.created_at:%Y-%m-%d %H:%MZ} ({item.source_key}) ", text)
        )
    if rows:
        blocks.append(items(rows))
    if len(found) > SHOWN:
        blocks.append(
            para(f"… and {len(found) - SHOWN} more; narrow the words, --topic or --since.")
        )
    if scanned >= MAX_SCANNED:
        blocks.append(para(f"Only the newest {MAX_SCANNED} stored items were searched."))
    return doc(*blocks)


class Inventory:
    """`!search` from a managed room, for its members only, audited with counts (never
    the words searched for: they may be classified themselves)."""

    def __init__(
        self,
        store: Store,
        rooms: RoomDirectory,
        is_member: Callable[[UserId, ManagedRoom], bool],
        item_of: Callable[[IntelItem], DigestItem | None],
        audit: Audit,
    ) -> None:
        self.store = store
        self.rooms = rooms
        self.is_member = is_member
        self.item_of = item_of
        self.audit = audit
        self._recent: dict[str, deque[float]] = {}

    async def search(
        self,
        actor: UserId,
        room_key: RoomKey,
        words: Sequence[str],
        topic: str | None,
        since: str | None,
        exercise: bool,
    ) -> Document:
        managed = self.rooms.managed(room_key)
        self._throttle(actor)
        if not self.is_member(actor, managed):
            raise PermissionDenied(
                f"only members of {room_key} may search from it",
                "not a member of that room",
                room=room_key,
            )
        try:
            span = parse_duration(since) if since else DEFAULT_SPAN
        except ValueError as exc:
            raise CommandError(f"--since: {exc}") from None
        if span > MAX_SPAN:
            raise CommandError("--since: at most 365d")
        start = datetime.now(UTC) - span
        stored = await in_thread(self.store.items_since, start, MAX_SCANNED)
        scanned = len(stored)
        # Originator control: another room's item shows only where it was released.
        released = {
            i.event_id
            for i in await in_thread(
                self.store.relayed_items_to, [managed.key], start, datetime.now(UTC)
            )
        }
        stored = [i for i in stored if i.room_key == managed.key or i.event_id in released]
        # Unsealing thousands of items takes a while: off the event loop.
        opened = await asyncio.to_thread(lambda: [self.item_of(i) for i in stored])
        candidates = [c for c in opened if c is not None]
        found = search(managed, candidates, words, topic, exercise)
        await self.audit(actor, "search", room_key, {"matches": len(found), "scanned": scanned})
        query = " ".join(words) + (f" #{topic.lstrip('#')}" if topic else "")
        return results_document(managed, query, found, start, scanned, exercise)

    def _throttle(self, actor: str) -> None:
        """At most SEARCHES_PER_MINUTE per person, refused with when to try again."""
        now = time.monotonic()
        recent = self._recent.setdefault(actor, deque())
        while recent and now - recent[0] > 60:
            recent.popleft()
        if len(recent) >= SEARCHES_PER_MINUTE:
            wait = int(60 - (now - recent[0])) + 1
            raise CommandError(
                f"at most {SEARCHES_PER_MINUTE} searches a minute; try again in {wait} s"
            )
        recent.append(now)
        if len(self._recent) > 10_000:  # forget the oldest callers, not the limit
            self._recent.pop(next(iter(self._recent)))
