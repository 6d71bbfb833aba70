"""Issue 14, finding 2: a room an admin or officer invites the bot to becomes their DM only
if it is one: encrypted, marked direct, the two of them alone. Anything else would receive
private replies and admin alerts (in clear, if unencrypted). And nothing but room state is
ever sent to an unencrypted room."""

from __future__ import annotations

from typing import Any

import pytest
from nio import AsyncClient, MatrixRoom

from bot.matrix.gateway import Gateway, MatrixError
from tests.bot_harness import BotEnv, eventually
from tests.matrix_harness import MakeClient, MakeUser


async def decision(bot_env: BotEnv, room_id: str) -> Any:
    """The bot's audit entry on the invite to this room, once written."""
    assert bot_env.bot is not None
    bot = bot_env.bot

    async def entry() -> Any:
        entries = await bot.commands.audit_recent(50)
        return next(
            (
                e
                for e in entries
                if e.action in ("dm.accepted", "invite.declined")
                and e.detail.get("room_id") == room_id
            ),
            None,
        )

    return await eventually(entry, 30, f"the invite to {room_id} decided")


@pytest.mark.parametrize(
    ("encrypted", "is_direct", "third", "reason"),
    [
        (False, True, False, "not encrypted"),
        (True, False, False, "not marked as a direct chat"),
        (True, True, True, "others are in it"),
    ],
)
async def test_a_room_that_is_not_a_two_person_encrypted_dm_is_declined(
    bot_env: BotEnv,
    make_client: MakeClient,
    make_user: MakeUser,
    encrypted: bool,
    is_direct: bool,
    third: bool,
    reason: str,
) -> None:
    admin = await make_client(bot_env.admin)
    invite = [bot_env.bot_user.user_id] + ([make_user("third").user_id] if third else [])
    room_id = await admin.create_room(
        invite=invite, encrypted=encrypted, is_direct=is_direct, name=None
    )
    entry = await decision(bot_env, room_id)
    assert (entry.action, entry.detail.get("reason")) == ("invite.declined", reason)
    assert bot_env.bot is not None
    assert bot_env.bot.direct.partner_of(room_id) is None
    assert room_id not in await bot_env.bot.gateway.joined_rooms()


async def test_a_real_dm_is_accepted(bot_env: BotEnv, make_client: MakeClient) -> None:
    admin = await make_client(bot_env.admin)
    room_id = await admin.create_room(invite=[bot_env.bot_user.user_id], is_direct=True)
    entry = await decision(bot_env, room_id)
    assert entry.action == "dm.accepted"
    assert bot_env.bot is not None
    assert bot_env.bot.direct.partner_of(room_id) == bot_env.admin.user_id


async def test_the_gateway_sends_nothing_to_an_unencrypted_room() -> None:
    """Refused before any request: the client points at a closed port."""
    client = AsyncClient("http://127.0.0.1:9", "@bot:example.org")
    client.rooms["!clear:example.org"] = MatrixRoom("!clear:example.org", "@bot:example.org")
    gateway = Gateway(client)
    try:
        with pytest.raises(MatrixError, match="not encrypted"):
            await gateway.send(
                "!clear:example.org",
                {"msgtype": "m.notice", "body": "an alert"},
                recipients=lambda: [],
                device_trusted=lambda user, device: True,
            )
    finally:
        await client.close()
