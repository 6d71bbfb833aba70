"""Fast tests of the guards behind the "never" claims that only Synapse-backed tests reached
before: each one kills a mutant of tests/mutants.py (named in its docstring) in a second,
against fakes of the homeserver edge and a real SQLite store."""

from __future__ import annotations

from datetime import date
from types import SimpleNamespace
from typing import Any, NoReturn

import pytest

from bot.matrix.crosssign import CrossSigningKeys, SigningKey
from bot.matrix.trust import DeviceTrust
from bot.metrics import Metrics
from bot.services.membership import Membership
from bot.services.register import ClearanceRegister
from bot.services.rooms import ManagedRoom, ProvisionError, provision
from bot.storage import Store
from policy import make_room, parse_marking
from policy.ids import RoomId, RoomKey, UserId
from tests.test_crosssign import USER, device, query
from tests.test_relay_gate import Ports, engine, source

BOT = UserId("@bot:x")
ROOM = ManagedRoom(
    RoomKey("nato-s"),
    "NATO SECRET liaison",
    make_room(parse_marking("NATO SECRET")),
    RoomId("!n:x"),
)
CLEARED, UNCLEARED = UserId("@cleared:x"), UserId("@uncleared:x")
REVOKED, EXPIRED = UserId("@revoked:x"), UserId("@expired:x")
INVITED_UNCLEARED = UserId("@invited:x")


class RecordingControl:
    """The room-control port: the last sync's members (True: joined, False: invited), and
    every removal asked for."""

    def __init__(self, members: dict[UserId, bool]) -> None:
        self._members = members
        self.kicked: list[tuple[str, str]] = []

    def members(self, room_id: str) -> dict[UserId, bool] | None:
        return self._members if room_id == ROOM.room_id else None

    async def invite(self, room_id: str, user_id: str) -> None:
        raise AssertionError("nothing here invites")

    async def kick(self, room_id: str, user_id: str, reason: str) -> None:
        self.kicked.append((room_id, user_id))


def _membership(store: Store, control: RecordingControl) -> Membership:
    register = ClearanceRegister(store)
    register.grant("cli:test", CLEARED, "NATO SECRET", nationality="DEU")
    register.grant("cli:test", REVOKED, "NATO SECRET", nationality="DEU")
    register.revoke("cli:test", REVOKED, "all")
    # Straight into the store: the register refuses an expiry in the past (issue 28).
    store.grant(
        "cli:test", EXPIRED, "NATO", "NATO SECRET", 3, nationality="DEU", expires=date(2020, 1, 1)
    )

    async def audit(actor: str, action: str, subject: str | None, detail: dict[str, Any]) -> None:
        return None

    async def check_identity(user: UserId) -> None:
        return None

    membership = Membership(
        SimpleNamespace(admins=[], officers=[], admin_room=None),  # type: ignore[arg-type]  # BotConfig is a concrete class: only these fields are read
        store,
        register,
        SimpleNamespace(by_id={ROOM.room_id: ROOM}, by_key={ROOM.key: ROOM}),  # type: ignore[arg-type]  # RoomDirectory is a concrete class: only its two maps are read
        control,
        audit,
        Metrics(lambda: None),
        partner_of=lambda room_id: None,
        identity_confirmed=lambda user: None,
        check_identity=check_identity,
    )
    membership.user_id = BOT
    return membership


def _members() -> dict[UserId, bool]:
    return {
        BOT: True,
        CLEARED: True,
        UNCLEARED: True,
        REVOKED: True,
        EXPIRED: True,
        INVITED_UNCLEARED: False,
    }


async def test_a_sweep_removes_every_member_without_a_valid_clearance(store: Store) -> None:
    """Kills mutant `enforce-keeps-everyone`: no record, a revoked one, an expired one and a
    pending invite without a record are all removed; the cleared member and the bot stay."""
    control = RecordingControl(_members())
    membership = _membership(store, control)
    removed = await membership.sweep()
    expected = {UNCLEARED, REVOKED, EXPIRED, INVITED_UNCLEARED}
    assert {user for _, user in removed} == expected
    assert {user for _, user in control.kicked} == expected
    assert all(room == ROOM.room_id for room, _ in control.kicked)


async def test_only_members_who_may_read_are_the_room_keys_recipients(store: Store) -> None:
    """Kills mutant `key-to-every-member`: the room key goes to the cleared member alone,
    never to the bot itself, an uncleared, revoked or expired member, or an uncleared
    invitee."""
    membership = _membership(store, RecordingControl(_members()))
    await membership.refresh()
    assert membership.key_recipients(ROOM.room_id) == [CLEARED]


class KeysServer:
    """The keys API: one user with cross-signing, a device their self-signing key signed and
    one it did not."""

    def __init__(self) -> None:
        keys = CrossSigningKeys.generate(USER)
        self.signed_key, self.unsigned_key = SigningKey.generate(), SigningKey.generate()
        self.answer = query(
            keys,
            {
                "SIGNED": keys.sign_device(device(self.signed_key, "SIGNED")),
                "UNSIGNED": device(self.unsigned_key, "UNSIGNED"),
            },
        )

    async def query(self, users: Any) -> dict[str, Any]:
        return self.answer


async def test_a_device_its_owner_did_not_sign_is_not_trusted(store: Store) -> None:
    """Kills mutant `key-to-unsigned-device`: under the cross-signed policy a cleared user's
    device gets room keys only when its owner's self-signing key signed it."""
    server = KeysServer()

    async def alert(*args: object) -> None:
        return None

    trust = DeviceTrust(
        "cross-signed",
        server,  # type: ignore[arg-type]  # KeysAPI is a concrete class: KeysServer answers its queries
        store,
        record_of=lambda user: None,
        on_record=lambda record: None,
        alert=alert,
    )
    await trust.refresh([USER])
    assert trust.trusted(USER, "SIGNED", server.signed_key.public)
    assert not trust.trusted(USER, "UNSIGNED", server.unsigned_key.public)
    # the signed device's id with another key (a device replaced under the same id)
    assert not trust.trusted(USER, "SIGNED", server.unsigned_key.public)
    problem = trust.device_problem(USER, "UNSIGNED", server.unsigned_key.public)
    assert problem is not None and "not verified by its owner" in problem


class Untouchable:
    """A gateway that must not be used: provisioning refuses before it asks anything."""

    user_id = "@bot:x"

    def __getattr__(self, name: str) -> NoReturn:
        raise AssertionError(f"the homeserver was asked ({name}) before the refusal")


async def test_provisioning_never_lowers_a_rooms_label() -> None:
    """Kills mutant `label-lowered`: a configured label below the one on record stops the
    room's provisioning before the homeserver is asked anything."""
    lower = make_room(parse_marking("NATO CONFIDENTIAL"))
    previous = make_room(parse_marking("NATO SECRET")).rank
    with pytest.raises(ProvisionError, match=r"lowering its label .* is refused"):
        await provision(
            Untouchable(),  # type: ignore[arg-type]  # any use of the gateway fails the test
            key="nato-s",
            name="NATO liaison",
            room=lower,
            room_id=RoomId("!n:x"),
            previous_rank=previous,
            joined={"!n:x"},
        )


async def test_a_message_handled_again_is_not_relayed_again(store: Store) -> None:
    """Kills mutant `relay-resends-sent`: the same message handled again (a replay after a
    crash, by the same engine or by a restarted one) finds its copy sent in the ledger and
    sends nothing; the receipt still names the copy."""
    ports = Ports()
    text = "[GEHEIM // REL TO NATO] convoy sighted"
    first = await engine(store, ports).handle(source(), text)
    assert first is not None and "Relayed to nato-s" in first.plain
    assert [room for room, _ in ports.sent] == ["!n:x"]
    for relay in (engine(store, ports), engine(store, ports)):
        again = await relay.handle(source(), text)
        assert again is not None and "Relayed to nato-s" in again.plain
    assert [room for room, _ in ports.sent] == ["!n:x"]
    assert store.pending_relays() == []


def test_one_encrypted_message_under_a_second_event_id_is_a_replay(store: Store) -> None:
    """Kills mutant `replay-accepted`: the ciphertext (sender key, session, index) of a
    message acted on is claimed once; the same one under another event id is refused, while
    the same event seen again (a sync repeated) is not a replay."""
    ciphertext = "curve|session|7"
    assert store.claim_ciphertext(ciphertext, "$first")
    assert not store.claim_ciphertext(ciphertext, "$replayed")
    assert store.claim_ciphertext(ciphertext, "$first")
    assert store.claim_ciphertext("curve|session|8", "$next")
