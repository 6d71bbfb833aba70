"""A representative end-to-end subset on PostgreSQL: relay (once per target) and digest.

Runs against the server named by LIAISON_TEST_DATABASE_URL (CI: the machine's own), in a
fresh schema; skipped with a visible notice where there is none.
"""

from __future__ import annotations

import secrets

from bot.devtools.e2ee_client import open_dm, talk
from tests.bot_harness import BotEnv, enrol, nothing_arrives, relayed_barrier, text_with
from tests.matrix_harness import MakeClient, MakeUser

BOT_DATABASE = "postgresql"


async def test_relay_and_digest_on_postgresql(
    bot_env: BotEnv, make_client: MakeClient, make_user: MakeUser
) -> None:
    assert bot_env.config.database_url().startswith("postgresql")
    admin = await make_client(bot_env.admin)
    dm = await open_dm(admin, bot_env.bot_user.user_id)
    officer = await make_client(bot_env.officer)
    member = make_user("pg-nor")
    member_client = await make_client(member)
    await enrol(
        (admin, dm),
        [(bot_env.officer.user_id, "DEU GEHEIM", "DEU"), (member.user_id, "NATO SECRET", "NOR")],
        [(officer, "deu"), (member_client, "nato-s")],
    )
    deu, nato_s = bot_env.room_id("deu"), bot_env.room_id("nato-s")
    phrase = f"pg-{secrets.token_hex(4)}"
    mark = member_client.event_count(nato_s)
    receipt = await talk(officer, deu, f"[GEHEIM // REL TO NATO] {phrase}", "Relayed to nato-s")
    source = receipt.source["content"]["m.relates_to"]["m.in_reply_to"]["event_id"]
    await member_client.wait_for_text(nato_s, phrase)
    await nothing_arrives(
        member_client,
        nato_s,
        text_with(phrase),
        since=mark,
        already=1,
        barrier=relayed_barrier(officer, deu, "GEHEIM // REL TO NATO"),
        what="the copy",
    )
    assert bot_env.store is not None
    copies = bot_env.store.copies_of(source)
    assert [(c.target_key, c.state) for c in copies] == [("nato-s", "sent")]
    mark = member_client.event_count(nato_s)
    await talk(member_client, nato_s, "!digest now", "Digest posted")
    digest = await member_client.wait_for_text(nato_s, "Situation digest", after=mark)
    assert phrase in digest.body
    assert bot_env.store.verify_audit().intact
