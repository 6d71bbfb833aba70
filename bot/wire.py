"""What the wire to the homeserver fixes, shared by the services, the Matrix edge and the
homeserver gate (which runs inside Synapse): the one encryption algorithm the bot uses and
insists on, the homeserver's limit on an event's size and the bot's estimate of an encrypted
event's, and the transaction ids of sends that may be made again. Imports nothing of the bot,
so each of them may use it."""

from __future__ import annotations

import hashlib
import json
from typing import Any

MEGOLM = "m.megolm.v1.aes-sha2"

EVENT_LIMIT = 65_536  # bytes: the homeserver's limit on a whole (encrypted) event
ENVELOPE = 1_024  # bytes: the encrypted event's other fields (keys, ids, signatures)


def encrypted_size(content: dict[str, Any]) -> int:
    """An upper estimate of the event this content becomes once megolm-encrypted."""
    # As nio serialises it before encrypting: compact, every non-ASCII character escaped
    # (an em dash is six bytes there, not three).
    plain = len(json.dumps(content, separators=(",", ":")))
    return (plain + 200) * 4 // 3 + ENVELOPE  # 200: type and room id inside the payload


def txn_id(kind: str, *causes: str) -> str:
    """The transaction id of a send, fixed by what it is (`kind`: a relayed copy, a reply,
    an alert, ...) and what caused it (room id, triggering event id, part number, ...).

    Why fixed: a send can be made again for the same cause, by a replay after a crash or by
    a standby that took over the same device and access token mid-request; the homeserver
    keeps one event per (device, transaction id) and answers the second PUT with the first
    event's id, so nobody reads the same answer twice. Two different sends must differ in
    kind or causes; each kind takes the same causes in the same order.

    "lb" and 40 hex digits: a path segment ([A-Za-z0-9._~-], far below the homeserver's
    limits) with room for suffixes such as a notice's `-2of3`. The fields are joined with
    "|", each with "\\" and "|" escaped, so no two lists of causes give the same text; for
    fields without those characters (every room key, relay kind and homeserver-made id)
    that is the relay's id of before, byte for byte: its ledger rows are looked up by it."""
    joined = "|".join(_escaped(field) for field in (kind, *causes))
    # surrogatepass: an id parsed from JSON may hold a lone surrogate (a crafted event id)
    return "lb" + hashlib.sha256(joined.encode("utf-8", "surrogatepass")).hexdigest()[:40]


def _escaped(field: str) -> str:
    return field.replace("\\", "\\\\").replace("|", "\\|")
