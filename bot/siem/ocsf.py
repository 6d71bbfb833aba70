"""Audit rows as OCSF 1.5.0 events: which class each action is, and what of it may leave.

One table, `ACTIONS`, says for every audit action the bot writes: the OCSF class and
activity, the severity, whether it is a success or a failure, a fixed `message` (never a
user's words), what the row's subject is, and the detail keys that may be exported with
the shape each must have (bot/siem/specs.py). Anything not listed is dropped. A test scans
the code for every action written and fails on one missing here, so a new audit action
cannot reach a SIEM unmapped; an action this table does not know at run time (a row written
by a newer version) is still exported, as a bare API Activity with nothing of its detail,
so the receiver sees no gap in the sequence.

Reasons are exported as their codes (`reason_code`, written beside the words by the
services): the words name levels, caveats and audiences.
"""

from __future__ import annotations

import functools
import importlib.metadata
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import Enum
from typing import Any

from bot.siem.specs import (
    ADDRESS,
    COMMAND,
    CRON,
    DATE,
    ERRCODE,
    EVENT,
    FEED,
    HASH,
    IDENT,
    KEY,
    NATION,
    NODE,
    REASON_CODE,
    ROLE,
    ROOM,
    ROOM_ID,
    ROUTE,
    SCHEDULE,
    SCHEME,
    TIME,
    TOKEN,
    TRIGGER,
    USER,
    USER_ID_RE,
    ListOf,
    MapOf,
    Marking,
    Markings,
    OneOf,
    Pattern,
    Scalar,
    Spec,
    clean,
    dropped,
    level_of,
)
from bot.storage.records import AuditEntry
from policy import Precedence

OCSF_VERSION = "1.5.0"
PRODUCT = "liaison-bot"
VENDOR = "liaison-bot project"

# OCSF 1.5.0: class uid -> (class name, category uid, category name).
CLASSES: dict[int, tuple[str, int, str]] = {
    2004: ("Detection Finding", 2, "Findings"),
    2006: ("Data Security Finding", 2, "Findings"),
    3002: ("Authentication", 3, "Identity & Access Management"),
    3004: ("Entity Management", 3, "Identity & Access Management"),
    3005: ("User Access Management", 3, "Identity & Access Management"),
    3006: ("Group Management", 3, "Identity & Access Management"),
    6003: ("API Activity", 6, "Application Activity"),
}
# The activities used, per class (OCSF 1.5.0's captions; 99 is named per action).
ACTIVITIES: dict[int, dict[int, str]] = {
    2004: {1: "Create"},
    2006: {1: "Create"},
    3002: {1: "Logon", 99: "Other"},
    3004: {1: "Create", 2: "Read", 3: "Update", 4: "Delete", 99: "Other"},
    3005: {1: "Assign Privileges", 2: "Revoke Privileges", 99: "Other"},
    3006: {3: "Add User", 4: "Remove User"},
    6003: {1: "Create", 2: "Read", 3: "Update", 4: "Delete", 99: "Other"},
}
SEVERITIES = {
    0: "Unknown",
    1: "Informational",
    2: "Low",
    3: "Medium",
    4: "High",
    5: "Critical",
    6: "Fatal",
}
FINDINGS = frozenset({2004, 2006})  # their status_id is the finding's (New), not an outcome


class Status(Enum):
    SUCCESS = 1
    FAILURE = 2


class Subject(Enum):
    """What an action's `subject` column holds, and so how it may be exported."""

    NONE = None  # nothing (or nothing that may leave)
    USER = USER
    ROOM = ROOM
    EVENT = EVENT
    FEED = FEED
    ROUTE = ROUTE
    SCHEDULE = SCHEDULE
    COMMAND = COMMAND
    NODE = NODE


@dataclass(frozen=True, slots=True)
class ActionMap:
    """How one audit action becomes an OCSF event."""

    class_uid: int
    activity_id: int
    severity_id: int
    status: Status | None  # None for findings
    message: str  # fixed: never built from the row
    subject: Subject = Subject.NONE
    detail: Mapping[str, Spec] = field(default_factory=dict)
    activity_name: str | None = None  # for activity 99 (Other)
    entity: str | None = None  # Entity Management: the kind of thing managed
    alert: bool = False  # findings: an alertable signal

    @property
    def type_uid(self) -> int:
        return self.class_uid * 100 + self.activity_id


# Detail keys that occur with many actions, with their shapes.
_ROOM = {"room": ROOM}
_ROOM_ID = {"room_id": ROOM_ID}
_CODE = {"reason_code": REASON_CODE}
_LEDGER = {"to": ROOM, "txn_id": TOKEN, "target_event_id": EVENT}
_OK, _FAIL = Status.SUCCESS, Status.FAILURE
# A release request (its number, `R12` shown), where it came from and the targets it changed.
_RELEASE: dict[str, Spec] = {
    "room": ROOM,
    "request": Scalar.INT,
    "label": Marking.LABEL,
    "targets": ListOf(ROOM),
}
_STRUCTURED = {"structured": Scalar.BOOL}  # sent as an MSC4332 structured command

_WHICH_KEY = OneOf(frozenset({"data", "pickle"}))  # keys.rotat*: which key, never a key
_PRECEDENCE = OneOf(frozenset(p.name for p in Precedence))

# One entry per action: class, activity, severity, outcome, message, subject, detail keys.
# fmt: off
ACTIONS: dict[str, ActionMap] = {
    # --- clearances: User Access Management
    "clearance.grant": ActionMap(
        3005, 1, 2, _OK, "Clearance granted", Subject.USER,
        {
            "scheme": SCHEME, "level": Marking.LABEL, "previous": Marking.LABEL,
            "nationality": NATION, "expires": DATE, "caveats": Marking.CAVEATS,
            "restored": Scalar.BOOL,
        },
    ),
    "clearance.revoke": ActionMap(
        3005, 2, 2, _OK, "Clearance revoked", Subject.USER,
        {
            "scope": Pattern("revocation scope", re.compile(r"all|[A-Z]{2,4}")),
            "level": Marking.LABEL, "unverified": Scalar.BOOL, "removed": Scalar.BOOL,
        },
    ),
    "clearance.unusable": ActionMap(
        3005, 99, 3, _FAIL, "Clearance not used: its grant reads otherwise in the schemes in force",
        Subject.USER, activity_name="Suspend Privileges",
    ),
    # --- room membership: Group Management (the room is the group)
    "invite": ActionMap(3006, 3, 1, _OK, "Member invited", Subject.USER, {**_ROOM, **_CODE}),
    "invite.refused": ActionMap(
        3006, 3, 2, _FAIL, "Invite refused by the clearance register", Subject.USER,
        {**_ROOM, **_CODE},
    ),
    "invite.failed": ActionMap(
        3006, 3, 2, _FAIL, "Invite not carried out by the homeserver", Subject.USER,
        {**_ROOM, "error": ERRCODE},
    ),
    "member.removed": ActionMap(
        3006, 4, 3, _OK, "Member removed: not cleared for the room", Subject.USER,
        {**_ROOM, "why": TRIGGER, **_CODE},
    ),
    "dm.accepted": ActionMap(
        3006, 3, 1, _OK, "Direct chat accepted", Subject.USER,
        {**_ROOM_ID, "is_direct": Scalar.BOOL},
    ),
    "invite.declined": ActionMap(
        3006, 3, 2, _FAIL, "Invite declined: not a direct chat the bot keeps", Subject.USER,
        _ROOM_ID,
    ),
    # --- authentication failures
    "feed.unauthorised": ActionMap(
        3002, 1, 3, _FAIL, "Feed request refused: not authenticated", Subject.FEED,
        {**_CODE, "source": ADDRESS},
    ),
    "feed.unauthorised.suppressed": ActionMap(
        3002, 1, 3, _FAIL, "Feed requests refused (not audited one by one)", Subject.NONE,
        {"per_minute": Scalar.INT, "suppressed": MapOf(FEED, Scalar.INT),
         "sources": ListOf(ADDRESS)},
    ),
    "command.untrusted-device": ActionMap(
        3002, 99, 3, _FAIL, "Command refused: the device is not trusted", Subject.NONE,
        _ROOM_ID, activity_name="Device Verification",
    ),
    "relay.untrusted-device": ActionMap(
        3002, 99, 3, _FAIL, "Intelligence refused: the device is not trusted", Subject.EVENT,
        _ROOM, activity_name="Device Verification",
    ),
    # --- data security findings
    "spillage": ActionMap(
        2006, 1, 4, None, "Spillage: a marking above its room was removed", Subject.EVENT,
        {
            **_ROOM, "marking": Marking.LABEL, **_CODE, "redacted": ListOf(EVENT),
            "not_redacted": ListOf(EVENT), "withdrawn_from": ListOf(ROOM), "source": ADDRESS,
        },
        alert=True,
    ),
    "relay.refused": ActionMap(
        2006, 1, 2, None, "Release refused by the releasability rules", Subject.EVENT,
        {"from": ROOM, "to": ROOM, "label": Marking.LABEL, **_CODE},
    ),
    "relay.withheld": ActionMap(
        2006, 1, 3, None, "Pending copy withheld: no longer releasable to its target",
        Subject.EVENT, {"to": ROOM, "txn_id": TOKEN, **_CODE},
    ),
    # --- detection findings
    "replay.refused": ActionMap(
        2004, 1, 4, None, "Replayed encrypted message refused", Subject.EVENT, _ROOM_ID,
        alert=True,
    ),
    "identity.changed": ActionMap(
        2004, 1, 3, None, "Cross-signing identity changed", Subject.USER,
        {"pinned": KEY, "seen": KEY}, alert=True,
    ),
    "register.refused": ActionMap(
        2004, 1, 5, None, "Register row refused: its signature does not verify",
        Subject.NONE,
        {
            "row": OneOf(frozenset({"clearance", "room"})),
            "reason": OneOf(frozenset({"unsigned", "signature does not verify"})),
        },
        alert=True,
    ),
    "intel.reseal-refused": ActionMap(
        2004, 1, 4, None, "Sealed values written after the one-off reseal were not opened",
        Subject.NONE, {"items": ListOf(EVENT), "ledger": Scalar.INT}, alert=True,
    ),
    # --- commands
    "command.denied": ActionMap(
        6003, 99, 2, _FAIL, "Command denied", Subject.COMMAND,
        {**_ROOM_ID, **_CODE, "needs": ROLE, "user": USER, "room": ROOM, **_STRUCTURED},
        activity_name="Command",
    ),
    "command.error": ActionMap(
        6003, 99, 1, _FAIL, "Command failed", Subject.COMMAND,
        {**_ROOM_ID, **_CODE, **_STRUCTURED}, activity_name="Command",
    ),
    "command.structured": ActionMap(
        6003, 99, 1, _OK, "Structured (slash) command run", Subject.COMMAND,
        {**_ROOM_ID, "body_agrees": Scalar.BOOL, **_STRUCTURED}, activity_name="Command",
    ),
    "command.refused": ActionMap(
        6003, 99, 2, _FAIL, "Command refused: the room is not encrypted", Subject.NONE,
        {**_ROOM_ID, **_CODE}, activity_name="Command",
    ),
    # --- configuration: Entity Management
    "room.provisioned": ActionMap(
        3004, 1, 1, _OK, "Managed room provisioned", Subject.ROOM,
        {**_ROOM_ID, "label": Marking.LABEL}, entity="Room",
    ),
    "room.updated": ActionMap(
        3004, 3, 1, _OK, "Managed room updated", Subject.ROOM,
        {**_ROOM_ID, "label": Marking.LABEL}, entity="Room",
    ),
    "room.closed": ActionMap(
        3004, 4, 2, _OK, "Task-force room closed", Subject.ROOM, {"removed": ListOf(USER)},
        entity="Room",
    ),
    "room.label.changed": ActionMap(
        3004, 3, 4, _FAIL, "Room not used: its label reads at another rank", Subject.ROOM,
        {
            **_ROOM_ID, "label": Marking.LABEL, "scheme": SCHEME, "rank": Marking.RANK,
            **_CODE,
        },
        entity="Room",
    ),
    "room.provision.refused": ActionMap(
        3004, 3, 4, _FAIL, "Room provisioning refused", Subject.ROOM, {**_ROOM_ID, **_CODE},
        entity="Room",
    ),
    "room.creator_power": ActionMap(
        3004, 3, 3, _FAIL, "Room state the bot cannot put right", Subject.ROOM, _ROOM_ID,
        entity="Room",
    ),
    "route.added": ActionMap(
        3004, 1, 2, _OK, "Relay route added", Subject.ROUTE, entity="Route"
    ),
    "route.removed": ActionMap(
        3004, 4, 2, _OK, "Relay route removed", Subject.ROUTE, entity="Route"
    ),
    "digest.scheduled": ActionMap(
        3004, 1, 1, _OK, "Digest scheduled", Subject.SCHEDULE,
        {**_ROOM, "cron": CRON, "window_s": Scalar.INT, "sources": ListOf(ROOM)},
        entity="Digest Schedule",
    ),
    "digest.cancelled": ActionMap(
        3004, 4, 1, _OK, "Digest schedule cancelled", Subject.SCHEDULE, _ROOM,
        entity="Digest Schedule",
    ),
    "keys.cross-signing": ActionMap(
        3004, 1, 3, _OK, "Bot cross-signing keys made", Subject.USER, {"master": KEY},
        entity="Cross-signing Identity",
    ),
    "keys.exported": ActionMap(
        3004, 99, 3, _OK, "Bot cross-signing keys exported for recovery", Subject.USER,
        {"master": KEY}, activity_name="Export", entity="Cross-signing Identity",
    ),
    "keys.rotating": ActionMap(
        3004, 99, 3, _OK, "Bot key rotation started", Subject.NONE,
        {"key": _WHICH_KEY}, activity_name="Rotate", entity="Bot Key",
    ),
    "keys.rotated": ActionMap(
        3004, 99, 3, _OK, "Bot key rotated", Subject.NONE,
        {
            "key": _WHICH_KEY, "register_rows_signed": Scalar.INT,
            "register_rows_left_refused": Scalar.INT,
        },
        activity_name="Rotate", entity="Bot Key",
    ),
    "audit.rekeyed": ActionMap(
        3004, 3, 3, _OK, "Audit log continued under a new data key", entity="Audit Log"
    ),
    # The settings the homeserver gate reads (admins, admin room, caveats): who may act as
    # an admin is a privilege change a SOC follows; a replaced row that did not verify says
    # the database was altered or the data key changed.
    "gate.settings": ActionMap(
        3004, 3, 3, _OK, "Settings for the homeserver gate published", Subject.USER,
        {
            "admins": ListOf(USER), "admin_room": ROOM, "caveats": Marking.CAVEATS,
            "bot_version": TOKEN, "schema_revision": TOKEN, "replaced_unverified": Scalar.BOOL,
        },
        entity="Gate Settings",
    ),
    "bot.login.forgotten": ActionMap(
        3004, 4, 3, _OK, "Bot login forgotten: the next start logs in as a new device",
        Subject.USER, {"device": TOKEN}, entity="Bot Login",
    ),
    "identity.pinned": ActionMap(
        3004, 1, 1, _OK, "Cross-signing identity pinned", Subject.USER,
        {"key": KEY, "previous": KEY}, entity="Cross-signing Identity",
    ),
    "identity.confirmed": ActionMap(
        3004, 3, 2, _OK, "Changed cross-signing identity confirmed", Subject.USER,
        {"key": KEY, "previous": KEY}, entity="Cross-signing Identity",
    ),
    "audit.keyed": ActionMap(
        3004, 3, 1, _OK, "Audit log keyed with the data key", entity="Audit Log"
    ),
    "register.keyed": ActionMap(
        3004, 3, 1, _OK, "Register rows signed once", Subject.NONE,
        {"clearances": ListOf(USER, 1000), "rooms": ListOf(ROOM, 1000)}, entity="Register",
    ),
    "intel.resealed": ActionMap(
        3004, 3, 1, _OK, "Sealed items resealed once", Subject.NONE,
        {"items": Scalar.INT, "ledger": Scalar.INT, "unopened": Scalar.INT},
        entity="Sealed Items",
    ),
    # --- everything else: API Activity
    "intel.stored": ActionMap(
        6003, 1, 1, _OK, "Intelligence item stored", Subject.EVENT,
        {**_ROOM, "label": Marking.LABEL, "precedence": _PRECEDENCE},
    ),
    "intel.redacted": ActionMap(
        6003, 4, 1, _OK, "Intelligence item withdrawn by a redaction", Subject.EVENT,
        {**_ROOM, "copies": ListOf(ROOM)},
    ),
    "intel.redaction-ignored": ActionMap(
        6003, 4, 2, _FAIL, "Redaction ignored: not the item's sender or an admin",
        Subject.EVENT, _ROOM,
    ),
    "intel.edit-ignored": ActionMap(
        6003, 3, 1, _FAIL, "Edit ignored: not the sender's own event", Subject.EVENT,
        {**_ROOM, "edit": EVENT},
    ),
    "relay.sent": ActionMap(6003, 1, 1, _OK, "Relayed copy sent", Subject.EVENT, _LEDGER),
    "relay.edited": ActionMap(6003, 3, 1, _OK, "Relayed copy edited", Subject.EVENT, _LEDGER),
    "relay.redacted": ActionMap(
        6003, 4, 1, _OK, "Relayed copy withdrawn", Subject.EVENT, _LEDGER
    ),
    "relay.stale": ActionMap(
        6003, 1, 3, _FAIL, "Relayed copy not sent within the transaction id's memory",
        Subject.EVENT, {"to": ROOM, "txn_id": TOKEN},
    ),
    "relay.malformed": ActionMap(
        6003, 1, 1, _FAIL, "Tagged message with a malformed marking", Subject.EVENT,
        {**_ROOM, "position": Scalar.INT, "length": Scalar.INT},
    ),
    "relay.too-long": ActionMap(
        6003, 1, 1, _FAIL, "Tagged message too long to relay", Subject.EVENT,
        {**_ROOM, "bytes": Scalar.INT},
    ),
    "relay.not-officer": ActionMap(
        6003, 1, 1, _FAIL, "Stored, not relayed: the sender is not a liaison officer",
        Subject.EVENT, {**_ROOM, "label": Marking.LABEL},
    ),
    # --- national release control (four eyes): an item held for a second officer
    "release.held": ActionMap(
        6003, 1, 1, _OK, "Held for release approval", Subject.EVENT, _RELEASE,
    ),
    "release.approved": ActionMap(
        6003, 3, 2, _OK, "Release approved by a second officer", Subject.EVENT, _RELEASE,
    ),
    "release.denied": ActionMap(
        6003, 3, 2, _OK, "Release denied by a second officer", Subject.EVENT,
        {**_RELEASE, "reason_length": Scalar.INT},
    ),
    "release.expired": ActionMap(
        6003, 3, 2, _OK, "Release expired: nobody decided in time", Subject.EVENT, _RELEASE,
    ),
    "release.withdrawn": ActionMap(
        6003, 4, 1, _OK, "Held release withdrawn with its item", Subject.EVENT, _RELEASE,
    ),
    "release.reheld": ActionMap(
        6003, 3, 1, _OK, "Held release reset by an edit of its item", Subject.EVENT, _RELEASE,
    ),
    "release.refused": ActionMap(
        6003, 3, 3, _FAIL, "Release decision refused", Subject.EVENT,
        {"request": Scalar.INT, **_CODE},
    ),
    "digest.posted": ActionMap(
        6003, 1, 1, _OK, "Situation digest posted", Subject.SCHEDULE,
        {
            **_ROOM, "window_s": Scalar.INT, "window_end": TIME, "delayed": Scalar.BOOL,
            "parts": Scalar.INT, "on_demand": Scalar.BOOL, "charts": Scalar.INT,
        },
    ),
    "digest.skipped": ActionMap(
        6003, 1, 2, _FAIL, "Digest windows missed while down were skipped", Subject.SCHEDULE,
        {**_ROOM, "window_end": TIME, "first_window_end": TIME, "windows": Scalar.INT},
    ),
    "digest.stale": ActionMap(
        6003, 1, 3, _FAIL, "Digest left unposted past the transaction id's memory",
        Subject.SCHEDULE, {**_ROOM, "window_end": TIME},
    ),
    "search": ActionMap(
        6003, 2, 1, _OK, "Inventory searched", Subject.ROOM,
        {"matches": Scalar.INT, "scanned": Scalar.INT},
    ),
    "event.malformed": ActionMap(
        6003, 99, 2, _FAIL, "Malformed event not acted on", Subject.EVENT, _ROOM_ID,
        activity_name="Event",
    ),
    "event.failed": ActionMap(
        6003, 99, 3, _FAIL, "Event could not be handled and was skipped", Subject.EVENT,
        {**_ROOM_ID, "event": IDENT, "error": IDENT}, activity_name="Event",
    ),
    "event.decrypted": ActionMap(
        6003, 99, 1, _OK, "Held event decrypted", Subject.USER,
        {**_ROOM_ID, "event_id": EVENT}, activity_name="Event",
    ),
    "event.undecryptable": ActionMap(
        6003, 99, 2, _FAIL, "Event stayed undecryptable", Subject.USER,
        {**_ROOM_ID, "event_id": EVENT, "device_id": TOKEN, "session_id": TOKEN},
        activity_name="Event",
    ),
    "key-request.answered": ActionMap(
        6003, 2, 1, _OK, "Room key request answered", Subject.USER,
        {
            **_ROOM_ID, "device_id": TOKEN, "session_id": TOKEN, "first_index": Scalar.INT,
            **_CODE,
        },
    ),
    "key-request.ignored": ActionMap(
        6003, 2, 1, _FAIL, "Room key request ignored", Subject.USER,
        {**_ROOM_ID, "device_id": TOKEN, "session_id": TOKEN, **_CODE},
    ),
    "dm.reply.dropped": ActionMap(
        6003, 1, 2, _FAIL, "Private reply dropped: the reader did not join", Subject.USER,
        _ROOM_ID,
    ),
    "ha.takeover": ActionMap(
        6003, 99, 3, _OK, "Standby took over as the active node", Subject.NODE,
        {
            "epoch": Scalar.INT, "previous": NODE, "previous_epoch": Scalar.INT,
            "sessions_ended": Scalar.INT, "seconds": Scalar.NUMBER,
        },
        activity_name="Takeover",
    ),
    # Written by the SIEM transport (issue 27's other half): the export's own health.
    "siem.unreachable": ActionMap(
        6003, 99, 3, _FAIL, "SIEM unreachable: audit export delayed", Subject.NONE,
        {},  # its error text names the target and the TLS failure: kept in the database
        activity_name="Export",
    ),
    "siem.recovered": ActionMap(
        6003, 99, 1, _OK, "SIEM reachable again: audit export resumed", Subject.NONE,
        {"outage_s": Scalar.NUMBER, "failures": Scalar.INT},
        activity_name="Export",
    ),
    "siem.rewound": ActionMap(
        6003, 99, 3, _OK, "Audit export rewound: a range is sent again", Subject.NONE,
        {"from": Scalar.INT, "to": Scalar.INT},
        activity_name="Export",
    ),
    "siem.chain-broken": ActionMap(
        2004, 1, 5, None, "Audit chain broken: a row does not link to the one before it",
        Subject.NONE, {"prev_hash": HASH, "expected_prev_hash": HASH},
    ),
}
# fmt: on

# Detail keys the code writes that never leave, by action: reasons, problems, errors and
# warnings are words (they name levels, caveats and audiences, or quote what was typed); the
# code beside them (`reason_code`) is exported instead where there is one. Listed so that a
# test can tell a key withheld on purpose from one nobody has looked at.
_WORDS = frozenset({"reason"})
WITHHELD: dict[str, frozenset[str]] = {
    **dict.fromkeys(
        (
            "clearance.unusable",
            "command.denied",
            "command.refused",
            "digest.skipped",
            "digest.stale",
            "dm.reply.dropped",
            "feed.unauthorised",
            "intel.edit-ignored",
            "intel.redaction-ignored",
            "invite",
            "invite.declined",
            "invite.refused",
            "member.removed",
            "relay.refused",
            "relay.withheld",
            "release.refused",
            "room.label.changed",
            "room.provision.refused",
            "spillage",
        ),
        _WORDS,
    ),
    "command.error": frozenset({"error"}),
    "siem.unreachable": frozenset({"error"}),  # names the target and the TLS failure
    "command.untrusted-device": frozenset({"problem"}),
    "relay.untrusted-device": frozenset({"problem"}),
    "event.malformed": frozenset({"problem"}),
    "room.creator_power": frozenset({"warning"}),
    # `level` here is a log level ("debug"), not a marking: nothing for a SOC.
    "key-request.answered": _WORDS,
    "key-request.ignored": _WORDS | {"level"},
    # A key rotation: the register key is public but its text ("ed25519:…") fits no shape
    # here, the anchor is a MAC for the log itself, the counts per place are a mapping.
    "keys.rotating": frozenset({"register_key"}),
    "keys.rotated": frozenset({"register_key", "resealed"}),
    "audit.rekeyed": frozenset({"register_key", "anchor"}),
}

# An action this table does not know (a newer writer): exported bare, so no gap shows.
UNMAPPED = ActionMap(6003, 99, 1, None, "Audit entry", activity_name="Audit")

_ACTION = re.compile(r"[a-z][a-z0-9_.\-]{0,63}")
_INSTALLATION = re.compile(r"[A-Za-z0-9._\-]{1,64}")
_BOT_ACTORS = frozenset({"liaison-bot", "feed listener"})
_FEED_ACTOR = re.compile(r"feed (?:[A-Za-z0-9_-]{1,64}|\(malformed\)|\*)")
_CLI_ACTOR = re.compile(r"cli:[A-Za-z0-9._\-]{1,64}")
# OCSF confidentiality_id by the rank a level has in every scheme (0 unclassified … 4 top
# secret): 1 Not Confidential, 6 Restricted, 2 Confidential, 3 Secret, 4 Top Secret.
_CONFIDENTIALITY = {0: 1, 1: 6, 2: 2, 3: 3, 4: 4}


@functools.cache
def product_version() -> str:
    """The installed distribution's version; "unknown" when run from a checkout that was
    never installed (the receiver still gets the event). Read once: the lookup parses the
    package's metadata (about 2 ms), which was most of an event's rendering time."""
    try:
        return importlib.metadata.version(PRODUCT)
    except importlib.metadata.PackageNotFoundError:
        return "unknown"


def mapping_of(action: str) -> ActionMap:
    return ACTIONS.get(action, UNMAPPED)


def check_installation(installation: str) -> str:
    """The installation id as events carry it (`metadata.uid` is `installation:audit id`,
    so it may not hold a colon); ValueError naming the rule otherwise."""
    if not _INSTALLATION.fullmatch(installation):
        raise ValueError(
            f"installation id {installation!r}: 1-64 characters of A-Z, a-z, 0-9, '.', '_', '-'"
        )
    return installation


def event(entry: AuditEntry, *, installation: str, markings: Markings) -> dict[str, Any]:
    """The OCSF 1.5.0 event of one audit row (a JSON-ready dict)."""
    check_installation(installation)
    m = mapping_of(entry.action)
    class_name, category_uid, category_name = CLASSES[m.class_uid]
    activity = m.activity_name or ACTIVITIES[m.class_uid][m.activity_id]
    detail = _detail(entry.detail, m.detail, markings)
    subject = _subject(entry.subject, m.subject)
    code = detail.get("reason_code")
    ev: dict[str, Any] = {
        "activity_id": m.activity_id,
        "activity_name": activity,
        "category_uid": category_uid,
        "category_name": category_name,
        "class_uid": m.class_uid,
        "class_name": class_name,
        "type_uid": m.type_uid,
        "type_name": f"{class_name}: {activity}",
        "severity_id": m.severity_id,
        "severity": SEVERITIES[m.severity_id],
        "time": epoch_ms(entry.at),
        "message": m.message,
        "metadata": {
            "uid": f"{installation}:{entry.id}",
            "sequence": entry.id,
            "event_code": entry.action if _ACTION.fullmatch(entry.action) else "unknown",
            "log_name": "audit_log",
            "version": OCSF_VERSION,
            "product": {"name": PRODUCT, "vendor_name": VENDOR, "version": product_version()},
        },
        "unmapped": {
            "audit": {"id": entry.id, "hash": entry.hash, "prev_hash": entry.prev_hash},
            "detail": detail,
            **({"subject": subject} if subject is not None else {}),
        },
    }
    if m.status is not None:
        ev["status_id"] = m.status.value
        ev["status"] = "Success" if m.status is Status.SUCCESS else "Failure"
    if isinstance(code, str):
        ev["status_code"] = code
    marking = entry.detail.get("marking", entry.detail.get("label"))
    row = _Row(
        m,
        _actor(entry.actor),
        subject,
        detail,
        markings,
        marking if isinstance(marking, str) else None,
    )
    _CLASS_FIELDS[m.class_uid](ev, row)
    return ev


def dumps(ev: Mapping[str, Any]) -> str:
    """The event as the body a SIEM receives: compact, sorted, ASCII-only JSON (anything
    else as \\u escapes), so no transport or receiver has to agree on an encoding."""
    return json.dumps(ev, ensure_ascii=True, separators=(",", ":"), sort_keys=True)


def epoch_ms(at: datetime) -> int:
    """Milliseconds since the epoch; a naive time is the store's UTC."""
    aware = at if at.tzinfo is not None else at.replace(tzinfo=UTC)
    return int(aware.timestamp() * 1000)


def syslog_severity(ocsf_severity_id: int) -> int:
    """The RFC 5424 severity for an OCSF severity_id, for the syslog transport's PRI:
    Unknown and Informational → 6 informational, Low → 5 notice, Medium → 4 warning,
    High → 3 error, Critical → 2 critical, Fatal → 1 alert. Nothing maps to 0 emergency
    (the system is unusable: not something one audit row says). Other (99) and values
    outside OCSF's range → 5 notice: unknown, so not dismissed as informational."""
    return {0: 6, 1: 6, 2: 5, 3: 4, 4: 3, 5: 2, 6: 1}.get(ocsf_severity_id, 5)


# ---------------------------------------------------------------- the row's parts


def _detail(
    detail: Mapping[str, Any], allowed: Mapping[str, Spec], markings: Markings
) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, spec in allowed.items():
        if key in detail:
            value = clean(spec, detail[key], markings)
            if not dropped(value):
                out[key] = value
    return out


def _subject(subject: str | None, kind: Subject) -> str | None:
    if subject is None or kind.value is None:
        return None
    value = clean(kind.value, subject, Markings.NONE)
    return None if dropped(value) else str(value)


def _actor(actor: str) -> dict[str, Any] | None:
    """The OCSF actor of a row's `actor`: a person (Matrix user id, or the OS user of a CLI
    run), or the bot itself and its feed listener as applications. Anything else is not
    exported (an actor column is written by code, but an export does not rely on that)."""
    if USER_ID_RE.fullmatch(actor) and actor.isascii():
        return {"user": {"uid": actor, "type_id": 1, "type": "User"}}
    if _CLI_ACTOR.fullmatch(actor):
        return {"user": {"name": actor, "type_id": 1, "type": "User"}}
    if actor in _BOT_ACTORS or _FEED_ACTOR.fullmatch(actor):
        return {"app_name": actor}
    return None


def _finding(ev: dict[str, Any], m: ActionMap) -> None:
    ev["finding_info"] = {
        "uid": ev["metadata"]["uid"],
        "title": m.message,
        "types": [ev["metadata"]["event_code"]],
        "created_time": ev["time"],
    }
    ev["status_id"], ev["status"] = 1, "New"
    ev["is_alert"] = m.alert


def _user(uid: str | None) -> dict[str, Any]:
    return {"uid": uid} if uid is not None else {"name": "unknown"}


def _room(detail: Mapping[str, Any], key: str = "room") -> dict[str, Any] | None:
    """The room (an OCSF group or resource) a row names: its id and key, as present."""
    room: dict[str, Any] = {}
    if isinstance(detail.get("room_id"), str):
        room["uid"] = detail["room_id"]
    if isinstance(detail.get(key), str):
        room["name"] = detail[key]
    return room or None


# ---------------------------------------------------------------- per class


@dataclass(frozen=True, slots=True)
class _Row:
    """What the class-specific parts are made from: the row's cleaned parts only."""

    m: ActionMap
    actor: dict[str, Any] | None
    subject: str | None
    detail: dict[str, Any]
    markings: Markings
    raw_marking: str | None  # the row's marking as stored, to rate it (never copied out)


def _user_access(ev: dict[str, Any], row: _Row) -> None:
    ev["user"] = _user(row.subject)
    privileges = ["clearance"]
    for key in ("scheme", "scope", "level"):
        if isinstance(row.detail.get(key), str):
            privileges.append(f"{key}:{row.detail[key]}")
    ev["privileges"] = privileges
    if row.actor is not None:
        ev["actor"] = row.actor


def _group(ev: dict[str, Any], row: _Row) -> None:
    ev["group"] = _room(row.detail) or {"name": "unknown"}
    if row.subject is not None:
        ev["user"] = {"uid": row.subject}
    if row.actor is not None:
        ev["actor"] = row.actor


def _authentication(ev: dict[str, Any], row: _Row) -> None:
    if ev["metadata"]["event_code"].startswith("feed."):
        name = f"feed {row.subject}" if row.subject is not None else "feed"
        ev["user"] = {"name": name, "type_id": 99, "type": "Feed"}
        ev["service"] = {"name": "liaison-bot feed listener"}
        ev["auth_protocol_id"], ev["auth_protocol"] = 99, "Bearer token"
        suppressed = row.detail.get("suppressed")
        if isinstance(suppressed, dict) and suppressed:
            ev["count"] = sum(suppressed.values())
    else:
        ev["user"] = (row.actor or {}).get("user") or {"name": "unknown"}
        ev["service"] = {"name": PRODUCT}
    if row.actor is not None:
        ev["actor"] = row.actor


def _data_security(ev: dict[str, Any], row: _Row) -> None:
    _finding(ev, row.m)
    if row.actor is not None:
        ev["actor"] = row.actor
    security: dict[str, Any] = {
        "detection_system_id": 10,
        "detection_system": "Application-Level DLP",
        "data_lifecycle_state_id": 2,  # a message posted, or on its way to another room
        "data_lifecycle_state": "Data in-Transit",
    }
    level = level_of(row.raw_marking) if row.raw_marking is not None else None
    if level is not None and row.markings is not Markings.NONE:
        security["confidentiality_id"] = _CONFIDENTIALITY.get(level.rank, 99)
    ev["data_security"] = security
    rooms = [
        {"name": row.detail[k], "type": "Matrix room"}
        for k in ("room", "from", "to")
        if isinstance(row.detail.get(k), str)
    ]
    if rooms:
        ev["resources"] = rooms


def _detection(ev: dict[str, Any], row: _Row) -> None:
    _finding(ev, row.m)
    evidence: dict[str, Any] = {}
    if row.actor is not None and "user" in row.actor:
        evidence["actor"] = row.actor
    if row.m.subject is Subject.USER and row.subject is not None:
        evidence["user"] = {"uid": row.subject}
    if evidence:
        ev["evidences"] = [evidence]
    room = _room(row.detail)
    if room is not None:
        ev["resources"] = [{**room, "type": "Matrix room"}]


def _entity(ev: dict[str, Any], row: _Row) -> None:
    kind = row.m.entity or "Entity"
    entity: dict[str, Any] = {"type": kind}
    if row.subject is not None:
        entity["name"] = row.subject
    if isinstance(row.detail.get("room_id"), str):
        entity["uid"] = row.detail["room_id"]
    if "name" not in entity and "uid" not in entity:
        entity["name"] = kind
    ev["entity"] = entity
    if row.actor is not None:
        ev["actor"] = row.actor


def _api(ev: dict[str, Any], row: _Row) -> None:
    # API Activity requires an actor and a source: the bot acted when no person did.
    ev["actor"] = row.actor or {"app_name": PRODUCT}
    ev["api"] = {"operation": ev["metadata"]["event_code"], "service": {"name": PRODUCT}}
    ev["src_endpoint"] = {"svc_name": PRODUCT}
    room = _room(row.detail)
    if room is not None:
        ev["resources"] = [{**room, "type": "Matrix room"}]


_CLASS_FIELDS: dict[int, Callable[[dict[str, Any], _Row], None]] = {
    2004: _detection,
    2006: _data_security,
    3002: _authentication,
    3004: _entity,
    3005: _user_access,
    3006: _group,
    6003: _api,
}
