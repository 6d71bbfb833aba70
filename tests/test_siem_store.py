"""The SIEM cursor in the store (revision 0015): where it starts, how it moves (only from
where it was, under a row lock), how an outage is audited once, rewinds; on SQLite and
PostgreSQL. And the exporter's own bookkeeping against a receiver that fails on demand."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator

import pytest
from sqlalchemy import select

from bot.backoff import Backoff
from bot.siem import Rendered, syslog_severity
from bot.siem.exporter import Exporter, ExportSettings
from bot.siem.syslog import Origin
from bot.siem.transport import Confirmation, DeliveryError
from bot.siem.wiring import formatter
from bot.storage import AuditEntry, AuditNote, SiemCursorRow, SiemPosition, Store, StoreError
from bot.storage.migrate import upgrade
from bot.storage.models import GENESIS_HASH
from commands.document import Document

DOWN = AuditNote("liaison-bot", "siem.unreachable", "siem:6514", {"error": "down"})
BACK = AuditNote("liaison-bot", "siem.recovered", "siem:6514", {})


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    upgrade(database_url)
    opened = Store.from_url(database_url)
    yield opened
    opened.close()


def write(store: Store, count: int) -> None:
    for n in range(count):
        store.append_audit("@a:x", "test.event", str(n), {"n": n})


def actions(store: Store) -> list[str]:
    return [row.entry.action for row in store.audit_after(0, 10_000)]


def test_the_migration_makes_one_unstarted_row_with_an_installation_id(store: Store) -> None:
    cursor = store.siem_cursor()
    assert cursor is not None and cursor.position is None and cursor.failures == 0
    assert len(cursor.installation) == 36
    assert store.siem_installation() == cursor.installation  # kept, not made again


def test_a_new_cursor_starts_at_the_beginning_or_after_the_newest_row(
    database_url: str, store: Store
) -> None:
    write(store, 3)
    assert store.start_siem_cursor(from_now=False).position == SiemPosition(0, GENESIS_HASH)
    # a started cursor stays where it is, whatever `start` says now
    assert store.start_siem_cursor(from_now=True).position == SiemPosition(0, GENESIS_HASH)


def test_start_now_begins_after_the_newest_row(store: Store) -> None:
    write(store, 3)
    [newest] = store.audit_after(2, 10)
    assert store.start_siem_cursor(from_now=True).position == SiemPosition(3, newest.hash)
    assert store.audit_after(3, 10) == []


def test_rows_after_an_id_come_in_id_order_with_their_links(store: Store) -> None:
    write(store, 7)
    rows = store.audit_after(2, 3)
    assert [r.entry.id for r in rows] == [3, 4, 5]
    assert rows[1].prev_hash == rows[0].hash and rows[2].prev_hash == rows[1].hash
    assert [r.entry.id for r in store.audit_after(0, 100, until_id=4)] == [1, 2, 3, 4]
    assert store.audit_rows_after(2) == 5 and store.audit_rows_after(7) == 0


def test_the_cursor_moves_only_from_where_it_is(store: Store) -> None:
    write(store, 4)
    start = store.start_siem_cursor(from_now=False).position
    assert start is not None
    rows = store.audit_after(0, 2)
    two = SiemPosition(2, rows[-1].hash)
    assert store.advance_siem_cursor(start, two)
    assert not store.advance_siem_cursor(start, SiemPosition(4, "x"))  # from a stale place
    cursor = store.siem_cursor()
    assert cursor is not None and cursor.position == two and cursor.confirmed_at is not None


def test_an_outage_is_audited_once_and_its_end_once(store: Store) -> None:
    write(store, 2)
    start = store.start_siem_cursor(from_now=False).position
    assert start is not None
    for n in range(5):
        cursor = store.record_siem_failure(f"refused {n}", DOWN)
    assert cursor.failures == 5 and cursor.last_error == "refused 4"
    assert cursor.failing_since is not None
    assert actions(store).count("siem.unreachable") == 1
    [last] = store.audit_after(2, 10)
    assert store.advance_siem_cursor(start, SiemPosition(3, last.hash), BACK)
    cursor_now = store.siem_cursor()
    assert cursor_now is not None
    assert (cursor_now.failures, cursor_now.failing_since, cursor_now.last_error) == (0, None, None)
    assert actions(store).count("siem.recovered") == 1
    assert store.advance_siem_cursor(SiemPosition(3, last.hash), SiemPosition(3, last.hash), BACK)
    assert actions(store).count("siem.recovered") == 1  # no outage, no row


def test_a_rewind_resends_and_is_audited(store: Store) -> None:
    write(store, 5)
    start = store.start_siem_cursor(from_now=False).position
    assert start is not None
    rows = store.audit_after(0, 5)
    assert store.advance_siem_cursor(start, SiemPosition(5, rows[-1].hash))
    cursor = store.rewind_siem_cursor("cli:ops", 2)
    assert cursor.position == SiemPosition(2, rows[1].hash)
    *_, rewound = store.audit_after(0, 100)
    assert (rewound.entry.actor, rewound.entry.action, rewound.entry.detail) == (
        "cli:ops",
        "siem.rewound",
        {"from": 5, "to": 2},
    )
    assert store.rewind_siem_cursor("cli:ops", 0).position == SiemPosition(0, GENESIS_HASH)


@pytest.mark.parametrize(
    ("to", "why"),
    [
        (9, "after the cursor"),
        (-1, "start at 1"),
    ],
)
def test_a_rewind_never_skips_and_names_a_bad_row(store: Store, to: int, why: str) -> None:
    write(store, 5)
    start = store.start_siem_cursor(from_now=False).position
    assert start is not None
    rows = store.audit_after(0, 3)
    assert store.advance_siem_cursor(start, SiemPosition(3, rows[-1].hash))
    with pytest.raises(StoreError, match=why):
        store.rewind_siem_cursor("cli:ops", to)
    assert "siem.rewound" not in actions(store)


def test_a_rewind_to_a_row_that_is_not_there_is_refused(store: Store) -> None:
    write(store, 3)
    store.start_siem_cursor(from_now=False)
    with store.session() as session:  # a gap: an id that never committed (PostgreSQL)
        from bot.storage import AuditRow

        session.delete(session.get(AuditRow, 2))
    store.advance_siem_cursor(SiemPosition(0, GENESIS_HASH), SiemPosition(3, "h"))
    with pytest.raises(StoreError, match="no audit row with that id"):
        store.rewind_siem_cursor("cli:ops", 2)


def test_two_movers_from_one_place_cannot_both_pass(database_url: str, store: Store) -> None:
    """The row lock: one mover holds the cursor row while another tries; the second finds
    it moved and changes nothing (on SQLite the write lock does the same)."""
    write(store, 4)
    start = store.start_siem_cursor(from_now=False).position
    assert start is not None
    rows = store.audit_after(0, 4)
    other = Store.from_url(database_url)
    holding, tried = threading.Event(), threading.Event()
    outcome: list[bool] = []

    def second() -> None:
        holding.wait(5)
        tried.set()
        outcome.append(other.advance_siem_cursor(start, SiemPosition(4, rows[3].hash)))

    thread = threading.Thread(target=second)
    thread.start()
    try:
        with store.session() as session:
            row = session.scalar(
                select(SiemCursorRow).where(SiemCursorRow.id == 1).with_for_update()
            )
            assert row is not None
            holding.set()
            tried.wait(5)
            thread.join(0.3)  # it waits for our lock (it does not get past it while we hold it)
            assert thread.is_alive()
            row.last_id, row.last_hash = 2, rows[1].hash
        thread.join(10)
    finally:
        other.close()
    assert outcome == [False]
    cursor = store.siem_cursor()
    assert cursor is not None and cursor.position == SiemPosition(2, rows[1].hash)


def test_audit_listeners_hear_of_committed_audit_rows_only(store: Store) -> None:
    heard: list[int] = []

    def listener() -> None:
        heard.append(1)

    store.add_audit_listener(listener)
    store.append_audit("@a:x", "one")
    store.grant("@admin:x", "@u:x", "NATO", "NATO SECRET", 3, nationality="DEU")  # with a row
    store.save_direct_room("@u:x", "!dm:x")  # no audit row
    with pytest.raises(RuntimeError), store.session() as session:
        from bot.storage import append_audit

        append_audit(session, "@a:x", "rolled-back")
        raise RuntimeError("rolled back")
    assert heard == [1, 1]
    store.remove_audit_listener(listener)
    store.append_audit("@a:x", "two")
    assert heard == [1, 1]


# ---------------------------------------------------------------- the exporter's bookkeeping


class Flaky:
    """A receiver that fails while `down`, records what it was given otherwise."""

    def __init__(self) -> None:
        self.down = True
        self.payloads: list[bytes] = []
        self.attempts = 0

    async def deliver(self, payload: bytes) -> Confirmation:
        self.attempts += 1
        if self.down:
            raise DeliveryError("cannot connect to siem:6514: Connection refused")
        self.payloads.append(payload)
        return Confirmation.CLOSE_NOTIFY


def exporter(store: Store, receiver: Flaky, alerts: list[Document], **changes: object) -> Exporter:
    async def alert(document: Document) -> None:
        alerts.append(document)

    settings = ExportSettings(
        **{"target": "siem:6514", "batch": 3, "retry_max": 0.05, "first_retry": 0.01, **changes}  # type: ignore[arg-type]  # the fields, as keywords
    )
    return Exporter(
        settings,
        store,
        receiver,
        formatter("cef", "level"),
        syslog_severity,
        Origin("h", "1", "0"),
        alert,
    )


async def until(check: object, timeout: float = 10.0) -> None:
    assert callable(check)
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not await asyncio.to_thread(check):
        assert loop.time() < deadline, "not in time"
        await asyncio.sleep(0.02)


def bodies(payloads: list[bytes]) -> list[str]:
    """The MSG of every message in these octet-counted frames, in order."""
    out = []
    for data in payloads:
        while data:
            count, _, rest = data.partition(b" ")
            message, data = rest[: int(count)], rest[int(count) :]
            out.append(message.split(b'"] ', 1)[1].decode("ascii"))  # after [origin …]
    return out


def expected(store: Store) -> list[str]:
    render, installation = formatter("cef", "level"), store.siem_installation()
    return [render(row.entry, installation).body for row in store.audit_after(0, 10_000)]


def failures(store: Store) -> int:
    cursor = store.siem_cursor()
    return cursor.failures if cursor is not None else 0


def drained(store: Store) -> bool:
    cursor = store.siem_cursor()
    last = store.recent_audit(1)
    return bool(cursor and cursor.position and last and cursor.position.last_id == last[0].id) and (
        cursor is not None and cursor.failures == 0
    )


async def test_retries_back_off_and_an_outage_is_audited_once(store: Store) -> None:
    write(store, 7)
    receiver, alerts = Flaky(), list[Document]()
    running = asyncio.ensure_future(exporter(store, receiver, alerts).run())
    try:
        await until(lambda: receiver.attempts >= 6)
        assert actions(store).count("siem.unreachable") == 1
        receiver.down = False
        await until(lambda: drained(store))
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
    assert actions(store).count("siem.recovered") == 1
    # batches of at most 3, in order, each row once
    assert bodies(receiver.payloads) == expected(store)
    assert all(len(bodies([p])) <= 3 for p in receiver.payloads)
    assert alerts == []  # the outage was shorter than alert_after


async def test_a_row_that_cannot_be_sent_stops_the_export_there_and_says_why(
    store: Store,
) -> None:
    store.append_audit("@a:x", "test.event", None, {"text": "fine"})
    store.append_audit("@a:x", "test.event", "umlaut", {"text": "Grüße"})
    receiver, alerts = Flaky(), list[Document]()
    receiver.down = False

    cef = formatter("cef", "level")

    def ascii_only(entry: AuditEntry, installation: str) -> Rendered:
        rendered = cef(entry, installation)
        # a formatter that lets a non-ASCII character through (the real one escapes it)
        body = rendered.body + (" cs6=ü" if entry.subject == "umlaut" else "")
        return Rendered(body, 1, rendered.time, rendered.audit_id)

    export = exporter(store, receiver, alerts)
    export.render = ascii_only
    running = asyncio.ensure_future(export.run())
    try:
        await until(lambda: failures(store) >= 2)
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
    cursor = store.siem_cursor()
    assert cursor is not None and cursor.position == SiemPosition(0, GENESIS_HASH)
    assert "audit row 2 (test.event): MSG: must be printable ASCII" in (cursor.last_error or "")
    assert receiver.payloads == []  # the batch holding it is not sent at all


async def test_a_broken_link_is_sent_all_the_same_and_reported_once(store: Store) -> None:
    write(store, 4)
    from sqlalchemy import update

    from bot.storage import AuditRow

    with store.session() as session:  # someone rewrote row 3's link in the database
        session.execute(update(AuditRow).where(AuditRow.id == 3).values(prev_hash="f" * 64))
    receiver, alerts = Flaky(), list[Document]()
    receiver.down = False
    running = asyncio.ensure_future(exporter(store, receiver, alerts).run())
    try:
        await until(lambda: drained(store))
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
    broken = [r.entry for r in store.audit_after(0, 100) if r.entry.action == "siem.chain-broken"]
    assert [(e.subject, e.detail["prev_hash"]) for e in broken] == [("3", "f" * 64)]
    assert bodies(receiver.payloads) == expected(store)  # row 3 among them


def test_the_retry_delays_double_to_the_cap_with_jitter() -> None:
    top = Backoff(0.2, 60.0, lambda a, b: b)
    assert [round(top.next(), 3) for _ in range(12)] == [
        0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 25.6, 51.2, 60.0, 60.0, 60.0
    ]  # fmt: skip
    bottom = Backoff(0.2, 60.0, lambda a, b: a)
    assert bottom.next() == pytest.approx(0.16)
    for _ in range(10_000):  # an outage of days: the exponent stops growing
        bottom.next()
    assert bottom.next() == pytest.approx(48.0)
    top.reset()
    assert top.next() == 0.2


def test_delivery_age_and_lag_are_unknown_before_anything_happened(store: Store) -> None:
    export = exporter(store, Flaky(), [])
    assert export.delivery_age() == -1.0 and export.lag_rows == -1.0


async def test_the_metrics_show_the_lag_and_the_time_since_the_last_delivery(
    store: Store,
) -> None:
    from bot.metrics import Metrics

    metrics = Metrics(lambda: None)

    def sample(name: str) -> float | None:
        return metrics.registry.get_sample_value(name)

    assert sample("liaison_siem_lag_rows") == sample("liaison_siem_last_delivery_seconds") == -1
    write(store, 8)
    receiver, alerts = Flaky(), list[Document]()
    export = exporter(store, receiver, alerts)
    metrics.watch_siem(lambda: export.lag_rows, export.delivery_age)
    running = asyncio.ensure_future(export.run())
    try:
        await until(lambda: receiver.attempts >= 2)
        lag = sample("liaison_siem_lag_rows")  # counted while it cannot deliver (8, and
        assert lag is not None and lag >= 8  # the unreachable row once counted again)
        assert sample("liaison_siem_last_delivery_seconds") == -1
        receiver.down = False
        await until(lambda: drained(store))
        await until(lambda: sample("liaison_siem_lag_rows") == 0)
        age = sample("liaison_siem_last_delivery_seconds")
        assert age is not None and 0 <= age < 5
    finally:
        running.cancel()
        await asyncio.gather(running, return_exceptions=True)
