"""Issue 31 (part C): README claims about chat that no test held the bot to — `!status`,
alerts into `[bot] admin_room`, a message whose room key arrives after it, and feed items
found by `!search`. One bot for the module: the tests use rooms and people of their own."""

from __future__ import annotations

import asyncio
import json
import re
import secrets
import time
import urllib.error
import urllib.request
from datetime import timedelta
from typing import Any
from unittest import mock

from nio import RoomMessageNotice, ToDeviceMessage

from bot.devtools.botenv import rooms_config
from bot.devtools.devserver import free_port
from tests.bot_harness import (
    Arrived,
    BotEnv,
    audited,
    enrol,
    eventually,
    nothing_arrives,
    open_dm,
    replying_to,
    talk,
    text_with,
)
from tests.matrix_harness import MakeClient, MakeUser

PORT = free_port()
BOT_FEED_TOKENS = {"sat": f"sat-{secrets.token_hex(8)}", "deu-sig": f"sig-{secrets.token_hex(8)}"}
BOT_EXTRA_BOT = 'admin_room = "ops"'
BOT_ROOMS = (
    rooms_config()
    + """
[[rooms]]
key = "ops"
name = "Security operations"
label = "NATO SECRET"
"""
    + f"""
[ingest]
bind = "127.0.0.1:{PORT}"

[[ingest.feeds]]
key = "sat"
room = "nato-s"
token_env = "LIAISON_FEED_SAT"

[[ingest.feeds]]
key = "deu-sig"
room = "deu"
token_env = "LIAISON_FEED_SIG"
release = true
"""
)


# -- !status ---------------------------------------------------------------------------------

UPTIME = re.compile(r"^• uptime: (?:(\d+)d )?(?:(\d+)h )?(\d+)m(?: (\d+)s)?$", re.MULTILINE)


def _seconds(match: re.Match[str]) -> int:
    days, hours, minutes, secs = (int(g) if g else 0 for g in match.groups())
    return ((days * 24 + hours) * 60 + minutes) * 60 + secs


async def test_status_answers_an_admin_and_refuses_anyone_else(
    bot_env: BotEnv, make_client: MakeClient
) -> None:
    """README, chat commands: `!status` — admin — uptime, sync lag, rooms."""
    assert bot_env.bot is not None and bot_env.bot.client is not None
    started = bot_env.bot.commands.started_at
    admin = await make_client(bot_env.admin)
    dm = await open_dm(admin, bot_env.bot_user.user_id)
    asked = time.monotonic()
    reply = await talk(admin, dm, "!status", "liaison-bot status")
    answered = time.monotonic()
    uptime = UPTIME.search(reply.body)
    assert uptime is not None, reply.body
    assert asked - started - 1 <= _seconds(uptime) <= answered - started + 1, reply.body
    lag = re.search(r"^• since last sync: (\d+\.\d) s$", reply.body, re.MULTILINE)
    # The command itself came with a sync a moment ago.
    assert lag is not None and float(lag.group(1)) < 30, reply.body
    assert re.search(r"^• managed rooms: 3$", reply.body, re.MULTILINE), reply.body
    assert f"device: {bot_env.bot.client.device_id}" in reply.body

    # An officer (not an admin) is refused, told nothing of it, and the refusal audited.
    officer = await make_client(bot_env.officer)
    officer_dm = await open_dm(officer, bot_env.bot_user.user_id)
    refused = await talk(officer, officer_dm, "!status", "is for admins only")
    assert "uptime" not in refused.body and "managed rooms" not in refused.body
    entry = await audited(bot_env, "command.denied", "status")
    assert entry.actor == bot_env.officer.user_id


# -- alerts into [bot] admin_room --------------------------------------------------------------


async def test_spillage_alert_goes_to_the_admin_room(
    bot_env: BotEnv, make_client: MakeClient
) -> None:
    """README: spillage — "the admins are alerted with room, sender, event id and marking
    (never the text)"; `bot.admin_room` — "a managed room for admin alerts instead of each
    admin's DM". A cleared admin in it reads (decrypts) the alert."""
    admin = await make_client(bot_env.admin)
    dm = await open_dm(admin, bot_env.bot_user.user_id)
    officer = await make_client(bot_env.officer)
    ops, deu = await enrol(
        (admin, dm),
        [
            (bot_env.admin.user_id, "NATO SECRET", "DEU"),
            (bot_env.officer.user_id, "DEU GEHEIM", "DEU"),
        ],
        [(admin, "ops"), (officer, "deu")],
    )
    assert ops == bot_env.room_id("ops")
    words = f"spilled-{secrets.token_hex(4)}"
    dm_mark, ops_mark = admin.event_count(dm), admin.event_count(ops)
    spilled = await officer.send_text(deu, f"[STRENG GEHEIM] {words}")
    alert = await admin.wait_for(ops, text_with(spilled), timeout=60, after=ops_mark)
    assert isinstance(alert, RoomMessageNotice)  # decrypted by the admin's device
    assert alert.sender == bot_env.bot_user.user_id
    assert "Spillage in deu" in alert.body
    assert f"sender: {bot_env.officer.user_id}" in alert.body
    assert f"event: {spilled}" in alert.body
    assert "marking: DEU STRENG GEHEIM" in alert.body
    assert words not in alert.body and words not in json.dumps(alert.source)

    # Not to the admin's DM as well ("instead of"): a later answer from the bot in the DM
    # comes after anything the bot sent there before it.
    async def answered() -> Arrived:
        event_id = await admin.send_text(dm, "!rooms")
        return replying_to(event_id)

    await nothing_arrives(
        admin, dm, text_with("Spillage"), since=dm_mark, barrier=answered, what="a DM alert"
    )


# -- a message whose room key arrives after it -------------------------------------------------


async def test_a_command_whose_key_arrives_late_is_answered(
    bot_env: BotEnv, make_client: MakeClient
) -> None:
    """README, device trust: undecryptable messages are kept and decryption retried, so a
    room key that arrives after its message is used. The admin's device sends a command
    without the room key for the bot's device (as when the to-device message is held up);
    the bot holds it; the key then arrives, and the command is answered — not reported
    unreadable."""
    bot = bot_env.bot
    assert bot is not None and bot.client is not None
    # The grace is 2 s in the test config; this test is about a key within the grace.
    bot.undecryptable.grace = timedelta(minutes=5)
    admin = await make_client(bot_env.admin)
    dm = await open_dm(admin, bot_env.bot_user.user_id)
    await talk(admin, dm, "!routes", "Relay routes")  # Olm session and devices known by now
    client, olm = admin.client, admin.client.olm
    assert olm is not None
    (bot_device,) = (
        d
        for d in client.device_store.active_user_devices(bot_env.bot_user.user_id)
        if d.id == bot.client.device_id
    )
    # A new session, its key kept aside before anything is encrypted with it, and not given
    # to the bot's device when the message goes out.
    client.blacklist_device(bot_device)
    client.invalidate_outbound_session(dm)
    olm.create_outbound_group_session(dm)
    session = olm.outbound_group_sessions[dm]
    room_key = {
        "algorithm": "m.megolm.v1.aes-sha2",
        "room_id": dm,
        "session_id": session.id,
        "session_key": session.session_key,
    }
    # The client must not re-trust (and so re-key) the bot's device for this one send.
    with mock.patch.object(admin, "trust_room_devices", lambda room_id: None):
        mark = admin.event_count(dm)
        command = await admin.send_text(dm, "!rooms")
    assert olm.outbound_group_sessions[dm].id == session.id, "sent under another session"
    assert (bot_device.user_id, bot_device.id) not in session.users_shared_with

    # The bot holds it (kept in the database too), unanswered.
    def held() -> bool:
        assert bot_env.store is not None
        return any(p.event_id == command for p in bot_env.store.open_pending())

    await eventually(held, 30, "the command held as undecryptable")
    assert not [e for e in admin.events[dm][mark:] if replying_to(command)(e)]

    # The key, as the sending device would have sent it, now.
    olm_session = olm.session_store.get(bot_device.curve25519)
    assert olm_session is not None
    payload = olm._olm_encrypt(olm_session, bot_device, "m.room_key", room_key)
    await client.to_device(
        ToDeviceMessage("m.room.encrypted", bot_device.user_id, bot_device.id, payload)
    )
    answer = await admin.wait_for(dm, replying_to(command), timeout=30, after=mark)
    assert "Managed rooms" in answer.body
    client.unblacklist_device(bot_device)
    # Handled as read, never as unreadable: no report to the sender, none pending.
    assert not [e for e in admin.events[dm][mark:] if text_with("could not decrypt")(e)]
    decrypted = bot.metrics.registry.get_sample_value(
        "liaison_undecryptable_events_total", {"outcome": "decrypted"}
    )
    assert decrypted is not None and decrypted >= 1
    assert not held()


# -- feed items in the shared inventory --------------------------------------------------------


def post(key: str, body: dict[str, Any]) -> tuple[int, dict[str, Any]]:
    request = urllib.request.Request(
        f"http://127.0.0.1:{PORT}/feeds/{key}", data=json.dumps(body).encode(), method="POST"
    )
    request.add_header("Content-Type", "application/json")
    request.add_header("Authorization", f"Bearer {BOT_FEED_TOKENS[key]}")
    try:
        with urllib.request.urlopen(request, timeout=30) as response:
            return response.status, json.loads(response.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read() or b"{}")


async def test_feed_items_are_found_by_search(
    bot_env: BotEnv, make_client: MakeClient, make_user: MakeUser
) -> None:
    """README, feeds: "Items are stored, audited and searchable like an officer's"; search
    answers with what the room may see (its own, others' only where relayed into it)."""
    analyst, national = make_user("feed-analyst"), make_user("feed-national")
    nato_client, deu_client = await make_client(analyst), await make_client(national)
    nato_s, deu = await enrol(
        bot_env,
        [(analyst.user_id, "NATO SECRET", "NOR"), (national.user_id, "DEU GEHEIM", "DEU")],
        [(nato_client, "nato-s"), (deu_client, "deu")],
    )
    word = f"grid{secrets.token_hex(3)}"
    own = f"pass over {word} one"
    status, body = await asyncio.to_thread(
        post, "sat", {"marking": "SECRET", "text": own, "topics": ["orbit"]}
    )
    assert status == 202, body
    await audited(bot_env, "intel.stored", body["item"])
    released = f"released {word} two"
    status, body = await asyncio.to_thread(
        post, "deu-sig", {"marking": "GEHEIM // REL TO NATO", "text": released}
    )
    assert status == 202 and "Relayed to nato-s" in body["receipt"], body
    national_only = f"national {word} three"
    status, body = await asyncio.to_thread(
        post, "deu-sig", {"marking": "GEHEIM", "text": national_only}
    )
    assert status == 202 and "Not relayed to nato-s" in body["receipt"], body

    found = await talk(nato_client, nato_s, f"!search {word}", "Search")
    assert "2 match(es)" in found.body, found.body
    assert own in found.body and released in found.body and national_only not in found.body
    assert re.search(rf"^• NATO SECRET \S+ \S+ \(nato-s\) {own}$", found.body, re.MULTILINE)
    by_topic = await talk(nato_client, nato_s, f"!search {word} --topic orbit", "Search")
    assert "1 match(es)" in by_topic.body and own in by_topic.body, by_topic.body
    national_view = await talk(deu_client, deu, f"!search {word}", "Search")
    assert "2 match(es)" in national_view.body, national_view.body
    assert released in national_view.body and national_only in national_view.body
