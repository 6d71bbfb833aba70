"""Under `device_trust = "tofu"` every device of a cleared user gets the room key as seen."""

from __future__ import annotations

import asyncio

import pytest
from nio import RoomMessageNotice

from bot.matrix.gateway import MatrixError
from policy.ids import UserId
from tests.bot_harness import BotEnv, eventually, open_dm, talk
from tests.matrix_harness import MakeClient, MakeUser

BOT_DEVICE_TRUST = "tofu"


async def test_unsigned_device_of_a_cleared_user_gets_the_room_key_under_tofu(
    bot_env: BotEnv, make_client: MakeClient, make_user: MakeUser
) -> None:
    admin = await make_client(bot_env.admin, cross_signed=False)
    dm = await open_dm(admin, bot_env.bot_user.user_id)
    user = make_user("tofu")
    await talk(
        admin,
        dm,
        f'!clearance grant {user.user_id} "NATO SECRET" --nationality ESP',
        "Clearance updated",
    )
    await talk(admin, dm, f"!invite {user.user_id} nato-s", "Invited")
    unsigned = await make_client(user, cross_signed=False)
    room_id = await unsigned.wait_for_invite()
    await unsigned.join(room_id)
    answer = await talk(unsigned, room_id, "!rooms", "Managed rooms")
    assert isinstance(answer, RoomMessageNotice)
    assert not unsigned.undecryptable(room_id)


async def test_uncleared_users_devices_still_get_nothing_under_tofu(
    bot_env: BotEnv, make_client: MakeClient, make_user: MakeUser, monkeypatch: pytest.MonkeyPatch
) -> None:
    """tofu relaxes the device check, never the clearance check: a member whose clearance is
    revoked (with the CLI, behind the bot's back) and whom the server will not let the bot
    remove is still in the room, with a device tofu trusts, and is no longer a key recipient."""
    bot = bot_env.bot
    assert bot is not None and bot.gateway is not None
    room_id = bot_env.room_id("nato-s")
    admin = await make_client(bot_env.admin, cross_signed=False)
    dm = await open_dm(admin, bot_env.bot_user.user_id)
    stranger = make_user("stranger")
    await talk(
        admin,
        dm,
        f'!clearance grant {stranger.user_id} "NATO SECRET" --nationality ESP',
        "Clearance updated",
    )
    await talk(admin, dm, f"!invite {stranger.user_id} nato-s", "Invited")
    client = await make_client(stranger, cross_signed=False)
    assert await client.wait_for_invite() == room_id
    await client.join(room_id)
    control = bot.membership.control
    stranger_id = UserId(stranger.user_id)
    await eventually(
        lambda: (control.members(room_id) or {}).get(stranger_id),
        what="the bot sees the stranger joined",
    )
    assert stranger.user_id in bot.membership.key_recipients(room_id)  # cleared: a recipient

    async def refused(room_id: str, user_id: str, reason: str) -> None:
        raise MatrixError(f"remove {user_id}", "M_FORBIDDEN", "not allowed", 403)

    monkeypatch.setattr(control, "kick", refused)  # the removal fails: the member stays
    await asyncio.to_thread(bot.membership.store.revoke, "cli:test", stranger.user_id)
    await bot.membership.refresh_room(room_id)  # as before every share of the room's key
    assert (control.members(room_id) or {}).get(stranger_id)  # still joined
    assert stranger.user_id not in bot.membership.key_recipients(room_id)
