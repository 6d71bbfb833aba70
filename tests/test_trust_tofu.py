"""Under `device_trust = "tofu"` every device of a cleared user gets the room key as seen."""

from __future__ import annotations

from nio import RoomMessageNotice

from tests.bot_harness import BotEnv, open_dm, talk
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
    bot_env: BotEnv, make_client: MakeClient, make_user: MakeUser
) -> None:
    """tofu relaxes the device check, never the clearance check."""
    assert bot_env.bot is not None
    room_id = bot_env.room_id("nato-s")
    stranger = make_user("stranger")
    assert stranger.user_id not in bot_env.bot.membership.key_recipients(room_id)
