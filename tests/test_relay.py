"""The relay engine on a real Synapse, with E2EE clients on both sides."""

from __future__ import annotations

import asyncio
import secrets
import sqlite3
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from nio import RedactedEvent, RoomMessageNotice, RoomMessageText

from bot.devtools.botenv import rooms_config
from bot.devtools.devserver import DevServer, RegisteredUser
from bot.matrix.crosssign import CrossSigningKeys
from bot.services.render import LABEL_KEY
from policy import parse_marking
from policy.adatp4774 import from_json, label_metadata, matrix_uri, to_json, to_label
from tests.bot_harness import (
    BotEnv,
    answered_barrier,
    audited,
    enrol,
    eventually,
    in_audit,
    nothing_arrives,
    open_dm,
    relayed_barrier,
    stopped,
    talk,
    text_with,
)
from tests.matrix_harness import E2EEClient, MakeClient, MakeUser

BOT_ROOMS = rooms_config("eu-s", "nato-r", relay_to=("nato-s", "eu-s"))


@dataclass
class Cast:
    admin: E2EEClient
    dm: str
    officer: E2EEClient
    nato: E2EEClient
    eu: E2EEClient

    def room(self, env: BotEnv, key: str) -> str:
        return env.room_id(key)


@pytest.fixture(scope="module")
async def cast(
    bot_env: BotEnv,
    make_user: MakeUser,
    tmp_path_factory: pytest.TempPathFactory,
    synapse: DevServer,
    identities: dict[str, CrossSigningKeys],
) -> AsyncIterator[Cast]:
    """An officer in deu/nato-s/eu-s, a NATO member (NOR), an EU member (AUT), for the module."""
    from tests.matrix_harness import cross_sign

    clients: list[E2EEClient] = []

    async def client_for(user: RegisteredUser) -> E2EEClient:
        c = await E2EEClient.create(synapse, user, tmp_path_factory.mktemp("store"))
        await cross_sign(synapse, c, identities)
        await c.start()
        clients.append(c)
        return c

    admin = await client_for(bot_env.admin)
    dm = await open_dm(admin, bot_env.bot_user.user_id)
    officer = await client_for(bot_env.officer)
    nato_user, eu_user = make_user("nato-nor"), make_user("eu-aut")
    grants = [
        (bot_env.officer.user_id, "DEU GEHEIM", "DEU"),
        (bot_env.officer.user_id, "NATO SECRET", "DEU"),
        (bot_env.officer.user_id, "EU SECRET", "DEU"),
        (nato_user.user_id, "NATO SECRET", "NOR"),
        (eu_user.user_id, "EU SECRET", "AUT"),
    ]
    nato, eu = await client_for(nato_user), await client_for(eu_user)
    joins = [
        (officer, "deu"),
        (officer, "nato-s"),
        (officer, "eu-s"),
        (nato, "nato-s"),
        (eu, "eu-s"),
    ]
    joined = await enrol((admin, dm), grants, joins)
    assert joined == [bot_env.room_id(key) for _, key in joins]
    yield Cast(admin, dm, officer, nato, eu)
    await asyncio.gather(*(c.stop() for c in clients), return_exceptions=True)


async def test_releasable_item_reaches_nato_and_is_refused_for_eu(
    bot_env: BotEnv, cast: Cast
) -> None:
    deu, nato_s, eu_s = (bot_env.room_id(k) for k in ("deu", "nato-s", "eu-s"))
    eu_mark, nato_mark = cast.eu.event_count(eu_s), cast.nato.event_count(nato_s)
    receipt = await talk(
        cast.officer,
        deu,
        "[GEHEIM // REL TO NATO] [PRIORITY] convoy <b>sighted</b> #Logistics",
        "Relayed to nato-s",
    )
    assert "as NATO SECRET" in receipt.body
    assert "Not relayed to eu-s: not releasable to AUT, CYP, IRL, MLT" in receipt.body
    copy = await cast.nato.wait_for_text(
        nato_s, "originator: DEU GEHEIM // REL TO NATO", after=nato_mark
    )
    assert isinstance(copy, RoomMessageText)  # m.text, so that it notifies
    lines = copy.body.splitlines()
    assert lines[0] == "NATO SECRET — originator: DEU GEHEIM // REL TO NATO"
    assert lines[1] == "[PRIORITY] convoy <b>sighted</b> #Logistics"
    assert lines[2].startswith(f"Relayed from DEU national cell (deu) · {cast.officer.user_id} · ")
    assert lines[3] == lines[0]
    html = copy.source["content"]["formatted_body"]
    assert "<b>sighted</b>" not in html and "&lt;b&gt;sighted&lt;/b&gt;" in html
    # The machine-readable label (ADatP-4774): the originator's, and NATO's equivalent.
    meta = from_json(copy.source["content"][LABEL_KEY])
    assert to_label(meta.originator) == parse_marking("GEHEIM // REL TO NATO", "DEU")
    assert meta.originator.originator == matrix_uri(cast.officer.user_id)
    assert [(a.policy, a.classification) for a in meta.alternatives] == [("NATO", "SECRET")]
    assert copy.source["content"]["m.mentions"] == {}
    await nothing_arrives(
        cast.eu,
        eu_s,
        text_with("convoy"),
        since=eu_mark,
        barrier=relayed_barrier(cast.officer, deu, "GEHEIM // REL TO EU"),
        what="a copy in eu-s",
    )
    await in_audit(
        bot_env,
        lambda entries: (
            {"relay.sent", "relay.refused", "intel.stored"} <= {e.action for e in entries}
        ),
        "the relay, its refusal and the stored item audited",
        limit=30,
    )


async def _say(client: E2EEClient, room_id: str, content: dict[str, object], expect: str) -> str:
    mark = client.event_count(room_id)
    await client.send_event(room_id, "m.room.message", content)
    event = await client.wait_for(
        room_id, lambda e: isinstance(e, RoomMessageNotice) and expect in e.body, 30, after=mark
    )
    return str(event.body)


async def test_a_machine_readable_label_tags_a_message(bot_env: BotEnv, cast: Cast) -> None:
    """A client that sends the label as ADatP-4774 needs no bracket marking; one whose
    marking says otherwise is refused with both named."""
    deu, nato_s = bot_env.room_id("deu"), bot_env.room_id("nato-s")
    label = parse_marking("DEU GEHEIM // REL TO NATO")
    field = to_json(label_metadata(label))
    nato_mark = cast.nato.event_count(nato_s)
    receipt = await _say(
        cast.officer,
        deu,
        {"msgtype": "m.text", "body": "[IMMEDIATE] bridge down at grid 31U", LABEL_KEY: field},
        "Relayed to nato-s",
    )
    assert "as NATO SECRET" in receipt
    copy = await cast.nato.wait_for_text(nato_s, "bridge down at grid 31U")
    assert copy.body.splitlines()[0] == "NATO SECRET — originator: DEU GEHEIM // REL TO NATO"
    assert "[IMMEDIATE] bridge down" in copy.body
    assert to_label(from_json(copy.source["content"][LABEL_KEY]).originator) == label

    refusal = await _say(
        cast.officer,
        deu,
        {"msgtype": "m.text", "body": "[GEHEIM // REL TO NATO, UKR] other words", LABEL_KEY: field},
        "disagree",
    )
    assert "DEU GEHEIM // REL TO NATO, UKR" in refusal and "DEU GEHEIM // REL TO NATO'" in refusal
    unreadable = await _say(
        cast.officer,
        deu,
        {
            "msgtype": "m.text",
            "body": "more words",
            LABEL_KEY: {"originatorConfidentialityLabel": {}},
        },
        "Not stored or relayed",
    )
    assert "ConfidentialityInformation is missing" in unreadable
    await nothing_arrives(
        cast.nato,
        nato_s,
        lambda e: text_with("other words")(e) or text_with("more words")(e),
        since=nato_mark,
        barrier=relayed_barrier(cast.officer, deu, "GEHEIM // REL TO NATO"),
        what="a copy of a refused message",
    )


async def test_national_only_item_goes_nowhere(bot_env: BotEnv, cast: Cast) -> None:
    deu = bot_env.room_id("deu")
    receipt = await talk(cast.officer, deu, "[GEHEIM] national eyes only", "Not relayed to")
    assert "Relayed to" not in receipt.body.replace("Not relayed to", "")
    assert "Not relayed to nato-s: not releasable to" in receipt.body
    assert "Not relayed to eu-s: not releasable to" in receipt.body


async def test_a_burst_gets_one_receipt_listing_every_message(bot_env: BotEnv, cast: Cast) -> None:
    """Messages a sync batch brings together (sent while the bot was down) get one receipt
    that names each (by time and event id, never its words: one is spillage, removed) and
    keeps every outcome; the copies arrive in the order sent."""
    deu, nato_s = bot_env.room_id("deu"), bot_env.room_id("nato-s")
    tag = secrets.token_hex(3)
    mark, nato_mark = cast.officer.event_count(deu), cast.nato.event_count(nato_s)
    async with stopped(bot_env):
        bodies = [
            f"[GEHEIM // REL TO NATO] burst-{tag}-1",
            f"[GEHEIM] burst-{tag}-2 national only",
            f"[STRENG GEHEIM] burst-{tag}-3 spilled words",
            f"[GEHEIM // REL TO NATO] burst-{tag}-4",
            f"[GEHEIM // REL TO XYZ] burst-{tag}-5",
        ]
        for body in bodies:
            await cast.officer.send_text(deu, body)
        sent = [
            e.event_id
            for e in cast.officer.events.get(deu, [])[mark:]
            if isinstance(e, RoomMessageText) and f"burst-{tag}" in e.body
        ]
    receipt = await cast.officer.wait_for(
        deu,
        lambda e: isinstance(e, RoomMessageNotice) and "Receipt for your 5 tagged" in e.body,
        60,
        after=mark,
    )
    text = receipt.body
    assert f"burst-{tag}" not in text and "spilled words" not in text
    assert [text.index(f"{n}. sent ") for n in range(1, 6)] == sorted(
        text.index(f"{n}. sent ") for n in range(1, 6)
    )
    assert all(event_id in text for event_id in sent), (sent, text)
    assert text.count("Relayed to nato-s as NATO SECRET") == 2
    assert text.count("Not relayed to nato-s: not releasable to") == 1
    assert "removed from this room" in text  # the spillage, told without its words
    assert "⚠ Not stored or relayed:" in text  # the unknown country, refused by name
    await cast.nato.wait_for_text(nato_s, f"burst-{tag}-4")
    copies = [
        e.body
        for e in cast.nato.events.get(nato_s, [])[nato_mark:]
        if isinstance(e, RoomMessageText) and f"burst-{tag}" in e.body
    ]
    assert [c.splitlines()[1] for c in copies] == [f"burst-{tag}-1", f"burst-{tag}-4"]
    await nothing_arrives(
        cast.officer,
        deu,
        text_with("Receipt for"),
        since=mark,
        already=1,
        barrier=answered_barrier(cast.officer, deu, "GEHEIM // REL TO NATO"),
        what="the burst's receipt",
    )


async def test_flash_mentions_the_room(bot_env: BotEnv, cast: Cast) -> None:
    deu, nato_s = bot_env.room_id("deu"), bot_env.room_id("nato-s")
    await talk(cast.officer, deu, "[GEHEIM // REL TO NATO] [FLASH] incoming", "Relayed to nato-s")
    copy = await cast.nato.wait_for_text(nato_s, "[FLASH] incoming")
    assert copy.source["content"]["m.mentions"] == {"room": True}
    assert "@room" in copy.body


async def test_relay_command_narrows_targets(bot_env: BotEnv, cast: Cast) -> None:
    deu, nato_s, eu_s = (bot_env.room_id(k) for k in ("deu", "nato-s", "eu-s"))
    eu_mark = cast.eu.event_count(eu_s)
    receipt = await talk(
        cast.officer, deu, '!relay nato-s [GEHEIM // REL TO NATO, EU] narrowed "quote', "Relayed to"
    )
    assert "nato-s" in receipt.body and "eu-s" not in receipt.body
    await cast.nato.wait_for_text(nato_s, 'narrowed "quote')
    await nothing_arrives(
        cast.eu,
        eu_s,
        text_with("narrowed"),
        since=eu_mark,
        barrier=relayed_barrier(cast.officer, deu, "GEHEIM // REL TO EU"),
        what="a copy in eu-s",
    )
    await talk(cast.officer, deu, "!relay nato-x [GEHEIM // REL TO NATO] x", "not a route target")


async def test_malformed_marking_is_answered_and_nothing_stored(
    bot_env: BotEnv, cast: Cast
) -> None:
    deu = bot_env.room_id("deu")
    reply = await talk(cast.officer, deu, "[GEHEIM // REL TO NATOO] typo", "Not stored or relayed")
    assert "unknown audience 'NATOO'" in reply.body
    reply = await talk(cast.officer, deu, "[GEHEIM] [FLSH] typo", "Not stored or relayed")
    assert "did you mean 'FLASH'" in reply.body
    assert bot_env.store is not None
    item = await asyncio.to_thread(
        bot_env.store.item,
        reply.source["content"]["m.relates_to"]["m.in_reply_to"]["event_id"],
    )
    assert item is None


async def test_oversized_message_is_refused(bot_env: BotEnv, cast: Cast) -> None:
    deu = bot_env.room_id("deu")
    reply = await talk(cast.officer, deu, "[GEHEIM] " + "x" * 40_000, "message too long")
    assert "at most 40000" in reply.body


async def test_non_officer_is_stored_not_relayed(bot_env: BotEnv, cast: Cast) -> None:
    nato_s = bot_env.room_id("nato-s")
    reply = await talk(cast.nato, nato_s, "[SECRET] member's observation", "not relayed")
    assert bot_env.store is not None
    item = await asyncio.to_thread(
        bot_env.store.item,
        reply.source["content"]["m.relates_to"]["m.in_reply_to"]["event_id"],
    )
    assert item is not None and item.label == "NATO SECRET"


async def test_spillage_is_redacted_and_alerted(
    bot_env: BotEnv, cast: Cast, make_client: MakeClient, make_user: MakeUser
) -> None:
    (nato_r,) = await enrol((cast.admin, cast.dm), [], [(cast.officer, "nato-r")])
    assert nato_r == bot_env.room_id("nato-r")
    secret = f"spilled-{secrets.token_hex(4)}"
    event_id = await cast.officer.send_text(nato_r, f"[NATO SECRET] {secret}")
    await cast.officer.wait_for_text(nato_r, "removed from this room")
    await eventually(
        lambda: _redacted(cast.officer, nato_r, event_id),
        timeout=20,
        what="the spilled event is redacted",
    )
    alert = await cast.admin.wait_for_text(cast.dm, "Spillage in nato-r")
    assert "NATO SECRET" in alert.body and event_id in alert.body and secret not in alert.body
    spill = await in_audit(
        bot_env,
        lambda entries: next((e for e in entries if e.action == "spillage"), None),
        "the spillage audited",
        limit=20,
    )
    assert spill.detail["marking"] == "NATO SECRET" and secret not in str(spill.detail)


async def test_unverified_device_cannot_post_intelligence(
    bot_env: BotEnv, cast: Cast, make_client: MakeClient
) -> None:
    deu = bot_env.room_id("deu")
    unsigned = await make_client(cast.officer.user, cross_signed=False)
    await unsigned.wait_for_room(deu)
    reply = await talk(unsigned, deu, "[GEHEIM // REL TO NATO] from a stolen token", "Not stored")
    assert "not verified by its owner" in reply.body


async def test_edit_and_redaction_follow_the_copy(bot_env: BotEnv, cast: Cast) -> None:
    deu, nato_s = bot_env.room_id("deu"), bot_env.room_id("nato-s")
    first = await talk(
        cast.officer, deu, "[GEHEIM // REL TO NATO] first version", "Relayed to nato-s"
    )
    source_id = first.source["content"]["m.relates_to"]["m.in_reply_to"]["event_id"]
    copy = await cast.nato.wait_for_text(nato_s, "first version")
    await cast.officer.send_event(
        deu,
        "m.room.message",
        {
            "msgtype": "m.text",
            "body": "* [GEHEIM // REL TO NATO] second version",
            "m.new_content": {
                "msgtype": "m.text",
                "body": "[GEHEIM // REL TO NATO] second version",
            },
            "m.relates_to": {"rel_type": "m.replace", "event_id": source_id},
        },
    )
    edit = await cast.nato.wait_for_text(nato_s, "second version")
    assert edit.source["content"]["m.relates_to"] == {
        "rel_type": "m.replace",
        "event_id": copy.event_id,
    }
    # An edit that is no longer releasable to NATO withdraws the copy.
    await cast.officer.send_event(
        deu,
        "m.room.message",
        {
            "msgtype": "m.text",
            "body": "* [GEHEIM] third version",
            "m.new_content": {"msgtype": "m.text", "body": "[GEHEIM] third version"},
            "m.relates_to": {"rel_type": "m.replace", "event_id": source_id},
        },
    )
    await cast.officer.wait_for_text(deu, "withdrawn")
    await eventually(
        lambda: _redacted(cast.nato, nato_s, copy.event_id),
        timeout=20,
        what="the copy is redacted after a narrowing edit",
    )
    second = await talk(
        cast.officer, deu, "[GEHEIM // REL TO NATO] to be withdrawn", "Relayed to nato-s"
    )
    second_source = second.source["content"]["m.relates_to"]["m.in_reply_to"]["event_id"]
    second_copy = await cast.nato.wait_for_text(nato_s, "to be withdrawn")
    await cast.officer.client.room_redact(deu, second_source)
    await eventually(
        lambda: _redacted(cast.nato, nato_s, second_copy.event_id),
        timeout=20,
        what="the copy is redacted with its source",
    )


async def test_intel_text_is_sealed_at_rest(bot_env: BotEnv, cast: Cast) -> None:
    deu = bot_env.room_id("deu")
    phrase = f"needle-{secrets.token_hex(6)}"
    await talk(cast.officer, deu, f"[GEHEIM // REL TO NATO] {phrase}", "Relayed to nato-s")
    await cast.nato.wait_for_text(bot_env.room_id("nato-s"), phrase)
    # The store opens a connection per transaction, so SQLite deletes the WAL whenever the
    # last one closes: a file listed a moment ago may be gone when read (this test failed on
    # that). A read transaction held open across the scan keeps the WAL from being reset or
    # deleted, so every frame is in bot.db or in the WAL when each is read.
    database = Path(bot_env.workdir) / "bot.db"
    holder = sqlite3.connect(database)
    try:
        holder.execute("BEGIN")
        holder.execute("SELECT count(*) FROM sqlite_master").fetchone()
        files = [p for p in Path(bot_env.workdir).glob("bot.db*") if p.is_file()]
        assert database in files and database.with_name("bot.db-wal") in files
        for path in files:
            assert phrase.encode() not in path.read_bytes(), path
    finally:
        holder.close()


async def _redacted(client: E2EEClient, room_id: str, event_id: str) -> bool:
    response = await client.client.room_get_event(room_id, event_id)
    event = getattr(response, "event", None)
    if isinstance(event, RedactedEvent):
        return True
    content = getattr(event, "source", {}).get("content", None)
    return content == {}


async def test_ledger_row_older_than_the_transaction_memory_is_reported_not_resent(
    bot_env: BotEnv, cast: Cast
) -> None:
    from datetime import UTC, datetime, timedelta

    from sqlalchemy import update

    from bot.services.relay import ledger_binding
    from bot.storage import RelayEntry, RelayKind, RelayRow

    assert bot_env.bot is not None and bot_env.store is not None
    target = bot_env.bot.rooms.by_key["nato-s"]
    entry = RelayEntry(
        txn_id="lb-stale-test",
        kind=RelayKind.COPY,
        source_event_id="$old",
        item_event_id="$old",
        target_key="nato-s",
        target_room_id=target.room_id,
        content=bot_env.bot.relay.ledger_sealer.seal_text(
            '{"msgtype": "m.text", "body": "old"}',
            ledger_binding("lb-stale-test", "nato-s", target.room_id),
        ),
    )
    await asyncio.to_thread(bot_env.store.add_relays, [entry])
    with bot_env.store.session() as session:
        session.execute(
            update(RelayRow)
            .where(RelayRow.txn_id == "lb-stale-test")
            .values(created_at=datetime.now(UTC) - timedelta(hours=30))
        )
    await bot_env.bot.relay.resend_pending()
    assert all(r.txn_id != "lb-stale-test" for r in bot_env.store.pending_relays())
    alert = await cast.admin.wait_for_text(cast.dm, "stayed unsent for over 23 hours")
    assert "$old" in alert.body
    await audited(bot_env, "relay.stale", "$old")
