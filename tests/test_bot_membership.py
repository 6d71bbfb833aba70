"""Membership enforcement when someone other than the bot invites: the homeserver gate
refuses whoever does not pass may_join.

Its own module (and so its own bot and rooms): giving a user room-admin power, as this test
must, leaves the room in a state the other modules do not expect.
"""

from __future__ import annotations

import pytest
from nio import RoomGetStateEventResponse, RoomInviteError

from bot.devtools.devserver import DevServerError
from policy.ids import UserId
from tests.bot_harness import BotEnv, enrol, open_dm
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
    server refuses the power to invite and the invite itself, and the bot has nothing to
    undo."""
    admin = await make_client(bot_env.admin)
    dm = await open_dm(admin, bot_env.bot_user.user_id)
    insider = make_user("insider")
    insider_client = await make_client(insider)
    (room_id,) = await enrol(
        (admin, dm), [(insider.user_id, "NATO SECRET", "POL")], [(insider_client, "nato-s")]
    )
    # A homeserver admin tries to hand the insider invite power behind the bot's back (the
    # admin API sends the change as the room's most powerful local member, the bot): the
    # gate refuses power for anyone but the bot, whoever sends it.
    server_admin = make_user("hsadmin", admin=True)
    with pytest.raises(DevServerError) as info:
        bot_env.server.make_room_admin(server_admin.access_token, room_id, insider.user_id)
    assert "would hold power only the bot may hold" in str(info.value)
    outsider = make_user("outsider")
    refused = await insider_client.client.room_invite(room_id, outsider.user_id)
    assert isinstance(refused, RoomInviteError), refused
    assert refused.status_code == "M_FORBIDDEN"
    assert f"no clearance on record for {outsider.user_id}" in refused.message  # gate first
    assert await membership(bot_env, room_id, outsider.user_id) is None
    assert await membership(bot_env, room_id, insider.user_id) == "join"
    # Without power, the insider cannot invite even a cleared colleague: only the bot invites.
    colleague = make_user("colleague")
    assert bot_env.bot is not None
    await bot_env.bot.commands.grant(
        UserId(bot_env.admin.user_id),
        UserId(colleague.user_id),
        "NATO SECRET",
        nationality="DEU",
        expires=None,
        caveats=(),
    )
    denied = await insider_client.client.room_invite(room_id, colleague.user_id)
    assert isinstance(denied, RoomInviteError) and denied.status_code == "M_FORBIDDEN"
