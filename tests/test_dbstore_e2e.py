"""The bot with its crypto store in PostgreSQL (`crypto_store = "database"`, issue 26)
against the real Synapse: it relays, and after a restart it still reads what its Olm
sessions and room keys in the database open, and answers.

Skipped with a visible notice without LIAISON_TEST_DATABASE_URL.
"""

from __future__ import annotations

import secrets

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from bot.devtools.e2ee_client import open_dm, talk
from bot.matrix.dbstore import crypto_schema
from tests.bot_harness import BotEnv, enrol, restart
from tests.matrix_harness import MakeClient, MakeUser

BOT_DATABASE = "postgresql"
BOT_CRYPTO_STORE = "database"


def _stored_accounts(bot_env: BotEnv) -> list[tuple[str, str]]:
    url = bot_env.config.database_url()
    options = make_url(url).query["options"]
    assert isinstance(options, str)
    schema = crypto_schema(options.removeprefix("-csearch_path="))
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text(f'SELECT user_id, device_id FROM "{schema}".accounts'))
            return [(user, device) for user, device in rows]
    finally:
        engine.dispose()


async def test_a_bot_with_its_crypto_store_in_the_database_relays_across_a_restart(
    bot_env: BotEnv, make_client: MakeClient, make_user: MakeUser
) -> None:
    assert bot_env.config.crypto_store_in_database
    assert bot_env.bot is not None
    device = bot_env.bot.gateway.device_id
    identity = bot_env.bot.gateway.own_identity_keys()
    assert _stored_accounts(bot_env) == [(bot_env.bot_user.user_id, device)]
    assert not (bot_env.workdir / "crypto").exists()  # no folder store beside it
    admin = await make_client(bot_env.admin)
    dm = await open_dm(admin, bot_env.bot_user.user_id)
    officer = await make_client(bot_env.officer)
    member = make_user("dbstore-nor")
    member_client = await make_client(member)
    await enrol(
        (admin, dm),
        [(bot_env.officer.user_id, "DEU GEHEIM", "DEU"), (member.user_id, "NATO SECRET", "NOR")],
        [(officer, "deu"), (member_client, "nato-s")],
    )
    deu, nato_s = bot_env.room_id("deu"), bot_env.room_id("nato-s")
    before = f"dbstore-before-{secrets.token_hex(4)}"
    await talk(officer, deu, f"[GEHEIM // REL TO NATO] {before}", "Relayed to nato-s")
    await member_client.wait_for_text(nato_s, before)

    await restart(bot_env)
    assert bot_env.bot is not None
    assert bot_env.bot.gateway.device_id == device
    assert bot_env.bot.gateway.own_identity_keys() == identity  # the account came back
    # The officer's client goes on with the room key the bot stored before the restart,
    # and the bot's new room key for nato-s reaches the member over its stored Olm session.
    after = f"dbstore-after-{secrets.token_hex(4)}"
    await talk(officer, deu, f"[GEHEIM // REL TO NATO] {after}", "Relayed to nato-s")
    await member_client.wait_for_text(nato_s, after)
    mark = member_client.event_count(nato_s)
    await talk(member_client, nato_s, "!digest now", "Digest posted")
    digest = await member_client.wait_for_text(nato_s, "Situation digest", after=mark)
    assert before in digest.body and after in digest.body
    assert _stored_accounts(bot_env) == [(bot_env.bot_user.user_id, device)]
