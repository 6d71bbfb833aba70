"""Membership enforcement: whoever joins or is invited without passing may_join is removed.

Its own module (and so its own bot and rooms): giving a user room-admin power, as this test
must, leaves the room in a state the other modules do not expect.
"""

from __future__ import annotations

from nio import RoomGetStateEventResponse

from tests.bot_harness import BotEnv, audited, enrol, eventually, open_dm
from tests.matrix_harness import MakeClient, MakeUser


async def membership(env: BotEnv, room_id: str, user_id: str) -> str | None:
    assert env.bot is not None and env.bot.client is not None
    response = await env.bot.client.room_get_state_event(room_id, "m.room.member", user_id)
    if isinstance(response, RoomGetStateEventResponse):
        return str(response.content.get("membership"))
    return None


async def test_user_invited_by_someone_else_is_removed(
    bot_env: BotEnv, make_client: MakeClient, make_user: MakeUser
) -> None:
    admin = await make_client(bot_env.admin)
    dm = await open_dm(admin, bot_env.bot_user.user_id)
    insider = make_user("insider")
    insider_client = await make_client(insider)
    (room_id,) = await enrol(
        (admin, dm), [(insider.user_id, "NATO SECRET", "POL")], [(insider_client, "nato-s")]
    )
    # A homeserver admin hands the insider invite power behind the bot's back.
    server_admin = make_user("hsadmin", admin=True)
    bot_env.server.make_room_admin(server_admin.access_token, room_id, insider.user_id)
    outsider = make_user("outsider")
    await insider_client.invite(room_id, outsider.user_id)
    await eventually(
        lambda: _is(membership(bot_env, room_id, outsider.user_id), "leave"),
        what="the invite to an uncleared user was rescinded",
    )
    assert await membership(bot_env, room_id, insider.user_id) == "join"
    removal = await audited(bot_env, "member.removed", outsider.user_id)
    assert removal.detail["room"] == "nato-s"
    assert f"no clearance on record for {outsider.user_id}" in removal.detail["reason"]


async def _is(awaitable: object, expected: object) -> bool:
    return await awaitable == expected  # type: ignore[misc]
