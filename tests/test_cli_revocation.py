"""Issue 14, finding 16: a revocation made with the CLI (another process, straight into the
register) counts from the bot's next message into the room, not from the next sweep: the
revoked member's devices get no key for it."""

from __future__ import annotations

from nio import MegolmEvent, RoomMessageNotice

from bot.services.register import ClearanceRegister
from commands.document import doc
from tests.bot_harness import BotEnv, enrol, no_key_for, posted_barrier
from tests.matrix_harness import MakeClient, MakeUser


async def test_a_cli_revocation_stops_the_next_room_key(
    bot_env: BotEnv, make_client: MakeClient, make_user: MakeUser
) -> None:
    member = await make_client(make_user("cli-revoked"))
    (nato_s,) = await enrol(bot_env, [(member.user_id, "NATO SECRET", "DEU")], [(member, "nato-s")])
    bot = bot_env.bot
    assert bot is not None and bot_env.store is not None
    before = await bot.messenger.send_notice(nato_s, doc("before the revocation"))
    seen = await member.wait_for(nato_s, lambda e: e.event_id == before)
    assert isinstance(seen, RoomMessageNotice), "the member could not read while cleared"

    # what `liaison-bot clearance revoke` does: the register, not the bot
    ClearanceRegister(bot_env.store).revoke(bot_env.admin.user_id, member.user_id)
    after = await bot.messenger.send_notice(nato_s, doc("after the revocation"))
    event = await member.wait_for(nato_s, lambda e: e.event_id == after)
    assert isinstance(event, MegolmEvent), "the revoked member got the room key"
    # and no key for it comes later either: by the bot's record, and on the member's device
    # once a later message from the bot has arrived (keys go out before what they encrypt)
    await no_key_for(bot, member, nato_s, after, barrier=posted_barrier(bot, nato_s))
    sent = bot.gateway.sent_with(nato_s, event.session_id)
    assert [s.excluded for s in sent if s.event_id == after] == [frozenset({member.user_id})]
