"""Issue 26 (high availability): every send a replay or a standby may make again has a
transaction id fixed by its cause (`bot.wire.txn_id`), so the homeserver keeps one event.
The helper itself; the inbox and the messenger on fakes, handling one event twice; and the
homeserver's side of it against the real Synapse."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Awaitable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace
from typing import Any

from nio import RoomMessageNotice

from bot.devtools.botenv import BotEnv
from bot.matrix.messenger import Messenger
from bot.services.inbox import Inbox, IncomingMessage, MessageFields, receipt_txn
from bot.services.ports import EventHandle
from bot.services.rooms import ManagedRoom
from bot.tasks import Supervisor
from bot.wire import txn_id
from commands import build_registry
from commands.context import Role
from commands.document import Document, doc, para
from policy import make_room, parse_marking
from policy.ids import EventId, RoomId, RoomKey, UserId
from tests.bot_harness import enrol, nothing_arrives, posted_barrier, replying_to
from tests.fakes import FakeServices, no_audit
from tests.matrix_harness import MakeClient

PATH_SEGMENT = re.compile(r"^[A-Za-z0-9._~-]{1,255}\Z")  # what a txn id may be

# ---------------------------------------------------------------- the helper


def test_the_id_is_fixed_by_its_inputs() -> None:
    assert txn_id("answer", "!r:x", "$e") == txn_id("answer", "!r:x", "$e")


def test_kind_room_event_and_part_each_change_the_id() -> None:
    ids = {
        txn_id("answer", "!r:x", "$e"),
        txn_id("refusal", "!r:x", "$e"),
        txn_id("answer", "!s:x", "$e"),
        txn_id("answer", "!r:x", "$f"),
        txn_id("digest-now", "!r:x", "$e", "1"),
        txn_id("digest-now", "!r:x", "$e", "2"),
        txn_id("answer", "!r:x"),
        txn_id("answer", "!r:x", "$e", ""),
    }
    assert len(ids) == 8


def test_fields_holding_the_separator_do_not_run_together() -> None:
    """Ids come from the homeserver; a crafted one must not make two sends collide."""
    assert txn_id("k", "a|b", "c") != txn_id("k", "a", "b|c")
    assert txn_id("k", "a\\", "b") != txn_id("k", "a", "\\b")
    assert txn_id("k", "a\\|b") != txn_id("k", "a\\", "b")
    assert txn_id("k", "$\ud800") != txn_id("k", "$")  # a lone surrogate: no crash


def test_ids_fit_a_path_segment_even_with_a_part_suffix() -> None:
    for causes in [(), ("!r:x", "$e"), ("é ü/?#%", "\n" * 500), ("|" * 1000,)]:
        tx = txn_id("answer", *causes)
        assert PATH_SEGMENT.match(tx), tx
        assert PATH_SEGMENT.match(f"{tx}-9999of9999")  # messenger.send_notice's parts


def test_relay_ids_are_those_the_ledger_already_holds() -> None:
    """The relay's ids before the helper was shared, byte for byte: stored ledger rows are
    found again by them after a replay."""

    def before(kind: str, event_id: str, target_key: str) -> str:
        digest = hashlib.sha256(f"{kind}|{event_id}|{target_key}".encode()).hexdigest()
        return f"lb{digest[:40]}"

    for kind in ("copy", "edit", "redact"):
        for cause in ("$Jq3xT-_abc", "$18:example.org", "redaction:$Jq3xT-_abc"):
            for target in ("nato-s", "eu-s", "tf_2"):
                assert txn_id(kind, cause, target) == before(kind, cause, target)
    assert (
        txn_id("copy", "$abc", "nato-s")
        == "lb" + (hashlib.sha256(b"copy|$abc|nato-s").hexdigest()[:40])
    )


def test_a_receipt_is_fixed_by_every_message_it_answers() -> None:
    one, two = EventId("$one"), EventId("$two")
    assert receipt_txn("!r:x", [one, two]) == receipt_txn("!r:x", [one, two])
    assert len({receipt_txn("!r:x", [one]), receipt_txn("!r:x", [two]),
                receipt_txn("!r:x", [one, two])}) == 3  # fmt: skip


# ---------------------------------------------------------------- the inbox, twice

DEU = ManagedRoom(
    RoomKey("deu"), "DEU cell", make_room(parse_marking("DEU GEHEIM")), RoomId("!d:x")
)
SENDER = UserId("@lo:x")


@dataclass
class Replies:
    """The inbox's replier, recording (kind of send, room, transaction id)."""

    sends: list[tuple[str, str, str | None]] = field(default_factory=list)

    async def send_notice(
        self,
        room_id: str,
        document: Document,
        reply_to: str | None = None,
        also_to: Sequence[Any] = (),
        *,
        tx_id: str,
    ) -> str:
        self.sends.append(("notice", room_id, tx_id))
        return f"$n{len(self.sends)}"

    async def reply_to_sender(
        self, room_id: str, event: EventHandle, reply: Document, *, tx_id: str
    ) -> None:
        self.sends.append(("reply", room_id, tx_id))

    async def direct_room_for(self, user_id: UserId) -> str:
        return "!dm:x"

    def send_later(self, room_id: str, document: Document, tx_id: str) -> None:
        self.sends.append(("later", room_id, tx_id))

    async def alert_admins(self, document: Document, tx_id: str) -> None:
        self.sends.append(("alert", "admins", tx_id))


@dataclass
class Gate:
    problem: str | None = None

    async def untrusted_sender(self, room_id: str, event: EventHandle) -> tuple[str, Any] | None:
        return None if self.problem is None else (self.problem, None)


class Encrypted:
    def is_encrypted(self, room_id: str) -> bool | None:
        return True


class ForgetfulStore:
    """A process that died before its handled mark was committed: the next one finds the
    event unhandled and handles it again."""

    def is_handled(self, event_id: str) -> bool:
        return False

    def mark_handled(self, event_id: str, room_id: str) -> None:
        return None


def inbox(replies: Replies, gate: Gate) -> Inbox:
    """A fresh inbox, as another process would build it; only the parts commands use."""
    return Inbox(
        ForgetfulStore(),  # type: ignore[arg-type]  # Store: only is_handled and mark_handled
        SimpleNamespace(by_id={DEU.room_id: DEU}),  # type: ignore[arg-type]  # RoomDirectory: by_id only
        SimpleNamespace(roles_of=lambda user: frozenset({Role.ANYONE, Role.MEMBER})),  # type: ignore[arg-type]  # Membership: roles_of only
        SimpleNamespace(),  # type: ignore[arg-type]  # RelayEngine: commands here relay nothing
        gate,
        replies,
        Encrypted(),
        no_audit,
        Supervisor(),
        build_registry(),
        FakeServices(),
        ["!"],
    )


def command(body: str, event_id: str, room_id: RoomId = DEU.room_id) -> IncomingMessage:
    return IncomingMessage(
        room_id=room_id,
        event_id=EventId(event_id),
        sender=SENDER,
        body=body,
        formatted_body=None,
        fields=MessageFields(),
        sent_at=datetime(2026, 11, 25, 14, 5, tzinfo=UTC),
        handle=SimpleNamespace(event_id=event_id, sender=SENDER),
    )


async def handled_twice(body: str, event_id: str, gate: Gate | None = None) -> list[Any]:
    """What two processes send for the same command event, each in turn."""
    runs = []
    for _ in range(2):
        replies = Replies()
        await inbox(replies, gate or Gate()).on_message(command(body, event_id))
        runs.append(replies.sends)
    assert runs[0] == runs[1]
    return runs[0]


async def test_a_command_handled_again_answers_under_the_same_id() -> None:
    sends = await handled_twice("!rooms", "$cmd1")
    assert sends == [("notice", "!d:x", txn_id("answer", "!d:x", "$cmd1"))]
    assert (await handled_twice("!rooms", "$cmd2"))[0][2] != sends[0][2]  # another event


async def test_a_private_answer_and_its_pointer_keep_their_ids() -> None:
    sends = await handled_twice("!whoami", "$who")
    assert [(kind, room) for kind, room, _ in sends] == [("notice", "!d:x"), ("later", "!dm:x")]
    assert len({tx for _, _, tx in sends}) == 2  # two sends, two ids


async def test_a_refusal_handled_again_keeps_its_id() -> None:
    gate = Gate("device ABC is not verified by its owner")
    sends = await handled_twice("!rooms", "$cmd3", gate)
    assert sends == [("notice", "!d:x", txn_id("refusal", "!d:x", "$cmd3"))]


# ---------------------------------------------------------------- the messenger, on fakes


@dataclass
class RecordingGateway:
    user_id: str = "@bot:x"
    sends: list[tuple[str, str | None]] = field(default_factory=list)

    async def ensure_current_members(self, room_id: str) -> None:
        return None

    def members(self, room_id: str) -> dict[str, bool]:
        return {self.user_id: True}

    def sender_device(self, room_id: str, event: Any) -> None:
        return None

    async def send(self, room_id: str, content: Any, **kwargs: Any) -> str:
        self.sends.append((room_id, kwargs["tx_id"]))
        return f"$e{len(self.sends)}"


def messenger(gateway: RecordingGateway, spawned: list[Awaitable[Any]]) -> Messenger:
    async def nothing(*args: Any) -> None:
        return None

    return Messenger(
        gateway,  # type: ignore[arg-type]  # a fake of the concrete Gateway: the send path only
        SimpleNamespace(refresh=nothing),  # type: ignore[arg-type]  # DeviceTrust: refresh only
        SimpleNamespace(dm_join_timeout=timedelta(seconds=5)),  # type: ignore[arg-type]  # BotConfig: dm_join_timeout only
        SimpleNamespace(partner_of=lambda room_id: None),  # type: ignore[arg-type]  # DirectRooms: partner_of only
        lambda room_id: [],
        no_audit,
        SimpleNamespace(  # type: ignore[arg-type]  # Supervisor: spawned work kept to await
            spawn=lambda coro, name: spawned.append(coro), stopping=None
        ),
        nothing,
        lambda: "!admins:x",
        nothing,
    )


async def test_the_messenger_sends_under_the_ids_it_is_given() -> None:
    gateway, spawned = RecordingGateway(), list[Awaitable[Any]]()
    sender = messenger(gateway, spawned)
    asked = SimpleNamespace(event_id="$q", sender=SENDER)
    await sender.reply_to_sender("!r:x", asked, doc("answer"), tx_id="lbreply")
    await sender.alert_admins(doc("spillage"), txn_id("alert-spillage", "!r:x", "$q"))
    for work in spawned:
        await work
    big = doc(*(para(f"line {n} " + "x" * 200) for n in range(400)))  # over one event
    await sender.send_notice("!r:x", big, tx_id="lbbig")
    assert gateway.sends[:2] == [
        ("!r:x", "lbreply"),
        ("!admins:x", txn_id("alert", "!admins:x", txn_id("alert-spillage", "!r:x", "$q"))),
    ]
    parts = gateway.sends[2:]
    assert len(parts) > 1
    assert [tx for _, tx in parts] == [f"lbbig-{n}of{len(parts)}" for n in range(1, len(parts) + 1)]


# ---------------------------------------------------------------- the homeserver's side


async def test_the_same_reply_sent_twice_under_one_id_is_one_event(
    bot_env: BotEnv, make_client: MakeClient
) -> None:
    """What a standby's takeover relies on: Synapse answers the second PUT of a transaction
    id with the first event's id and stores nothing new."""
    bot = bot_env.bot
    assert bot is not None
    officer = await make_client(bot_env.officer)
    (deu,) = await enrol(
        bot_env, [(bot_env.officer.user_id, "DEU GEHEIM", "DEU")], [(officer, "deu")]
    )
    mark = officer.event_count(deu)
    asked = await officer.send_text(deu, "an untagged message, which the bot ignores")
    tx = txn_id("answer", deu, asked)
    first = await bot.messenger.send_notice(deu, doc("first answer"), asked, tx_id=tx)
    again = await bot.messenger.send_notice(deu, doc("second answer"), asked, tx_id=tx)
    assert again == first
    await nothing_arrives(
        officer,
        deu,
        replying_to(asked),
        since=mark,
        barrier=posted_barrier(bot, deu),
        already=1,  # the first answer, and nothing else in reply to the message
        what="a second answer",
    )
    answer = await officer.wait_for(deu, replying_to(asked), after=mark)
    assert isinstance(answer, RoomMessageNotice) and "first answer" in answer.body
    assert answer.event_id == first
