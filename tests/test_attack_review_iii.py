"""Attack review III: the release desk (national release control, four eyes) as an
adversary sees it. Each finding is a test that fails on the code it was found in, marked
xfail(strict) so the branch stays green until it is fixed.

The desk runs here on a real SQLite store with its own sealers; its other ports are small
fakes (the relay's ledger entry is a plain record, the gate passes every device unless a
test says otherwise), and the clearance and release rules are passed as allowed: what is
attacked is what the desk trusts of the database and of time between its reads."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

import pytest
from sqlalchemy import update

from bot.config import ReleasePolicy
from bot.metrics import Metrics
from bot.services.inbox import Inbox, IncomingMessage, MessageFields
from bot.services.release import Reaction, ReleaseDesk
from bot.storage import NewHeldTarget, NewHold, RelayEntry, RelayKind, Store
from bot.storage.migrate import upgrade
from bot.storage.models import ReleaseRequestRow
from bot.storage.sealing import hold_binding
from bot.tasks import Supervisor
from commands import build_registry
from commands.context import Invocation, Role
from commands.dispatch import dispatch
from commands.document import Banner
from policy import Decision
from policy.ids import EventId, RoomId, UserId
from tests.fakes import FakeServices, no_audit

KEY = "data-key-" + "k" * 40
ITEM = "$item1:example.org"
SOURCE = ("deu", "!deu:example.org")
TARGET = ("nato-s", "!nato:example.org")
SENDER, APPROVER = UserId("@alice:example.org"), UserId("@bob:example.org")


class _Room:
    def __init__(self, key: str, room_id: str) -> None:
        self.key, self.room_id = key, room_id


class _Rooms:
    def __init__(self) -> None:
        self.by_key = {k: _Room(k, r) for k, r in (SOURCE, TARGET)}


class _Relay:
    """The relay's two hooks the desk calls on approval: the entry carries the copy's
    text in clear (so a test reads what would go out), and nothing is sent."""

    def __init__(self) -> None:
        self.queued: list[RelayEntry] = []

    def copy_entry(self, item_event_id: str, target: Any, content: dict[str, Any]) -> RelayEntry:
        return RelayEntry(
            f"txn-{item_event_id}-{target.key}",
            RelayKind.COPY,
            item_event_id,
            item_event_id,
            target.key,
            target.room_id,
            json.dumps(content),
        )

    async def queue_sends(self, rows: list[RelayEntry]) -> list[str | None]:
        self.queued += rows
        return [None for _ in rows]


class _Gate:
    """Every device trusted; `during` runs while the desk awaits the gate (what the event
    loop may do meanwhile: an edit of the item handled between the desk's reads)."""

    def __init__(self) -> None:
        self.during: list[Any] = []

    async def untrusted_sender(self, room_id: str, event: Any) -> None:
        for step in self.during:
            step()
        self.during.clear()
        return None


class _Messenger:
    user_id = UserId("@bot:example.org")

    def __init__(self) -> None:
        self.rooms: list[str] = []  # where each notice went

    async def send_notice(self, room_id: str, document: Any, **kw: Any) -> str:
        self.rooms.append(room_id)
        return "$notice:example.org"

    async def sender_of(self, room_id: str, event_id: str) -> str:
        """What the homeserver says sent an event: finding 9's lunch poll is a member's."""
        return "@carol:example.org" if event_id == "$lunch-poll:example.org" else self.user_id


async def _audit(actor: str, action: str, subject: str | None, detail: dict[str, Any]) -> None:
    return None


@pytest.fixture
def store(tmp_path: Any) -> Iterator[Store]:
    url = f"sqlite:///{tmp_path / 'bot.db'}"
    upgrade(url)
    opened = Store.from_url(url)
    yield opened
    opened.close()


def _desk(store: Store, relay: _Relay, gate: _Gate) -> ReleaseDesk:
    policy = ReleasePolicy(None, frozenset({SENDER, APPROVER}), timedelta(hours=4))
    desk = ReleaseDesk(
        store,
        _Rooms(),  # type: ignore[arg-type]  # RoomDirectory: by_key only
        relay,  # type: ignore[arg-type]  # RelayEngine / relay: the hooks used only
        _Messenger(),  # type: ignore[arg-type]  # Messenger: send_notice and sender_of only
        gate,
        _audit,
        Metrics(lambda: None),
        lambda source, target: policy,
        lambda user: None,
        KEY,
    )
    # Cleared and releasable: what is attacked here is not the register nor the rules.
    desk._cleared = lambda user_id, request: Decision(True, (), codes=())  # type: ignore[method-assign]  # the register is not what is attacked
    desk._not_releasable = lambda request, source, target: None  # type: ignore[method-assign]  # the rules are not what is attacked
    desk._banner = lambda request, target: Banner(request.label, request.rank)  # type: ignore[method-assign]  # no room policies here
    return desk


def _sealed(desk: ReleaseDesk, text: str) -> str:
    content = {"msgtype": "m.text", "body": text}
    held = SimpleNamespace(
        item_event_id=ITEM,
        source_key=SOURCE[0],
        source_room_id=SOURCE[1],
        sender=SENDER,
        label="DEU GEHEIM",
        rank=3,
    )
    return desk.copies.seal_text(json.dumps(content), hold_binding(held, TARGET[0], TARGET[1]))


def _hold(store: Store, desk: ReleaseDesk, text: str, *, expired: bool = False) -> int:
    """The item held for TARGET; `expired`: its deadline passed a minute ago."""
    now = datetime.now(UTC)
    held_at = now - timedelta(hours=1) if expired else now
    expires_at = now - timedelta(minutes=1) if expired else now + timedelta(hours=4)
    request = store.hold_release(
        NewHold(
            item_event_id=ITEM,
            source_key=SOURCE[0],
            source_room_id=SOURCE[1],
            sender=SENDER,
            label="DEU GEHEIM",
            scheme="DEU",
            rank=3,
            held_at=held_at,
            expires_at=expires_at,
            sender_device="DEVICEA",
        ),
        [NewHeldTarget(TARGET[0], TARGET[1], _sealed(desk, text))],
    )
    return request.id


def _bodies(relay: _Relay) -> list[str]:
    return [json.loads(row.content)["body"] for row in relay.queued]


async def test_the_harness_releases_a_held_copy_approved_by_a_second_officer(
    store: Store,
) -> None:
    """The baseline the findings below depart from (so their failures mean something)."""
    relay, gate = _Relay(), _Gate()
    desk = _desk(store, relay, gate)
    number = _hold(store, desk, "original")
    await desk.approve(APPROVER, f"R{number}", (), SOURCE[1], object())
    assert _bodies(relay) == ["original"]
    relay.queued.clear()
    number_again = f"R{number}"
    await desk.approve(APPROVER, number_again, (), SOURCE[1], object())
    assert relay.queued == []  # decided once


async def test_the_sender_may_not_approve_their_own_item(store: Store) -> None:
    relay, gate = _Relay(), _Gate()
    desk = _desk(store, relay, gate)
    number = _hold(store, desk, "original")
    await desk.approve(SENDER, f"R{number}", (), SOURCE[1], object())
    assert relay.queued == []


async def test_a_sender_renamed_in_the_database_still_may_not_approve_their_own_item(
    store: Store,
) -> None:
    relay, gate = _Relay(), _Gate()
    desk = _desk(store, relay, gate)
    number = _hold(store, desk, "original")
    with store.session() as session:
        session.execute(
            update(ReleaseRequestRow)
            .where(ReleaseRequestRow.id == number)
            .values(sender="@mallory:example.org")
        )
    await desk.approve(SENDER, f"R{number}", (), SOURCE[1], object())
    assert relay.queued == [], "the item's own sender released it"


async def test_an_approval_racing_an_edit_never_sends_a_superseded_copy(store: Store) -> None:
    """Finding 2 (fixed): the approval opened the copy it read before the device gate's
    await, and an edit held again meanwhile was approved with the superseded text."""
    relay, gate = _Relay(), _Gate()
    desk = _desk(store, relay, gate)
    number = _hold(store, desk, "original")
    edited = _sealed(desk, "edited")
    gate.during.append(
        lambda: store.rehold_release(
            ITEM, {TARGET[0]: edited}, datetime.now(UTC) + timedelta(hours=4)
        )
    )
    await desk.approve(APPROVER, f"R{number}", (), SOURCE[1], object())
    # Either nothing went out (the edit reset the hold) or the copy that went out is the
    # text held now; never the text the edit replaced.
    assert "original" not in _bodies(relay), _bodies(relay)
    # Decided again, the edited text goes out.
    await desk.approve(APPROVER, f"R{number}", (), SOURCE[1], object())
    assert _bodies(relay) == ["edited"]


# ---------------------------------------------------------------- the structured path


class _Relay2:
    """The relay as the inbox sees it: records what it was given to relay."""

    def __init__(self) -> None:
        self.begun: list[str] = []
        self.judged: list[str | None] = []

    async def begin(self, source: Any, body: str, label_field: Any = None) -> None:
        self.begun.append(body)
        return None

    async def remove_if_spilled(self, source: Any, texts: Any) -> bool:
        self.judged += texts
        return False


def _inbox(relay: _Relay2) -> Inbox:
    from tests.test_txn_ids import DEU, Encrypted, ForgetfulStore, Gate, Replies

    return Inbox(
        ForgetfulStore(),  # type: ignore[arg-type]  # Store: is_handled and mark_handled only
        SimpleNamespace(by_id={DEU.room_id: DEU}),  # type: ignore[arg-type]  # RoomDirectory: by_id only
        SimpleNamespace(roles_of=lambda user: frozenset({Role.ANYONE, Role.MEMBER})),  # type: ignore[arg-type]  # Membership: roles_of only
        relay,  # type: ignore[arg-type]  # RelayEngine / relay: the hooks used only
        Gate(),
        Replies(),
        Encrypted(),
        no_audit,
        Supervisor(),
        build_registry(),
        FakeServices(),
        ["!"],
        user_id="@bot:x",
    )


def _tagged(
    structured: dict[str, Any] | None, mentions: tuple[UserId, ...] = ()
) -> IncomingMessage:
    from tests.test_txn_ids import DEU

    return IncomingMessage(
        room_id=DEU.room_id,
        event_id=EventId("$tagged"),
        sender=UserId("@lo:x"),
        body="[DEU GEHEIM] the plan",
        formatted_body=None,
        fields=MessageFields(structured=structured, mentions=mentions),
        sent_at=datetime(2026, 12, 6, 12, 0, tzinfo=UTC),
        handle=SimpleNamespace(event_id="$tagged", sender="@lo:x"),
    )


async def test_a_tagged_message_reaches_the_relay() -> None:
    relay = _Relay2()
    await _inbox(relay).on_message(_tagged(None))
    assert relay.begun == ["[DEU GEHEIM] the plan"]


async def test_a_structured_field_for_another_bot_does_not_hide_a_tagged_message() -> None:
    """Finding 3 (fixed): such a message was dropped before the relay and its spillage
    check; it is a message like any other, only not this bot's command."""
    relay = _Relay2()
    await _inbox(relay).on_message(_tagged({"syntax": "help", "arguments": {}}))
    assert relay.begun == ["[DEU GEHEIM] the plan"]


async def test_the_body_of_a_structured_command_is_judged_for_spillage() -> None:
    """Finding 4 (fixed): its body is what clients show, and unlike a typed command's it
    need not start with the prefix: a marked text there was never judged."""
    relay = _Relay2()
    bot = UserId("@bot:x")
    await _inbox(relay).on_message(_tagged({"syntax": "help", "arguments": {}}, (bot,)))
    assert "[DEU GEHEIM] the plan" in relay.judged


async def test_a_structured_command_for_another_bot_is_not_run_from_its_body() -> None:
    """The mention rule holds after the fix: another bot's structured command whose body
    reads as one of this bot's typed commands is still not answered."""
    from tests.test_txn_ids import DEU

    relay = _Relay2()
    inbox = _inbox(relay)
    message = IncomingMessage(
        room_id=DEU.room_id,
        event_id=EventId("$other-bot"),
        sender=UserId("@lo:x"),
        body="!help",
        formatted_body=None,
        fields=MessageFields(structured={"syntax": "help", "arguments": {}}),
        sent_at=datetime(2026, 12, 6, 12, 0, tzinfo=UTC),
        handle=SimpleNamespace(event_id="$other-bot", sender="@lo:x"),
    )
    await inbox.on_message(message)
    assert inbox.replier.sends == []  # type: ignore[attr-defined]  # the Replies fake records its sends
    assert relay.begun == []


# ---------------------------------------------------------------- what the audit keeps


async def _audited(body: str, structured: dict[str, Any] | None = None) -> str:
    """Every audit row `dispatch` writes for one command from a member, as one text."""
    services = FakeServices()
    invocation = Invocation(
        sender=UserId("@lo:x"),
        room_id=RoomId("!d:x"),
        event_id=EventId("$cmd"),
        body=body,
        structured=structured,
    )
    roles = frozenset({Role.ANYONE, Role.MEMBER, Role.OFFICER})
    await dispatch(build_registry(), invocation, roles, services, ["!"])
    assert services.audits, "the command wrote no audit row"
    return json.dumps([a[3] for a in services.audits])


async def test_a_deny_reason_with_an_unbalanced_quote_never_reaches_the_audit() -> None:
    audited = await _audited('!release deny R1 "the source is agent Nightjar')
    assert "Nightjar" not in audited


@pytest.mark.parametrize(
    "payload",
    [
        {"syntax": "release deny the source is agent Nightjar", "arguments": {}},
        {"syntax": "digest now {room}", "arguments": {"Nightjar": "x"}},
        {"syntax": "clearance show {user}", "arguments": {"user": "agent nightjar"}},
    ],
    ids=["syntax", "argument-name", "argument-value"],
)
async def test_a_structured_command_s_words_never_reach_the_audit(
    payload: dict[str, Any],
) -> None:
    audited = await _audited("!help", payload)
    assert "nightjar" not in audited.casefold()


# ---------------------------------------------------------------- time, duplicates, notices


async def test_an_approval_after_the_deadline_releases_nothing(store: Store) -> None:
    """Finding 7 (fixed): an approval after the deadline was taken until the sweep
    (every sweep_interval, 5 min by default) expired the request."""
    relay, gate = _Relay(), _Gate()
    desk = _desk(store, relay, gate)
    number = _hold(store, desk, "original", expired=True)  # expired a minute ago, not yet swept
    await desk.approve(APPROVER, f"R{number}", (), SOURCE[1], object())
    assert relay.queued == []


async def test_a_target_named_twice_is_approved_once(store: Store) -> None:
    """Finding 8 (fixed): `!release approve R1 nato-s nato-s` raised StoreError out of
    the desk (an internal error) instead of releasing once."""
    relay, gate = _Relay(), _Gate()
    desk = _desk(store, relay, gate)
    number = _hold(store, desk, "original")
    await desk.approve(APPROVER, f"R{number}", (TARGET[0], TARGET[0]), SOURCE[1], object())
    assert _bodies(relay) == ["original"]


async def test_a_reaction_decides_only_on_the_bot_s_own_notice(store: Store) -> None:
    """Finding 9 (fixed): a reaction decided the request whose stored notice id it named,
    whoever sent that event: a database writer pointed it at any message, and an
    approver's ✅ there released the item."""
    relay, gate = _Relay(), _Gate()
    desk = _desk(store, relay, gate)
    number = _hold(store, desk, "original")
    # The database writer: the request's notice is now someone's ordinary message.
    store.set_release_notice(number, "$lunch-poll:example.org")
    await desk.on_reaction(
        Reaction(
            room_id=SOURCE[1],
            event_id="$thumbs:example.org",
            sender=APPROVER,
            relates_to="$lunch-poll:example.org",
            key="✅",
            handle=object(),
            ciphertext=None,
        )
    )
    assert relay.queued == []


async def test_a_denial_is_told_only_in_the_item_s_own_room(store: Store) -> None:
    relay, gate = _Relay(), _Gate()
    desk = _desk(store, relay, gate)
    number = _hold(store, desk, "original")
    with store.session() as session:
        session.execute(
            update(ReleaseRequestRow)
            .where(ReleaseRequestRow.id == number)
            .values(source_room_id="!mallory-dm:example.org")
        )
    await desk.deny(
        APPROVER, f"R{number}", "the source is agent Nightjar", "!bob-dm:x", object(), "$deny",
        direct=True,
    )  # fmt: skip
    messenger = desk.messenger
    assert isinstance(messenger, _Messenger)
    assert "!mallory-dm:example.org" not in messenger.rooms, messenger.rooms


async def test_a_structured_admin_command_from_a_member_is_denied_and_audited() -> None:
    """Held up: the structured path is judged by the same role check as a typed one."""
    services = FakeServices()
    invocation = Invocation(
        sender=UserId("@lo:x"),
        room_id=RoomId("!d:x"),
        event_id=EventId("$cmd"),
        body="whatever the client showed",
        structured={"syntax": "room close {key}", "arguments": {"key": "deu"}},
    )
    outcome = await dispatch(
        build_registry(), invocation, frozenset({Role.ANYONE, Role.MEMBER}), services, ["!"]
    )
    assert outcome is not None and not outcome.ok
    assert [(a[1], a[3]["reason_code"]) for a in services.audits] == [
        ("command.denied", "permission.role_missing")
    ]


async def test_a_reaction_to_the_bot_s_notice_still_decides(store: Store) -> None:
    relay, gate = _Relay(), _Gate()
    desk = _desk(store, relay, gate)
    number = _hold(store, desk, "original")
    store.set_release_notice(number, "$notice:example.org")
    await desk.on_reaction(
        Reaction(
            room_id=SOURCE[1],
            event_id="$tick:example.org",
            sender=APPROVER,
            relates_to="$notice:example.org",
            key="✅\ufe0f",
            handle=object(),
            ciphertext=None,
        )
    )
    assert _bodies(relay) == ["original"]


# ---------------------------------------------------------------- the commands state event


def test_the_commands_state_event_names_no_room_of_another_room() -> None:
    """Finding 11 (fixed): the commands state event (never encrypted: the homeserver and
    every server with a member in the room read it) listed every room key, task-force rooms
    included, in every managed room and DM; `!rooms` says the same only end-to-end
    encrypted. A managed room now offers its own key; an admin's or officer's DM and the
    admin room every key; anyone else's DM none."""
    from types import SimpleNamespace

    from bot.services.slash import CommandsPublisher
    from commands.context import Role

    rooms = {
        key: SimpleNamespace(key=key, room_id=f"!{key}:example.org")
        for key in ("deu", "tf-nightjar")
    }
    partners = {"!dm-member:example.org": "@member:example.org", "!dm-lo:example.org": "@lo:x"}
    publisher = CommandsPublisher(
        build_registry(),
        SimpleNamespace(),  # no state is read or written here
        SimpleNamespace(by_key=rooms, by_id={r.room_id: r for r in rooms.values()}),
        SimpleNamespace(partner_of=partners.get, items=lambda: list(partners.items())),
        lambda user: (
            frozenset({Role.ANYONE, Role.OFFICER})
            if user == "@lo:x"
            else frozenset({Role.ANYONE, Role.MEMBER})
        ),
        lambda: "!ops:example.org",
        lambda task, name: None,
    )
    deu = json.dumps(publisher.content_for("!deu:example.org"))
    assert "tf-nightjar" not in deu and '"deu"' in deu
    assert "tf-nightjar" not in json.dumps(publisher.content_for("!dm-member:example.org"))
    assert "tf-nightjar" in json.dumps(publisher.content_for("!dm-lo:example.org"))


# ---------------------------------------------------------------- who sees what is held


async def test_pending_in_a_direct_chat_is_for_the_approvers_of_the_item(store: Store) -> None:
    """Finding 12 (fixed): `!release pending` in a direct chat listed every held item the
    asker was cleared for (label, source room, sender, targets), approver or not."""
    from commands.document import render_plain

    relay, gate = _Relay(), _Gate()
    desk = _desk(store, relay, gate)
    number = _hold(store, desk, "original")
    listed = render_plain(await desk.pending(UserId("@carol:example.org"), None))
    assert f"R{number}" not in listed, listed
    # An approver of its route still sees it.
    assert f"R{number}" in render_plain(await desk.pending(APPROVER, None))
