"""Issue 14, finding 3: `[bot] admin_room` is a managed room (its label decides who gets its
key) whose members are admins; a room id the bot does not manage left nobody able to read
the alerts posted there."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import pytest

from bot.config import ConfigError, parse_config
from bot.metrics import Metrics
from bot.services.membership import Membership
from bot.services.ports import RoomControl
from bot.services.register import ClearanceRegister
from bot.services.rooms import ManagedRoom
from bot.storage import Store
from policy import make_room, parse_marking
from policy.ids import RoomId, RoomKey, UserId

CONFIG = """
[homeserver]
url = "http://127.0.0.1:8008"
user_id = "@liaison:example.org"
password_env = "LIAISON_PASSWORD"

[bot]
admins = ["@admin:example.org"]
admin_room = {admin_room}

[[rooms]]
key = "ops"
name = "Security operations"
label = "NATO SECRET"
"""


def test_admin_room_names_a_managed_room() -> None:
    config = parse_config(CONFIG.format(admin_room='"ops"'))
    assert config.bot.admin_room == "ops"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ('"!ops:example.org"', "bot.admin_room: bad room key '!ops:example.org'"),
        ('"opz"', "bot.admin_room: no room with key 'opz' (rooms: ops) — did you mean 'ops'?"),
    ],
)
def test_admin_room_that_is_not_a_managed_room_is_refused(value: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        parse_config(CONFIG.format(admin_room=value))
    assert any(e.startswith(expected) for e in info.value.errors), info.value.errors


OPS = ManagedRoom(
    RoomKey("ops"), "Security operations", make_room(parse_marking("NATO SECRET")), RoomId("!ops:x")
)
ADMIN, OFFICER = UserId("@admin:x"), UserId("@lo:x")


class Control(RoomControl):
    """The room-control port: the members it is given; inviting or kicking is a failure."""

    def __init__(self, members: dict[UserId, bool]) -> None:
        self._members = members

    def members(self, room_id: str) -> dict[UserId, bool] | None:
        return self._members

    async def invite(self, room_id: str, user_id: str) -> None:
        raise AssertionError(f"invited {user_id}")

    async def kick(self, room_id: str, user_id: str, reason: str) -> None:
        raise AssertionError(f"kicked {user_id}")


async def test_only_cleared_admins_get_the_admin_rooms_key(store: Store) -> None:
    register = ClearanceRegister(store)
    for user in (ADMIN, OFFICER):  # both cleared for the room's label
        register.grant(ADMIN, user, "NATO SECRET", nationality="DEU")

    async def audit(actor: str, action: str, subject: str | None, detail: dict[str, Any]) -> None:
        return None

    async def check_identity(user: UserId) -> None:
        return None

    members = {ADMIN: True, OFFICER: True, UserId("@bot:x"): True}
    membership = Membership(
        SimpleNamespace(admins=[ADMIN], officers=[OFFICER], admin_room="ops"),  # type: ignore[arg-type]  # BotConfig: only its people and admin room
        store,
        register,
        SimpleNamespace(by_id={OPS.room_id: OPS}, by_key={OPS.key: OPS}),  # type: ignore[arg-type]  # RoomDirectory: only by_id and by_key
        Control(members),
        audit,
        Metrics(lambda: None),
        partner_of=lambda room_id: None,
        identity_confirmed=lambda user: None,
        check_identity=check_identity,
    )
    membership.user_id = UserId("@bot:x")
    await membership.refresh()
    assert membership.key_recipients(OPS.room_id) == [ADMIN]
    decision = membership.may_join(OFFICER, OPS)
    assert not decision.allowed and "not an admin" in decision.reason
