"""A private reply waits for its reader to join the DM the bot opened, and is dropped (and
audited) when they do not: nothing is ever sent into a room its reader has not joined."""

from __future__ import annotations

from nio import RoomMessagesResponse

from tests.bot_harness import BotEnv, enrol, eventually, talk
from tests.matrix_harness import MakeClient, MakeUser

BOT_EXTRA_BOT = 'dm_join_timeout = "3s"'


async def test_a_reply_whose_reader_never_joins_is_dropped_and_audited(
    bot_env: BotEnv, make_client: MakeClient, make_user: MakeUser
) -> None:
    bot = bot_env.bot
    assert bot is not None and bot.client is not None
    member = await make_client(make_user("absent"))
    (nato_s,) = await enrol(bot_env, [(member.user_id, "NATO SECRET", "NOR")], [(member, "nato-s")])
    await talk(member, nato_s, "!whoami", "Answered in your direct messages")
    dm = await member.wait_for_invite(inviter=bot_env.bot_user.user_id)

    async def dropped() -> bool:
        entries = await bot.commands.audit_recent(20)
        return any(e.action == "dm.reply.dropped" and e.subject == member.user_id for e in entries)

    await eventually(dropped, what="the unread reply dropped")
    history = await bot.client.room_messages(dm, limit=50)
    assert isinstance(history, RoomMessagesResponse)
    sent = [
        e for e in history.chunk if e.source.get("type") in ("m.room.encrypted", "m.room.message")
    ]
    assert sent == [], "nothing may go into a DM its reader has not joined"

    # Asked again, the same DM is used; once its reader joins, the answer is sent and read.
    await talk(member, nato_s, "!whoami", "Answered in your direct messages")
    await member.join(dm)
    answer = await member.wait_for_text(dm, "nationality NOR")
    assert "grants: NATO SECRET" in answer.body
    assert not member.undecryptable(dm), member.summary(dm)
