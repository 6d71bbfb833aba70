"""Matrix cross-signing: keys, signatures and the chain check (device ← self-signing ← master).

matrix-nio has no cross-signing and vodozemac's Python binding has no free-standing Ed25519
key, so this module does it with `cryptography` (Ed25519) and `canonicaljson` (the Matrix
canonical JSON). Signatures cover the canonical JSON of an object without its `signatures`
and `unsigned` members; keys and signatures are unpadded standard base64 (spec: Signing JSON).
"""

from __future__ import annotations

import base64
import copy
import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from canonicaljson import encode_canonical_json
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

USAGES = ("master", "self_signing", "user_signing")


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii").rstrip("=")


def unb64(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def signable(obj: Mapping[str, Any]) -> bytes:
    body = {k: v for k, v in obj.items() if k not in ("signatures", "unsigned")}
    return bytes(encode_canonical_json(body))


def verify_signature(
    obj: Mapping[str, Any], user_id: str, public_key: str, key_id: str | None = None
) -> bool:
    """Whether `obj` carries a valid signature by `public_key` under `user_id`. Cross-signing
    keys sign as `ed25519:<public key>`; a device signs as `ed25519:<device id>`."""
    signature = obj.get("signatures", {}).get(user_id, {}).get(f"ed25519:{key_id or public_key}")
    if not isinstance(signature, str):
        return False
    try:
        Ed25519PublicKey.from_public_bytes(unb64(public_key)).verify(
            unb64(signature), signable(obj)
        )
    except (InvalidSignature, ValueError):
        return False
    return True


@dataclass(frozen=True)
class SigningKey:
    """One Ed25519 cross-signing key (the private seed stays in memory and sealed storage)."""

    seed: bytes

    @classmethod
    def generate(cls) -> SigningKey:
        return cls(
            Ed25519PrivateKey.generate().private_bytes(
                serialization.Encoding.Raw,
                serialization.PrivateFormat.Raw,
                serialization.NoEncryption(),
            )
        )

    @property
    def _private(self) -> Ed25519PrivateKey:
        return Ed25519PrivateKey.from_private_bytes(self.seed)

    @property
    def public(self) -> str:
        raw = self._private.public_key().public_bytes(
            serialization.Encoding.Raw, serialization.PublicFormat.Raw
        )
        return b64(raw)

    def sign(self, obj: Mapping[str, Any], user_id: str) -> dict[str, Any]:
        """A copy of `obj` with this key's signature added beside any others."""
        signed = copy.deepcopy(dict(obj))
        signature = b64(self._private.sign(signable(obj)))
        signed.setdefault("signatures", {}).setdefault(user_id, {})[f"ed25519:{self.public}"] = (
            signature
        )
        return signed


@dataclass(frozen=True)
class CrossSigningKeys:
    """A user's three cross-signing keys."""

    user_id: str
    master: SigningKey
    self_signing: SigningKey
    user_signing: SigningKey

    @classmethod
    def generate(cls, user_id: str) -> CrossSigningKeys:
        return cls(user_id, SigningKey.generate(), SigningKey.generate(), SigningKey.generate())

    def public_key_object(self, usage: str) -> dict[str, Any]:
        key = {
            "master": self.master,
            "self_signing": self.self_signing,
            "user_signing": self.user_signing,
        }[usage]
        obj: dict[str, Any] = {
            "user_id": self.user_id,
            "usage": [usage],
            "keys": {f"ed25519:{key.public}": key.public},
        }
        if usage != "master":
            obj = self.master.sign(obj, self.user_id)
        return obj

    def upload_body(self) -> dict[str, Any]:
        """Body of POST /keys/device_signing/upload (without `auth`)."""
        return {
            "master_key": self.public_key_object("master"),
            "self_signing_key": self.public_key_object("self_signing"),
            "user_signing_key": self.public_key_object("user_signing"),
        }

    def sign_device(self, device_keys: Mapping[str, Any]) -> dict[str, Any]:
        """The device's key object signed by the self-signing key, for /keys/signatures/upload."""
        return self.self_signing.sign(device_keys, self.user_id)

    def to_json(self) -> str:
        return json.dumps(
            {
                "user_id": self.user_id,
                "master": b64(self.master.seed),
                "self_signing": b64(self.self_signing.seed),
                "user_signing": b64(self.user_signing.seed),
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> CrossSigningKeys:
        data = json.loads(text)
        try:
            return cls(
                str(data["user_id"]),
                SigningKey(unb64(data["master"])),
                SigningKey(unb64(data["self_signing"])),
                SigningKey(unb64(data["user_signing"])),
            )
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"not a cross-signing key file: missing or bad {exc}") from None


def single_key(obj: Mapping[str, Any] | None, usage: str) -> str | None:
    """The one Ed25519 public key of a cross-signing key object of this usage, if valid."""
    if not isinstance(obj, Mapping) or usage not in obj.get("usage", ()):
        return None
    keys = [v for k, v in obj.get("keys", {}).items() if k.startswith("ed25519:")]
    return keys[0] if len(keys) == 1 and isinstance(keys[0], str) else None


@dataclass(frozen=True)
class Identity:
    """What /keys/query says about one user's cross-signing, checked."""

    user_id: str
    master: str | None  # the master public key, when the user has one
    self_signing: str | None  # present only when it is validly signed by the master
    signed_devices: Mapping[str, str]  # device id -> its ed25519 key, for owner-signed devices
    problem: str | None = None  # why the chain is broken, for messages


def check_identity(user_id: str, query: Mapping[str, Any]) -> Identity:
    """Verify the chain device ← self-signing ← master for every device of `user_id`."""
    master_obj = query.get("master_keys", {}).get(user_id)
    master = single_key(master_obj, "master")
    if master is None:
        return Identity(user_id, None, None, {}, "no cross-signing identity")
    if master_obj.get("user_id") != user_id:
        return Identity(user_id, None, None, {}, "master key of another user")
    ssk_obj = query.get("self_signing_keys", {}).get(user_id)
    ssk = single_key(ssk_obj, "self_signing")
    if ssk is None or ssk_obj.get("user_id") != user_id:
        return Identity(user_id, master, None, {}, "no self-signing key")
    if not verify_signature(ssk_obj, user_id, master):
        return Identity(user_id, master, None, {}, "self-signing key not signed by the master key")
    signed: dict[str, str] = {}
    for device_id, device in query.get("device_keys", {}).get(user_id, {}).items():
        if not isinstance(device, Mapping):
            continue
        ed25519 = device.get("keys", {}).get(f"ed25519:{device_id}")
        if (
            device.get("user_id") == user_id
            and device.get("device_id") == device_id
            and isinstance(ed25519, str)
            and verify_signature(device, user_id, ed25519, device_id)  # the device's own
            and verify_signature(device, user_id, ssk)  # and its owner's
        ):
            signed[device_id] = ed25519
    return Identity(user_id, master, ssk, signed)
