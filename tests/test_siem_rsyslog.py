"""The audit export against a real rsyslog (tests/siem_harness.py): the exporter driven
directly against a store (SQLite, and PostgreSQL where a server is reachable), no Matrix.

What is checked each time: the receiver's file holds the MSG of every audit row, once
each, in id order — compared with what the formatting half renders for those rows — and
the cursor stands at the newest row. The file is read as soon as the cursor has moved:
rsyslog writes a message before it reads on (Direct queue), so a confirmed batch must be in
the file already.
"""

from __future__ import annotations

import asyncio
import shutil
import signal
import time
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from bot.devtools.testca import TestCA
from bot.siem import syslog_severity
from bot.siem.exporter import Exporter, ExportSettings
from bot.siem.syslog import Origin
from bot.siem.transport import Confirmation, Delivery, TlsSyslog, TlsTarget
from bot.siem.wiring import formatter
from bot.storage import SiemPosition, Store, audit_key_from
from bot.storage.migrate import upgrade
from bot.storage.models import GENESIS_HASH
from commands.document import Document, render_plain
from tests.siem_harness import Rsyslog, require_rsyslog

DEADLINE_S = 30.0
OUTAGE_S = 10.0


@dataclass
class Pki:
    ca: TestCA
    server: tuple[Path, Path]
    client: tuple[Path, Path]
    other_ca: TestCA
    foreign_client: tuple[Path, Path]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    require_rsyslog()
    root = tmp_path_factory.mktemp("siem-pki")
    ca, other = TestCA.create(root / "ca"), TestCA.create(root / "other-ca")
    return Pki(
        ca,
        ca.issue("server", root / "certs"),
        ca.issue("client", root / "certs"),
        other,
        other.issue("foreign", root / "certs"),
    )


def _receiver(pki: Pki, folder: Path, auth_mode: str = "anon") -> Iterator[Rsyslog]:
    receiver = Rsyslog(folder, *pki.server, pki.ca.ca_path, auth_mode=auth_mode)
    receiver.start()
    try:
        yield receiver
    finally:
        receiver.stop()


@pytest.fixture
def receiver(pki: Pki, tmp_path: Path) -> Iterator[Rsyslog]:
    yield from _receiver(pki, tmp_path / "rsyslog")


@pytest.fixture
def strict_receiver(pki: Pki, tmp_path: Path) -> Iterator[Rsyslog]:
    """One that requires a client certificate from the test CA."""
    yield from _receiver(pki, tmp_path / "rsyslog-x509", "x509/certvalid")


@pytest.fixture
def store(database_url: str) -> Iterator[Store]:
    upgrade(database_url)
    opened = Store.from_url(database_url, audit_key_from("k" * 32))
    yield opened
    opened.close()


@dataclass
class Running:
    exporter: Exporter
    task: asyncio.Task[None]
    alerts: list[str]

    async def stop(self) -> None:
        self.task.cancel()
        await asyncio.gather(self.task, return_exceptions=True)


@pytest.fixture
async def export(store: Store, pki: Pki) -> AsyncIterator[Callable[..., Running]]:
    running: list[Running] = []

    def start(receiver: Rsyslog, **changes: Any) -> Running:
        alerts: list[str] = []

        async def alert(document: Document) -> None:
            alerts.append(render_plain(document))

        target = TlsTarget(
            "127.0.0.1",
            receiver.port,
            changes.pop("server_name", "localhost"),
            changes.pop("ca_file", pki.ca.ca_path),
            changes.pop("cert_file", None),
            changes.pop("key_file", None),
            timeout=5.0,
        )
        settings = ExportSettings(
            target=f"127.0.0.1:{receiver.port}", **{"batch": 10, "retry_max": 1.0, **changes}
        )
        exporter = Exporter(
            settings,
            store,
            TlsSyslog(target),
            formatter("ocsf", "level"),
            syslog_severity,
            Origin.local("liaison-test"),
            alert,
        )
        one = Running(exporter, asyncio.ensure_future(exporter.run()), alerts)
        running.append(one)
        return one

    yield start
    for one in running:
        await one.stop()


def write_events(store: Store, first: int, count: int) -> None:
    for n in range(first, first + count):
        store.append_audit("@officer:example.org", "test.event", f"event-{n}", {"n": n})


def newest(store: Store) -> int:
    last = store.recent_audit(1)
    return last[0].id if last else 0


def expected(store: Store) -> list[str]:
    """What rsyslog should hold: every audit row rendered, in id order."""
    installation = store.siem_installation()
    render = formatter("ocsf", "level")
    return [render(row.entry, installation).body for row in store.audit_after(0, 1_000_000)]


async def until(check: Callable[[], bool], what: str, timeout: float = DEADLINE_S) -> None:
    """Wait (polling the database) until `check` holds; fail naming `what` at the deadline."""
    deadline = time.monotonic() + timeout
    while not await asyncio.to_thread(check):
        assert time.monotonic() < deadline, f"not within {timeout:g} s: {what}"
        await asyncio.sleep(0.05)


def delivered_all(store: Store) -> Callable[[], bool]:
    def check() -> bool:
        cursor = store.siem_cursor()
        return (
            cursor is not None
            and cursor.position is not None
            and cursor.position.last_id == newest(store)
            and cursor.failures == 0
        )

    return check


def failed(store: Store, times: int = 1) -> Callable[[], bool]:
    def check() -> bool:
        cursor = store.siem_cursor()
        return cursor is not None and cursor.failures >= times

    return check


def actions(store: Store, action: str) -> int:
    return sum(1 for row in store.audit_after(0, 1_000_000) if row.entry.action == action)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGKILL], ids=["sigterm", "sigkill"])
async def test_a_receiver_stopped_for_ten_seconds_loses_nothing(
    store: Store, receiver: Rsyslog, export: Callable[..., Running], sig: signal.Signals
) -> None:
    write_events(store, 0, 50)
    running = export(receiver)
    await until(delivered_all(store), "the first 50 events delivered")
    assert receiver.lines() == expected(store)

    receiver.stop(sig)
    for second in range(int(OUTAGE_S)):  # the other 50 come during the outage
        write_events(store, 50 + 5 * second, 5)
        await asyncio.sleep(1)
    cursor = store.siem_cursor()
    assert cursor is not None and cursor.failures >= 2, cursor
    assert "cannot connect" in (cursor.last_error or ""), cursor.last_error
    assert actions(store, "siem.unreachable") == 1  # one per outage, not per retry

    receiver.start()
    await until(delivered_all(store), "the backlog drained after the receiver came back")
    lines = receiver.lines()
    assert lines == expected(store)  # every row once, in order, the outage's rows too
    assert actions(store, "test.event") == 100
    assert actions(store, "siem.unreachable") == actions(store, "siem.recovered") == 1
    # rsyslog's ossl driver answers our close_notify with its own: every batch so confirmed
    confirmed = running.exporter.confirmations
    assert confirmed[Confirmation.CLOSE_NOTIFY] >= 11 and confirmed[Confirmation.CLOSED] == 0


async def test_the_wrong_ca_sends_nothing_until_it_is_fixed(
    store: Store, receiver: Rsyslog, export: Callable[..., Running], pki: Pki, tmp_path: Path
) -> None:
    ca_file = tmp_path / "siem-ca.pem"
    shutil.copy(pki.other_ca.ca_path, ca_file)  # not the CA the receiver's certificate is from
    write_events(store, 0, 25)
    export(receiver, ca_file=ca_file)
    await until(failed(store, 3), "three refused attempts")
    cursor = store.siem_cursor()
    assert cursor is not None
    assert cursor.position == SiemPosition(0, GENESIS_HASH)  # unchanged
    assert "the receiver's certificate was refused" in (cursor.last_error or "")
    assert receiver.lines() == []  # nothing was written to it

    shutil.copy(pki.ca.ca_path, ca_file)  # fixed on disk: read again at the next attempt
    await until(delivered_all(store), "the backlog drained once the CA was fixed")
    assert receiver.lines() == expected(store)
    assert actions(store, "siem.unreachable") == actions(store, "siem.recovered") == 1


async def test_a_server_name_the_certificate_does_not_carry_is_refused(
    store: Store, receiver: Rsyslog, export: Callable[..., Running], pki: Pki
) -> None:
    write_events(store, 0, 5)
    export(receiver, server_name="siem.example.org")
    await until(failed(store, 2), "two refused attempts")
    cursor = store.siem_cursor()
    assert cursor is not None and cursor.position == SiemPosition(0, GENESIS_HASH)
    assert "expected name 'siem.example.org'" in (cursor.last_error or "")
    # the receiver is up and took nothing: a message under the right name is all it holds
    marker = b"<86>1 - - - - - - marker"
    target = TlsTarget("127.0.0.1", receiver.port, "localhost", pki.ca.ca_path)
    assert Delivery(target, b"%d %s" % (len(marker), marker)).run() is Confirmation.CLOSE_NOTIFY
    assert receiver.lines() == ["marker"]


async def test_an_exporter_restarted_mid_backlog_resumes_from_the_cursor(
    store: Store, receiver: Rsyslog, export: Callable[..., Running]
) -> None:
    write_events(store, 0, 300)
    first = export(receiver)

    def halfway() -> bool:
        cursor = store.siem_cursor()
        return bool(cursor and cursor.position and cursor.position.last_id >= 100)

    await until(halfway, "a third of the backlog delivered")
    await first.stop()  # the batch on the wire finishes and moves the cursor first
    cursor = store.siem_cursor()
    assert cursor is not None and cursor.position is not None
    stopped_at = cursor.position.last_id
    assert stopped_at < newest(store)
    everything = expected(store)
    lines = receiver.lines()
    assert lines == everything[: len(lines)]
    assert len(lines) == sum(1 for row in store.audit_after(0, stopped_at))

    export(receiver)
    await until(delivered_all(store), "the rest delivered by the new exporter")
    assert receiver.lines() == expected(store)  # no row twice: each batch was confirmed


async def test_a_client_certificate_from_the_receivers_ca_is_taken(
    store: Store, strict_receiver: Rsyslog, export: Callable[..., Running], pki: Pki
) -> None:
    write_events(store, 0, 12)
    cert, key = pki.client
    export(strict_receiver, cert_file=cert, key_file=key)
    await until(delivered_all(store), "delivered with a client certificate")
    assert strict_receiver.lines() == expected(store)


async def test_a_client_certificate_the_receiver_refuses_sends_nothing(
    store: Store, strict_receiver: Rsyslog, export: Callable[..., Running], pki: Pki
) -> None:
    """Under TLS 1.2 (the cap with a client certificate) the refusal fails the handshake."""
    write_events(store, 0, 12)
    cert, key = pki.foreign_client
    export(strict_receiver, cert_file=cert, key_file=key)
    await until(failed(store, 2), "two refused attempts")
    cursor = store.siem_cursor()
    assert cursor is not None and cursor.position == SiemPosition(0, GENESIS_HASH)
    assert "TLS handshake" in (cursor.last_error or ""), cursor.last_error
    assert strict_receiver.lines() == []


async def test_an_outage_alerts_the_admins_once_after_alert_after(
    store: Store, receiver: Rsyslog, export: Callable[..., Running]
) -> None:
    receiver.stop()
    write_events(store, 0, 3)
    running = export(receiver, alert_after=1.0)
    await until(lambda: len(running.alerts) == 1, "the outage alert", timeout=10)
    assert "has not reached the SIEM" in running.alerts[0]
    assert "cannot connect" in running.alerts[0]
    await until(failed(store, 4), "more attempts")
    assert len(running.alerts) == 1  # once per outage
    receiver.start()
    await until(delivered_all(store), "delivered after the outage")
    await until(lambda: len(running.alerts) == 2, "the all-clear")
    assert "reaches the SIEM" in running.alerts[1]
    assert receiver.lines() == expected(store)


async def test_rows_another_process_writes_are_found_by_polling(
    store: Store, receiver: Rsyslog, export: Callable[..., Running], database_url: str
) -> None:
    """The CLI writes audit rows through its own store: no listener wakes the exporter."""
    export(receiver)
    await until(delivered_all(store), "an empty log 'delivered'")
    other = Store.from_url(database_url, audit_key_from("k" * 32))
    try:
        write_events(other, 0, 3)
    finally:
        other.close()
    await until(delivered_all(store), "the other process's rows delivered", timeout=5)
    assert receiver.lines() == expected(store)


async def test_a_receiver_killed_while_a_backlog_drains_loses_nothing(
    store: Store, receiver: Rsyslog, export: Callable[..., Running]
) -> None:
    """Killed with batches on the wire: a batch it was reading when it died is sent again
    whole (at least once), so rows may repeat, but none is missing and none comes early:
    read in order, each line is at most one past the furthest row seen so far."""
    write_events(store, 0, 1000)
    export(receiver, batch=50)

    def a_quarter() -> bool:
        cursor = store.siem_cursor()
        return bool(cursor and cursor.position and cursor.position.last_id >= 250)

    await until(a_quarter, "a quarter of the backlog delivered")
    receiver.stop(signal.SIGKILL)
    receiver.start()
    await until(delivered_all(store), "the backlog drained after the kill")
    everything = expected(store)
    index = {line: i for i, line in enumerate(everything)}
    furthest = -1
    for line in receiver.lines():
        at = index[line]
        assert at <= furthest + 1, f"row {at} came before row {furthest + 1}"
        furthest = max(furthest, at)
    assert furthest == len(everything) - 1
