"""Task-force rooms and routes from chat: created, enforced, surviving restarts, closed."""

from __future__ import annotations

from bot.devtools.e2ee_client import open_dm, talk
from tests.bot_harness import BotEnv, enrol, in_audit, restart
from tests.matrix_harness import MakeClient, MakeUser

BOT_EXTRA_BOT = 'caveats = ["BALTOPS"]'  # a caveat of this deployment, not the catalogue's


async def test_task_force_room_lifecycle(
    bot_env: BotEnv, make_client: MakeClient, make_user: MakeUser
) -> None:
    admin = await make_client(bot_env.admin)
    dm = await open_dm(admin, bot_env.bot_user.user_id)
    bad = [
        ('!room create tf-x "X" "NATO SECRTE"', "unknown marking 'NATO SECRTE'"),
        ('!room create nato-s "X" "NATO SECRET"', "exists already"),
        ('!room create tf-x "X" "DEU GEHEIM" --audience FRA', "outside the releasable set"),
        ("!route add deu nowhere", "no managed room 'nowhere'"),
        ("!route add deu deu", "cannot route to itself"),
        ("!route add deu nato-s", "exists already"),
        ("!route remove deu nato-s", "comes from the config file"),
        ("!room close nato-s", "comes from the config file"),
    ]
    for text, expected in bad:
        await talk(admin, dm, text, expected)
    created = await talk(
        admin,
        dm,
        '!room create tf-baltic "Task force Baltic" "NATO SECRET" --audience DEU,POL',
        "Created tf-baltic",
    )
    assert "NATO SECRET" in created.body
    assert bot_env.bot is not None
    room = bot_env.bot.rooms.by_key["tf-baltic"]
    assert room.policy.audience == {"DEU", "POL"}

    officer = await make_client(bot_env.officer)
    member = make_user("tf-pol")
    italian = make_user("tf-ita")
    grants = [
        (bot_env.officer.user_id, "DEU GEHEIM", "DEU"),
        (member.user_id, "NATO SECRET", "POL"),
        (italian.user_id, "NATO SECRET", "ITA"),
    ]
    await enrol((admin, dm), grants)
    refused = await talk(admin, dm, f"!invite {italian.user_id} tf-baltic", "may not join")
    assert "nationality ITA is not in the room's audience (DEU, POL)" in refused.body
    pol = await make_client(member)
    await enrol((admin, dm), [], [(officer, "deu"), (pol, "tf-baltic")])
    await talk(admin, dm, "!route add deu tf-baltic", "Route deu → tf-baltic added")
    routes = await talk(admin, dm, "!routes", "Relay routes")
    assert "deu → tf-baltic" in routes.body

    # both survive a restart
    await restart(bot_env)
    assert "tf-baltic" in bot_env.bot.rooms.by_key
    receipt = await talk(
        officer,
        bot_env.room_id("deu"),
        "[GEHEIM // REL TO DEU, POL] to the task force",
        "Relayed to tf-baltic",
    )
    assert "Relayed to nato-s" not in receipt.body  # not releasable to all of NATO
    await pol.wait_for_text(bot_env.room_id("tf-baltic"), "to the task force")

    tf_room = bot_env.room_id("tf-baltic")
    closed = await talk(admin, dm, "!room close tf-baltic", "Closed tf-baltic")
    assert "removed 1 member(s)" in closed.body
    assert tf_room not in await pol.joined_rooms()
    assert "tf-baltic" not in bot_env.bot.rooms.by_key
    await in_audit(
        bot_env,
        lambda entries: (
            {"room.provisioned", "route.added", "room.closed"} <= {e.action for e in entries}
        ),
        "the room, its route and its closing audited",
        limit=40,
    )
    await talk(admin, dm, "!route remove deu tf-baltic", "no managed room 'tf-baltic'")


async def test_a_room_with_a_configured_caveat_is_restored_after_a_restart(
    bot_env: BotEnv, make_client: MakeClient
) -> None:
    """Issue 14, finding 7: stored labels are re-read with the configured caveats."""
    admin = await make_client(bot_env.admin)
    dm = await open_dm(admin, bot_env.bot_user.user_id)
    await talk(admin, dm, '!room create tf-cav "Caveat cell" "NATO SECRET // BALTOPS"', "Created")
    await restart(bot_env)
    assert bot_env.bot is not None
    restored = bot_env.bot.rooms.by_key.get("tf-cav")
    assert restored is not None and "BALTOPS" in restored.policy.label.caveats
