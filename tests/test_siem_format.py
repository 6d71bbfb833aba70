"""Audit rows rendered for a SIEM (bot/siem): every action mapped, each sample a valid OCSF
1.5.0 event (the official schema, offline), nothing classified or typed by a person
leaving unless its key is allowed, markings cut to the setting, CEF escaped, ASCII only."""

from __future__ import annotations

import json
import os
import re
from datetime import UTC, datetime, timedelta, timezone
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from ocsf_json_schema import OcsfJsonSchema, OcsfJsonSchemaEmbedded, get_ocsf_schema

from bot.siem import DEFAULT_MARKINGS, Markings, Rendered, cef, ocsf, render, syslog_severity
from bot.siem.specs import Marking, level_word
from bot.storage.records import AuditEntry
from policy import current
from tests.audit_scan import scan

CI = os.environ.get("CI") == "true"
INSTALLATION = "nato-cell-1"
AT = datetime(2026, 11, 25, 14, 5, 1, tzinfo=UTC)
H1, H2 = "1" * 64, "2" * 64
OFFICER = "@lo-deu:deu.example"
ADMIN = "@admin:nato.example"
EVENT_ID = "$Jq3xYz_abc-123"
ROOM_ID = "!AbCdEf:nato.example"
KEY = "x9Tq6gI1m0t9cRuE0yH9wGmC3bqIuQ6sKp2YfZl8aVw"

# action -> (actor, subject, detail): what the code writes for it (keys and value shapes as
# the writers make them, spread keys included: the relay's `room`, the store's
# `target_event_id`, a PermissionDenied's own detail).
SAMPLES: dict[str, tuple[str, str | None, dict[str, Any]]] = {
    "audit.keyed": ("liaison-bot", None, {}),
    "clearance.grant": (
        "cli:ops",
        OFFICER,
        {
            "scheme": "NATO", "level": "NATO SECRET", "previous": "NATO CONFIDENTIAL",
            "nationality": "DEU", "expires": "2027-06-30", "caveats": ["CRYPTO"],
            "restored": True,
        },
    ),
    "clearance.revoke": (  # the keys of both writers: one scheme's grant, a forged row
        ADMIN, OFFICER,
        {"scope": "NATO", "level": "NATO SECRET", "unverified": True, "removed": True},
    ),
    "clearance.unusable": (
        "liaison-bot", OFFICER,
        {"reason": "grant DEU GEHEIM on record at rank 3 reads at rank 4 in the schemes in force"},
    ),
    "command.denied": (
        OFFICER, "clearance show",
        {
            "room_id": ROOM_ID, "reason": "not admin", "reason_code": "permission.not_admin",
            "user": ADMIN, "structured": True,
        },
    ),
    "command.error": (
        OFFICER, "relay",
        {"room_id": ROOM_ID, "error": "unknown marking 'GEHEIM // EYES ONLY X'",
         "reason_code": "command.failed", "structured": True},
    ),
    "command.structured": (
        OFFICER, "invite", {"room_id": ROOM_ID, "body_agrees": False, "structured": True},
    ),
    "command.refused": (
        OFFICER, None,
        {"room_id": ROOM_ID, "reason": "room not encrypted", "reason_code": "room.not_encrypted"},
    ),
    "command.untrusted-device": (
        OFFICER, None, {"room_id": ROOM_ID, "problem": "device QWERTY is not signed by its owner"}
    ),
    "digest.cancelled": (ADMIN, "db-4", {"room": "nato-s"}),
    "digest.posted": (
        "@bot:nato.example", "cfg-0",
        {"room": "nato-s", "window_end": "2026-11-25T18:00:00+00:00", "window_s": 43200,
         "delayed": False, "parts": 2, "on_demand": False, "charts": 2},
    ),
    "digest.scheduled": (
        ADMIN, "db-4",
        {"room": "nato-s", "cron": "0 6,18 * * *", "window_s": 43200, "sources": ["nato-s", "deu"]},
    ),
    "digest.skipped": (
        "@bot:nato.example", "cfg-0",
        {"room": "nato-s", "window_end": "2026-11-25T06:00:00+00:00",
         "first_window_end": "2026-11-24T06:00:00+00:00", "windows": 3,
         "reason": "missed while down, older than digest_catchup_grace"},
    ),
    "digest.stale": (
        "@bot:nato.example", "cfg-0",
        {"room": "nato-s", "window_end": "2026-11-24T06:00:00+00:00",
         "reason": "claimed over 23 hours ago"},
    ),
    "dm.accepted": ("@bot:nato.example", ADMIN, {"room_id": ROOM_ID, "is_direct": True}),
    "dm.reply.dropped": (
        "@bot:nato.example", ADMIN, {"room_id": ROOM_ID, "reason": "not joined in 300 s"}
    ),
    "event.decrypted": ("liaison-bot", OFFICER, {"room_id": ROOM_ID, "event_id": EVENT_ID}),
    "event.failed": (
        OFFICER, EVENT_ID, {"room_id": ROOM_ID, "event": "RoomMessageText", "error": "KeyError"}
    ),
    "event.malformed": (
        OFFICER, EVENT_ID, {"room_id": ROOM_ID, "problem": "content.body: Input should be a string"}
    ),
    "event.undecryptable": (
        "liaison-bot", OFFICER,
        {"room_id": ROOM_ID, "event_id": EVENT_ID, "device_id": "QWERTYUIOP",
         "session_id": "sess/Abc+123"},
    ),
    "feed.unauthorised": (
        "feed ais", "ais",
        {"reason": "bad or missing token", "reason_code": "feed.token_invalid",
         "source": "2001:db8::7"},
    ),
    "feed.unauthorised.suppressed": (
        "feed listener", None,
        {"per_minute": 10, "suppressed": {"ais": 41, "*": 3}, "sources": ["192.0.2.7"]}
    ),
    "ha.takeover": (
        "liaison-bot", "node-b",
        {"epoch": 7, "previous": "node-a", "previous_epoch": 6, "sessions_ended": 2,
         "seconds": 3.091},
    ),
    "identity.changed": ("liaison-bot", OFFICER, {"pinned": KEY, "seen": KEY[::-1]}),
    "identity.confirmed": (ADMIN, OFFICER, {"key": KEY[::-1], "previous": KEY}),
    "identity.pinned": ("liaison-bot", OFFICER, {"key": KEY, "previous": None}),
    "intel.edit-ignored": (
        OFFICER, EVENT_ID,
        {"room": "deu", "edit": "$edit123", "reason": "not the sender's event"},
    ),
    "intel.redacted": (OFFICER, EVENT_ID, {"room": "deu", "copies": ["nato-s", "eu-s"]}),
    "intel.redaction-ignored": (
        OFFICER, EVENT_ID, {"room": "deu", "reason": "neither the item's sender nor an admin"}
    ),
    "intel.reseal-refused": (
        "@bot:nato.example", None, {"items": [EVENT_ID, "$other"], "ledger": 2}
    ),
    "intel.resealed": ("@bot:nato.example", None, {"items": 12, "ledger": 30, "unopened": 0}),
    "intel.stored": (
        OFFICER, EVENT_ID,
        {"room": "deu", "label": "DEU GEHEIM // REL TO NATO", "precedence": "PRIORITY"},
    ),
    "invite": (
        ADMIN, OFFICER,
        {"room": "nato-s", "reason": "nationality DEU is in the room's audience; grant NATO "
         "SECRET covers NATO SECRET", "reason_code": "audience.nationality_in"},
    ),
    "invite.declined": (
        "@bot:nato.example", "@visitor:fra.example",
        {"room_id": ROOM_ID, "reason": "not marked as a direct chat"},
    ),
    "invite.failed": (ADMIN, OFFICER, {"room": "nato-s", "error": "M_FORBIDDEN"}),
    "invite.refused": (
        ADMIN, "@visitor:fra.example",
        {"room": "nato-s", "reason": "grant NATO CONFIDENTIAL is below the room's NATO SECRET",
         "reason_code": "clearance.level_too_low"},
    ),
    "key-request.answered": (
        "@bot:nato.example", OFFICER,
        {"room_id": ROOM_ID, "device_id": "QWERTYUIOP", "session_id": "sess/Abc+123",
         "first_index": 4, "reason": "grant NATO SECRET covers NATO SECRET",
         "reason_code": "audience.nationality_in"},
    ),
    "key-request.ignored": (
        "@bot:nato.example", OFFICER,
        {"level": "debug", "device_id": "QWERTYUIOP", "room_id": ROOM_ID,
         "session_id": "sess/Abc+123", "reason": "not briefed for caveat CRYPTO",
         "reason_code": "caveat.missing"},
    ),
    "keys.cross-signing": ("liaison-bot", "@bot:nato.example", {"master": KEY}),
    "keys.exported": ("cli:ops", "@bot:nato.example", {"master": KEY}),
    "keys.rotating": ("cli:ops", None, {"key": "data", "register_key": f"ed25519:{KEY}"}),
    "keys.rotated": (
        "cli:ops", None,
        {"key": "data", "register_key": f"ed25519:{KEY}", "resealed": {"intel items": 12000},
         "register_rows_signed": 40, "register_rows_left_refused": 0},
    ),
    "audit.rekeyed": ("cli:ops", None, {"register_key": f"ed25519:{KEY}", "anchor": "ab" * 32}),
    "bot.login.forgotten": ("cli:ops", "@bot:nato.example", {"device": "QWERTYUIOP"}),
    "gate.settings": (
        "liaison-bot", "@bot:nato.example",
        {"admins": [OFFICER], "admin_room": "admins", "caveats": ["CRYPTO"],
         "bot_version": "0.1.0", "schema_revision": "0016", "replaced_unverified": False},
    ),
    "member.removed": (
        "@bot:nato.example", OFFICER,
        {"room": "nato-s", "why": f"revoked by {ADMIN}",
         "reason": "clearance of @lo-deu:deu.example is revoked", "reason_code": "clearance.revoked"},
    ),
    "register.keyed": (
        "liaison-bot", None, {"clearances": [OFFICER, ADMIN], "rooms": ["deu", "nato-s"]}
    ),
    "register.refused": (
        "liaison-bot", OFFICER, {"row": "clearance", "reason": "signature does not verify"}
    ),
    "relay.edited": (
        "@bot:nato.example", EVENT_ID,
        {"to": "nato-s", "txn_id": "lb0123456789abcdef", "target_event_id": "$copy2"},
    ),
    "relay.malformed": (OFFICER, EVENT_ID, {"room": "deu", "position": 9, "length": 120}),
    "relay.not-officer": (OFFICER, EVENT_ID, {"room": "deu", "label": "DEU GEHEIM"}),
    "relay.redacted": (
        "@bot:nato.example", EVENT_ID,
        {"to": "eu-s", "txn_id": "lb0123456789abcdef", "target_event_id": "$redaction"},
    ),
    "relay.refused": (
        OFFICER, EVENT_ID,
        {"from": "deu", "to": "eu-s", "label": "DEU GEHEIM // REL TO NATO",
         "reason": "not releasable to AUT, CYP, IRL, MLT",
         "reason_code": "releasability.nation_missing"},
    ),
    "relay.sent": (
        "@bot:nato.example", EVENT_ID,
        {"to": "nato-s", "txn_id": "lb0123456789abcdef", "target_event_id": "$copy1"},
    ),
    "relay.stale": ("@bot:nato.example", EVENT_ID, {"to": "nato-s", "txn_id": "lb0123456789abcdef"}),
    "relay.too-long": (OFFICER, EVENT_ID, {"room": "deu", "bytes": 70000}),
    "relay.untrusted-device": (
        OFFICER, EVENT_ID, {"room": "deu", "problem": "device QWERTY is not signed by its owner"}
    ),
    "relay.withheld": (
        "@bot:nato.example", EVENT_ID,
        {"to": "eu-s", "txn_id": "lb0123456789abcdef",
         "reason": "no longer releasable there: not releasable to AUT",
         "reason_code": "releasability.nation_missing"},
    ),
    "release.held": (
        OFFICER, EVENT_ID,
        {"room": "deu", "label": "DEU GEHEIM // REL TO NATO", "targets": ["nato-s"]},
    ),
    "release.approved": (
        "@lo2-deu:deu.example", EVENT_ID, {"room": "deu", "request": 12, "targets": ["nato-s"]}
    ),
    "release.denied": (
        "@lo2-deu:deu.example", EVENT_ID,
        {"room": "deu", "request": 12, "reason_length": 41, "targets": ["eu-s", "nato-s"]},
    ),
    "release.expired": (
        "@bot:nato.example", EVENT_ID, {"room": "deu", "request": 12, "targets": ["nato-s"]}
    ),
    "release.withdrawn": (
        "@bot:nato.example", EVENT_ID, {"room": "deu", "request": 12, "targets": ["nato-s"]}
    ),
    "release.reheld": (
        OFFICER, EVENT_ID,
        {"room": "deu", "request": 12, "label": "DEU GEHEIM // REL TO NATO",
         "targets": ["nato-s"]},
    ),
    "release.refused": (
        OFFICER, EVENT_ID,
        {"request": 12, "reason": "the sender may not release their own item",
         "reason_code": "release.own_item"},
    ),
    "replay.refused": (OFFICER, EVENT_ID, {"room_id": ROOM_ID}),
    "room.closed": (ADMIN, "tf-kiel", {"removed": [OFFICER]}),
    "room.creator_power": (
        "liaison-bot", "deu", {"room_id": ROOM_ID, "warning": "creator @x:y keeps power 100"}
    ),
    "room.label.changed": (
        "liaison-bot", "deu",
        {"room_id": ROOM_ID, "label": "DEU GEHEIM", "scheme": "DEU", "rank": 3,
         "reason": "on record as DEU GEHEIM (DEU, rank 3), but the schemes in force read it "
         "as DEU GEHEIM (DEU, rank 4)", "reason_code": "label.rank_changed"},
    ),
    "room.provision.refused": (
        "liaison-bot", "deu",
        {"room_id": ROOM_ID, "reason": "room 'deu': lowering its label is refused",
         "reason_code": "label.lowering_refused"},
    ),
    "room.provisioned": ("liaison-bot", "nato-s", {"room_id": ROOM_ID, "label": "NATO SECRET"}),
    "room.updated": ("liaison-bot", "nato-s", {"room_id": ROOM_ID, "label": "NATO SECRET"}),
    "route.added": (ADMIN, "deu->nato-s", {}),
    "route.removed": (ADMIN, "deu->eu-s", {}),
    "search": (OFFICER, "nato-s", {"matches": 3, "scanned": 120}),
    "siem.recovered": ("liaison-bot", "siem.example.org:6514", {"outage_s": 61.5, "failures": 4}),
    "siem.unreachable": (
        "liaison-bot", "siem.example.org:6514",
        {"error": "audit row 12..40: TLS handshake failed: certificate verify failed"},
    ),
    "siem.rewound": ("cli:admin", None, {"from": 1200, "to": 1100}),
    "siem.chain-broken": (
        "liaison-bot", "1201", {"prev_hash": "a" * 64, "expected_prev_hash": "b" * 64},
    ),
    "spillage": (
        OFFICER, EVENT_ID,
        {"room": "deu", "marking": "NATO SECRET // CRYPTO // REL TO DEU, USA",
         "reason": "write-down: NATO SECRET (DEU GEHEIM) is above the room's DEU VS-VERTRAULICH",
         "reason_code": "level.above_room", "redacted": [EVENT_ID],
         "withdrawn_from": ["nato-s"], "source": "192.0.2.7"},
    ),
}  # fmt: skip

# Written by the transport half through constants the scan reads (kept: they must stay mapped).
TRANSPORT_ACTIONS = frozenset({"siem.unreachable", "siem.recovered"})
FINDINGS_CLASSES = {2004, 2006}


def entry(action: str, *, at: datetime = AT, **over: Any) -> AuditEntry:
    actor, subject, detail = SAMPLES[action]
    fields: dict[str, Any] = {"actor": actor, "subject": subject, "detail": detail} | over
    return AuditEntry(
        41, at, fields["actor"], action, fields["subject"], fields["detail"],
        prev_hash=H1, hash=H2,
    )  # fmt: skip


def ocsf_of(e: AuditEntry, markings: Markings = DEFAULT_MARKINGS) -> dict[str, Any]:
    body = render(e, "ocsf", installation=INSTALLATION, markings=markings).body
    parsed: dict[str, Any] = json.loads(body)
    return parsed


# ---------------------------------------------------------------- every action mapped


@cache
def scanned() -> Any:
    return scan()


def test_the_scan_resolves_every_audit_write() -> None:
    """Nothing the scan could not read: an action it cannot name would go unchecked."""
    result = scanned()
    assert result.unresolved == []
    assert result.unknown_calls == []


def test_the_scan_finds_actions_of_every_writing_form() -> None:
    """The scan can fail: it finds actions written as literals through the port, the store,
    AuditNote, in_thread, `_retire`, a table indexed by a kind and an f-string over an Enum."""
    found = scanned().actions
    for action in (
        "clearance.grant",  # Store: append_audit(session, actor, "…")
        "relay.refused",  # AuditNote
        "member.removed",  # the audit port
        "ha.takeover",  # bot.audit in run.py
        "relay.stale",  # _retire
        "relay.edited",  # a dict indexed by the relay kind
        "event.undecryptable",  # f"event.{outcome}" over PendingOutcome
        "register.keyed",  # a module constant
        "room.provisioned",  # a local name
        "room.creator_power",  # in_thread(self.store.append_audit, …)
        "identity.pinned",  # asyncio.to_thread(self.store.pin_identity, …)
        "command.denied",  # commands/
    ):
        assert action in found, action


def test_every_audit_action_the_code_writes_has_a_mapping() -> None:
    missing = {a: sorted(w) for a, w in scanned().actions.items() if a not in ocsf.ACTIONS}
    assert missing == {}


def test_the_mapping_holds_no_action_nobody_writes() -> None:
    extra = set(ocsf.ACTIONS) - set(scanned().actions) - TRANSPORT_ACTIONS
    assert extra == set()
    assert set(ocsf.ACTIONS) >= TRANSPORT_ACTIONS


def test_every_detail_key_the_code_writes_is_exported_or_withheld_on_purpose() -> None:
    """A key a writer adds must be looked at: allowed (with a shape) or listed as withheld."""
    unseen = {}
    for action, keys in scanned().keys.items():
        m = ocsf.ACTIONS[action]
        withheld = ocsf.WITHHELD.get(action, frozenset())
        assert not (set(m.detail) & withheld), action
        rest = keys - set(m.detail) - withheld
        if rest:
            unseen[action] = sorted(rest)
    assert unseen == {}


def test_every_action_has_a_sample_with_the_keys_its_writers_use() -> None:
    assert set(SAMPLES) == set(ocsf.ACTIONS)
    for action, keys in scanned().keys.items():
        assert keys <= set(SAMPLES[action][2]), action


# ---------------------------------------------------------------- the OCSF schema


@cache
def validator(class_uid: int) -> jsonschema.protocols.Validator:
    """The official OCSF 1.5.0 schema of one class, as JSON Schema: ocsf-json-schema ships
    the schema export of schema.ocsf.io (ocsf_json_schema/ocsf/1.5.0.json) and builds the
    class's JSON Schema from it, objects embedded under $defs, with no network."""
    schema = OcsfJsonSchemaEmbedded(OcsfJsonSchema(_export()))
    name = schema.lookup_class_name_from_uid(class_uid)
    document = schema.get_class_schema(name)
    cls = jsonschema.validators.validator_for(document)
    cls.check_schema(document)
    return cls(document, format_checker=cls.FORMAT_CHECKER)


@cache
def _export() -> dict[str, Any]:
    export: dict[str, Any] = get_ocsf_schema(ocsf.OCSF_VERSION)
    assert export["version"] == ocsf.OCSF_VERSION
    return export


def _errors(ev: dict[str, Any]) -> list[str]:
    found = validator(ev["class_uid"]).iter_errors(ev)
    return [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in found]


@pytest.mark.parametrize("markings", list(Markings))
@pytest.mark.parametrize("action", sorted(SAMPLES))
def test_each_sample_is_a_valid_ocsf_1_5_event(action: str, markings: Markings) -> None:
    ev = ocsf_of(entry(action), markings)
    assert _errors(ev) == []
    m = ocsf.ACTIONS[action]
    assert (ev["class_uid"], ev["activity_id"], ev["severity_id"]) == (
        m.class_uid,
        m.activity_id,
        m.severity_id,
    )
    assert ev["type_uid"] == m.class_uid * 100 + m.activity_id
    assert ev["message"] == m.message
    assert ev["metadata"]["uid"] == f"{INSTALLATION}:41"
    assert ev["metadata"]["sequence"] == 41
    assert ev["metadata"]["version"] == "1.5.0"
    assert ev["metadata"]["event_code"] == action
    assert ev["unmapped"]["audit"] == {"id": 41, "hash": H2, "prev_hash": H1}
    assert ev["time"] == int(AT.timestamp()) * 1000
    if m.class_uid not in FINDINGS_CLASSES:
        assert ev["status"] == ("Success" if m.status is ocsf.Status.SUCCESS else "Failure")


def test_the_schema_check_catches_a_broken_event() -> None:
    """The validation can fail: a wrong type, a missing required object, an unknown field."""
    ev = ocsf_of(entry("invite"))
    assert _errors(ev) == []
    for broken in (
        {**ev, "time": "yesterday"},
        {k: v for k, v in ev.items() if k != "group"},
        {**ev, "severity_id": 7},
        {**ev, "classified_text": "x"},
        {**ev, "type_uid": 300501},  # User Access Management's, not Group Management's
    ):
        assert _errors(broken), broken


def test_an_action_nobody_mapped_still_makes_a_valid_event_without_its_detail() -> None:
    """A row of an action this version does not know keeps the sequence gap-free."""
    e = AuditEntry(9, AT, OFFICER, "future.thing", "subject text", {"secret": "words"}, H1, H2)
    ev = ocsf_of(e)
    assert _errors(ev) == []
    assert ev["metadata"]["sequence"] == 9 and ev["unmapped"]["detail"] == {}
    assert "words" not in json.dumps(ev) and "subject text" not in json.dumps(ev)


@pytest.mark.parametrize(
    ("action", "expected"),
    [
        ("clearance.grant", (3005, 1)),
        ("clearance.revoke", (3005, 2)),
        ("invite", (3006, 3)),
        ("invite.refused", (3006, 3)),
        ("member.removed", (3006, 4)),
        ("dm.accepted", (3006, 3)),
        ("invite.declined", (3006, 3)),
        ("feed.unauthorised", (3002, 1)),
        ("feed.unauthorised.suppressed", (3002, 1)),
        ("relay.untrusted-device", (3002, 99)),
        ("spillage", (2006, 1)),
        ("relay.refused", (2006, 1)),
        ("replay.refused", (2004, 1)),
        ("identity.changed", (2004, 1)),
        ("command.denied", (6003, 99)),
        ("command.error", (6003, 99)),
        ("room.provisioned", (3004, 1)),
        ("route.added", (3004, 1)),
        ("digest.scheduled", (3004, 1)),
        ("keys.cross-signing", (3004, 1)),
        ("audit.keyed", (3004, 3)),
        ("ha.takeover", (6003, 99)),
        ("siem.unreachable", (6003, 99)),
    ],
)
def test_the_researched_classes(action: str, expected: tuple[int, int]) -> None:
    m = ocsf.ACTIONS[action]
    assert (m.class_uid, m.activity_id) == expected


def test_refusals_fail_and_spillage_is_a_high_alert() -> None:
    for action in ("invite.refused", "invite.declined", "feed.unauthorised", "command.denied"):
        assert ocsf_of(entry(action))["status_id"] == 2, action
    spill = ocsf_of(entry("spillage"))
    assert spill["is_alert"] is True and spill["severity_id"] == 4
    assert spill["status_code"] == "level.above_room"
    assert ocsf_of(entry("relay.refused"))["is_alert"] is False


def test_the_actor_is_the_ocsf_actor_and_the_subject_the_user() -> None:
    ev = ocsf_of(entry("invite.refused"))
    assert ev["actor"]["user"]["uid"] == ADMIN
    assert ev["user"] == {"uid": "@visitor:fra.example"}
    assert ev["group"] == {"name": "nato-s"}
    grant = ocsf_of(entry("clearance.grant"))
    assert grant["user"] == {"uid": OFFICER}
    assert grant["privileges"] == ["clearance", "scheme:NATO", "level:SECRET"]
    replay = ocsf_of(entry("replay.refused"))  # Detection Finding has no actor: evidence
    assert replay["evidences"] == [
        {"actor": {"user": {"uid": OFFICER, "type_id": 1, "type": "User"}}}
    ]
    feed = ocsf_of(entry("feed.unauthorised"))
    assert feed["user"]["name"] == "feed ais" and feed["status_code"] == "feed.token_invalid"


def test_time_is_milliseconds_since_the_epoch_in_any_zone() -> None:
    local = AT.astimezone(timezone(timedelta(hours=2))).replace(microsecond=250000)
    ev = ocsf_of(entry("search", at=local))
    assert ev["time"] == int(AT.timestamp()) * 1000 + 250
    naive = ocsf_of(entry("search", at=AT.replace(tzinfo=None)))  # the store's UTC
    assert naive["time"] == int(AT.timestamp()) * 1000


def test_rendered_carries_what_the_transport_needs() -> None:
    e = entry("spillage", at=AT.astimezone(timezone(timedelta(hours=-5))))
    for fmt in ("ocsf", "cef"):
        r = render(e, fmt, installation=INSTALLATION, markings=Markings.LEVEL)
        assert isinstance(r, Rendered)
        assert (r.severity_id, r.audit_id, r.time) == (4, 41, AT)
        assert r.time.tzinfo is UTC
    with pytest.raises(ValueError, match="format"):
        render(e, "xml", installation=INSTALLATION, markings=Markings.LEVEL)  # type: ignore[arg-type]  # a wrong format on purpose
    with pytest.raises(ValueError, match="installation"):
        render(e, "ocsf", installation="cell:1", markings=Markings.LEVEL)


def test_the_chain_links_come_from_the_store(store: Any) -> None:
    """AuditEntry.of fills prev_hash and hash: a receiver checks each event's prev_hash
    against the hash of the one before."""
    first = store.append_audit(ADMIN, "route.added", "deu->nato-s", {})
    second = store.append_audit(ADMIN, "route.removed", "deu->nato-s", {})
    assert first.hash and second.prev_hash == first.hash
    assert [e.hash for e in reversed(store.recent_audit(2))] == [first.hash, second.hash]
    a, b = (ocsf_of(e)["unmapped"]["audit"] for e in (first, second))
    assert b["prev_hash"] == a["hash"] and b["id"] == a["id"] + 1


# ---------------------------------------------------------------- nothing else leaves


MARKER = st.from_regex(r"ZQ[A-Za-z0-9]{10}", fullmatch=True)
_BANNERS = sorted({lv.banner for s in current().schemes.values() for lv in s.levels})


def _carrier(marker: str) -> st.SearchStrategy[Any]:
    """A detail value with the marker in it, of any shape a writer might use."""
    text = st.builds(lambda a, b: f"{a}{marker}{b}", st.text(max_size=8), st.text(max_size=8))
    bare = st.just(marker)
    scalar = st.one_of(text, bare)
    return st.one_of(
        scalar,
        st.lists(scalar, min_size=1, max_size=3),
        st.dictionaries(st.one_of(scalar, st.just("k")), scalar, min_size=1, max_size=2),
        st.builds(lambda b: f"{b} // {marker}", st.sampled_from(_BANNERS)),
        st.builds(lambda b: f"{b} // REL TO {marker}", st.sampled_from(_BANNERS)),
    )


@pytest.mark.parametrize("action", sorted(SAMPLES))
def test_what_the_code_writes_is_kept_and_nothing_else(action: str) -> None:
    """Every allowed value the writers make passes its shape (the shapes are not so strict
    that real rows lose their detail), and a marker in every other value, in an unknown key,
    in a subject that may not leave and in an actor that is no principal, never leaves."""
    marker = "ZQmarker4242"
    _, subject, detail = SAMPLES[action]
    m = ocsf.ACTIONS[action]
    kept = ocsf_of(entry(action), Markings.FULL)["unmapped"]["detail"]
    assert set(kept) == {k for k, v in detail.items() if k in m.detail and v is not None}
    marked = {k: (v if k in m.detail else f"words {marker} words") for k, v in detail.items()}
    marked |= {"note": marker, f"x_{marker}": [marker], "text": {marker: marker}}
    e = entry(
        action,
        actor=f"{marker} via chat",
        subject=subject if m.subject is not ocsf.Subject.NONE else marker,
        detail=marked,
    )
    for markings in Markings:
        for fmt in ("ocsf", "cef"):
            body = render(e, fmt, installation=INSTALLATION, markings=markings).body
            assert marker not in body, (fmt, markings)


@st.composite
def marked_rows(draw: st.DrawFn) -> tuple[AuditEntry, str, set[str], Markings]:
    """A row of some action whose detail holds the marker in some keys (allowed, withheld,
    unknown), maybe in the subject and the actor; the rest as the code writes them.
    Returns it with the marker and where the marker was put."""
    action = draw(st.sampled_from(sorted(SAMPLES)))
    actor, subject, detail = SAMPLES[action]
    marker = draw(MARKER)
    markings = draw(st.sampled_from(list(Markings)))
    detail = dict(detail)
    keys = sorted(set(detail) | set(ocsf.ACTIONS[action].detail) | {"note", "text", "body"})
    places = set(draw(st.sets(st.sampled_from(keys), max_size=len(keys))))
    for key in places:
        detail[key] = draw(_carrier(marker))
    if draw(st.booleans()):  # an unknown key named with the marker
        detail[f"x_{marker}"] = draw(st.one_of(st.just(1), st.just("v"), _carrier(marker)))
    if draw(st.booleans()):
        subject, places = f"{subject or ''}{marker}", places | {"<subject>"}
    if draw(st.booleans()):
        actor, places = (
            draw(st.sampled_from([marker, f"{marker} says", f"@{marker}:x y"])),
            places | {"<actor>"},
        )
    return AuditEntry(5, AT, actor, action, subject, detail, H1, H2), marker, places, markings


def _may_carry(action: str, place: str, markings: Markings) -> bool:
    """Whether the marker may show through this place: an allowed key (a marking key only
    under FULL: under LEVEL only the level word passes), an allowed subject."""
    m = ocsf.ACTIONS[action]
    if place == "<subject>":
        return m.subject is not ocsf.Subject.NONE
    if place == "<actor>":
        return False  # only whole user ids and the bot's names are exported as actors
    spec = m.detail.get(place)
    if spec is None:
        return False
    if isinstance(spec, Marking):
        return markings is Markings.FULL
    return True


@settings(
    max_examples=400,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
    derandomize=CI,  # in CI the same examples every run: a red CI is a finding, not luck
)
@given(marked_rows())
def test_nothing_leaves_unless_its_key_is_allowed(
    row: tuple[AuditEntry, str, set[str], Markings],
) -> None:
    e, marker, places, markings = row
    carriers = {p for p in places if _may_carry(e.action, p, markings)}
    for fmt in ("ocsf", "cef"):
        body = render(e, fmt, installation=INSTALLATION, markings=markings).body
        assert body.isascii()
        if not carriers:
            assert marker not in body, (fmt, e.action, places)


@settings(max_examples=200, deadline=None, derandomize=CI)
@given(marker=MARKER, banner=st.sampled_from(_BANNERS), markings=st.sampled_from(list(Markings)))
def test_markings_pass_only_as_the_setting_says(
    marker: str, banner: str, markings: Markings
) -> None:
    """Under LEVEL only the level word of a marking passes (no caveat, no audience), under
    NONE nothing of it (nor the rank), under FULL the banner as stored."""
    stored = f"{banner} // {marker} // REL TO {marker[:3].upper()}"
    e = entry(
        "spillage",
        detail={**SAMPLES["spillage"][2], "marking": stored},
    )
    word = level_word(banner)
    assert word is not None
    ev = ocsf_of(e, markings)
    exported = ev["unmapped"]["detail"].get("marking")
    if markings is Markings.LEVEL:
        assert exported == word
    elif markings is Markings.NONE:
        assert exported is None and "confidentiality_id" not in ev["data_security"]
    else:
        assert exported == stored
    for fmt in ("ocsf", "cef"):
        body = render(e, fmt, installation=INSTALLATION, markings=markings).body
        assert (marker in body) is (markings is Markings.FULL)
    grant = entry("clearance.grant")
    assert ("CRYPTO" in ocsf_of(grant, markings)["unmapped"]["detail"].get("caveats", [])) is (
        markings is Markings.FULL
    )
    changed = ocsf_of(entry("room.label.changed"), markings)["unmapped"]["detail"]
    assert ("rank" in changed) is (markings is not Markings.NONE)


@pytest.mark.parametrize(
    ("banner", "word"),
    [
        ("NATO SECRET // REL TO AUT, CHE", "SECRET"),
        ("DEU GEHEIM // REL TO NATO", "GEHEIM"),
        ("COSMIC TOP SECRET", "COSMIC TOP SECRET"),
        ("USA SECRET // NOFORN", "SECRET"),
        ("unreadable marking", None),
        ("SECRET", None),  # no scheme: not a stored banner
    ],
)
def test_the_level_word(banner: str, word: str | None) -> None:
    assert level_word(banner) == word


def test_free_text_in_an_allowed_key_does_not_pass() -> None:
    """Allowed keys take values of their shape only: a sentence in `room` or `why` goes."""
    e = entry(
        "member.removed",
        detail={"room": "nato s has text", "why": "because of the CRYPTO caveat",
                "reason_code": "Caveat missing"},
    )  # fmt: skip
    assert ocsf_of(e)["unmapped"]["detail"] == {}
    assert "status_code" not in ocsf_of(e)


def test_reasons_leave_as_codes_only() -> None:
    for action, (_, _, detail) in SAMPLES.items():
        if "reason" not in detail or "reason_code" not in detail:
            continue
        for fmt in ("ocsf", "cef"):
            body = render(
                entry(action), fmt, installation=INSTALLATION, markings=Markings.FULL
            ).body
            assert detail["reason"] not in body, action
            assert detail["reason_code"] in body, action


# ---------------------------------------------------------------- ASCII and CEF


def test_non_ascii_is_escaped_in_ocsf_and_cef() -> None:
    greek = "GRC ΑΠΌΡΡΗΤΟ"
    e = entry("relay.not-officer", detail={"room": "deu", "label": greek})
    for markings in (Markings.FULL, Markings.LEVEL):
        body = render(e, "ocsf", installation=INSTALLATION, markings=markings).body
        assert body.isascii() and "\\u0391" in body
        assert json.loads(body)["unmapped"]["detail"]["label"] == (
            greek if markings is Markings.FULL else "ΑΠΌΡΡΗΤΟ"
        )
        line = render(e, "cef", installation=INSTALLATION, markings=markings).body
        assert line.isascii() and "\\\\u0391" in line
        assert (
            json.loads(_parse_cef(line)[1]["cs3"])["label"]
            == json.loads(body)["unmapped"]["detail"]["label"]
        )
    # A user id or room key that is not ASCII is not an identifier this bot makes: dropped.
    odd = entry("invite", subject="@jürgen:deu.example", detail={"room": "nätö"})
    ev = ocsf_of(odd)
    assert "user" not in ev and ev["unmapped"]["detail"] == {}


def _split(text: str, sep: str) -> list[str]:
    """Split on `sep` where it is not escaped by a backslash."""
    parts, current, escaped = [], "", False
    for ch in text:
        if escaped:
            current += "\\" + ch
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == sep:
            parts.append(current)
            current = ""
        else:
            current += ch
    return [*parts, current]


def _unescape(text: str) -> str:
    out, i = "", 0
    while i < len(text):
        if text[i] == "\\" and i + 1 < len(text):
            nxt = text[i + 1]
            out += {"n": "\n", "r": "\r"}.get(nxt, nxt)
            i += 2
        else:
            out += text[i]
            i += 1
    return out


def _parse_cef(line: str) -> tuple[list[str], dict[str, str]]:
    """A CEF reader as a SIEM has one: seven header fields split on unescaped `|`, then
    `key=value` pairs where a key is a word right after a space before an unescaped `=`."""
    fields = _split(line, "|")
    header, rest = fields[:7], "|".join(fields[7:])
    pairs: dict[str, str] = {}
    starts = list(re.finditer(r"(?:^| )([A-Za-z0-9]+)=", rest))  # an escaped "=" is "\\="
    for k, nxt in zip(starts, [*starts[1:], None], strict=True):
        end = nxt.start() if nxt is not None else len(rest)
        pairs[k.group(1)] = _unescape(rest[k.end() : end])
    return [_unescape(h) for h in header], pairs


@pytest.mark.parametrize("action", sorted(SAMPLES))
def test_the_cef_line_carries_the_ocsf_event(action: str) -> None:
    e = entry(action)
    ev = ocsf_of(e, Markings.LEVEL)
    line = render(e, "cef", installation=INSTALLATION, markings=Markings.LEVEL).body
    assert line.isascii() and "\n" not in line
    header, ext = _parse_cef(line)
    assert header[0] == "CEF:0" and header[2] == "liaison-bot"
    assert header[4] == action and header[5] == ev["message"]
    assert int(header[6]) == cef.cef_severity(ev["severity_id"])
    assert ext["externalId"] == "41" and ext["rt"] == str(ev["time"]) and ext["act"] == action
    assert ext["cat"] == ev["class_name"]
    assert ext["cs1Label"] == "auditHash" and ext["cs1"] == H2 and ext["cs2"] == H1
    assert ext["cs6"] == f"{INSTALLATION}:41" and ext["cs5"] == str(ev["type_uid"])
    detail = ev["unmapped"]["detail"]
    assert json.loads(ext["cs3"]) == detail if detail else "cs3" not in ext
    actor = (ev.get("actor") or {}).get("user") or {}
    if actor:
        assert ext["suser"] == actor.get("uid", actor.get("name"))


def test_cef_escapes_header_and_extension_characters() -> None:
    ev = ocsf_of(
        entry("relay.sent", detail={"to": "nato-s", "txn_id": "a=b\\c", "target_event_id": "$x=y"})
    )
    ev["message"] = "pipe | back\\slash\nnewline"
    ev["metadata"]["product"]["vendor_name"] = "ven|dor"
    ev["unmapped"]["subject"] = "line\nbreak=eq\\back\rret"
    line = cef.line(ev)
    assert "ven\\|dor" in line and "pipe \\| back\\\\slash newline" in line
    assert "cs4=line\\nbreak\\=eq\\\\back\\rret" in line
    header, ext = _parse_cef(line)
    assert header[1] == "ven|dor" and header[5] == "pipe | back\\slash newline"
    assert ext["cs4"] == "line\nbreak=eq\\back\rret"
    assert json.loads(ext["cs3"]) == {"to": "nato-s", "target_event_id": "$x=y"}  # "\\" is no token
    assert cef._value("é\t|") == "\\\\u00e9\\\\u0009|"
    assert cef._header("é|=") == "\\\\u00e9\\|="


def test_severity_mappings() -> None:
    assert [syslog_severity(s) for s in range(7)] == [6, 6, 5, 4, 3, 2, 1]
    assert syslog_severity(99) == 5
    assert [cef.cef_severity(s) for s in range(7)] == [0, 1, 3, 5, 7, 9, 10]
    for action in SAMPLES:
        r = render(entry(action), "cef", installation=INSTALLATION, markings=Markings.LEVEL)
        assert r.severity_id == ocsf.ACTIONS[action].severity_id
        assert int(_parse_cef(r.body)[0][6]) == cef.cef_severity(r.severity_id)


def test_every_mapping_is_coherent() -> None:
    """Each class and activity is one OCSF 1.5.0 defines; findings carry no outcome, the
    rest one; messages are fixed ASCII sentences."""
    classes = {c["uid"]: c for c in _export()["classes"].values()}
    for action, m in ocsf.ACTIONS.items():
        cls = classes[m.class_uid]
        assert cls["caption"] == ocsf.CLASSES[m.class_uid][0], action
        assert str(m.activity_id) in cls["attributes"]["activity_id"]["enum"], action
        assert (m.status is None) is (m.class_uid in FINDINGS_CLASSES), action
        assert (m.activity_id == 99) is (m.activity_name is not None), action
        assert m.message.isascii() and 0 <= m.severity_id <= 6, action


def test_the_schema_export_ships_with_the_package() -> None:
    """Offline by construction: the 1.5.0 export is a file inside the installed package."""
    import ocsf_json_schema

    shipped = Path(ocsf_json_schema.__file__).parent / "ocsf" / "1.5.0.json"
    assert shipped.is_file() and shipped.stat().st_size > 1_000_000
