"""Digests on a real Synapse: what a NATO room's digest holds, and who may ask for one."""

from __future__ import annotations

import secrets
from datetime import UTC, datetime, timedelta

from bot.devtools.botenv import rooms_config
from tests.bot_harness import BotEnv, enrol, in_audit, open_dm, talk
from tests.matrix_harness import MakeClient, MakeUser

BOT_ROOMS = rooms_config(digest=True)


def _next_sunday_0730(after: datetime) -> datetime:
    day = after.replace(hour=7, minute=30, second=0, microsecond=0)
    day += timedelta(days=(6 - day.weekday()) % 7)
    return day if day > after else day + timedelta(days=7)


async def test_nato_digest_holds_the_relayed_item_not_the_national_one(
    bot_env: BotEnv, make_client: MakeClient, make_user: MakeUser
) -> None:
    admin = await make_client(bot_env.admin)
    dm = await open_dm(admin, bot_env.bot_user.user_id)
    officer = await make_client(bot_env.officer)
    duty = make_user("duty")
    duty_client = await make_client(duty)
    await enrol(
        (admin, dm),
        [
            (bot_env.officer.user_id, "DEU GEHEIM", "DEU"),
            (bot_env.officer.user_id, "NATO SECRET", "DEU"),
            (duty.user_id, "NATO SECRET", "DNK"),
        ],
        [(officer, "deu"), (duty_client, "nato-s")],
    )
    deu, nato_s = bot_env.room_id("deu"), bot_env.room_id("nato-s")
    shared, national = f"shared-{secrets.token_hex(3)}", f"national-{secrets.token_hex(3)}"
    await talk(
        officer, deu, f"[GEHEIM // REL TO NATO] [IMMEDIATE] {shared} #kiel", "Relayed to nato-s"
    )
    await talk(officer, deu, f"[GEHEIM] {national}", "Not relayed")
    await duty_client.wait_for_text(nato_s, shared)

    # duty staff (a member, not an officer) asks in their own room: posted there
    mark = duty_client.event_count(nato_s)
    await talk(duty_client, nato_s, "!digest now", "Digest posted in nato-s")
    digest = await duty_client.wait_for_text(nato_s, "Situation digest", after=mark)
    assert digest.source["content"]["msgtype"] == "m.notice"
    assert shared in digest.body and national not in digest.body
    assert digest.body.count(shared) == 1  # the stored item and its copy are one item
    assert "IMMEDIATE (1)" in digest.body and "#kiel (1)" in digest.body
    assert digest.body.splitlines()[0] == "NATO SECRET"

    # a member may not ask for a room they are not in; a DM needs the room named
    await talk(duty_client, nato_s, "!digest now deu", "you are not in deu")
    await talk(admin, dm, "!digest now", "name the room here")
    await talk(admin, dm, "!digest now nato-s", "Digest posted in nato-s")
    await in_audit(
        bot_env,
        lambda entries: (
            any(e.action == "digest.posted" for e in entries)
            and any(e.action == "command.denied" and e.subject == "digest now" for e in entries)
        ),
        "the digest posted and the refused one audited",
        limit=20,
    )


async def test_digest_schedules_from_chat(bot_env: BotEnv, make_client: MakeClient) -> None:
    admin = await make_client(bot_env.admin)
    dm = await open_dm(admin, bot_env.bot_user.user_id)
    listing = await talk(admin, dm, "!digest list", "cfg-1")
    assert 'cfg-1: nato-s "0 6,18 * * *" window 12h sources nato-s,deu' in listing.body
    await talk(admin, dm, '!digest schedule nato-s "0 6 * *"', "expected 5 fields")
    await talk(admin, dm, '!digest schedule nato-s "0 6 * * 8"', "bad weekday '8'")
    await talk(admin, dm, '!digest schedule nato-s "0 6 * * 0" --window forever', "bad duration")
    await talk(admin, dm, '!digest schedule nowhere "0 6 * * 0"', "no managed room 'nowhere'")
    await talk(
        admin,
        dm,
        '!digest schedule nato-s "0 6 * * 0" --sources nato-s,nope',
        "no managed room 'nope'",
    )
    listing = await talk(admin, dm, "!digest list", "cfg-1")
    assert "db-" not in listing.body  # nothing was stored by the bad ones
    asked = datetime.now(UTC)
    made = await talk(
        admin, dm, '!digest schedule nato-s "30 7 * * 0" --window 7d', "Scheduled: db-"
    )
    answered = datetime.now(UTC)
    key = made.body.split("Scheduled: ")[1].split(":")[0]
    # standard cron: 0 is Sunday; the next run is the first Sunday 07:30 UTC after the
    # command (the same for both ends of the exchange unless one straddles a run)
    nexts = {_next_sunday_0730(asked), _next_sunday_0730(answered)}
    described = {
        f'Scheduled: {key}: nato-s "30 7 * * 0" window 7d sources nato-s '
        f"(next {when:%Y-%m-%d %H:%M} UTC)"
        for when in nexts
    }
    assert made.body in described, made.body
    await talk(admin, dm, "!digest cancel cfg-1", "comes from the config file")
    await talk(admin, dm, f"!digest cancel {key}", "Cancelled")
    await talk(admin, dm, f"!digest cancel {key}", "no active chat schedule")
