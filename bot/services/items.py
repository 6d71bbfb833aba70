"""The opened items `!search` matches against, held in the bot's memory between searches.

Why: item text is sealed at rest (bot/storage/sealing.py), so a search must open what it
matches. Opening every item of the window on each search costs about 60 µs an item (mostly
reading the label, then AES-GCM): 6 s for 100 000 items. This index opens each item once
and keeps it opened, so a search only filters what is already in memory.

What it holds, per stored item that is not retired: the opened `DigestItem` (text, topics,
parsed label) or None when the item does not open (its sealed text or the label or room it
is bound to was altered in the database, or its label no longer reads): such an item is
counted as scanned, as before, but never shown; its text casefolded, once; and the raw
stored label and source room key, by which a search asks `may_release` once per pair
instead of once per item.

Security: the index lives only in this process's memory, which already holds the sealing
key and, while the bot relays, the same plaintext; nothing is written anywhere. The
database gains no table, column or row: no plaintext, no word list, no hash of a word, so
someone reading it learns exactly what they learned before (which items exist, their
labels, rooms and times, their sealed text). Whoever can read this process's memory can
read the key already. What does change: all stored plaintext now stays resident for the
process's life instead of passing through it, so swap and core dumps (which could carry the
key before) matter more; the host should disable both for the bot.

Kept exact:
- new rows are read by row id above the highest one read (one indexed query per search);
- edits and retirements keep the row's id, so the store tells us (`Store.add_item_listener`)
  the event ids it changed, after commit; they are re-read before the next search. The
  same note covers a PostgreSQL row that commits after one with a higher id. The noted ids
  are taken *before* any reading, so a change that commits while we read (the first fill
  takes seconds) is noted again and re-read on the next refresh, never lost;
- only this process's writes are heard: the bot is the only writer of items (the CLI never
  changes them). Another process editing items would need the same note.

Bounded: at most `max_items` items. Past that the oldest (by item time) are dropped, in one
go down to nine tenths of the bound, and `covered_from` records the newest time dropped:
the index then holds exactly the items newer than it. A search whose window reaches back
past that, and which the newest items alone do not fill, is answered from the database
instead (`window` returns None), with the same result.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from datetime import datetime

from bot.services.digest import DigestItem
from bot.storage import IntelItem, Store
from policy import Label

MAX_ITEMS = 200_000  # ~0.9 kB an item with 120 characters of text: ~180 MB when full
BATCH = 10_000  # rows per read: short transactions while the first fill runs


@dataclass(frozen=True, slots=True)
class Opened:
    """One stored item as a search needs it."""

    row_id: int  # orders equal times as the database does (Store.items_since)
    event_id: str
    source_key: str  # the room it was stored from (release decisions are memoised by it)
    label: str  # the raw stored label (and by it)
    created_at: datetime
    item: DigestItem | None  # None: it did not open; counted as scanned, never shown
    folded: str  # item.text.casefold(), matched against casefolded words


class OpenedItems:
    """The index: filled on the first search, brought up to date before each one.

    `refresh` and `window` run in a worker thread (they read the database and unseal); a
    lock keeps one refresh at a time, and callers must not read while one runs (the
    search holds the same lock around both: `lock`)."""

    def __init__(
        self,
        store: Store,
        item_of: Callable[[IntelItem], DigestItem | None],
        max_items: int = MAX_ITEMS,
        batch: int = BATCH,
    ) -> None:
        if max_items < 1 or batch < 1:
            raise ValueError("max_items and batch must be positive")
        self.store = store
        self.item_of = item_of
        self.max_items = max_items
        self.batch = batch
        self.lock = threading.Lock()  # one refresh-and-search at a time
        self.covered_from: datetime | None = None  # held: exactly the items newer than this
        self._held: dict[str, Opened] = {}
        # One copy of each room key, label string and parsed label for all the items that
        # carry it: they are few and the items many (a parsed label alone is ~500 bytes).
        self._strings: dict[str, str] = {}
        self._labels: dict[str, Label] = {}
        self._high = 0  # the highest row id read by `items_after`
        self._started = False  # before the first fill nothing need be noted: it reads all
        self._changed: set[str] = set()
        self._changed_lock = threading.Lock()  # notes come from the writers' threads
        store.add_item_listener(self.changed)

    def __len__(self) -> int:
        return len(self._held)

    def changed(self, event_id: str) -> None:
        """The store's listener: this item was stored, edited or retired (committed)."""
        with self._changed_lock:
            if self._started:
                self._changed.add(event_id)

    def refresh(self) -> None:
        """Read what is new and re-read what changed (the first call reads everything)."""
        with self._changed_lock:
            # Taken before reading anything: whatever commits from now on is noted anew.
            self._started = True
            changed, self._changed = self._changed, set()
        try:
            while True:
                rows = self.store.items_after(self._high, self.batch)
                self._put(rows)
                if len(rows) < self.batch:
                    break
            if changed:
                for event_id in changed:
                    self._held.pop(event_id, None)  # retired ones stay out: not in the answer
                self._put(self.store.items_with_event_ids(changed))
        except BaseException:
            with self._changed_lock:  # a failed read (database down) forgets no change
                self._changed |= changed
            raise

    def window(self, start: datetime, limit: int) -> list[Opened] | None:
        """What a search from `start` scans, as `Store.items_since(start, limit)` would
        give it: the newest `limit` items from `start` on (newest first, equal times the
        highest row first, when more are held; otherwise in no particular order). None
        when the index does not hold them all: the caller reads the database instead."""
        chosen = [o for o in self._held.values() if o.created_at >= start]
        if self.covered_from is not None and start <= self.covered_from and len(chosen) < limit:
            return None  # some of the window was dropped, and the newest do not fill it
        if len(chosen) > limit:
            chosen.sort(key=lambda o: (o.created_at, o.row_id), reverse=True)
            del chosen[limit:]
        return chosen

    def _put(self, rows: Iterable[tuple[int, IntelItem]]) -> None:
        for row_id, stored in rows:
            self._high = max(self._high, row_id)
            if self.covered_from is not None and stored.created_at <= self.covered_from:
                self._held.pop(stored.event_id, None)
                continue
            item = self.item_of(stored)
            room_key = self._strings.setdefault(stored.room_key, stored.room_key)
            label = self._strings.setdefault(stored.label, stored.label)
            folded = ""
            if item is not None:
                parsed = self._labels.setdefault(label, item.label)
                if parsed is not item.label and parsed == item.label:
                    item = replace(item, label=parsed)
                folded = item.text.casefold()
                if folded == item.text:
                    folded = item.text  # one string, not two
            self._held[stored.event_id] = Opened(
                row_id, stored.event_id, room_key, label, stored.created_at, item, folded
            )
        self._bound()

    def _bound(self) -> None:
        """Drop the oldest items when over the bound, down to nine tenths of it (so a
        full index sorts once per tenth of new items, not on each one)."""
        if len(self._held) <= self.max_items:
            return
        by_time = sorted(self._held.values(), key=lambda o: (o.created_at, o.row_id))
        cut = by_time[len(by_time) - self.max_items * 9 // 10 - 1].created_at
        self.covered_from = cut if self.covered_from is None else max(cut, self.covered_from)
        for opened in by_time:
            if opened.created_at > self.covered_from:
                break
            del self._held[opened.event_id]
