"""The shared inventory (`!search`) and marking help (`!label check`) on a real Synapse."""

from __future__ import annotations

import secrets

from bot.devtools.botenv import rooms_config
from bot.devtools.e2ee_client import open_dm, talk
from tests.bot_harness import BotEnv, enrol
from tests.matrix_harness import MakeClient, MakeUser

BOT_ROOMS = rooms_config("eu-s")


async def test_search_shows_only_what_the_room_may_see(
    bot_env: BotEnv, make_client: MakeClient, make_user: MakeUser
) -> None:
    admin = await make_client(bot_env.admin)
    dm = await open_dm(admin, bot_env.bot_user.user_id)
    officer = await make_client(bot_env.officer)
    analyst = make_user("analyst")
    analyst_client = await make_client(analyst)
    await enrol(
        (admin, dm),
        [
            (bot_env.officer.user_id, "DEU GEHEIM", "DEU"),
            (bot_env.officer.user_id, "NATO SECRET", "DEU"),
            (analyst.user_id, "NATO SECRET", "NOR"),
        ],
        [(officer, "deu"), (analyst_client, "nato-s")],
    )
    deu, nato_s = bot_env.room_id("deu"), bot_env.room_id("nato-s")
    word = f"needle{secrets.token_hex(3)}"
    await talk(officer, deu, f"[GEHEIM // REL TO NATO] shared {word} sighting #kiel", "Relayed")
    await talk(officer, deu, f"[GEHEIM] national {word} source", "Not relayed")
    await talk(officer, deu, f"[GEHEIM // REL TO NATO] [EXERCISE] drill {word}", "Relayed")

    found = await talk(analyst_client, nato_s, f"!search {word}", "match(es)")
    assert "1 match(es)" in found.body
    assert f"shared {word} sighting" in found.body and "national" not in found.body
    assert "drill" not in found.body
    drills = await talk(analyst_client, nato_s, f"!search {word} --exercise", "match(es)")
    assert "drill" in drills.body and "EXERCISE EXERCISE EXERCISE" in drills.body
    tagged = await talk(analyst_client, nato_s, "!search --topic kiel", "match(es)")
    assert f"shared {word}" in tagged.body
    nothing = await talk(analyst_client, nato_s, "!search zzz-nothing-zzz", "0 match(es)")
    assert "No stored item" in nothing.body
    await talk(analyst_client, nato_s, f"!search {word} --since 999d", "at most 365d")
    await talk(analyst_client, nato_s, f"!search {word} --sinse 7d", "unknown option --sinse")
    await talk(admin, dm, f"!search {word}", "search works in a managed room")


async def test_label_check_explains_a_marking(bot_env: BotEnv, make_client: MakeClient) -> None:
    admin = await make_client(bot_env.admin)
    dm = await open_dm(admin, bot_env.bot_user.user_id)
    reply = await talk(admin, dm, '!label check "DEU GEHEIM // REL TO NATO"', "Equivalents")
    assert "scheme DEU, level DEU GEHEIM, rank 3" in reply.body
    assert "NATO: NATO SECRET" in reply.body and "EU: SECRET UE/EU SECRET" in reply.body
    assert "may be received by: NATO (32 nation(s))" in reply.body
    assert "nato-s (NATO SECRET liaison, NATO SECRET)" in reply.body
    assert "eu-s" not in reply.body.split("Managed rooms it fits")[1]
    bad = await talk(admin, dm, '!label check "SECRTE"', "unknown marking 'SECRTE'")
    assert "did you mean '" in bad.body and " SECRET'" in bad.body  # named with its nation
    await talk(admin, dm, "!label check SECRET", "ambiguous marking 'SECRET'")
