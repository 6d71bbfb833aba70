"""Issue 14, findings 4 and 19: edits and redactions of tagged intelligence, with a stolen
access token in mind. The relay engine on a real SQLite store, its homeserver ports faked
(they record what would be sent or redacted)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import pytest

from bot.metrics import Metrics
from bot.services.ports import Audit, Device, EventHandle, Messenger, SenderGate
from bot.services.relay import RelayEngine, Source, ledger_binding
from bot.services.rooms import ManagedRoom
from bot.storage import Store
from commands.document import Document
from policy import make_room, parse_marking
from policy.ids import EventId, RoomId, RoomKey, UserId

DEU = ManagedRoom(
    RoomKey("deu"), "DEU cell", make_room(parse_marking("DEU GEHEIM")), RoomId("!d:x")
)
NATO = ManagedRoom(
    RoomKey("nato-s"),
    "NATO SECRET liaison",
    make_room(parse_marking("NATO SECRET")),
    RoomId("!n:x"),
)
OFFICER, ADMIN, OTHER = UserId("@lo:x"), UserId("@admin:x"), UserId("@other:x")
ORIGINAL = EventId("$original")


@dataclass
class Ports(Messenger, SenderGate, Audit):
    """The messenger, sender gate and audit ports, recording."""

    untrusted: str | None = None  # what the gate says of the sending device
    sent: list[tuple[str, dict[str, Any]]] = field(default_factory=list)
    notices: list[tuple[str, Document]] = field(default_factory=list)
    redacted: list[tuple[str, str]] = field(default_factory=list)
    audited: list[tuple[str, str]] = field(default_factory=list)
    details: list[Any] = field(default_factory=list)
    user_id: str = "@bot:x"
    owners: dict[str, str] = field(default_factory=dict)  # event id -> its sender
    alerts: list[Document] = field(default_factory=list)

    async def sender_of(self, room_id: str, event_id: str) -> str | None:
        return self.owners.get(event_id)

    async def send(
        self,
        room_id: str,
        content: dict[str, Any],
        tx_id: str | None = None,
        also_to: Sequence[Device] = (),
    ) -> EventId:
        self.sent.append((room_id, content))
        return EventId(f"$copy{len(self.sent)}")

    async def send_notice(
        self,
        room_id: str,
        document: Document,
        reply_to: str | None = None,
        also_to: Sequence[Device] = (),
        tx_id: str | None = None,
    ) -> EventId:
        self.notices.append((room_id, document))
        return EventId(f"$notice{len(self.notices)}")

    async def redact(
        self, room_id: str, event_id: str, reason: str, tx_id: str | None = None
    ) -> None:
        self.redacted.append((room_id, event_id))

    async def alert_admins(self, document: Document, tx_id: str | None = None) -> None:
        self.alerts.append(document)

    async def untrusted_sender(
        self, room_id: str, event: EventHandle
    ) -> tuple[str, Device | None] | None:
        return None if self.untrusted is None else (self.untrusted, None)

    async def __call__(
        self, actor: str, action: str, subject: str | None, detail: dict[str, Any]
    ) -> None:
        self.audited.append((actor, action))
        self.details.append(detail)


def engine(store: Store, ports: Ports) -> RelayEngine:
    rooms = SimpleNamespace(
        by_key={"deu": DEU, "nato-s": NATO},
        targets_of=lambda key: ["nato-s"] if key == "deu" else [],
    )
    settings = SimpleNamespace(caveats=[], officers=[OFFICER], admins=[ADMIN])
    return RelayEngine(
        settings,  # type: ignore[arg-type]  # BotConfig: only caveats, officers and admins
        store,
        rooms,  # type: ignore[arg-type]  # RoomDirectory: only by_key and targets_of
        ports,
        ports,
        ports,
        Metrics(lambda: None),
        "a-data-key-of-thirty-two-characters!",
    )


def source(event_id: str = ORIGINAL, sender: UserId = OFFICER) -> Source:
    return Source(DEU, ORIGINAL, sender, datetime.now(UTC), SimpleNamespace(event_id=event_id))


async def relayed(store: Store, ports: Ports) -> RelayEngine:
    relay = engine(store, ports)
    receipt = await relay.handle(source(), "[GEHEIM // REL TO NATO] convoy sighted")
    assert receipt is not None and "nato-s" in receipt.plain
    assert [room for room, _ in ports.sent] == ["!n:x"]
    return relay


async def test_an_edit_from_an_untrusted_device_changes_nothing(store: Store) -> None:
    ports = Ports()
    relay = await relayed(store, ports)
    ports.untrusted = "device ABC is not verified by its owner"
    reply = await relay.handle_edit(source("$edit"), "convoy sighted (marking dropped)")
    assert reply is not None and "Edit not applied" in reply.plain
    assert ports.redacted == []  # the copy stays
    item = store.item(ORIGINAL)
    assert item is not None and item.redacted_at is None
    assert relay.open_item(item)[0] == "convoy sighted"
    assert (OFFICER, "relay.untrusted-device") in ports.audited


async def test_a_redaction_by_someone_else_is_ignored_and_audited(store: Store) -> None:
    ports = Ports()
    relay = await relayed(store, ports)
    await relay.handle_redaction(DEU, ORIGINAL, OTHER)
    assert ports.redacted == []
    item = store.item(ORIGINAL)
    assert item is not None and item.redacted_at is None
    assert (OTHER, "intel.redaction-ignored") in ports.audited


@pytest.mark.parametrize("redactor", [OFFICER, ADMIN])
async def test_a_redaction_withdraws_the_copies_but_keeps_the_sealed_record(
    store: Store, redactor: UserId
) -> None:
    ports = Ports()
    relay = await relayed(store, ports)
    await relay.handle_redaction(DEU, ORIGINAL, redactor)
    assert ports.redacted == [("!n:x", "$copy1")]
    item = store.item(ORIGINAL)
    assert item is not None and item.redacted_at is not None  # out of digests and search
    assert relay.open_item(item)[0] == "convoy sighted"  # not destroyed by an unsigned event


async def test_a_malformed_marking_leaves_no_text_in_the_audit_log(store: Store) -> None:
    """Issue 14, finding 12: the log is permanent and in clear."""
    ports = Ports()
    relay = engine(store, ports)
    reply = await relay.handle(source(), "[GEHEIM // RELL TO NATO] the secret convoy route")
    assert reply is not None and "Not stored" in reply.plain
    assert (OFFICER, "relay.malformed") in ports.audited
    assert "convoy" not in repr(ports.details) and "RELL" not in repr(ports.details)


async def test_forgetting_an_item_blanks_its_sealed_copies_in_the_ledger(store: Store) -> None:
    """Issue 14, finding 12: an edit that drops the marking forgets the text everywhere."""
    ports = Ports()
    relay = await relayed(store, ports)
    reply = await relay.handle_edit(source("$edit"), "convoy sighted (marking dropped)")
    assert reply is not None and "withdrawn" in reply.plain
    ledger = store.ledger_of(ORIGINAL)
    assert ledger and all(
        "convoy"
        not in relay.ledger_sealer.open_text(
            row.content, ledger_binding(row.txn_id, row.target_key, row.target_room_id)
        )
        for row in ledger
    )


NATO_R = ManagedRoom(
    RoomKey("nato-r"),
    "NATO RESTRICTED",
    make_room(parse_marking("NATO RESTRICTED")),
    RoomId("!r:x"),
)


@pytest.mark.parametrize(
    "body",
    [
        "[COSMIC TOP SECRET // NOFORN] the whole plan",  # an unknown caveat besides the level
        "[SECRET // BOGUS] the whole plan",  # ambiguous: every reading above the room
    ],
)
async def test_spillage_is_judged_on_the_level_even_when_the_rest_is_malformed(
    store: Store, body: str
) -> None:
    """Issue 14, finding 5: the text must not stay in a lower room."""
    ports = Ports()
    relay = engine(store, ports)
    low = Source(NATO_R, ORIGINAL, OFFICER, datetime.now(UTC), SimpleNamespace(event_id=ORIGINAL))
    reply = await relay.handle(low, body)
    assert reply is not None and "removed from this room" in reply.plain
    assert ports.redacted == [("!r:x", ORIGINAL)]
    assert (OFFICER, "spillage") in ports.audited


async def test_spillage_from_an_untrusted_device_is_still_removed(store: Store) -> None:
    ports = Ports(untrusted="device ABC is not verified by its owner")
    relay = engine(store, ports)
    low = Source(NATO_R, ORIGINAL, OFFICER, datetime.now(UTC), SimpleNamespace(event_id=ORIGINAL))
    reply = await relay.handle(low, "[NATO SECRET] the whole plan")
    assert reply is not None and "removed from this room" in reply.plain
    assert ports.redacted == [("!r:x", ORIGINAL)]
    assert store.item(ORIGINAL) is None  # nothing stored from an untrusted device


async def test_a_message_too_long_once_relayed_is_refused_at_submission(store: Store) -> None:
    """Issue 14, finding 8: under the 40 000-byte text cap but over the event limit once the
    copy carries it twice and is encrypted: refused with the limit named, nothing stored."""
    ports = Ports()
    relay = engine(store, ports)
    reply = await relay.handle(source(), "[GEHEIM // REL TO NATO] " + "convoy & <route> " * 1800)
    assert reply is not None and "at most 65536" in reply.plain
    assert store.item(ORIGINAL) is None and ports.sent == []
    fine = await relay.handle(source(), "[GEHEIM // REL TO NATO] " + "convoy & <route> " * 300)
    assert fine is not None and "nato-s" in fine.plain and len(ports.sent) == 1


async def test_a_ledger_row_retargeted_in_the_database_is_never_sent(store: Store) -> None:
    """Issue 14, finding 11: the sealed copy is bound to its target room."""
    from sqlalchemy import update

    from bot.storage import RelayKind, RelayRow

    ports = Ports()
    relay = engine(store, ports)
    entry = relay._entry(RelayKind.COPY, "$src", "$src", NATO, {"msgtype": "m.text", "body": "x"})
    store.add_relays([entry])
    with store.session() as s:  # write access to the database: point it at a lower room
        s.execute(update(RelayRow).values(target_room_id="!lower:x"))
    await relay.resend_pending()
    assert ports.sent == [] and store.pending_relays() == []


async def test_an_item_whose_label_was_lowered_in_the_database_does_not_open(
    store: Store,
) -> None:
    """Issue 14, finding 11: an item's text is bound to its room and label."""
    from sqlalchemy import update

    from bot.storage import IntelItemRow
    from bot.storage.sealing import SealError

    ports = Ports()
    relay = await relayed(store, ports)
    with store.session() as s:
        s.execute(update(IntelItemRow).values(label="NATO UNCLASSIFIED", rank=0))
    item = store.item(ORIGINAL)
    assert item is not None
    with pytest.raises(SealError):
        relay.open_item(item)[0]


async def test_topics_are_sealed_with_the_text(store: Store) -> None:
    """Issue 14, finding 12: topics say what the text is about; none of it in clear."""
    from bot.storage import IntelItemRow

    ports = Ports()
    relay = engine(store, ports)
    await relay.handle(source(), "[GEHEIM // REL TO NATO] convoy sighted #kiel #logistics")
    with store.session() as s:
        row = s.get(IntelItemRow, 1)
        assert row is not None and not row.topics  # the clear column holds nothing
    item = store.item(ORIGINAL)
    assert item is not None
    assert relay.open_item(item) == ("convoy sighted #kiel #logistics", ("kiel", "logistics"))


# ---------------------------------------------------------------- issue 24 (hardening III)


def edit_by(sender: UserId, of: str = ORIGINAL, edit_id: str = "$edit") -> Source:
    """An edit event `edit_id` by `sender` that names `of` as the event it replaces."""
    return Source(DEU, EventId(of), sender, datetime.now(UTC), SimpleNamespace(event_id=edit_id))


async def test_an_edit_of_someone_elses_item_marked_above_the_room_redacts_only_the_edit(
    store: Store,
) -> None:
    """Finding 2: the edit's target was redacted (anyone's message, the bot's copies, room
    state); now only the edit that carries the over-classified text is."""
    ports = Ports()
    relay = await relayed(store, ports)
    reply = await relay.handle_edit(edit_by(OTHER), "[STRENG GEHEIM] the whole plan")
    assert reply is not None and "Your edit was removed" in reply.plain
    assert ports.redacted == [("!d:x", "$edit")]
    item = store.item(ORIGINAL)
    assert item is not None and item.redacted_at is None  # the officer's item stands
    assert (OTHER, "spillage") in ports.audited


@pytest.mark.parametrize("owner", [None, "@someone-else:x", "@bot:x"])
async def test_an_edit_naming_an_event_without_an_item_never_redacts_that_event(
    store: Store, owner: str | None
) -> None:
    """Finding 2: an m.replace may name any event id: state, the bot's digests, others'
    messages, or one the server does not show."""
    ports = Ports(owners={"$target": owner} if owner else {})
    relay = engine(store, ports)
    reply = await relay.handle_edit(edit_by(OTHER, "$target"), "[STRENG GEHEIM] words")
    assert reply is not None and "removed" in reply.plain
    assert ports.redacted == [("!d:x", "$edit")]
    assert store.item("$target") is None and ports.sent == []
    # marked within the room: someone else's message is never tagged by it
    quiet = await relay.handle_edit(edit_by(OTHER, "$target", "$e2"), "[GEHEIM // REL TO NATO] x")
    assert quiet is None and store.item("$target") is None and ports.sent == []
    assert (OTHER, "intel.edit-ignored") in ports.audited


async def test_an_own_edit_that_tags_an_untagged_message_above_the_room_removes_both(
    store: Store,
) -> None:
    """The sender's own message edited into spillage: the original and the edit go (the edit
    was left before, carrying the over-classified text)."""
    ports = Ports(owners={ORIGINAL: OFFICER})
    relay = engine(store, ports)
    reply = await relay.handle_edit(edit_by(OFFICER), "[STRENG GEHEIM] words")
    assert reply is not None and "removed from this room" in reply.plain
    assert sorted(ports.redacted) == [("!d:x", "$edit"), ("!d:x", ORIGINAL)]
    tagged = await relay.handle_edit(edit_by(OFFICER, edit_id="$e2"), "[GEHEIM // REL TO NATO] y")
    assert tagged is not None and "nato-s" in tagged.plain  # an own edit still tags


async def test_re_marking_upward_by_an_edit_withdraws_the_copies_and_retires_the_item(
    store: Store,
) -> None:
    """Finding 4: the copies stayed in NATO rooms and the item in search and digests."""
    ports = Ports()
    relay = await relayed(store, ports)
    reply = await relay.handle_edit(edit_by(OFFICER), "[STRENG GEHEIM] convoy sighted")
    assert reply is not None and "copies were withdrawn" in reply.plain
    assert ("!n:x", "$copy1") in ports.redacted  # the copy in nato-s
    assert ("!d:x", "$edit") in ports.redacted and ("!d:x", ORIGINAL) in ports.redacted
    item = store.item(ORIGINAL)
    assert item is not None and item.redacted_at is not None  # out of search and digests
    assert "convoy" not in relay.open_item(item)[0]  # and its text forgotten
    spill = next(d for d in ports.details if "withdrawn_from" in d)
    assert spill["withdrawn_from"] == ["nato-s"]


async def test_an_unreadable_re_marking_above_the_room_is_spillage_too(store: Store) -> None:
    ports = Ports()
    relay = await relayed(store, ports)
    reply = await relay.handle_edit(edit_by(OFFICER), "[STRENG GEHEIM // BOGUS] convoy")
    assert reply is not None and "removed" in reply.plain
    assert ("!n:x", "$copy1") in ports.redacted and ("!d:x", "$edit") in ports.redacted


async def test_a_ledger_copy_written_into_an_item_row_does_not_open(store: Store) -> None:
    """Finding 5: items and ledger rows shared a sealing context, and an item fell back to
    its event id: a relayed copy, written into an item row, opened as an item of any room."""
    from sqlalchemy import update

    from bot.storage import IntelItemRow
    from bot.storage.sealing import SealError

    ports = Ports()
    relay = await relayed(store, ports)
    (row,) = store.ledger_of(ORIGINAL)
    # Write access: the copy's sealed text as an item's, under an "event id" equal to what
    # the copy was sealed with (the old fallback opened an item by its event id alone).
    bound = ledger_binding(row.txn_id, row.target_key, row.target_room_id)
    with store.session() as s:
        s.execute(update(IntelItemRow).values(text=row.content, event_id=bound))
    item = store.item(bound)
    assert item is not None
    with pytest.raises(SealError):
        relay.open_item(item)


async def test_old_sealed_values_are_resealed_once_and_never_again(store: Store) -> None:
    """Finding 5: items and ledger rows of the shared context are resealed in their own,
    once; an old-format value written into the database afterwards is not opened."""
    from bot.services.relay import item_binding, sealed_payload
    from bot.storage import IntelItem, RelayEntry, RelayKind
    from bot.storage.sealing import Sealer
    from policy import Precedence

    ports = Ports()
    relay = engine(store, ports)
    legacy = Sealer("a-data-key-of-thirty-two-characters!", "intel")

    def old_item(event_id: str, *, bound: bool) -> IntelItem:
        text = sealed_payload(f"text of {event_id}", ["kiel"])
        binding = item_binding(event_id, "deu", "DEU GEHEIM // REL TO NATO")
        return IntelItem(
            event_id=event_id, room_key="deu", room_id="!d:x", sender=OFFICER,
            label="DEU GEHEIM // REL TO NATO", scheme="DEU", rank=3,
            precedence=Precedence.ROUTINE,
            exercise=False, topics=(), created_at=datetime.now(UTC),
            text=legacy.seal_text(text, binding if bound else event_id),
        )  # fmt: skip

    store.save_item(old_item("$bound", bound=True))
    store.save_item(old_item("$early", bound=False))  # from before the label binding
    store.add_relays(
        [
            RelayEntry(
                txn_id="lbold", kind=RelayKind.COPY, source_event_id="$bound",
                item_event_id="$bound", target_key="nato-s", target_room_id="!n:x",
                content=legacy.seal_text('{"msgtype": "m.text", "body": "x"}', "lbold"),
            )
        ]
    )  # fmt: skip
    assert await relay.reseal_legacy() == (2, 1)
    for event_id in ("$bound", "$early"):
        item = store.item(event_id)
        assert item is not None and item.text.startswith("v2:")
        assert relay.open_item(item) == (f"text of {event_id}", ("kiel",))
    await relay.resend_pending()
    assert ports.sent == [("!n:x", {"msgtype": "m.text", "body": "x"})]
    assert await relay.reseal_legacy() == (0, 0)  # nothing left: nothing done

    store.save_item(old_item("$later", bound=True))  # written into the database afterwards
    assert await relay.reseal_legacy() == (0, 0)
    later = store.item("$later")
    assert later is not None and later.text.startswith("v1:")
    assert ("@bot:x", "intel.reseal-refused") in ports.audited and ports.alerts


# ---------------------------------------------------------------- the attack review of issue 24


async def test_a_precedence_put_first_does_not_hide_spillage(store: Store) -> None:
    """H1: `[FLASH] [STRENG GEHEIM] …` was refused as malformed and left in the room."""
    ports = Ports()
    relay = engine(store, ports)
    reply = await relay.handle(source(), "[FLASH] [STRENG GEHEIM] the whole plan")
    assert reply is not None and "removed from this room" in reply.plain
    assert ports.redacted == [("!d:x", ORIGINAL)]


class Failing(Ports):
    """A homeserver that refuses sends into some rooms for now (an outage, a rate limit)."""

    def __init__(self) -> None:
        super().__init__()
        self.down: set[str] = set()

    async def send(
        self,
        room_id: str,
        content: dict[str, Any],
        tx_id: str | None = None,
        also_to: Sequence[Device] = (),
    ) -> EventId:
        if room_id in self.down:
            from bot.matrix.gateway import MatrixError

            raise MatrixError("send", "M_LIMIT_EXCEEDED", "slow down", 429)
        return await super().send(room_id, content, tx_id, also_to)


@pytest.mark.parametrize("withdrawal", ["re-marked national only", "redacted", "re-marked above"])
async def test_a_copy_left_pending_never_goes_out_after_its_item_was_withdrawn(
    store: Store, withdrawal: str
) -> None:
    """H3: withdrawals looked only at sent copies, and the next sweep sent the pending one,
    with its text, to a room it could no longer reach."""
    ports = Failing()
    ports.down = {"!n:x"}
    relay = engine(store, ports)
    receipt = await relay.handle(source(), "[GEHEIM // REL TO NATO] convoy sighted")
    assert receipt is not None and "Queued for" in receipt.plain
    if withdrawal == "redacted":
        await relay.handle_redaction(DEU, ORIGINAL, OFFICER)
    elif withdrawal == "re-marked national only":
        await relay.handle_edit(edit_by(OFFICER), "[GEHEIM] convoy sighted")
    else:
        await relay.handle_edit(edit_by(OFFICER), "[STRENG GEHEIM] convoy sighted")
    ports.down = set()
    await relay.resend_pending()
    assert ports.sent == [] and store.pending_relays() == []
    withheld = [e for e in store.recent_audit(10) if e.action == "relay.withheld"]
    assert len(withheld) == 1 and withheld[0].detail["to"] == "nato-s"


async def test_a_pending_copy_still_releasable_is_sent(store: Store) -> None:
    ports = Failing()
    ports.down = {"!n:x"}
    relay = engine(store, ports)
    await relay.handle(source(), "[GEHEIM // REL TO NATO] convoy sighted")
    ports.down = set()
    await relay.resend_pending()
    assert [room for room, _ in ports.sent] == ["!n:x"]


async def test_an_edit_from_another_room_is_someone_elses(store: Store) -> None:
    """L2: judged and stored under the other room's policy, the item no longer opened."""
    ports = Ports()
    relay = await relayed(store, ports)
    elsewhere = Source(NATO_R, ORIGINAL, OFFICER, datetime.now(UTC), SimpleNamespace(event_id="$e"))
    assert await relay.handle_edit(elsewhere, "[NATO RESTRICTED] convoy") is None
    item = store.item(ORIGINAL)
    assert item is not None and item.label == "DEU GEHEIM // REL TO NATO"
    assert relay.open_item(item)[0] == "convoy sighted"


async def test_a_spillage_the_homeserver_would_not_redact_is_reported_so(store: Store) -> None:
    """M5: the alert said the event was redacted when the redaction had failed."""
    from bot.matrix.gateway import MatrixError

    class NoRedact(Ports):
        async def redact(self, room_id: str, event_id: str, reason: str, tx_id: Any = None) -> None:
            raise MatrixError("redact", "M_FORBIDDEN", "no", 403)

    ports = NoRedact()
    relay = engine(store, ports)
    await relay.handle(source(), "[STRENG GEHEIM] the whole plan")
    (alert,) = ports.alerts
    assert "refused to redact" in alert.plain and "still in the room" in alert.plain
    spill = next(d for d in ports.details if "not_redacted" in d)
    assert spill["not_redacted"] == [ORIGINAL] and spill["redacted"] == []


async def test_old_sealed_values_are_not_resealed_with_a_broken_audit_chain(store: Store) -> None:
    """Attack review M2: the reseal's record (`intel.resealed`) deleted or renamed, so that
    old-format values written in would be opened once more; that breaks the chain, and then
    nothing is resealed."""
    from sqlalchemy import update

    from bot.storage import AuditRow, IntelItem
    from bot.storage.sealing import Sealer
    from policy import Precedence

    store.append_audit("cli:test", "intel.resealed", None, {"items": 0})
    with store.session() as s:  # the record renamed: the chain no longer verifies
        s.execute(update(AuditRow).values(action="something.else"))
    ports = Ports()
    relay = engine(store, ports)
    legacy = Sealer("a-data-key-of-thirty-two-characters!", "intel")
    store.save_item(
        IntelItem(
            event_id="$x", room_key="deu", room_id="!d:x", sender=OFFICER, label="DEU GEHEIM",
            scheme="DEU", rank=2, precedence=Precedence.ROUTINE, exercise=False, topics=(),
            created_at=datetime.now(UTC), text=legacy.seal_text("words", "$x"),
        )
    )  # fmt: skip
    assert await relay.reseal_legacy() == (0, 0)
    assert ("@bot:x", "intel.reseal-refused") in ports.audited
