"""National release control, the storage side: held items and their decisions survive in
the database, every change is one transaction with its audit, an approval writes the relay
ledger in the same transaction (all or nothing), two approvers release a target once, and
revision 0017 goes up and down. On SQLite and on PostgreSQL (skipped without
LIAISON_TEST_DATABASE_URL)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from alembic import command
from sqlalchemy import inspect, select
from sqlalchemy.exc import StatementError

from bot.storage import (
    AuditNote,
    AuditRow,
    HeldTarget,
    HoldState,
    NewHeldTarget,
    NewHold,
    RelayEntry,
    RelayKind,
    RelayRow,
    ReleaseRequest,
    Store,
    StoreError,
    make_engine,
    parse_release_id,
)
from bot.storage.migrate import alembic_config, current_revision, upgrade
from bot.storage.sealing import (
    SealError,
    hold_binding,
    hold_sealer,
    reason_binding,
    reason_sealer,
)

NOW = datetime(2026, 12, 6, 12, 0, tzinfo=UTC)
ITEM = "$item1:example.org"
TARGETS = {"nato-s": "!nato:example.org", "eu-s": "!eu:example.org"}
SENDER, APPROVER, OTHER = "@alice:example.org", "@bob:example.org", "@carol:example.org"


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    upgrade(database_url)
    opened = Store.from_url(database_url)
    yield opened
    opened.close()


def new_hold(item: str = ITEM, held_at: datetime = NOW, hours: float = 4) -> NewHold:
    return NewHold(
        item_event_id=item,
        source_key="deu",
        source_room_id="!deu:example.org",
        sender=SENDER,
        label="DEU GEHEIM",
        scheme="DEU",
        rank=3,
        held_at=held_at,
        expires_at=held_at + timedelta(hours=hours),
        sender_device="DEVICEA",
    )


def held_targets(item: str = ITEM, tag: str = "") -> list[NewHeldTarget]:
    return [NewHeldTarget(k, r, f"sealed-copy-{item}-{k}{tag}") for k, r in TARGETS.items()]


def note(action: str, **detail: Any) -> AuditNote:
    return AuditNote(APPROVER, action, ITEM, dict(detail))


def hold(store: Store, item: str = ITEM, **kw: Any) -> ReleaseRequest:
    return store.hold_release(new_hold(item, **kw), held_targets(item), [note("release.held")])


def copy(request: ReleaseRequest, target: str, txn: str | None = None) -> RelayEntry:
    return RelayEntry(
        txn or f"txn-{request.item_event_id}-{target}",
        RelayKind.COPY,
        request.item_event_id,
        request.item_event_id,
        target,
        TARGETS[target],
        f"ledger-copy-{target}",
    )


def audit(store: Store, action: str | None = None) -> list[tuple[str, dict[str, Any]]]:
    with store.session() as session:
        rows = session.scalars(select(AuditRow).order_by(AuditRow.id))
        return [(r.action, dict(r.detail)) for r in rows if action in (None, r.action)]


def ledger(store: Store) -> list[tuple[str, str, str]]:
    with store.session() as session:
        rows = session.scalars(select(RelayRow).order_by(RelayRow.id))
        return [(r.txn_id, r.target_key, r.state) for r in rows]


def target_of(request: ReleaseRequest | None, key: str) -> HeldTarget:
    assert request is not None
    target = request.target(key)
    assert target is not None
    return target


def states(request: ReleaseRequest | None) -> dict[str, HoldState]:
    assert request is not None
    return {t.target_key: t.state for t in request.targets}


# -- holding and reading --------------------------------------------------------------------


def test_a_hold_is_stored_once_and_read_back_every_way(store: Store) -> None:
    request = hold(store)
    assert request.public_id == f"R{request.id}" and parse_release_id(request.public_id) == (
        request.id
    )
    assert request.is_pending and len(request.held_targets) == 2
    assert (request.item_event_id, request.sender, request.sender_device) == (
        ITEM,
        SENDER,
        "DEVICEA",
    )
    assert (request.label, request.scheme, request.rank) == ("DEU GEHEIM", "DEU", 3)
    assert request.held_at == NOW and request.expires_at == NOW + timedelta(hours=4)
    assert [t.target_key for t in request.targets] == list(TARGETS)
    assert target_of(request, "eu-s").content == f"sealed-copy-{ITEM}-eu-s"
    assert request.notice_event_id is None
    assert store.release_request(request.id) == request
    assert store.release_request_for_item(ITEM) == request
    assert audit(store) == [("release.held", {"targets": sorted(TARGETS)})]

    # A replay (the same item after a crash) returns what is stored and writes nothing.
    again = store.hold_release(new_hold(), held_targets(tag="-other"), [note("release.held")])
    assert again == request
    assert audit(store) == [("release.held", {"targets": sorted(TARGETS)})]

    store.set_release_notice(request.id, "$notice:example.org")
    found = store.release_request_for_notice("$notice:example.org")
    assert found is not None and found.id == request.id
    assert found.notice_event_id == "$notice:example.org"
    assert store.release_request_for_notice("$other:example.org") is None
    assert store.release_request(request.id + 100) is None
    assert store.release_request_for_item("$nothing") is None
    with pytest.raises(StoreError, match="no release request"):
        store.set_release_notice(request.id + 100, "$x")


def test_a_hold_needs_distinct_targets(store: Store) -> None:
    with pytest.raises(StoreError, match="at least one target"):
        store.hold_release(new_hold(), [], [note("release.held")])
    twice = [NewHeldTarget("nato-s", "!n:x", "a"), NewHeldTarget("nato-s", "!n:x", "b")]
    with pytest.raises(StoreError, match="named twice"):
        store.hold_release(new_hold(), twice, [note("release.held")])
    assert store.release_request_for_item(ITEM) is None and audit(store) == []


def test_public_ids_read_back_strictly() -> None:
    assert parse_release_id("R12") == 12 and parse_release_id(" r7 ") == 7
    for bad in ("R", "12", "R012", "R-1", "R1.5", "X12", "R１２", ""):
        assert parse_release_id(bad) is None, bad


# -- approval -------------------------------------------------------------------------------


def test_an_approval_writes_the_ledger_with_the_decision_and_only_once(store: Store) -> None:
    request = hold(store)
    approved, written = store.approve_release(
        request.id, [copy(request, "nato-s")], APPROVER, [note("release.approved")]
    )
    assert states(approved) == {"nato-s": HoldState.APPROVED, "eu-s": HoldState.HELD}
    target = approved.target("nato-s")
    assert target is not None and target.decided_by == APPROVER and target.decided_at is not None
    assert [(e.txn_id, e.target_key, e.content) for e in written] == [
        (f"txn-{ITEM}-nato-s", "nato-s", "ledger-copy-nato-s")
    ]
    assert [e.txn_id for e in store.pending_relays()] == [f"txn-{ITEM}-nato-s"]
    assert audit(store, "release.approved") == [("release.approved", {"targets": ["nato-s"]})]
    assert approved.is_pending and store.release_request(request.id) == approved

    # Again (a second reaction, a replay): nothing more is written, not even the audit.
    again, none = store.approve_release(
        request.id, [copy(request, "nato-s", "txn-second")], OTHER, [note("release.approved")]
    )
    assert none == [] and again == approved
    assert ledger(store) == [(f"txn-{ITEM}-nato-s", "nato-s", "pending")]
    assert len(audit(store, "release.approved")) == 1

    # The rest: the held one is approved, the approved one skipped.
    last, written = store.approve_release(
        request.id,
        [copy(request, "nato-s", "txn-third"), copy(request, "eu-s")],
        OTHER,
        [note("release.approved")],
    )
    assert [e.target_key for e in written] == ["eu-s"]
    assert not last.is_pending and last.held_targets == ()
    assert audit(store, "release.approved")[-1] == ("release.approved", {"targets": ["eu-s"]})
    assert [t for t, _, _ in ledger(store)] == [f"txn-{ITEM}-nato-s", f"txn-{ITEM}-eu-s"]


def test_an_approval_keeps_a_ledger_row_already_there_for_the_same_copy(store: Store) -> None:
    request = hold(store)
    store.add_relays([copy(request, "nato-s")])
    store.relay_sent(f"txn-{ITEM}-nato-s", "$sent:example.org")
    _, written = store.approve_release(request.id, [copy(request, "nato-s")], APPROVER)
    assert [(e.txn_id, e.target_event_id) for e in written] == [
        (f"txn-{ITEM}-nato-s", "$sent:example.org")
    ]
    assert len(ledger(store)) == 1


@pytest.mark.parametrize("failure", ["txn-conflict", "audit"])
def test_an_approval_that_fails_half_way_changes_nothing(store: Store, failure: str) -> None:
    """The first target's decision and ledger row are made before the failure: both must
    be rolled back with it."""
    request = hold(store)
    other = hold(store, "$other:example.org")
    entries = [copy(request, "nato-s"), copy(request, "eu-s")]
    notes = [note("release.approved")]
    expected: tuple[type[Exception], ...] = (StoreError,)
    if failure == "txn-conflict":
        # The second entry's transaction id is another item's copy already in the ledger.
        store.add_relays([copy(other, "eu-s", "txn-taken")])
        entries[1] = copy(request, "eu-s", "txn-taken")
    else:
        # The audit row is written last, after both targets and ledger rows; it fails.
        notes = [AuditNote(APPROVER, "release.approved", ITEM, {"bad": object()})]
        expected = (StatementError, TypeError)  # as each driver reports it
    before_audit, before_ledger = audit(store), ledger(store)
    with pytest.raises(expected):
        store.approve_release(request.id, entries, APPROVER, notes)
    assert states(store.release_request(request.id)) == {
        "nato-s": HoldState.HELD,
        "eu-s": HoldState.HELD,
    }
    assert ledger(store) == before_ledger and audit(store) == before_audit


def test_an_approval_refuses_entries_that_are_not_the_request_s(store: Store) -> None:
    request = hold(store)
    stranger = RelayEntry(
        "txn-x", RelayKind.COPY, ITEM, ITEM, "fra-s", "!fra:example.org", "c"
    )  # a target the request lacks
    other_item = RelayEntry(
        "txn-y", RelayKind.COPY, "$other", "$other", "nato-s", TARGETS["nato-s"], "c"
    )
    wrong_room = RelayEntry("txn-z", RelayKind.COPY, ITEM, ITEM, "nato-s", "!elsewhere:x", "c")
    for bad, message in (
        ([stranger], "no held target"),
        ([other_item], "is not the copy"),
        ([wrong_room], "is not the copy"),
        ([copy(request, "nato-s"), copy(request, "nato-s", "t2")], "named twice"),
    ):
        with pytest.raises(StoreError, match=message):
            store.approve_release(request.id, bad, APPROVER, [note("release.approved")])
    with pytest.raises(StoreError, match="no release request"):
        store.approve_release(request.id + 100, [], APPROVER)
    assert ledger(store) == [] and audit(store, "release.approved") == []
    assert states(store.release_request(request.id)) == dict.fromkeys(TARGETS, HoldState.HELD)


def _race(first: Store, second: Store, request: ReleaseRequest) -> dict[str, list[RelayEntry]]:
    """Both stores approve every target of `request` at once; what each call returned."""
    barrier = threading.Barrier(2)
    results: dict[str, list[RelayEntry]] = {}
    errors: list[BaseException] = []

    def approve(store: Store, name: str) -> None:
        entries = [copy(request, t, f"{name}-{request.item_event_id}-{t}") for t in TARGETS]
        barrier.wait()
        try:
            _, results[name] = store.approve_release(
                request.id, entries, name, [note("release.approved")]
            )
        except BaseException as exc:  # reported below, not lost in the thread
            errors.append(exc)

    threads = [
        threading.Thread(target=approve, args=(first, "@one:x")),
        threading.Thread(target=approve, args=(second, "@two:x")),
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    assert errors == []
    return results


def test_two_approvers_at_once_release_each_target_once(database_url: str) -> None:
    """Two processes (two stores, two engines) approve the same request at the same moment,
    each with its own transaction ids: one writes the ledger, the other finds the targets
    decided. Without the row lock both would read `held` and both insert on PostgreSQL."""
    upgrade(database_url)
    first, second = Store.from_url(database_url), Store.from_url(database_url)
    try:
        for round_ in range(5):
            item = f"$race{round_}:example.org"
            request = hold(first, item)
            results = _race(first, second, request)
            assert sorted(len(v) for v in results.values()) == [0, 2]
            rows = [r for r in ledger(first) if item in r[0]]
            assert sorted(t for _, t, _ in rows) == sorted(TARGETS)
            winner = next(name for name, v in results.items() if v)
            final = first.release_request(request.id)
            assert final is not None and {t.decided_by for t in final.targets} == {winner}
        assert len(audit(first, "release.approved")) == 5
    finally:
        first.close()
        second.close()


# -- denial, expiry, withdrawal, edits ------------------------------------------------------


def test_a_denial_decides_only_held_targets_with_their_reasons(store: Store) -> None:
    request = hold(store)
    store.approve_release(request.id, [copy(request, "nato-s")], APPROVER)
    with pytest.raises(StoreError, match="no reason for eu-s"):
        store.deny_release(request.id, None, OTHER, {}, [note("release.denied")])
    with pytest.raises(StoreError, match="no target fra-s"):
        store.deny_release(request.id, ["fra-s"], OTHER, {"fra-s": "r"}, [note("release.denied")])
    with pytest.raises(StoreError, match="no release request"):
        store.deny_release(request.id + 100, None, OTHER, {}, [note("release.denied")])
    assert audit(store, "release.denied") == []

    denied = store.deny_release(
        request.id, None, OTHER, {"eu-s": "sealed-reason"}, [note("release.denied")]
    )
    assert states(denied) == {"nato-s": HoldState.APPROVED, "eu-s": HoldState.DENIED}
    target = denied.target("eu-s")
    assert target is not None and (target.decided_by, target.reason) == (OTHER, "sealed-reason")
    assert target_of(denied, "nato-s").decided_by == APPROVER
    assert audit(store, "release.denied") == [("release.denied", {"targets": ["eu-s"]})]
    assert not denied.is_pending

    # Denying again changes nothing and audits nothing; an approval now finds nothing held.
    assert store.deny_release(request.id, ["eu-s"], APPROVER, {}, [note("release.denied")]) == (
        denied
    )
    _, written = store.approve_release(request.id, [copy(request, "eu-s")], APPROVER)
    assert written == [] and len(audit(store, "release.denied")) == 1


def test_a_denial_of_some_targets_leaves_the_others_held(store: Store) -> None:
    request = hold(store)
    denied = store.deny_release(
        request.id, ["nato-s"], OTHER, {"nato-s": "r", "eu-s": "unused"}, [note("d")]
    )
    assert states(denied) == {"nato-s": HoldState.DENIED, "eu-s": HoldState.HELD}
    assert target_of(denied, "eu-s").reason is None


def test_expiry_takes_only_what_is_due_and_still_held(store: Store) -> None:
    early = hold(store, "$early:x", hours=1)
    late = hold(store, "$late:x", hours=8)
    decided = hold(store, "$decided:x", hours=1)
    store.deny_release(decided.id, None, OTHER, dict.fromkeys(TARGETS, "r"))
    assert store.due_releases(NOW + timedelta(minutes=59)) == []
    due = store.due_releases(NOW + timedelta(hours=1))
    assert [r.id for r in due] == [early.id]
    assert [r.id for r in store.due_releases(NOW + timedelta(hours=9))] == [early.id, late.id]

    assert store.expire_release(late.id, NOW + timedelta(hours=1), [note("release.expired")]) is (
        None
    )  # not due yet
    expired = store.expire_release(early.id, NOW + timedelta(hours=1), [note("release.expired")])
    assert states(expired) == dict.fromkeys(TARGETS, HoldState.EXPIRED)
    assert expired is not None and {t.decided_at for t in expired.targets} == {
        NOW + timedelta(hours=1)
    }
    assert {t.decided_by for t in expired.targets} == {None}
    assert audit(store, "release.expired") == [("release.expired", {"targets": sorted(TARGETS)})]
    # Twice (two sweeps), or on a decided request: nothing changes, nothing is audited.
    assert store.expire_release(early.id, NOW + timedelta(hours=2), [note("release.expired")]) is (
        None
    )
    assert store.expire_release(decided.id, NOW + timedelta(hours=2), [note("x")]) is None
    assert store.expire_release(early.id + 100, NOW + timedelta(hours=2), [note("x")]) is None
    assert len(audit(store, "release.expired")) == 1
    assert store.due_releases(NOW + timedelta(hours=2)) == []


def test_a_redaction_withdraws_what_is_still_held(store: Store) -> None:
    request = hold(store)
    store.approve_release(request.id, [copy(request, "nato-s")], APPROVER)
    withdrawn = store.withdraw_release(ITEM, [note("release.withdrawn")])
    assert states(withdrawn) == {"nato-s": HoldState.APPROVED, "eu-s": HoldState.WITHDRAWN}
    assert target_of(withdrawn, "eu-s").decided_at is not None
    assert audit(store, "release.withdrawn") == [("release.withdrawn", {"targets": ["eu-s"]})]
    assert store.withdraw_release(ITEM, [note("release.withdrawn")]) is None
    assert store.withdraw_release("$unknown", [note("release.withdrawn")]) is None
    assert len(audit(store, "release.withdrawn")) == 1


def test_an_edit_holds_again_with_the_new_copies(store: Store) -> None:
    request = hold(store)
    store.deny_release(request.id, ["nato-s"], OTHER, {"nato-s": "sealed-reason"})
    later = NOW + timedelta(hours=6)
    with pytest.raises(StoreError, match="no target fra-s"):
        store.rehold_release(ITEM, {"fra-s": "x"}, later, [note("release.reheld")])

    again = store.rehold_release(
        ITEM,
        {"nato-s": "edited-nato", "eu-s": "edited-eu"},
        later,
        [note("release.reheld")],
        label="DEU STRENG GEHEIM",
        rank=4,
    )
    assert again is not None and states(again) == dict.fromkeys(TARGETS, HoldState.HELD)
    for target in again.targets:
        assert target.content == f"edited-{target.target_key.split('-')[0]}"
        assert (target.decided_by, target.decided_at, target.reason) == (None, None, None)
    assert again.expires_at == later and again.held_at == NOW
    assert (again.label, again.scheme, again.rank) == ("DEU STRENG GEHEIM", "DEU", 4)
    assert audit(store, "release.reheld") == [("release.reheld", {"targets": sorted(TARGETS)})]
    assert store.release_request(request.id) == again


def test_an_edit_leaves_approved_copies_and_withdraws_held_targets_it_no_longer_names(
    store: Store,
) -> None:
    request = hold(store)
    store.approve_release(request.id, [copy(request, "nato-s")], APPROVER)
    # The edit goes to nato-s only: its approved copy is the relay's to edit; eu-s, held,
    # is withdrawn.
    edited = store.rehold_release(
        ITEM, {"nato-s": "edited"}, NOW + timedelta(hours=1), [note("release.reheld")]
    )
    assert states(edited) == {"nato-s": HoldState.APPROVED, "eu-s": HoldState.WITHDRAWN}
    assert target_of(edited, "nato-s").content == f"sealed-copy-{ITEM}-nato-s"
    # Nothing left to hold again: None, nothing audited; an unknown item: None.
    assert store.rehold_release(ITEM, {"nato-s": "x"}, NOW, [note("release.reheld")]) is None
    assert store.rehold_release("$unknown", {}, NOW, [note("release.reheld")]) is None
    assert len(audit(store, "release.reheld")) == 1


# -- listings -------------------------------------------------------------------------------


def test_pending_listings_and_counts(store: Store) -> None:
    assert store.pending_releases() == [] and store.pending_release_count() == 0
    assert store.held_item_ids() == set()
    second = hold(store, "$second:x", held_at=NOW + timedelta(minutes=5))
    first = hold(store, "$first:x", held_at=NOW)
    done = hold(store, "$done:x", held_at=NOW - timedelta(hours=1))
    store.deny_release(done.id, None, OTHER, dict.fromkeys(TARGETS, "r"))
    store.approve_release(second.id, [copy(second, "nato-s")], APPROVER)
    assert [r.id for r in store.pending_releases()] == [first.id, second.id]
    assert store.pending_release_count() == 2
    assert store.held_item_ids() == {"$first:x", "$second:x"}
    assert store.held_item_ids("nato-s") == {"$first:x"}
    assert store.held_item_ids("eu-s") == {"$first:x", "$second:x"}
    assert store.held_item_ids("deu") == set()


# -- sealing contexts -----------------------------------------------------------------------


def test_the_sealing_contexts_bind_item_and_target() -> None:
    key = "data-key-" + "k" * 40
    sealed = hold_sealer(key).seal_text("{}", hold_binding(ITEM, "nato-s", TARGETS["nato-s"]))
    assert hold_sealer(key).open_text(sealed, hold_binding(ITEM, "nato-s", TARGETS["nato-s"]))
    for wrong in (
        hold_binding(ITEM, "eu-s", TARGETS["nato-s"]),
        hold_binding("$other", "nato-s", TARGETS["nato-s"]),
        hold_binding(ITEM, "nato-s", "!elsewhere:x"),
    ):
        with pytest.raises(SealError):
            hold_sealer(key).open_text(sealed, wrong)
    with pytest.raises(SealError):  # another purpose's key
        reason_sealer(key).open_text(sealed, hold_binding(ITEM, "nato-s", TARGETS["nato-s"]))
    reason = reason_sealer(key).seal_text("not now", reason_binding(ITEM, "eu-s"))
    assert reason_sealer(key).open_text(reason, reason_binding(ITEM, "eu-s")) == "not now"
    with pytest.raises(SealError):
        reason_sealer(key).open_text(reason, reason_binding(ITEM, "nato-s"))


# -- the migration --------------------------------------------------------------------------


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names())
    finally:
        engine.dispose()


def test_revision_0017_goes_up_and_down_and_up(database_url: str) -> None:
    tables = {"release_requests", "release_targets"}
    assert upgrade(database_url, "0016") == "0016"
    assert not tables & _tables(database_url)
    assert upgrade(database_url) == "0017"
    assert tables <= _tables(database_url)
    store = Store.from_url(database_url)
    try:
        hold(store)
    finally:
        store.close()
    command.downgrade(alembic_config(database_url), "0016")
    assert current_revision(database_url) == "0016"
    assert not tables & _tables(database_url)
    assert upgrade(database_url) == "0017"
    store = Store.from_url(database_url)
    try:
        assert store.pending_releases() == []  # the held rows went with the tables
        assert hold(store).is_pending
    finally:
        store.close()
