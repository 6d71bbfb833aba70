"""Issue 14, finding 15: `!search` opens up to 10 000 sealed items a call: at most a few a
minute per person, and the unsealing runs off the event loop."""

from __future__ import annotations

import threading
from types import SimpleNamespace
from typing import Any

import pytest

from bot.services.rooms import ManagedRoom
from bot.services.search import SEARCHES_PER_MINUTE, Inventory
from commands.context import CommandError
from policy import make_room, parse_marking
from policy.ids import RoomId, RoomKey, UserId

NATO = ManagedRoom(
    RoomKey("nato-s"), "NATO SECRET", make_room(parse_marking("NATO SECRET")), RoomId("!n:x")
)
ME = UserId("@me:x")


def inventory(opened_on: list[str]) -> Inventory:
    sealed = [SimpleNamespace(event_id=f"$s{i}", room_key="nato-s") for i in range(2)]
    store = SimpleNamespace(
        items_since=lambda start, limit: sealed, relayed_items_to=lambda keys, start, end: []
    )

    def item_of(item: Any) -> None:
        opened_on.append(threading.current_thread().name)

    async def audit(*args: Any) -> None:
        return None

    rooms = SimpleNamespace(managed=lambda key: NATO)
    return Inventory(store, rooms, lambda user, room: True, item_of, audit)  # type: ignore[arg-type]


async def test_searches_are_limited_per_person_and_unseal_off_the_loop() -> None:
    opened_on: list[str] = []
    search = inventory(opened_on)
    for _ in range(SEARCHES_PER_MINUTE):
        await search.search(ME, RoomKey("nato-s"), ["convoy"], None, None, False)
    with pytest.raises(CommandError, match=f"at most {SEARCHES_PER_MINUTE} searches a minute"):
        await search.search(ME, RoomKey("nato-s"), ["convoy"], None, None, False)
    await search.search(UserId("@other:x"), RoomKey("nato-s"), ["convoy"], None, None, False)
    main = threading.main_thread().name
    assert opened_on and main not in opened_on


async def test_search_shows_another_rooms_item_only_where_it_was_released() -> None:
    """Issue 14, finding 10: a non-officer's `DEU GEHEIM // REL TO NATO` item, stored but
    never relayed, is not found from the NATO room although its label would allow it."""
    from datetime import UTC, datetime

    from bot.services.digest import DigestItem
    from policy import Precedence

    deu = ManagedRoom(RoomKey("deu"), "DEU", make_room(parse_marking("DEU GEHEIM")), RoomId("!d:x"))
    rooms_by_key = {"deu": deu, "nato-s": NATO}
    now = datetime.now(UTC)
    stored = [
        SimpleNamespace(event_id="$kept", room_key="deu", label="DEU GEHEIM // REL TO NATO"),
        SimpleNamespace(event_id="$shown", room_key="deu", label="DEU GEHEIM // REL TO NATO"),
        SimpleNamespace(event_id="$own", room_key="nato-s", label="NATO SECRET"),
    ]
    store = SimpleNamespace(
        items_since=lambda start, limit: stored,
        relayed_items_to=lambda keys, start, end: [stored[1]],  # only $shown was relayed
    )

    def item_of(item: Any) -> DigestItem:
        return DigestItem(
            item.event_id,
            parse_marking(item.label),
            item.room_key,
            rooms_by_key[item.room_key],
            Precedence.ROUTINE,
            False,
            (),
            f"needle {item.event_id}",
            now,
        )

    async def audit(*args: Any) -> None:
        return None

    search = Inventory(
        store,  # type: ignore[arg-type]
        SimpleNamespace(managed=lambda key: NATO),  # type: ignore[arg-type]
        lambda user, room: True,
        item_of,  # type: ignore[arg-type]
        audit,
    )
    found = await search.search(ME, RoomKey("nato-s"), ["needle"], None, None, False)
    assert "$shown" in found.plain and "$own" in found.plain
    assert "$kept" not in found.plain
