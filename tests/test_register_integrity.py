"""Register and room rows are signed (issue 24, item 9): with write access to the database
and without the data key, a clearance cannot be granted, widened or restored, nor a managed
room's id swapped, past the bot (its store) or the homeserver gate (its reader). A row that
does not verify is refused as if absent, logged and audited naming the row.

The attacker here writes SQL directly, through columns every schema version has, so the
same attacks run against the code before the signatures (where they were honoured).
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime

import pytest
from sqlalchemy import delete, insert, select, update

from bot.services.register import ClearanceRegister, RegisterError
from bot.storage import (
    ClearanceCaveatRow,
    ClearanceRow,
    GrantRow,
    RoomRecord,
    RoomRow,
    Store,
    audit_key_from,
)
from bot.storage.migrate import upgrade
from bot.storage.reader import RegisterReader
from bot.storage.store import register_public_key
from policy.ids import RoomId, RoomKey

DATA_KEY = "register-integrity-data-key-0123456789"
OFFICER, MEMBER = "@lo:example.org", "@nor:example.org"
MALLORY, EVE = "@mallory:example.org", "@eve:example.org"
NATO_S = RoomRecord(
    key=RoomKey("nato-s"),
    name="NATO SECRET liaison",
    label="NATO SECRET",
    scheme="NATO",
    rank=3,
    audience=("DEU", "NOR"),
    room_id=RoomId("!nato:example.org"),
    servers=("example.org",),
)


@pytest.fixture
def url(database_url: str) -> str:
    upgrade(database_url)
    return database_url


@pytest.fixture
def store(url: str) -> Iterator[Store]:
    """The bot's store as it runs: keyed with the data key, started once."""
    opened = Store.from_url(url, audit_key_from(DATA_KEY))
    opened.key_audit_log()
    register = ClearanceRegister(opened)
    register.grant("cli:test", OFFICER, "NATO SECRET", nationality="DEU")
    register.grant("cli:test", MEMBER, "NATO CONFIDENTIAL", nationality="NOR")
    register.revoke("cli:test", MEMBER)
    opened.save_room(NATO_S)
    try:
        yield opened
    finally:
        opened.close()


@pytest.fixture
def reader(url: str) -> Iterator[RegisterReader]:
    """The gate's reader, given the register's public key."""
    opened = RegisterReader.from_url(url, register_public_key(DATA_KEY))
    try:
        yield opened
    finally:
        opened.close()


def _clearance_id(store: Store, user_id: str) -> int:
    with store.session() as session:
        found = session.scalar(select(ClearanceRow.id).where(ClearanceRow.user_id == user_id))
    assert found is not None
    return int(found)


def _refused(store: Store, name: str) -> list[dict[str, object]]:
    """The refusals audited naming this row."""
    return [
        e.detail
        for e in store.recent_audit(50)
        if e.action == "register.refused" and e.subject == name
    ]


def test_rows_the_bot_writes_verify_for_the_bot_and_the_gate(
    store: Store, reader: RegisterReader
) -> None:
    record = store.clearance(OFFICER)
    assert record is not None and record.grants[0].level == "NATO SECRET"
    assert reader.clearance(OFFICER) == record
    assert store.room("nato-s") == NATO_S and reader.room_by_id("!nato:example.org") == NATO_S
    pinned = store.pin_identity(OFFICER, "masterkey", "liaison-bot", "identity.pinned")
    assert pinned is not None and reader.clearance(OFFICER) == pinned
    assert store.flag_identity_change(OFFICER, "otherkey") is not None
    assert reader.clearance(OFFICER) == store.clearance(OFFICER)
    assert [r.key for r in store.rooms()] == ["nato-s"]
    assert _refused(store, OFFICER) == []


def test_a_clearance_inserted_in_the_database_is_not_honoured(
    store: Store, reader: RegisterReader
) -> None:
    _forge(store, MALLORY)  # the attacker: a row of their own, with a grant
    assert store.clearance(MALLORY) is None
    assert ClearanceRegister(store).show(MALLORY) is None
    assert MALLORY not in {r.user_id for r in store.clearances()}
    assert [r.user_id for r in store.clearances_of([MALLORY, OFFICER])] == [OFFICER]
    assert reader.clearance(MALLORY) is None
    entries = [e for e in store.recent_audit(20) if e.action == "register.refused"]
    assert [(e.subject, e.detail["row"]) for e in entries] == [(MALLORY, "clearance")]  # once
    assert store.verify_audit().intact

    refusals: list[tuple[str, str]] = []  # what the bot alerts its admins with
    store.add_refusal_listener(lambda kind, name: refusals.append((kind, name)))
    _forge(store, EVE)
    assert store.clearance(EVE) is None and store.clearance(EVE) is None
    assert refusals == [("clearance", EVE)]


def _forge(
    store: Store, user_id: str, level: str = "NATO SECRET", scheme: str = "NATO", rank: int = 3
) -> None:
    """What an attacker with write access to the database (and no data key) writes: a
    clearance row of their own, with a grant."""
    with store.session() as session:
        session.execute(insert(ClearanceRow).values(user_id=user_id, nationality="DEU"))
        cid = session.scalar(select(ClearanceRow.id).where(ClearanceRow.user_id == user_id))
        session.execute(
            insert(GrantRow).values(
                clearance_id=cid,
                scheme=scheme,
                level=level,
                rank=rank,
                granted_at=datetime.now(UTC),
            )
        )


@pytest.mark.parametrize("attack", ["raise-level", "restore", "caveat", "nationality", "copy"])
def test_a_clearance_changed_in_the_database_is_not_honoured(
    store: Store, reader: RegisterReader, attack: str
) -> None:
    officer, member = _clearance_id(store, OFFICER), _clearance_id(store, MEMBER)
    with store.session() as session:
        if attack == "raise-level":
            session.execute(
                update(GrantRow)
                .where(GrantRow.clearance_id == officer)
                .values(level="COSMIC TOP SECRET", rank=4)
            )
        elif attack == "restore":  # undo the revocation, and give a grant back
            session.execute(
                update(ClearanceRow).where(ClearanceRow.id == member).values(revoked_at=None)
            )
            session.execute(
                insert(GrantRow).values(
                    clearance_id=member,
                    scheme="NATO",
                    level="NATO SECRET",
                    rank=3,
                    granted_at=datetime.now(UTC),
                )
            )
        elif attack == "caveat":
            session.execute(
                insert(ClearanceCaveatRow).values(clearance_id=officer, caveat="ATOMAL")
            )
        elif attack == "nationality":
            session.execute(
                update(ClearanceRow).where(ClearanceRow.id == officer).values(nationality="USA")
            )
        else:  # the member's row takes the officer's grant (signature and all, where there is one)
            session.execute(delete(GrantRow).where(GrantRow.clearance_id == member))
            session.execute(
                update(GrantRow).where(GrantRow.clearance_id == officer).values(clearance_id=member)
            )
            session.execute(
                update(ClearanceRow).where(ClearanceRow.id == member).values(revoked_at=None)
            )
            for column in ("signature",):
                if column in ClearanceRow.__table__.c:
                    good = session.scalar(
                        select(ClearanceRow.__table__.c[column]).where(ClearanceRow.id == officer)
                    )
                    session.execute(
                        update(ClearanceRow).where(ClearanceRow.id == member).values({column: good})
                    )
    victim = MEMBER if attack in ("restore", "copy") else OFFICER
    assert store.clearance(victim) is None
    assert reader.clearance(victim) is None
    assert [e.subject for e in store.recent_audit(20) if e.action == "register.refused"] == [victim]


def test_a_swapped_room_id_is_refused_by_the_bot_and_the_gate(
    store: Store, reader: RegisterReader
) -> None:
    with store.session() as session:  # the label of nato-s onto the attacker's room
        session.execute(
            update(RoomRow).where(RoomRow.key == "nato-s").values(room_id="!mallory:example.org")
        )
    assert store.room("nato-s") is None
    assert store.rooms() == []
    assert reader.room_by_id("!mallory:example.org") is None
    assert reader.room_by_id("!nato:example.org") is None
    entries = [e for e in store.recent_audit(20) if e.action == "register.refused"]
    assert [(e.subject, e.detail["row"]) for e in entries] == [("nato-s", "room")]


def test_a_lowered_room_label_is_refused(store: Store, reader: RegisterReader) -> None:
    with store.session() as session:
        session.execute(
            update(RoomRow)
            .where(RoomRow.key == "nato-s")
            .values(label="NATO UNCLASSIFIED", rank=0, audience=["DEU", "NOR", "USA"])
        )
    assert store.room("nato-s") is None
    assert reader.room_by_id("!nato:example.org") is None


def test_a_forged_row_is_repaired_only_by_revoking_all_of_it(store: Store) -> None:
    """A grant on a row that does not verify would sign what the attacker wrote: refused,
    naming the row; revoking all of it removes it, and a grant then starts afresh."""
    register = ClearanceRegister(store)
    with store.session() as session:
        session.execute(
            update(ClearanceRow).where(ClearanceRow.user_id == OFFICER).values(nationality="USA")
        )
    with pytest.raises(RegisterError, match=f"register row of {OFFICER} does not verify"):
        register.grant("cli:test", OFFICER, "NATO CONFIDENTIAL")
    with pytest.raises(RegisterError, match="revoke all"):
        register.revoke("cli:test", OFFICER, "NATO")
    register.revoke("cli:test", OFFICER)
    assert store.clearance(OFFICER) is None
    register.grant("cli:test", OFFICER, "NATO CONFIDENTIAL", nationality="DEU")
    again = store.clearance(OFFICER)
    assert again is not None and again.nationality == "DEU"
    assert [g.level for g in again.grants] == ["NATO CONFIDENTIAL"]


def test_rows_from_before_signatures_are_signed_once_at_the_start(url: str) -> None:
    """Migration 0012 cannot sign (no key): the bot's next start signs the rows there are,
    once, audited with their names; an unsigned row after that is a forgery."""
    before = Store.from_url(url)  # a store without the key writes unsigned rows
    try:
        ClearanceRegister(before).grant("cli:old", OFFICER, "NATO SECRET", nationality="DEU")
        before.save_room(NATO_S)
    finally:
        before.close()
    bot = Store.from_url(url, audit_key_from(DATA_KEY))
    reader = RegisterReader.from_url(url, register_public_key(DATA_KEY))
    try:
        assert bot.clearance(OFFICER) is None  # not signed yet: refused, not reported
        assert reader.clearance(OFFICER) is None
        bot.key_audit_log()  # the start
        assert bot.clearance(OFFICER) is not None and bot.room("nato-s") == NATO_S
        assert reader.clearance(OFFICER) is not None
        keyed = [e for e in bot.recent_audit(20) if e.action == "register.keyed"]
        assert [e.detail for e in keyed] == [{"clearances": [OFFICER], "rooms": ["nato-s"]}]
        with bot.session() as session:
            session.execute(insert(ClearanceRow).values(user_id=MALLORY, nationality="DEU"))
        assert bot.key_register() == 0  # once only
        assert bot.clearance(MALLORY) is None and reader.clearance(MALLORY) is None
        refused = [e for e in bot.recent_audit(20) if e.action == "register.refused"]
        assert [(e.subject, e.detail["reason"]) for e in refused] == [(MALLORY, "unsigned")]
    finally:
        bot.close()
        reader.close()


def test_the_gate_key_is_public_and_a_wrong_one_verifies_nothing(url: str, store: Store) -> None:
    key = register_public_key(DATA_KEY)
    assert key.startswith("ed25519:") and DATA_KEY not in key
    other = RegisterReader.from_url(url, register_public_key("another-data-key-0123456789abcdef"))
    try:
        assert other.clearance(OFFICER) is None
        assert other.room_by_id("!nato:example.org") is None
    finally:
        other.close()
    with pytest.raises(ValueError, match="register key"):
        RegisterReader.from_url(url, "ed25519:short")


@pytest.mark.parametrize("how", ["renamed", "deleted"])
def test_removing_the_keyed_marker_gets_no_forged_row_signed(
    url: str, store: Store, how: str
) -> None:
    """Attack review of issue 24 (M2): with the `register.keyed` entry renamed or deleted,
    the next start signed every unsigned row, the attacker's included. The marker's absence
    now counts only with an intact (keyed) audit chain."""
    from bot.storage import AuditRow

    with store.session() as session:
        session.execute(insert(ClearanceRow).values(user_id=MALLORY, nationality="DEU"))
        marker = update(AuditRow).where(AuditRow.action == "register.keyed")
        if how == "renamed":
            session.execute(marker.values(action="register.something"))
        else:
            session.execute(delete(AuditRow).where(AuditRow.action == "register.keyed"))
    restarted = Store.from_url(url, audit_key_from(DATA_KEY))
    try:
        restarted.key_audit_log()  # the next start
        assert restarted.clearance(MALLORY) is None
        with restarted.session() as session:
            row = session.scalar(select(ClearanceRow).where(ClearanceRow.user_id == MALLORY))
            assert row is not None and row.signature is None
    finally:
        restarted.close()
