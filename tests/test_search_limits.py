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
    store = SimpleNamespace(items_since=lambda start, limit: ["sealed-1", "sealed-2"])

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
