"""`!search` from the in-memory index of opened items (bot/services/items.py) answers exactly
what opening the whole window from the database answers, and adds nothing to the database.

The reference here is the search as it was before the index, written out again from the
store's own functions (`items_since`, `relayed_items_to`, `item_of`, `search`), so that a
mistake shared by the index and its fallback path would still show.
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from unittest import mock

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import inspect, select, text

import bot.services.search as search_module
from bot.metrics import Metrics
from bot.services.digest import DigestItem, DigestService
from bot.services.items import MAX_ITEMS
from bot.services.relay import item_binding, opened_payload, sealed_payload
from bot.services.rooms import ManagedRoom
from bot.services.search import Inventory, results_document, search
from bot.storage import Base, IntelItem, RelayEntry, RelayKind, Store
from bot.storage.sealing import Sealer, SealError
from policy import Precedence, make_room, parse_marking
from policy.ids import RoomId, RoomKey, UserId
from tests.fakes import NoMessenger, no_audit
from tests.pg import fresh_schema

NATO = ManagedRoom(
    RoomKey("nato-s"),
    "NATO SECRET liaison",
    make_room(parse_marking("NATO SECRET")),
    RoomId("!n:x"),
)
DEU = ManagedRoom(
    RoomKey("deu"), "DEU cell", make_room(parse_marking("DEU GEHEIM")), RoomId("!d:x")
)
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
# Markings as each room's members write them; one above the NATO room (a spillage that was
# stored), one that no longer reads, and a room the directory does not know.
MARKINGS = {
    "nato-s": [
        "NATO SECRET",
        "NATO CONFIDENTIAL",
        "COSMIC TOP SECRET",
        "NATO SECRET // REL TO DEU",
    ],
    "deu": [
        "DEU GEHEIM // REL TO NATO",
        "DEU GEHEIM",
        "DEU VS-VERTRAULICH // REL TO NATO",
        "NATO CONFIDENTIAL",
    ],
    "gone": ["NATO SECRET"],
}
UNREADABLE = "NOT A MARKING"
# Words with case and Unicode variants that casefold together (ß/SS, final sigma, the fi
# ligature, dotted capital I) and some that do not.
VOCABULARY = [
    "convoy",
    "Convoy",
    "CONVOY",
    "straße",
    "STRASSE",
    "Σίσυφος",
    "ΣΊΣΥΦΟΣ",
    "ﬁsh",
    "FISH",
    "İzmir",
    "izmir",
    "kiel",
    "ship",
    "radar",
    "",
    " ",
    "é",
    "e\u0301",  # e and a combining accent: not the same as the precomposed one
]
TOPICS = ["kiel", "Kiel", "baltic"]


class Rooms:
    """The room directory as the search uses it."""

    def __init__(self, *rooms: ManagedRoom) -> None:
        self.by_key = {r.key: r for r in rooms}

    def managed(self, key: str) -> ManagedRoom:
        return self.by_key[RoomKey(key)]


@dataclass
class World:
    """A store, the sealer and `item_of` the bot would use, and an inventory over them."""

    store: Store
    sealer: Sealer
    rooms: Rooms
    item_of: Callable[[IntelItem], DigestItem | None]
    inventory: Inventory
    audits: list[tuple[Any, ...]] = field(default_factory=list)
    made: int = 0

    def seal(self, event_id: str, room_key: str, label: str, body: str, topics: list[str]) -> str:
        return self.sealer.seal_text(
            sealed_payload(body, topics), item_binding(event_id, room_key, label)
        )

    def save(
        self,
        room_key: str,
        label: str,
        body: str,
        *,
        at: datetime = NOW,
        exercise: bool = False,
        topics: list[str] | None = None,
        precedence: int = 3,
    ) -> str:
        self.made += 1
        event_id = f"$e{self.made}"
        scheme = label.split()[0] if label != UNREADABLE else "NATO"
        self.store.save_item(
            IntelItem(
                event_id, room_key, f"!{room_key}:x", "@lo:x", label, scheme, 3,
                Precedence(precedence), exercise, (),
                self.seal(event_id, room_key, label, body, topics or []), at,
            )
        )  # fmt: skip
        return event_id

    def edit(self, event_id: str, label: str, body: str, exercise: bool, topics: list[str]) -> None:
        stored = self.store.item(event_id)
        assert stored is not None
        self.store.update_item(
            event_id,
            label=label,
            scheme=label.split()[0],
            rank=3,
            precedence=int(stored.precedence),
            exercise=exercise,
            topics=(),
            text=self.seal(event_id, stored.room_key, label, body, topics),
        )

    def release(self, event_id: str, target: str, sent: bool = True) -> None:
        txn = f"t{event_id}{target}"
        self.store.add_relays(
            [RelayEntry(txn, RelayKind.COPY, event_id, event_id, target, f"!{target}:x", "")]
        )
        if sent:
            self.store.relay_sent(txn, f"$copy{txn}")

    def reference(
        self,
        room: ManagedRoom,
        words: list[str],
        topic: str | None,
        exercise: bool,
        start: datetime,
        limit: int,
    ) -> tuple[list[DigestItem], int]:
        """The search before the index: open the window, keep what the room may see, match."""
        stored = self.store.items_since(start, limit)
        released = {i.event_id for i in self.store.relayed_items_to([room.key], start, NOW)}
        kept = [i for i in stored if i.room_key == room.key or i.event_id in released]
        opened = [self.item_of(i) for i in kept]
        return search(room, [c for c in opened if c is not None], words, topic, exercise), len(
            stored
        )


def open_item(sealer: Sealer) -> Callable[[IntelItem], tuple[str, tuple[str, ...]]]:
    """RelayEngine.open_item: bound to the item's event, room and label."""

    def opened(item: IntelItem) -> tuple[str, tuple[str, ...]]:
        try:
            sealed = sealer.open_text(
                item.text, item_binding(item.event_id, item.room_key, item.label)
            )
        except SealError:
            sealed = sealer.open_text(item.text, item.event_id)
        return opened_payload(sealed, item.topics)

    return opened


def world_of(store: Store, max_items: int = MAX_ITEMS) -> World:
    sealer = Sealer("test-data-key-" + "x" * 40, "intel")
    rooms = Rooms(NATO, DEU)
    config = SimpleNamespace(digests=[], bot=SimpleNamespace(timezone="UTC", caveats=[]))
    digests = DigestService(
        config,  # type: ignore[arg-type]  # Config: only digests and bot (none, UTC)
        store,
        rooms,  # type: ignore[arg-type]  # RoomDirectory: only by_key and managed (Rooms)
        NoMessenger(),  # used for item_of only: it posts nothing
        no_audit,
        Metrics(lambda: None),
        open_item(sealer),
    )
    audits: list[tuple[Any, ...]] = []

    async def audit(actor: str, action: str, subject: str | None, detail: dict[str, Any]) -> None:
        audits.append((actor, action, subject, detail))

    inventory = Inventory(
        store,
        rooms,  # type: ignore[arg-type]  # RoomDirectory: only by_key and managed (Rooms)
        lambda user, room: True,
        digests.item_of,
        audit,
        max_items=max_items,
        clock=lambda: NOW,
    )
    return World(store, sealer, rooms, digests.item_of, inventory, audits)


@contextmanager
def fresh_store(backend: str) -> Iterator[Store]:
    """An empty store of its own (the tables made from the models, which a test elsewhere
    holds to the migrations)."""
    if backend == "sqlite":
        with tempfile.TemporaryDirectory() as tmp:
            store = Store.from_url(f"sqlite:///{Path(tmp) / 'items.db'}")
            Base.metadata.create_all(store.engine)
            try:
                yield store
            finally:
                store.close()
        return
    with fresh_schema() as url:
        store = Store.from_url(url)
        Base.metadata.create_all(store.engine)
        try:
            yield store
        finally:
            store.close()


# ---------------------------------------------------------------- the property

texts = st.lists(st.sampled_from(VOCABULARY), min_size=0, max_size=5).map(" ".join)
# Few distinct times, so that equal times (and their order) come up often; some in the
# future (a released item counts only from before "now").
days_back = st.integers(min_value=-8, max_value=1).map(lambda k: NOW + timedelta(days=4 * k))
topic_lists = st.lists(st.sampled_from(TOPICS), max_size=2, unique=True)


@st.composite
def saves(draw: st.DrawFn) -> tuple[Any, ...]:
    room_key = draw(st.sampled_from(sorted(MARKINGS)))
    label = draw(st.sampled_from([*MARKINGS[room_key], UNREADABLE]))
    return (
        "save",
        room_key,
        label,
        draw(texts),
        draw(days_back),
        draw(st.booleans()),
        draw(topic_lists),
        draw(st.integers(0, 3)),
        draw(st.sampled_from([None, "nato-s", "deu"])),  # relayed there at once
    )


@st.composite
def edits(draw: st.DrawFn) -> tuple[Any, ...]:
    which = draw(st.integers(0, 40))
    return (
        "edit",
        which,
        draw(st.integers(0, 10)),
        draw(texts),
        draw(st.booleans()),
        draw(topic_lists),
    )


searches = st.tuples(
    st.just("search"),
    st.sampled_from([NATO, DEU]),
    st.lists(st.sampled_from(VOCABULARY), max_size=2),
    st.sampled_from([None, "kiel", "#Kiel", "baltic"]),
    st.sampled_from(
        [timedelta(days=1), timedelta(days=7), timedelta(days=30), timedelta(days=365)]
    ),
    st.booleans(),
)
operations = st.lists(
    st.one_of(
        saves(),
        saves(),
        saves(),
        edits(),
        st.tuples(st.just("redact"), st.integers(0, 40), st.booleans()),
        st.tuples(st.just("redact"), st.integers(0, 40), st.booleans()),
        st.tuples(
            st.just("release"),
            st.integers(0, 40),
            st.sampled_from(["nato-s", "deu"]),
            st.booleans(),
        ),
        searches,
    ),
    min_size=5,
    max_size=40,
)
# After the operations, every room, both kinds of traffic and every span, without words:
# the whole answer compared, order included.
SWEEP: list[tuple[Any, ...]] = [
    ("search", room, [], None, span, exercise)
    for room in (NATO, DEU)
    for exercise in (False, True)
    for span in (timedelta(days=1), timedelta(days=30), timedelta(days=365))
]


def run(world: World, ops: list[tuple[Any, ...]], limit: int) -> int:
    """Apply the operations, comparing every search with the reference; how many ran."""
    ran = 0
    for op in [*ops, *SWEEP]:
        made = [f"$e{n}" for n in range(1, world.made + 1)]
        if op[0] == "save":
            _, room_key, label, body, at, exercise, topics, precedence, target = op
            event_id = world.save(
                room_key,
                label,
                body,
                at=at,
                exercise=exercise,
                topics=topics,
                precedence=precedence,
            )
            if target is not None:
                world.release(event_id, target)
        elif op[0] == "edit" and made:
            _, which, marking, body, exercise, topics = op
            event_id = made[which % len(made)]
            stored = world.store.item(event_id)
            assert stored is not None
            choices = MARKINGS.get(stored.room_key, MARKINGS["nato-s"])
            world.edit(event_id, choices[marking % len(choices)], body, exercise, topics)
        elif op[0] == "redact" and made:
            _, which, forget = op
            event_id = made[which % len(made)]
            world.store.redact_item(
                event_id, world.sealer.seal_text("", event_id) if forget else None
            )
        elif op[0] == "release" and made:
            _, which, target, sent = op
            world.release(made[which % len(made)], target, sent)
        elif op[0] == "search":
            _, room, words, topic, span, exercise = op
            start = NOW - span
            got = world.inventory.find(room, words, topic, exercise, start, NOW)
            assert got == world.reference(room, words, topic, exercise, start, limit)
            ran += 1
    return ran


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(
    corpus=st.lists(saves(), min_size=3, max_size=30),
    ops=operations,
    max_items=st.sampled_from([MAX_ITEMS, 1, 4, 9]),
    limit=st.sampled_from([search_module.MAX_SCANNED, 3, 8]),
)
def test_indexed_search_answers_as_opening_the_whole_window(
    backend: str,
    corpus: list[tuple[Any, ...]],
    ops: list[tuple[Any, ...]],
    max_items: int,
    limit: int,
) -> None:
    """Random corpora, edits, retirements and releases interleaved with searches: the
    index (and, past a small bound, its fallback) finds the same items, in the same order,
    and counts the same items scanned, as opening the window from the database."""
    with fresh_store(backend) as store, mock.patch.object(search_module, "MAX_SCANNED", limit):
        world = world_of(store, max_items)
        assert run(world, corpus + ops, limit) >= len(SWEEP)


# ---------------------------------------------------------------- the bound and the fallback


def test_a_window_larger_than_the_index_is_read_from_the_database(store: Store) -> None:
    """Twenty items, an index of five: a 30-day search falls back (and answers as an index
    large enough does); a one-day search of the newest items stays in memory."""
    small = world_of(store, max_items=5)
    large = world_of(store)
    for n in range(20):
        small.save("nato-s", "NATO SECRET", f"convoy {n}", at=NOW - timedelta(hours=2 * n))
    fallbacks: list[int] = []
    real = small.inventory.find_in_database

    def counted(*args: Any) -> tuple[list[DigestItem], int]:
        fallbacks.append(1)
        return real(*args)

    with mock.patch.object(small.inventory, "find_in_database", counted):
        month = small.inventory.find(NATO, ["convoy"], None, False, NOW - timedelta(days=30), NOW)
        assert fallbacks == [1]
        assert 0 < len(small.inventory.opened) <= 5
        assert month == large.inventory.find(
            NATO, ["convoy"], None, False, NOW - timedelta(days=30), NOW
        )
        assert month == small.reference(
            NATO, ["convoy"], None, False, NOW - timedelta(days=30), 10**6
        )
        assert len(month[0]) == 20 and month[1] == 20
        recent = small.inventory.find(NATO, ["convoy"], None, False, NOW - timedelta(hours=5), NOW)
        assert fallbacks == [1]  # the newest items are held: answered from memory
        assert [i.text for i in recent[0]] == ["convoy 0", "convoy 1", "convoy 2"]


# ---------------------------------------------------------------- changes while filling


def test_a_change_committed_while_the_index_fills_is_not_lost(store: Store) -> None:
    """The first fill reads in batches; an edit, a retirement and a new item that commit
    between two batches (rows the fill has already read, and one it has not) show in the
    next search as they are in the database."""
    world = world_of(store)
    world.inventory.opened.batch = 3
    ids = [
        world.save("nato-s", "NATO SECRET", f"report {n}", at=NOW - timedelta(hours=n))
        for n in range(9)
    ]
    real = store.items_after
    calls: list[int] = []

    def change() -> None:
        world.edit(ids[0], "NATO SECRET", "report 0 needle", False, [])
        store.redact_item(ids[1], None)
        world.save("nato-s", "NATO SECRET", "late needle", at=NOW - timedelta(hours=20))

    def items_after(after_id: int, limit: int) -> list[tuple[int, IntelItem]]:
        rows = real(after_id, limit)
        calls.append(after_id)
        if len(calls) == 2:  # the fill has read the first batch: change from another thread
            writer = threading.Thread(target=change)
            writer.start()
            writer.join()
        return rows

    with mock.patch.object(store, "items_after", items_after):
        world.inventory.find(NATO, ["report"], None, False, NOW - timedelta(days=1), NOW)
    assert len(calls) >= 2
    found, scanned = world.inventory.find(NATO, [], None, False, NOW - timedelta(days=1), NOW)
    texts = [i.text for i in found]
    assert "report 0 needle" in texts and "report 0" not in texts
    assert "report 1" not in texts
    assert "late needle" in texts and scanned == 9
    assert (found, scanned) == world.reference(
        NATO, [], None, False, NOW - timedelta(days=1), 10**6
    )


def test_a_refresh_that_fails_forgets_no_change(store: Store) -> None:
    """The database fails while the index re-reads changed items: the search fails, and
    the next one still re-reads them."""
    world = world_of(store)
    event_id = world.save("nato-s", "NATO SECRET", "before", at=NOW - timedelta(hours=1))
    day = NOW - timedelta(days=1)
    world.inventory.find(NATO, [], None, False, day, NOW)
    world.edit(event_id, "NATO SECRET", "after", False, [])

    def failing(event_ids: Any) -> list[tuple[int, IntelItem]]:
        raise ConnectionError("database down")

    with mock.patch.object(store, "items_with_event_ids", failing), pytest.raises(ConnectionError):
        world.inventory.find(NATO, [], None, False, day, NOW)
    found, _ = world.inventory.find(NATO, [], None, False, day, NOW)
    assert [i.text for i in found] == ["after"]


def test_the_store_tells_its_listeners_after_the_change_is_committed(store: Store) -> None:
    """A listener that reads the item back (in a transaction of its own) sees the change:
    it is told after the commit, never before."""
    world = world_of(store)
    event_id = world.save("nato-s", "NATO SECRET", "first")
    seen: list[tuple[str | None, bool]] = []

    def listener(changed: str) -> None:
        item = store.item(changed)
        seen.append(
            (item.label if item else None, item is not None and item.redacted_at is not None)
        )

    store.add_item_listener(listener)
    world.edit(event_id, "NATO CONFIDENTIAL", "second", False, [])
    store.redact_item(event_id, None)
    world.save("deu", "DEU GEHEIM", "third")
    assert seen == [
        ("NATO CONFIDENTIAL", False),
        ("NATO CONFIDENTIAL", True),
        ("DEU GEHEIM", False),
    ]


# ---------------------------------------------------------------- altered rows


def test_an_item_altered_in_the_database_is_never_shown(store: Store) -> None:
    """Sealed text swapped from another item, or a label lowered in the database: the item
    does not open, so no search shows it (it is counted as scanned, as before)."""
    world = world_of(store)
    kept = world.save("nato-s", "NATO SECRET", "needle kept")
    swapped = world.save("nato-s", "NATO SECRET", "needle swapped")
    lowered = world.save("nato-s", "NATO SECRET", "needle lowered")
    with store.engine.begin() as conn:
        other = conn.execute(
            text("SELECT text FROM intel_items WHERE event_id = :e"), {"e": kept}
        ).scalar_one()
        conn.execute(
            text("UPDATE intel_items SET text = :t WHERE event_id = :e"), {"t": other, "e": swapped}
        )
        conn.execute(
            text("UPDATE intel_items SET label = 'NATO CONFIDENTIAL' WHERE event_id = :e"),
            {"e": lowered},
        )
    found, scanned = world.inventory.find(
        NATO, ["needle"], None, False, NOW - timedelta(days=1), NOW
    )
    assert [i.event_id for i in found] == [kept]
    assert scanned == 3
    assert len(world.inventory.opened) == 3  # held as unopenable, not retried each search
    assert (found, scanned) == world.reference(
        NATO, ["needle"], None, False, NOW - timedelta(days=1), 10**6
    )


# ---------------------------------------------------------------- nothing at rest


def dump(store: Store) -> dict[str, list[tuple[Any, ...]]]:
    tables = inspect(store.engine).get_table_names()
    with store.engine.connect() as conn:
        return {
            name: sorted(
                map(tuple, conn.execute(select(Base.metadata.tables[name])).all()), key=repr
            )
            if name in Base.metadata.tables
            else [("not a model table",)]
            for name in tables
        }


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_searching_writes_nothing_to_the_database(backend: str) -> None:
    """Every table, row for row, is the same after searches (first fill, refreshes after a
    change, the fallback) as before them; the audit gets counts only, never the words."""
    with fresh_store(backend) as store:
        world = world_of(store, max_items=3)
        for n in range(6):
            world.save(
                "deu",
                "DEU GEHEIM // REL TO NATO",
                f"secret word {n}",
                at=NOW - timedelta(hours=1),
                topics=["kiel"],
            )
        world.release("$e1", "nato-s")
        before = dump(store)
        for n, (words, since) in enumerate([(["secret"], "1d"), (["WORD", "0"], None)]):
            document = await world.inventory.search(
                UserId(f"@u{n}:x"), NATO.key, words, "kiel", since, False
            )
            assert "secret word" in document.plain
        assert dump(store) == before
        world.save("nato-s", "NATO SECRET", "another secret", at=NOW - timedelta(hours=1))
        before = dump(store)
        await world.inventory.search(UserId("@u9:x"), NATO.key, ["secret"], None, "7d", False)
        assert dump(store) == before
        assert [a[3] for a in world.audits] == [
            {"matches": 1, "scanned": 6},
            {"matches": 1, "scanned": 6},
            {"matches": 2, "scanned": 7},
        ]


async def test_the_answer_is_the_document_the_reference_gives(store: Store) -> None:
    """`Inventory.search` renders what the reference finds, with the same count scanned."""
    world = world_of(store)
    for n in range(30):
        world.save("nato-s", "NATO SECRET", f"Convoy sighting {n}", at=NOW - timedelta(hours=n))
    document = await world.inventory.search(
        UserId("@me:x"), NATO.key, ["CONVOY"], None, None, False
    )
    found, scanned = world.reference(NATO, ["CONVOY"], None, False, NOW - timedelta(days=30), 10**6)
    expected = results_document(NATO, "CONVOY", found, NOW - timedelta(days=30), scanned, False)
    assert document.plain == expected.plain and document.html == expected.html
    assert "30 match(es)" in document.plain
    # At most ten are shown, the newest first, and the rest are counted, not listed: read
    # off the text itself (the reference renders with the same code, so it cannot tell).
    shown = [line.rsplit(" ", 1)[1] for line in document.plain.splitlines() if "sighting" in line]
    assert shown == [str(n) for n in range(10)]
    assert "… and 20 more; narrow the words, --topic or --since." in document.plain


async def test_the_index_fills_and_matches_off_the_event_loop(store: Store) -> None:
    world = world_of(store)
    world.save("nato-s", "NATO SECRET", "convoy")
    threads: list[str] = []
    real = world.inventory.opened.item_of

    def item_of(item: IntelItem) -> DigestItem | None:
        threads.append(threading.current_thread().name)
        return real(item)

    world.inventory.opened.item_of = item_of
    loop_thread = threading.current_thread().name
    await world.inventory.search(UserId("@me:x"), NATO.key, ["convoy"], None, None, False)
    assert threads and loop_thread not in threads
