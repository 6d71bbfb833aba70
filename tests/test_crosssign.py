"""Cross-signing chain checks, without a homeserver: what passes and every way it breaks."""

from __future__ import annotations

import copy
from typing import Any

from bot.matrix.crosssign import (
    CrossSigningKeys,
    SigningKey,
    check_identity,
    verify_signature,
)
from commands.views import fingerprint, normalise_fingerprint

USER = "@alice:example.org"


def device(device_key: SigningKey, device_id: str = "DEV1", user: str = USER) -> dict[str, Any]:
    obj = {
        "user_id": user,
        "device_id": device_id,
        "algorithms": ["m.olm.v1.curve25519-aes-sha2", "m.megolm.v1.aes-sha2"],
        "keys": {f"ed25519:{device_id}": device_key.public, f"curve25519:{device_id}": "c" * 43},
    }
    body = device_key.sign(obj, user)
    # a device signs as ed25519:<device id>, not as its public key
    sig = body["signatures"][user].pop(f"ed25519:{device_key.public}")
    body["signatures"][user][f"ed25519:{device_id}"] = sig
    return body


def query(keys: CrossSigningKeys, devices: dict[str, dict[str, Any]]) -> dict[str, Any]:
    body = keys.upload_body()
    return {
        "master_keys": {USER: body["master_key"]},
        "self_signing_keys": {USER: body["self_signing_key"]},
        "device_keys": {USER: devices},
    }


def test_owner_signed_device_passes() -> None:
    keys = CrossSigningKeys.generate(USER)
    dev_key = SigningKey.generate()
    signed = keys.sign_device(device(dev_key))
    identity = check_identity(USER, query(keys, {"DEV1": signed}))
    assert identity.master == keys.master.public
    assert identity.signed_devices == {"DEV1": dev_key.public}


def test_unsigned_device_fails() -> None:
    keys = CrossSigningKeys.generate(USER)
    identity = check_identity(USER, query(keys, {"DEV1": device(SigningKey.generate())}))
    assert identity.signed_devices == {}


def test_device_signed_by_someone_elses_self_signing_key_fails() -> None:
    keys, mallory = CrossSigningKeys.generate(USER), CrossSigningKeys.generate(USER)
    signed = mallory.sign_device(device(SigningKey.generate()))
    assert check_identity(USER, query(keys, {"DEV1": signed})).signed_devices == {}


def test_self_signing_key_not_signed_by_master_breaks_the_chain() -> None:
    keys, other = CrossSigningKeys.generate(USER), CrossSigningKeys.generate(USER)
    q = query(keys, {"DEV1": keys.sign_device(device(SigningKey.generate()))})
    q["self_signing_keys"][USER] = other.upload_body()["self_signing_key"]
    identity = check_identity(USER, q)
    assert identity.signed_devices == {} and identity.problem


def test_tampered_device_keys_fail() -> None:
    keys = CrossSigningKeys.generate(USER)
    signed = keys.sign_device(device(SigningKey.generate()))
    tampered = copy.deepcopy(signed)
    tampered["keys"]["curve25519:DEV1"] = "d" * 43
    assert check_identity(USER, query(keys, {"DEV1": tampered})).signed_devices == {}


def test_device_claiming_another_id_fails() -> None:
    keys = CrossSigningKeys.generate(USER)
    signed = keys.sign_device(device(SigningKey.generate(), device_id="DEV2"))
    assert check_identity(USER, query(keys, {"DEV1": signed})).signed_devices == {}


def test_no_cross_signing_at_all() -> None:
    identity = check_identity(USER, {"device_keys": {USER: {}}})
    assert identity.master is None and identity.problem == "no cross-signing identity"


def test_signature_verification_rejects_garbage() -> None:
    key = SigningKey.generate()
    signed = key.sign({"a": 1}, USER)
    assert verify_signature(signed, USER, key.public)
    assert not verify_signature({**signed, "a": 2}, USER, key.public)
    bad = copy.deepcopy(signed)
    bad["signatures"][USER][f"ed25519:{key.public}"] = "not base64!"
    assert not verify_signature(bad, USER, key.public)
    assert not verify_signature(signed, "@bob:example.org", key.public)


def test_key_serialisation_round_trip_and_fingerprint() -> None:
    keys = CrossSigningKeys.generate(USER)
    again = CrossSigningKeys.from_json(keys.to_json())
    assert again.master.public == keys.master.public
    assert normalise_fingerprint(fingerprint(keys.master.public)) == keys.master.public


class FakeKeysAPI:
    """A homeserver that lists the bot's device with keys of its own choosing."""

    def __init__(self, listed: dict[str, Any]) -> None:
        self.listed = listed
        self.uploaded: dict[str, Any] | None = None
        self.signed: list[Any] = []

    async def query(self, users: Any) -> dict[str, Any]:
        body = self.uploaded or {}
        return {
            "master_keys": {USER: body["master_key"]} if body else {},
            "self_signing_keys": {USER: body["self_signing_key"]} if body else {},
            "device_keys": {USER: {"BOTDEV": self.listed}},
        }

    async def upload_cross_signing(self, body: dict[str, Any]) -> dict[str, Any]:
        self.uploaded = body
        return {}

    async def upload_signatures(self, body: dict[str, Any]) -> dict[str, Any]:
        self.signed.append(body)
        return {}


def test_the_bot_signs_only_its_own_device_keys(tmp_path: Any) -> None:
    """Issue 14, finding 18: a device listed under the bot's id with keys that are not the
    bot's own is never signed; the start stops with the reason."""
    import asyncio

    import pytest

    from bot.matrix.gateway import MatrixError
    from bot.matrix.trust import bootstrap_cross_signing, key_sealer
    from bot.storage import Store
    from bot.storage.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'x.db'}"
    upgrade(url)
    store = Store.from_url(url)
    own = {"ed25519": SigningKey.generate().public, "curve25519": "o" * 43}
    forged = device(SigningKey.generate(), "BOTDEV")  # the server's own choice of keys
    api = FakeKeysAPI(forged)
    try:
        with pytest.raises(MatrixError, match="not this device's own"):
            asyncio.run(
                bootstrap_cross_signing(
                    api,  # type: ignore[arg-type]  # a fake of the concrete KeysAPI: upload and query only
                    store,
                    key_sealer("a-pickle-key-of-thirty-two-characters"),
                    USER,
                    "BOTDEV",
                    None,
                    own,
                )
            )
        assert api.signed == []
    finally:
        store.close()
