"""Membership enforcement when someone other than the bot invites: the homeserver gate
refuses whoever does not pass may_join.

Its own module (and so its own bot and rooms): giving a user room-admin power, as this test
must, leaves the room in a state the other modules do not expect.
"""

from __future__ import annotations

from nio import RoomGetStateEventResponse, RoomInviteError

from tests.bot_harness import BotEnv, enrol, eventually, open_dm
from tests.matrix_harness import MakeClient, MakeUser


async def membership(env: BotEnv, room_id: str, user_id: str) -> str | None:
    assert env.bot is not None and env.bot.client is not None
    response = await env.bot.client.room_get_state_event(room_id, "m.room.member", user_id)
    if isinstance(response, RoomGetStateEventResponse):
        return str(response.content.get("membership"))
    return None


async def test_an_invite_by_someone_else_is_refused_by_the_homeserver(
    bot_env: BotEnv, make_client: MakeClient, make_user: MakeUser
) -> None:
    """Before the homeserver gate the bot rescinded such an invite once it saw it; now the
    server refuses it outright, with the rule's reason, and the bot has nothing to undo."""
    admin = await make_client(bot_env.admin)
    dm = await open_dm(admin, bot_env.bot_user.user_id)
    insider = make_user("insider")
    insider_client = await make_client(insider)
    (room_id,) = await enrol(
        (admin, dm), [(insider.user_id, "NATO SECRET", "POL")], [(insider_client, "nato-s")]
    )
    # A homeserver admin hands the insider invite power behind the bot's back (the admin
    # API sends the change as the room's most powerful local member: the bot).
    server_admin = make_user("hsadmin", admin=True)
    bot_env.server.make_room_admin(server_admin.access_token, room_id, insider.user_id)
    outsider = make_user("outsider")
    refused = await insider_client.client.room_invite(room_id, outsider.user_id)
    assert isinstance(refused, RoomInviteError), refused
    assert refused.status_code == "M_FORBIDDEN"
    assert f"no clearance on record for {outsider.user_id}" in refused.message
    assert await membership(bot_env, room_id, outsider.user_id) is None
    assert await membership(bot_env, room_id, insider.user_id) == "join"
    # A cleared colleague the insider invites is let through, and the bot leaves them be.
    colleague = make_user("colleague")
    await bot_env.bot.commands.grant(  # type: ignore[union-attr]
        bot_env.admin.user_id,
        colleague.user_id,
        "NATO SECRET",
        nationality="DEU",
        expires=None,
        caveats=(),
    )
    await insider_client.invite(room_id, colleague.user_id)
    await eventually(
        lambda: _is(membership(bot_env, room_id, colleague.user_id), "invite"),
        what="the cleared colleague's invite",
    )


async def _is(awaitable: object, expected: object) -> bool:
    return await awaitable == expected  # type: ignore[misc]
