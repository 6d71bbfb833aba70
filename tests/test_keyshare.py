"""The key-request decision (bot/keyshare.py) against a fake homeserver edge: every refusal
with its reason, the first index a member may read, and the limits on what anyone can make
the bot do. The real exchange with Synapse is in tests/test_key_delivery.py."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import pytest
from nio import RoomKeyRequest, RoomKeyRequestCancellation

from bot.matrix.gateway import SentIndex
from bot.matrix.keyshare import AUDITS_PER_HOUR, CHECKS_PER_MINUTE, KeyRequests
from bot.wire import MEGOLM
from policy import Decision

BOT, ROOM, SESSION, OWN_KEY = "@bot:hs", "!room:hs", "S1", "bot-curve"
USER, DEVICE = "@member:hs", "DEV1"


@dataclass
class Device:
    user_id: str
    id: str
    trusted: bool = True


@dataclass
class FakeGateway:
    """What KeyRequests uses of bot.matrix.Gateway, with the homeserver's answers set up."""

    sent: list[SentIndex] = field(default_factory=list)
    joined: set[str] = field(default_factory=lambda: {USER})
    devices: dict[tuple[str, str], Device] = field(
        default_factory=lambda: {(USER, DEVICE): Device(USER, DEVICE)}
    )
    membership: dict[str, str] = field(default_factory=dict)  # event id -> USER's membership
    forwarded: list[tuple[str, str, int]] = field(default_factory=list)
    asked: int = 0
    fail_with: Exception | None = None
    user_id: str = BOT
    own_sender_key: str = OWN_KEY

    def own_inbound_session(self, room_id: str, session_id: str) -> object | None:
        return object() if (room_id, session_id) == (ROOM, SESSION) else None

    def sent_with(self, room_id: str, session_id: str) -> list[SentIndex]:
        return list(self.sent) if (room_id, session_id) == (ROOM, SESSION) else []

    async def joined_now(self, room_id: str, user_id: str) -> bool:
        self.asked += 1
        if self.fail_with is not None:
            raise self.fail_with
        return user_id in self.joined

    async def current_device(self, user_id: str, device_id: str) -> Device | None:
        self.asked += 1
        return self.devices.get((user_id, device_id))

    async def membership_at(self, room_id: str, event_id: str, user_id: str) -> str | None:
        self.asked += 1
        return self.membership.get(event_id, "join")

    async def forward_room_key(
        self, device: Device, room_id: str, session: object, first_index: int
    ) -> None:
        self.forwarded.append((device.user_id, device.id, first_index))


@dataclass
class Harness:
    gateway: FakeGateway
    handler: KeyRequests
    audits: list[tuple[str, str | None, dict[str, Any]]]
    counts: dict[str, int]


def harness(entitled: set[str] | None = None, **gateway: Any) -> Harness:
    fake = FakeGateway(**gateway)
    audits: list[tuple[str, str | None, dict[str, Any]]] = []
    counts: dict[str, int] = {}
    allowed = {USER} if entitled is None else entitled

    def may_read(room_id: str, user_id: str) -> Decision:
        if room_id == ROOM and user_id in allowed:
            return Decision(
                True, (f"{user_id} is cleared for the room",), codes=("clearance.level_covers",)
            )
        return Decision(
            False, (f"no clearance on record for {user_id}",), codes=("clearance.none",)
        )

    async def refresh(user_id: str) -> None:
        return None

    async def audit(actor: str, action: str, subject: str | None, detail: dict[str, Any]) -> None:
        audits.append((action, subject, detail))

    def count(outcome: str) -> None:
        counts[outcome] = counts.get(outcome, 0) + 1

    handler = KeyRequests(
        fake,  # type: ignore[arg-type]  # a fake of the concrete Gateway: the calls key sharing makes
        may_read,
        lambda user_id, device: bool(getattr(device, "trusted", False)),
        refresh,
        audit,
        count,
    )
    return Harness(fake, handler, audits, counts)


def request(
    sender: str = USER,
    device: str = DEVICE,
    *,
    room: str = ROOM,
    session: str = SESSION,
    sender_key: str = OWN_KEY,
    request_id: str = "r1",
    algorithm: str = MEGOLM,
) -> RoomKeyRequest:
    event = RoomKeyRequest.from_dict(
        {
            "sender": sender,
            "type": "m.room_key_request",
            "content": {
                "action": "request",
                "requesting_device_id": device,
                "request_id": request_id,
                "body": {
                    "algorithm": algorithm,
                    "room_id": room,
                    "sender_key": sender_key,
                    "session_id": session,
                },
            },
        }
    )
    assert isinstance(event, RoomKeyRequest), event
    return event


SENT = [SentIndex(0, "$e0"), SentIndex(1, "$e1"), SentIndex(2, "$e2")]


async def test_an_entitled_trusted_device_gets_the_session_from_its_first_readable_message() -> (
    None
):
    h = harness(sent=SENT, membership={"$e0": "invite"})
    outcome = await h.handler.handle(request())
    assert outcome.answered and outcome.first_index == 1
    assert h.gateway.forwarded == [(USER, DEVICE, 1)]
    assert h.counts == {"answered": 1}
    assert [a[0] for a in h.audits] == ["key-request.answered"]
    assert h.audits[0][2]["first_index"] == 1 and "cleared" in h.audits[0][2]["reason"]


@pytest.mark.parametrize(
    ("make", "setup", "reason"),
    [
        (lambda: request(algorithm="m.olm.v1"), {}, "not a megolm session"),
        (lambda: request(sender_key="someone-else"), {}, "not a session the bot created"),
        (lambda: request(session="S2"), {}, "no such session"),
        (lambda: request(room="!other:hs"), {}, "no such session"),
        (lambda: request("@stranger:hs"), {}, "no clearance on record for @stranger:hs"),
        (lambda: request(), {"sent": []}, "does not remember"),
        (lambda: request(), {"joined": set()}, "not in the room now"),
        (lambda: request(device="NOPE"), {}, "not among the user's"),
        (
            lambda: request(),
            {"devices": {(USER, DEVICE): Device(USER, DEVICE, trusted=False)}},
            "device policy does not trust",
        ),
        (lambda: request(), {"membership": {"$e2": "leave"}}, "not joined when the session's last"),
        (lambda: request(), {"sent": [SentIndex(0, "$e0", frozenset({USER}))]}, "not joined"),
        (lambda: request(), {"fail_with": TimeoutError()}, "failed: TimeoutError"),
    ],
)
async def test_every_other_request_is_ignored_with_its_reason(
    make: Any, setup: dict[str, Any], reason: str
) -> None:
    h = harness(**{"sent": SENT, **setup})
    outcome = await h.handler.handle(make())
    assert not outcome.answered and reason in outcome.reason
    assert h.gateway.forwarded == []
    assert h.counts == {"ignored": 1}
    assert len(h.audits) == 1 and h.audits[0][0] == "key-request.ignored"
    assert h.audits[0][2]["level"] == "debug" and reason in h.audits[0][2]["reason"]


async def test_cheap_refusals_ask_the_homeserver_nothing() -> None:
    h = harness(sent=SENT)
    makers: list[Callable[[], RoomKeyRequest]] = [
        lambda: request(sender_key="x"),
        lambda: request(session="S9"),
        lambda: request("@stranger:hs"),
    ]
    for make in makers:
        await h.handler.handle(make())
    assert h.gateway.asked == 0


async def test_a_message_the_member_was_left_out_of_is_never_opened() -> None:
    # Excluded at index 1 (clearance lapsed then), entitled again now: only index 2 is theirs.
    sent = [SentIndex(0, "$e0"), SentIndex(1, "$e1", frozenset({USER})), SentIndex(2, "$e2")]
    h = harness(sent=sent)
    assert (await h.handler.handle(request())).first_index == 2
    # A message whose send had no answer may or may not exist: nothing before it opens either.
    h = harness(sent=[SentIndex(0, "$e0"), SentIndex(1, None), SentIndex(2, "$e2")])
    assert (await h.handler.handle(request())).first_index == 2


async def test_one_user_cannot_flood_the_homeserver_or_the_audit_log() -> None:
    h = harness(sent=SENT)
    for n in range(CHECKS_PER_MINUTE + 5):
        await h.handler.handle(request(request_id=f"r{n}"))
    assert h.counts["answered"] == CHECKS_PER_MINUTE
    assert h.counts["ignored"] == 5
    # Anyone may send requests: the audit gets each (user, device, room, session) once, and
    # at most AUDITS_PER_HOUR rows per user; the metric counts them all.
    h = harness(sent=SENT)
    for n in range(AUDITS_PER_HOUR + 20):
        await h.handler.handle(request("@stranger:hs", f"D{n}"))
        await h.handler.handle(request("@stranger:hs", f"D{n}"))
    assert h.counts["ignored"] == 2 * (AUDITS_PER_HOUR + 20)
    assert len(h.audits) == AUDITS_PER_HOUR


def test_requests_of_the_bot_itself_and_those_cancelled_in_the_same_batch_are_left_out() -> None:
    h = harness()
    mine = request(BOT, "BOTDEV")
    kept = request(request_id="keep")
    cancelled = request(request_id="gone")
    cancellation = RoomKeyRequestCancellation.from_dict(
        {
            "sender": USER,
            "type": "m.room_key_request",
            "content": {
                "action": "request_cancellation",
                "requesting_device_id": DEVICE,
                "request_id": "gone",
            },
        }
    )
    assert h.handler.requests_in([mine, kept, cancelled, cancellation]) == [kept]
