"""What the wire to the homeserver fixes, shared by the services, the Matrix edge and the
homeserver gate (which runs inside Synapse): the one encryption algorithm the bot uses and
insists on, the homeserver's limit on an event's size and the bot's estimate of an encrypted
event's. Imports nothing of the bot, so each of them may use it."""

from __future__ import annotations

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
