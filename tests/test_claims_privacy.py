"""The README's "Nothing in clear that need not be": message bodies are not logged,
intelligence text is sealed at rest, and "redaction and kick reasons (not encrypted) carry
no markings or room names". On a real Synapse, with the bot's log captured at DEBUG.

Tagged intelligence goes every way the bot handles it (relayed, edited, searched, put in a
digest, spilled, withdrawn), each with a canary word of its own in the text; afterwards no
log record, no audit row, no column of the database and no byte of any file the bot wrote
(its SQLite database with its journal, and its crypto store) holds a canary. The kicks and
redactions the bot made on the way are read as the people's clients received them."""

from __future__ import annotations

import logging
import re
import secrets
import tomllib
from collections.abc import Iterator
from pathlib import Path

import pytest
from nio import Event, RedactionEvent
from sqlalchemy import MetaData, create_engine, select

from bot.devtools.botenv import ROOM_TABLES, rooms_config
from bot.devtools.e2ee_client import E2EEClient
from tests.bot_harness import BotEnv, enrol, open_dm, talk, text_with
from tests.matrix_harness import MakeClient, MakeUser
from tests.test_gate import _q

BOT_ROOMS = rooms_config()
# The bot's own code logs at DEBUG, as `liaison-bot run --verbose` has it; the libraries at
# what `run` gives them.
PRODUCT_LOGGERS = ("bot", "commands", "policy")
QUIET = ("nio", "peewee", "aiohttp")


def _marking_vocabulary() -> list[str]:
    """Every word of a marking: the levels of every scheme by name, alias, abbreviation and
    the short names used in a room of that scheme; the schemes; the caveats; the trigraphs
    and organisations of REL TO; the managed rooms' keys and names."""
    data = tomllib.loads(
        (Path(__file__).parents[1] / "policy" / "data" / "schemes.toml").read_text("utf-8")
    )
    words: set[str] = {"REL TO", "NATO", "EU", *data["default_caveats"]}
    words.update(data["audiences"]["iso3166_alpha3"])
    words.update(str(name) for name in data.get("country_names", {}))
    for scheme in data["schemes"]:
        words.add(scheme["code"])
        for level in scheme["levels"]:
            words.add(level["name"])
            for key in ("aliases", "abbreviations", "context_names"):
                words.update(level.get(key, []))
    for key, (name, label) in ROOM_TABLES.items():
        words.update((key, name, label))
    return sorted(words)


def _marking_words_in(reason: str) -> list[str]:
    return [
        w
        for w in _marking_vocabulary()
        if re.search(rf"(?<!\w){re.escape(w)}(?!\w)", reason, re.IGNORECASE)
    ]


def test_the_vocabulary_catches_what_it_must() -> None:
    """The check below could pass by knowing no words: it knows these."""
    for reason in ("NATO SECRET", "not cleared for deu", "geheim", "REL TO FRA", "spill: NS"):
        assert _marking_words_in(reason), reason
    assert _marking_words_in("not cleared for this room") == []


@pytest.fixture
def captured(caplog: pytest.LogCaptureFixture) -> Iterator[pytest.LogCaptureFixture]:
    caplog.set_level(logging.INFO)
    for name in QUIET:
        caplog.set_level(logging.WARNING, logger=name)
    for name in PRODUCT_LOGGERS:
        caplog.set_level(logging.DEBUG, logger=name)
    yield caplog


async def _redaction_of(client: E2EEClient, room_id: str, event_id: str) -> RedactionEvent:
    def redacts(e: Event) -> bool:
        return isinstance(e, RedactionEvent) and e.redacts == event_id

    found = await client.wait_for(room_id, redacts, 30)
    assert isinstance(found, RedactionEvent)
    return found


async def _kick_reason(bot_env: BotEnv, user_token: str, room_id: str, user_id: str) -> str:
    """The reason on the user's own leave event, as their client reads the room's state."""
    path = f"/_matrix/client/v3/rooms/{_q(room_id)}/state/m.room.member/{_q(user_id)}"
    member = bot_env.server.request("GET", path, token=user_token)
    assert member["membership"] == "leave", member
    return str(member.get("reason", ""))


async def test_bodies_stay_out_of_logs_and_the_database_and_reasons_carry_no_marking(
    bot_env: BotEnv,
    make_client: MakeClient,
    make_user: MakeUser,
    captured: pytest.LogCaptureFixture,
) -> None:
    admin = await make_client(bot_env.admin)
    dm = await open_dm(admin, bot_env.bot_user.user_id)
    officer = await make_client(bot_env.officer)
    person = make_user("nor")
    member = await make_client(person)
    deu, nato_s = await enrol(
        (admin, dm),
        [
            (bot_env.officer.user_id, "DEU GEHEIM", "DEU"),
            (bot_env.officer.user_id, "NATO SECRET", "DEU"),
            (person.user_id, "NATO SECRET", "NOR"),
        ],
        [(officer, "deu"), (member, "nato-s")],
    )
    canaries = {
        what: f"canary{what}{secrets.token_hex(6)}"
        for what in ("relayed", "edited", "spilled", "national")
    }

    # relayed, then edited (the copy follows), searched for and put in a digest
    source = await officer.send_text(
        deu, f"[GEHEIM // REL TO NATO] [PRIORITY] {canaries['relayed']} #kiel"
    )
    copy = await member.wait_for(nato_s, text_with(canaries["relayed"]), 30)
    await officer.client.room_send(
        deu,
        "m.room.message",
        {
            "msgtype": "m.text",
            "body": f"* [GEHEIM // REL TO NATO] {canaries['edited']}",
            "m.new_content": {
                "msgtype": "m.text",
                "body": f"[GEHEIM // REL TO NATO] {canaries['edited']}",
            },
            "m.relates_to": {"rel_type": "m.replace", "event_id": source},
        },
        ignore_unverified_devices=True,
    )
    await member.wait_for(nato_s, text_with(canaries["edited"]), 30)
    await talk(member, nato_s, f"!search {canaries['edited']}", canaries["edited"])
    await talk(member, nato_s, "!digest now", "Digest posted in nato-s")
    # kept national (not releasable): stored only
    await talk(officer, deu, f"[GEHEIM] {canaries['national']}", "Not relayed")
    # spillage: removed at once, the admins alerted (marking only)
    spilled = await officer.send_text(deu, f"[STRENG GEHEIM] {canaries['spilled']}")
    spill = await _redaction_of(officer, deu, spilled)
    await admin.wait_for(dm, text_with(spilled), 30)
    # the source redacted: its copy withdrawn
    await officer.client.room_redact(deu, source, reason="mine")
    withdrawn = await _redaction_of(member, nato_s, copy.event_id)
    # a revocation removes at once; a task-force room closed removes everyone
    await talk(admin, dm, f"!clearance revoke {person.user_id} all", "revoked")
    removed = await _kick_reason(bot_env, person.access_token, nato_s, person.user_id)
    await talk(admin, dm, '!room create tf-claims "Task force claims" "NATO SECRET"', "tf-claims")
    (tf,) = await enrol((admin, dm), [], [(officer, "tf-claims")])
    await talk(admin, dm, "!room close tf-claims", "Closed tf-claims")
    closed = await _kick_reason(bot_env, bot_env.officer.access_token, tf, officer.user_id)

    reasons = {
        "spillage redaction": spill.reason or "",
        "withdrawal redaction": withdrawn.reason or "",
        "removal on revocation": removed,
        "removal on closing": closed,
    }
    assert all(reasons.values()), reasons  # each says something...
    for what, reason in reasons.items():  # ...and nothing of a marking or a room
        assert _marking_words_in(reason) == [], f"{what} reason {reason!r}"

    # Nothing of the texts in the log, the audit log, the database or any file.
    assert bot_env.bot is not None and bot_env.store is not None
    logged = [
        (r.name, logging.Formatter().format(r))
        for r in captured.records
        if not r.name.startswith("bot.devtools")  # the people's clients, not the bot
    ]
    assert any(name.startswith("bot.") for name, _ in logged), "the bot's log was not captured"
    entries = await bot_env.bot.commands.audit_recent(1000)
    url = bot_env.config.database_url()
    engine = create_engine(url)
    try:
        tables = MetaData()
        tables.reflect(engine)
        with engine.connect() as db:
            rows = [
                (table.name, repr(tuple(row)))
                for table in tables.sorted_tables
                for row in db.execute(select(table))
            ]
    finally:
        engine.dispose()
    files = [p for p in bot_env.workdir.rglob("*") if p.is_file()]
    assert any(p.name == "bot.db" for p in files), files
    contents = {p: p.read_bytes() for p in files}
    for what, canary in canaries.items():
        assert not [line for _, line in logged if canary in line], f"{what} text logged"
        audited = [e for e in entries if canary in repr(e)]
        assert not audited, f"{what} text in the audit log: {audited}"
        in_rows = [table for table, row in rows if canary in row]
        assert not in_rows, f"{what} text in clear in table(s) {in_rows}"
        in_files = [p for p, data in contents.items() if canary.encode() in data]
        assert not in_files, f"{what} text in clear in file(s) {in_files}"
