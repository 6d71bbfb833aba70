"""Issue 14, finding 15: `!search` may open many sealed items a call (the first fill of its
index, or a window past its bound): at most a few a minute per person, and the unsealing
runs off the event loop."""

from __future__ import annotations

import threading
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest

from bot.services.rooms import ManagedRoom
from bot.services.search import SEARCHES_PER_MINUTE, Inventory
from bot.storage import IntelItem, RelayEntry, RelayKind, Store
from commands.context import CommandError
from policy import Precedence, make_room, parse_marking
from policy.ids import RoomId, RoomKey, UserId
from tests.fakes import no_audit

NATO = ManagedRoom(
    RoomKey("nato-s"), "NATO SECRET", make_room(parse_marking("NATO SECRET")), RoomId("!n:x")
)
ME = UserId("@me:x")
AN_HOUR_AGO = datetime.now(UTC) - timedelta(hours=1)


def stored(store: Store, event_id: str, room_key: str, label: str) -> None:
    store.save_item(
        IntelItem(
            event_id, room_key, f"!{room_key}:x", "@lo:x", label, label.split()[0], 3,
            Precedence.ROUTINE, False, (), "sealed", AN_HOUR_AGO,
        )
    )  # fmt: skip


def inventory(store: Store, opened_on: list[str]) -> Inventory:
    for i in range(2):
        stored(store, f"$s{i}", "nato-s", "NATO SECRET")

    def item_of(item: IntelItem) -> None:
        opened_on.append(threading.current_thread().name)

    rooms = SimpleNamespace(managed=lambda key: NATO, by_key={"nato-s": NATO})
    return Inventory(
        store,
        rooms,  # type: ignore[arg-type]  # RoomDirectory: only managed and by_key
        lambda user, room: True,
        item_of,
        no_audit,
    )


async def test_searches_are_limited_per_person_and_unseal_off_the_loop(store: Store) -> None:
    opened_on: list[str] = []
    search = inventory(store, opened_on)
    for _ in range(SEARCHES_PER_MINUTE):
        await search.search(ME, RoomKey("nato-s"), ["convoy"], None, None, False)
    with pytest.raises(CommandError, match=f"at most {SEARCHES_PER_MINUTE} searches a minute"):
        await search.search(ME, RoomKey("nato-s"), ["convoy"], None, None, False)
    await search.search(UserId("@other:x"), RoomKey("nato-s"), ["convoy"], None, None, False)
    main = threading.main_thread().name
    assert opened_on and main not in opened_on


async def test_search_shows_another_rooms_item_only_where_it_was_released(store: Store) -> None:
    """Issue 14, finding 10: a non-officer's `DEU GEHEIM // REL TO NATO` item, stored but
    never relayed, is not found from the NATO room although its label would allow it."""
    from bot.services.digest import DigestItem

    deu = ManagedRoom(RoomKey("deu"), "DEU", make_room(parse_marking("DEU GEHEIM")), RoomId("!d:x"))
    rooms_by_key = {"deu": deu, "nato-s": NATO}
    stored(store, "$kept", "deu", "DEU GEHEIM // REL TO NATO")
    stored(store, "$shown", "deu", "DEU GEHEIM // REL TO NATO")
    stored(store, "$own", "nato-s", "NATO SECRET")
    # Only $shown was relayed (sent); $kept has a copy that never went out.
    for txn, event_id, sent in [("t1", "$shown", True), ("t2", "$kept", False)]:
        store.add_relays(
            [RelayEntry(txn, RelayKind.COPY, event_id, event_id, "nato-s", "!n:x", "")]
        )
        if sent:
            store.relay_sent(txn, "$copy")

    def item_of(item: IntelItem) -> DigestItem:
        return DigestItem(
            item.event_id,
            parse_marking(item.label),
            item.room_key,
            rooms_by_key[item.room_key],
            Precedence.ROUTINE,
            False,
            (),
            f"needle {item.event_id}",
            item.created_at,
        )

    search = Inventory(
        store,
        SimpleNamespace(managed=lambda key: NATO, by_key=rooms_by_key),  # type: ignore[arg-type]  # RoomDirectory: only managed and by_key
        lambda user, room: True,
        item_of,
        no_audit,
    )
    found = await search.search(ME, RoomKey("nato-s"), ["needle"], None, None, False)
    assert "$shown" in found.plain and "$own" in found.plain
    assert "$kept" not in found.plain
