"""Device trust on a real Synapse under `device_trust = "cross-signed"`."""

from __future__ import annotations

import base64
from typing import Any
from unittest import mock

from canonicaljson import encode_canonical_json
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from nio import MegolmEvent, RoomMessageNotice

from bot.devtools.devserver import DevServer
from bot.matrix.crosssign import CrossSigningKeys
from bot.matrix.trust import KeysAPI
from policy.ids import UserId
from tests.bot_harness import (
    BotEnv,
    audited,
    eventually,
    in_audit,
    no_key_for,
    open_dm,
    posted_barrier,
    restart,
    talk,
)
from tests.matrix_harness import E2EEClient, MakeClient, MakeUser, cross_sign


def _raw(text: str) -> bytes:
    return base64.b64decode(text + "=" * (-len(text) % 4))


def independently_verified(obj: dict[str, Any], user_id: str, key_id: str, public_key: str) -> bool:
    """Ed25519 over canonical JSON, written here from the spec, not with the bot's code."""
    body = {k: v for k, v in obj.items() if k not in ("signatures", "unsigned")}
    signature = obj["signatures"][user_id][key_id]
    try:
        Ed25519PublicKey.from_public_bytes(_raw(public_key)).verify(
            _raw(signature), encode_canonical_json(body)
        )
    except Exception:
        return False
    return True


async def test_bot_device_is_signed_by_its_self_signing_key(
    bot_env: BotEnv, synapse: DevServer, make_user: MakeUser
) -> None:
    assert bot_env.bot is not None and bot_env.bot.client is not None
    bot_id, device_id = bot_env.bot_user.user_id, bot_env.bot.client.device_id
    observer = make_user("observer")
    api = KeysAPI(synapse.base_url, observer.access_token)
    try:
        query = await api.query([bot_id])
    finally:
        await api.close()
    master = query["master_keys"][bot_id]
    ssk = query["self_signing_keys"][bot_id]
    assert master["usage"] == ["master"] and ssk["usage"] == ["self_signing"]
    ((master_id, master_pub),) = master["keys"].items()
    ((ssk_id, ssk_pub),) = ssk["keys"].items()
    assert independently_verified(ssk, bot_id, master_id, master_pub)
    device = query["device_keys"][bot_id][device_id]
    assert independently_verified(device, bot_id, ssk_id, ssk_pub)
    assert independently_verified(
        device, bot_id, f"ed25519:{device_id}", device["keys"][f"ed25519:{device_id}"]
    )


async def test_restart_reuses_the_cross_signing_keys(bot_env: BotEnv) -> None:
    assert bot_env.store is not None
    before = bot_env.store.cross_signing()
    await restart(bot_env)
    assert bot_env.store is not None
    assert bot_env.store.cross_signing() == before


async def _member(
    env: BotEnv,
    make_client: MakeClient,
    make_user: MakeUser,
    nationality: str,
    admin_dm: tuple[E2EEClient, str] | None = None,
) -> tuple[E2EEClient, E2EEClient, str]:
    """A cleared, cross-signed member of nato-s, and the admin's DM."""
    if admin_dm is None:
        admin = await make_client(env.admin)
        dm = await open_dm(admin, env.bot_user.user_id)
    else:
        admin, dm = admin_dm
    user = make_user(f"member-{nationality.lower()}")
    await talk(
        admin,
        dm,
        f'!clearance grant {user.user_id} "NATO SECRET" --nationality {nationality}',
        "Clearance updated",
    )
    await talk(admin, dm, f"!invite {user.user_id} nato-s", "Invited")
    client = await make_client(user)
    room_id = await client.wait_for_invite()
    await client.join(room_id)
    return client, admin, dm


async def test_unsigned_device_of_a_cleared_user_gets_no_room_key(
    bot_env: BotEnv, make_client: MakeClient, make_user: MakeUser
) -> None:
    signed, _, _ = await _member(bot_env, make_client, make_user, "NLD")
    room_id = bot_env.room_id("nato-s")
    unsigned = await make_client(signed.user, cross_signed=False)
    await unsigned.wait_for_room(room_id)
    # The unsigned device asks: it is refused, and told why (one event with a one-off key).
    refusal = await talk(unsigned, room_id, "!rooms", "Not acted on")
    assert "not verified by its owner" in refusal.body
    # The signed device asks: the answer is readable there and not on the unsigned device.
    mark = unsigned.event_count(room_id)
    answer = await talk(signed, room_id, "!rooms", "Managed rooms")
    await unsigned.wait_for(room_id, lambda e: e.event_id == answer.event_id, after=mark)
    bot = bot_env.bot
    assert bot is not None
    holders = await no_key_for(
        bot, unsigned, room_id, answer.event_id, barrier=posted_barrier(bot, room_id)
    )
    assert (signed.user_id, signed.device_id) in holders  # the record is of that session
    await in_audit(
        bot_env,
        lambda entries: any(
            e.action == "command.untrusted-device" and e.actor == signed.user_id for e in entries
        ),
        "the unsigned device's command audited",
        limit=20,
    )


async def test_identity_reset_stops_keys_until_an_admin_confirms(
    bot_env: BotEnv,
    synapse: DevServer,
    make_client: MakeClient,
    make_user: MakeUser,
    identities: dict[str, CrossSigningKeys],
) -> None:
    member, admin, dm = await _member(bot_env, make_client, make_user, "PRT")
    room_id = bot_env.room_id("nato-s")
    witness, _, _ = await _member(bot_env, make_client, make_user, "BEL", (admin, dm))
    await talk(witness, room_id, "!rooms", "Managed rooms")  # keys shared; identity pinned
    running = bot_env.bot
    assert running is not None
    await eventually(
        lambda: (r := running.membership.record_of(UserId(member.user_id))) and r.identity_key,
        what="member's master key pinned at first sight",
    )
    new_keys = await cross_sign(synapse, member, identities, reset=True)
    alert = await admin.wait_for_text(dm, "Identity change", timeout=40)
    assert new_keys.master.public in alert.body.replace(" ", "")
    await audited(bot_env, "identity.changed", member.user_id)
    mark = member.event_count(room_id)
    blocked = await talk(witness, room_id, "!rooms", "Managed rooms")
    await member.wait_for(room_id, lambda e: e.event_id == blocked.event_id, after=mark)
    bot = bot_env.bot
    assert bot is not None
    holders = await no_key_for(
        bot, member, room_id, blocked.event_id, barrier=posted_barrier(bot, room_id)
    )
    assert (witness.user_id, witness.device_id) in holders
    await talk(admin, dm, f"!clearance confirm-identity {member.user_id} AAAA", "is not")
    await talk(
        admin,
        dm,
        f"!clearance confirm-identity {member.user_id} {new_keys.master.public}",
        "New identity confirmed",
    )
    mark = member.event_count(room_id)
    readable = await talk(witness, room_id, "!rooms", "Managed rooms")
    event = await member.wait_for(
        room_id, lambda e: e.event_id == readable.event_id, after=mark, timeout=20
    )
    if isinstance(event, MegolmEvent):  # its key may land a moment after the event
        await member.wait_for(
            room_id,
            lambda e: e.event_id == readable.event_id and isinstance(e, RoomMessageNotice),
            timeout=20,
        )


async def test_undecryptable_message_is_reported_to_the_sender(
    bot_env: BotEnv, make_client: MakeClient
) -> None:
    admin = await make_client(bot_env.admin)
    dm = await open_dm(admin, bot_env.bot_user.user_id)
    assert bot_env.bot is not None and bot_env.bot.client is not None
    bot_device = bot_env.bot.client.device_id
    # The sender's client withholds the room key from the bot's device.
    await admin.send_text(dm, "warm up")  # the room key and devices are known by now
    for device in admin.client.device_store.active_user_devices(bot_env.bot_user.user_id):
        if device.id == bot_device:
            admin.client.blacklist_device(device)
    admin.client.invalidate_outbound_session(dm)

    def undecryptable(outcome: str) -> float:
        assert bot_env.bot is not None
        value = bot_env.bot.metrics.registry.get_sample_value(
            "liaison_undecryptable_events_total", {"outcome": outcome}
        )
        return value or 0.0

    held, reported = undecryptable("held"), undecryptable("reported")
    with mock.patch.object(admin, "trust_room_devices", lambda room_id: None):
        event_id = await admin.send_text(dm, "!clearance list")
    report = await admin.wait_for_text(dm, "could not decrypt your message", timeout=30)
    assert event_id in report.body
    assert (undecryptable("held"), undecryptable("reported")) == (held + 1, reported + 1)
    await in_audit(
        bot_env,
        lambda entries: any(
            e.action == "event.undecryptable" and e.detail.get("event_id") == event_id
            for e in entries
        ),
        "the undecryptable event audited",
        limit=10,
    )


async def test_the_identity_is_pinned_at_grant_time(
    bot_env: BotEnv, make_client: MakeClient, make_user: MakeUser
) -> None:
    """Issue 14, finding 19: a master key swapped between the grant and the person's first
    message must not be pinned as theirs; the grant pins the one published then."""
    person = make_user("pinned-at-grant")
    await make_client(person)  # cross-signed, in no room with the bot
    assert bot_env.bot is not None
    record = await bot_env.bot.commands.grant(
        UserId(bot_env.admin.user_id),
        UserId(person.user_id),
        "NATO SECRET",
        nationality="DEU",
        expires=None,
        caveats=(),
    )
    assert record.identity_key is not None
    assert bot_env.store is not None
    stored = bot_env.store.clearance(person.user_id)
    assert stored is not None and stored.identity_key == record.identity_key
