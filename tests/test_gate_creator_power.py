"""Adopted rooms whose creator keeps unlimited power (issue 24, item 10): from room version
12 on a room's creators hold power that no power-levels event lists or can take away, so a
room the bot adopts from someone else stays in that person's hands. The bot cannot put that
right; it flags it: in `!rooms`, in the audit log and to the admins, once.

The gateway is a stand-in holding the room's state: what is tested is what the directory
makes of that state, not the homeserver."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from bot.config import parse_config
from bot.services.ports import StateEvent
from bot.services.rooms import RoomDirectory, creator_warning
from bot.storage import Store
from commands.document import Document

BOT = "@liaison:example.org"
HUMAN = "@founder:example.org"
ADOPTED = "!adopted:example.org"

CONFIG = f"""
[homeserver]
url = "http://127.0.0.1:8008"
user_id = "{BOT}"
password_env = "LIAISON_PASSWORD"

[storage]
database_url = "sqlite:///data/liaison.db"

[bot]
admins = ["@sec:example.org"]

[[rooms]]
key = "nato-s"
name = "NATO SECRET liaison"
label = "NATO SECRET"
room_id = "{ADOPTED}"
"""


class _Gateway:
    """The calls `provision` makes, over one room's state."""

    def __init__(self, version: str, creator: str, additional: tuple[str, ...] = ()) -> None:
        self.user_id = BOT
        create: dict[str, Any] = {"room_version": version}
        if additional:
            create["additional_creators"] = list(additional)
        self.room: dict[tuple[str, str], StateEvent] = {
            ("m.room.create", ""): StateEvent("m.room.create", "", create, creator)
        }

    async def joined_rooms(self) -> set[str]:
        return {ADOPTED}

    async def join(self, room_id: str) -> None:
        raise AssertionError("already joined")

    async def state(self, room_id: str) -> dict[tuple[str, str], StateEvent]:
        return dict(self.room)

    async def put_state(
        self, room_id: str, event_type: str, content: dict[str, Any], state_key: str = ""
    ) -> None:
        self.room[(event_type, state_key)] = StateEvent(event_type, state_key, content, BOT)

    def members(self, room_id: str) -> dict[str, bool]:
        return {BOT: True}


async def _directory(store: Store, gateway: _Gateway, tmp_path: Path) -> RoomDirectory:
    config = parse_config(CONFIG)
    config._base_dir = tmp_path
    directory = RoomDirectory(config, store, gateway)  # type: ignore[arg-type]  # _Gateway: a fake of the concrete Gateway, the state calls only
    await directory.provision_all()
    return directory


async def test_an_adopted_v12_room_of_someone_else_is_flagged(store: Store, tmp_path: Path) -> None:
    directory = await _directory(store, _Gateway("12", HUMAN, ("@second:example.org",)), tmp_path)
    warning = directory.flagged["nato-s"]
    assert "@founder:example.org, @second:example.org keep a creator's unlimited power" in warning
    assert "(room version 12): no power level can take it away" in warning
    (summary,) = directory.summaries()
    assert summary.name == f"NATO SECRET liaison — ⚠ {warning}", "`!rooms` says so"
    audited = [e for e in store.recent_audit(50) if e.action == "room.creator_power"]
    assert len(audited) == 1 and audited[0].subject == "nato-s"
    alerts: list[Document] = []

    async def alert(document: Document) -> None:
        alerts.append(document)

    await directory.revalidate(alert)
    await directory.revalidate(alert)
    assert len(alerts) == 1, "the admins are told once"
    assert "@founder:example.org" in repr(alerts[0])


@pytest.mark.parametrize(
    ("version", "creator"),
    [("12", BOT), ("11", HUMAN), ("10", HUMAN), ("org.matrix.hydra.11", BOT)],
)
async def test_rooms_where_only_the_bot_or_nobody_holds_a_creators_power_are_not_flagged(
    store: Store, tmp_path: Path, version: str, creator: str
) -> None:
    directory = await _directory(store, _Gateway(version, creator), tmp_path)
    assert directory.flagged == {}
    (summary,) = directory.summaries()
    assert summary.name == "NATO SECRET liaison"
    assert not [e for e in store.recent_audit(50) if e.action == "room.creator_power"]


def test_the_unstable_identifier_counts_as_version_12() -> None:
    create = StateEvent("m.room.create", "", {"room_version": "org.matrix.hydra.11"}, HUMAN)
    warning = creator_warning({("m.room.create", ""): create}, BOT)
    assert warning is not None and "room version org.matrix.hydra.11" in warning
