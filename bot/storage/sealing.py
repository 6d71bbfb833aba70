"""Sealing secrets at rest: AES-256-GCM under a key derived from an environment secret.

Why: the database holds the bot's access token (and, later, intelligence text and the
cross-signing keys). A copy of the database file alone must not give them away; the key
lives only in the environment. Each purpose derives its own key (HKDF
`info`), so a key for one purpose never opens another's data.

HKDF does not stretch: the secret must already be a strong random key, not a passphrase, or
a copy of the database could be attacked offline. `Secrets.from_env` (bot/startup.py) refuses
keys shorter than `MIN_KEY_CHARS`; the derivation itself is unchanged, so existing databases
still open.
"""

from __future__ import annotations

import base64
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

_VERSION = b"v1"


class SealError(Exception):
    """Sealed data could not be opened: wrong key, or the data was altered."""


class Sealer:
    """Seals and opens small values for one purpose (`access-token`, `intel`, …)."""

    def __init__(self, secret: str, purpose: str, version: bytes = _VERSION) -> None:
        """`version` is written before every sealed value and required to open one: a
        context that replaced another gets a new version, so a value of the old one is
        recognisable (to reseal it once) and never opens in the new one."""
        if not secret:
            raise ValueError("an empty secret cannot seal anything")
        self.purpose = purpose
        self.version = version
        key = HKDF(
            algorithm=hashes.SHA256(),
            length=32,
            salt=b"liaison-bot sealing",
            info=purpose.encode("utf-8"),
        ).derive(secret.encode("utf-8"))
        self._aead = AESGCM(key)

    def seal(self, plaintext: bytes, associated: bytes = b"") -> str:
        nonce = os.urandom(12)
        box = self._aead.encrypt(nonce, plaintext, self.version + associated)
        return (self.version + b":" + base64.b64encode(nonce + box)).decode("ascii")

    def open(self, sealed: str, associated: bytes = b"") -> bytes:
        try:
            version, _, body = sealed.encode("ascii").partition(b":")
            raw = base64.b64decode(body, validate=True)
        except (UnicodeEncodeError, ValueError):
            raise SealError(f"not a sealed value ({self.purpose})") from None
        if version != self.version:
            raise SealError(f"unknown sealing version {version!r} ({self.purpose})")
        try:
            return self._aead.decrypt(raw[:12], raw[12:], self.version + associated)
        except InvalidTag:
            raise SealError(
                f"cannot open sealed {self.purpose}: wrong key or altered data"
            ) from None

    def seal_text(self, text: str, associated: str = "") -> str:
        return self.seal(text.encode("utf-8"), associated.encode("utf-8"))

    def open_text(self, sealed: str, associated: str = "") -> str:
        return self.open(sealed, associated.encode("utf-8")).decode("utf-8")


def resealed(old: Sealer, new: Sealer, value: str, associated: str = "") -> str | None:
    """`value` under the `new` sealer (a key rotation): None if it opens there already;
    SealError if it opens with neither."""
    try:
        new.open_text(value, associated)
        return None
    except SealError:
        return new.seal_text(old.open_text(value, associated), associated)


# National release control: a held item's would-be copies and the reasons of denials, each
# in a context of its own, bound to the item and the target, so a sealed copy moved to
# another target's row (or another item's) does not open. The service seals, the store
# keeps, `keys rotate --data` moves them (bot/storage/rotate.py: `release_sealed`).
RELEASE_SEAL_VERSION = b"v1"
HOLD_PURPOSE = "release-hold"
REASON_PURPOSE = "release-reason"


def hold_sealer(data_key: str) -> Sealer:
    """Seals a held target's would-be copy (its event content)."""
    return Sealer(data_key, HOLD_PURPOSE, RELEASE_SEAL_VERSION)


def reason_sealer(data_key: str) -> Sealer:
    """Seals the reason an approver gave for a denial."""
    return Sealer(data_key, REASON_PURPOSE, RELEASE_SEAL_VERSION)


def hold_binding(item_event_id: str, target_key: str, target_room_id: str) -> str:
    """What a held copy is bound to: the item and where it would go."""
    return f"{item_event_id}|{target_key}|{target_room_id}"


def reason_binding(item_event_id: str, target_key: str) -> str:
    """What a denial's reason is bound to: the item and the target denied."""
    return f"{item_event_id}|{target_key}"
