"""The shared inventory: `!search` over stored items, never showing what the room may not see.

Item text is sealed at rest, so there is no plaintext index on disk. The items are opened
once and kept opened in the bot's memory (bot/services/items.py, which says what it holds
and why that adds nothing at rest); a search scans a bounded window of them (newest first,
at most MAX_SCANNED) and every match is released into the asking room by `may_release`.
When the in-memory index does not hold the whole window (more items than its bound), the
search opens the window from the database as it always did: the same answer, slower.

`search` is the definition: what a search finds among opened items. `search_opened` finds
the same among the index's items, faster (one release decision per label and source room,
text casefolded once); tests/test_search_index.py holds the two to the same answers.
"""

from __future__ import annotations

import asyncio
import time
from collections import deque
from collections.abc import Callable, Iterable, Mapping, Sequence, Set
from dataclasses import replace
from datetime import UTC, datetime, timedelta

from bot.schedule import parse_duration
from bot.services.digest import DigestItem, held_mark, select_items
from bot.services.items import MAX_ITEMS, Opened, OpenedItems
from bot.services.ports import Audit
from bot.services.render import EXERCISE_LINE, target_banner
from bot.services.rooms import ManagedRoom, RoomDirectory
from bot.storage import IntelItem, Store
from commands.context import CommandError, PermissionDenied
from commands.document import Banner, Block, Document, doc, heading, items, para
from policy import may_release
from policy.ids import RoomKey, UserId

# The newest items a search scans (the rest are counted out in the answer). As large as a
# full index's newest part, so with the index the whole of 100 000 items is searched.
MAX_SCANNED = 100_000
DEFAULT_SPAN = timedelta(days=30)
MAX_SPAN = timedelta(days=365)
SEARCHES_PER_MINUTE = 6  # per person: past the index's bound each opens up to MAX_SCANNED items
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


def search_opened(
    room: ManagedRoom,
    scanned: Iterable[Opened],
    rooms: Mapping[str, ManagedRoom],
    released: Set[str],
    now: datetime,
    words: Sequence[str],
    topic: str | None,
    exercise: bool,
) -> list[DigestItem]:
    """What `search` finds among the same items (`scanned`: the window, each item's source
    room looked up in `rooms` now, another room's item only if `released` into this one
    before `now`), in the same order, at a fraction of the cost.

    Why it can differ in cost and not in answer: `may_release` depends only on the item's
    label and the two rooms' policies, so it is asked once per (stored label, source room)
    in a search; the text was casefolded when it was opened. The order is `search`'s:
    newest first, then `select_items`'s (precedence, then the window's order: highest row
    id first)."""
    wanted = [w.casefold() for w in words if w.strip()]
    tag = topic.casefold().lstrip("#") if topic else None
    released_here: dict[tuple[str, str], bool] = {}
    found: list[tuple[Opened, DigestItem, ManagedRoom]] = []
    here = room.key
    for opened in scanned:
        item = opened.item
        if item is None or item.exercise != exercise:
            continue
        if opened.source_key != here and (
            opened.event_id not in released or opened.created_at >= now
        ):
            continue  # originator control: only what was relayed into this room
        if tag is not None and tag not in item.topics:
            continue
        text = opened.folded
        missing = False
        for word in wanted:  # a plain loop: all() over a generator costs more per item
            if word not in text:
                missing = True
                break
        if missing:
            continue
        source = rooms.get(opened.source_key)
        if source is None:
            continue
        key = (opened.label, opened.source_key)
        allowed = released_here.get(key)
        if allowed is None:
            allowed = may_release(item.label, source.policy, room.policy).allowed
            released_here[key] = allowed
        if allowed:
            found.append((opened, item, source))
    found.sort(key=lambda f: (f[0].created_at, -int(f[1].precedence), f[0].row_id), reverse=True)
    # The source room as it is now, as opening the item now would give it.
    return [
        item if item.source is source else replace(item, source=source) for _, item, source in found
    ]


def results_document(
    room: ManagedRoom,
    query: str,
    found: Sequence[DigestItem],
    since: datetime,
    scanned: int,
    exercise: bool,
    held: Set[str] = frozenset(),
) -> Document:
    """The answer; `held`: event ids of items held for release approval, the room's own
    marked so (digest.held_mark)."""
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
            (
                Banner(banner, rank),
                f" {item.created_at:%Y-%m-%d %H:%MZ} ({item.source_key}) ",
                text + held_mark(room, item, held),
            )
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
        *,
        max_items: int = MAX_ITEMS,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.store = store
        self.rooms = rooms
        self.is_member = is_member
        self.item_of = item_of
        self.audit = audit
        self.clock = clock
        self.opened = OpenedItems(store, item_of, max_items)
        self._queue = asyncio.Lock()  # searches wait their turn here, not in worker threads
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
                code="permission.not_member",
                room=room_key,
            )
        try:
            span = parse_duration(since) if since else DEFAULT_SPAN
        except ValueError as exc:
            raise CommandError(f"--since: {exc}") from None
        if span > MAX_SPAN:
            raise CommandError("--since: at most 365d")
        now = self.clock()
        start = now - span
        async with self._queue:
            # Reading, unsealing and matching 100 000 items takes a while: off the loop.
            found, scanned = await asyncio.to_thread(
                self.find, managed, words, topic, exercise, start, now
            )
        await self.audit(actor, "search", room_key, {"matches": len(found), "scanned": scanned})
        query = " ".join(words) + (f" #{topic.lstrip('#')}" if topic else "")
        # Only the room's own items can be held (another room's show only once relayed).
        own = any(i.source_key == managed.key for i in found[:SHOWN])
        held = await asyncio.to_thread(self.store.held_item_ids) if own else frozenset()
        return results_document(managed, query, found, start, scanned, exercise, held)

    def find(
        self,
        room: ManagedRoom,
        words: Sequence[str],
        topic: str | None,
        exercise: bool,
        start: datetime,
        now: datetime,
    ) -> tuple[list[DigestItem], int]:
        """(matches, items scanned) from `start` on, in a worker thread: from the index,
        brought up to date first, or from the database when the index does not hold the
        whole window."""
        released = self.store.released_item_ids(room.key)
        with self.opened.lock:  # held even if the awaiting search was cancelled
            self.opened.refresh()
            window = self.opened.window(start, MAX_SCANNED)
            if window is not None:
                found = search_opened(
                    room, window, self.rooms.by_key, released, now, words, topic, exercise
                )
                return found, len(window)
        return self.find_in_database(room, released, words, topic, exercise, start, now)

    def find_in_database(
        self,
        room: ManagedRoom,
        released: Set[str],
        words: Sequence[str],
        topic: str | None,
        exercise: bool,
        start: datetime,
        now: datetime,
    ) -> tuple[list[DigestItem], int]:
        """The search as it was before the index: read the window, open every item in it,
        match. Used past the index's bound (and by the tests, as the reference)."""
        stored = self.store.items_since(start, MAX_SCANNED)
        scanned = len(stored)
        # Originator control: another room's item shows only where it was released.
        stored = [
            i
            for i in stored
            if i.room_key == room.key or (i.event_id in released and i.created_at < now)
        ]
        opened = [self.item_of(i) for i in stored]
        candidates = [c for c in opened if c is not None]
        return search(room, candidates, words, topic, exercise), scanned

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
