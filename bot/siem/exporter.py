"""Every audit row to the SOC's SIEM: in order, at least once, nothing lost.

The audit log is the outbox. The exporter reads the rows after the cursor (`siem_cursor`:
the last row the SIEM confirmed, id and hash), at most `batch` of them, renders each
(`bot.siem.render`, the formatting half), writes them as RFC 5424 messages over one TLS
connection and confirms the batch (bot/siem/transport.py); only then does it move the
cursor, under a row lock and only if nobody moved it meanwhile. A batch that was not
confirmed is sent again, whole, after a backoff (0.2 s doubling to `retry_max`, jittered):
so the SIEM may see a row twice, never miss one, and sees them in order.

The bot never waits for the SIEM: the exporter is a task of its own, started after the
first sync on the active node only (a standby exports nothing; see bot/run.py), and
writing an audit row only wakes it (`Store.add_audit_listener`). Rows another process
writes (the CLI) are found by a poll each second.

An outage is audited once (`siem.unreachable` with the first error, `siem.recovered` with
its length), not per retry, in the same transactions as the cursor's failure count, so a
restart during an outage does not audit it again. The admins are alerted once when it has
lasted `alert_after`, and told when it ends. A batch that does not link to the cursor's
hash (rows changed or removed in the database since) is still sent, and reported once.

Stopping (the bot's close) lets the batch on the wire finish and move the cursor, for up
to STOP_GRACE_S, so that a restart does not send it again; past that it is cut short and
sent again by the next start.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Protocol

from bot.backoff import Backoff
from bot.metrics import Metrics
from bot.services.ports import HomeserverError
from bot.siem.syslog import Origin, SyslogError, frame, message, msgid_of
from bot.siem.transport import Confirmation, DeliveryError
from bot.storage import (
    AuditEntry,
    AuditNote,
    ChainedAudit,
    SiemCursor,
    SiemPosition,
    in_thread,
)
from commands.document import Document, doc, para

log = logging.getLogger(__name__)

ACTOR = "liaison-bot"
GATHER_S = 0.2  # how long a woken exporter lets new rows gather before it reads them
UNREACHABLE = "siem.unreachable"
RECOVERED = "siem.recovered"
CHAIN_BROKEN = "siem.chain-broken"
FIRST_RETRY_S = 0.2
POLL_S = 1.0  # how often rows written by another process are looked for
LAG_RECOUNT_S = 1.0  # the lag is counted in the database at most this often
STOP_GRACE_S = 5.0  # how long a stop lets the batch on the wire finish


class Rendering(Protocol):
    """What the formatting half makes of an audit entry (`bot.siem.Rendered`)."""

    @property
    def body(self) -> str: ...  # printable ASCII

    @property
    def severity_id(self) -> int: ...  # OCSF severity_id

    @property
    def time(self) -> datetime: ...

    @property
    def audit_id(self) -> int: ...


# (entry, installation id) -> its event: `bot.siem.render` with the format and markings bound.
Render = Callable[[AuditEntry, str], Rendering]
Alert = Callable[[Document], Awaitable[None]]


class Receiver(Protocol):
    """The SIEM's receiver (`TlsSyslog`): delivers one batch and confirms it, or raises
    DeliveryError saying why not."""

    async def deliver(self, payload: bytes) -> Confirmation: ...


class Outbox(Protocol):
    """The store's part the exporter needs (bot.storage.Store)."""

    def add_audit_listener(self, listener: Callable[[], None]) -> None: ...

    def remove_audit_listener(self, listener: Callable[[], None]) -> None: ...

    def start_siem_cursor(self, *, from_now: bool) -> SiemCursor: ...

    def siem_cursor(self) -> SiemCursor | None: ...

    def audit_after(
        self, after_id: int, limit: int, until_id: int | None = None
    ) -> list[ChainedAudit]: ...

    def audit_rows_after(self, after_id: int) -> int: ...

    def advance_siem_cursor(
        self, seen: SiemPosition, to: SiemPosition, recovered: AuditNote | None = None
    ) -> bool: ...

    def record_siem_failure(self, error: str, unreachable: AuditNote) -> SiemCursor: ...

    def append_audit(
        self,
        actor: str,
        action: str,
        subject: str | None = None,
        detail: dict[str, Any] | None = None,
        at: datetime | None = None,
    ) -> AuditEntry: ...


@dataclass(frozen=True)
class ExportSettings:
    target: str  # "host:port", for the audit rows and alerts
    batch: int = 200
    retry_max: float = 60.0
    alert_after: float = 600.0
    from_now: bool = False  # where a new cursor starts: after the newest row, or before all
    first_retry: float = FIRST_RETRY_S
    poll: float = POLL_S


class Exporter:
    def __init__(
        self,
        settings: ExportSettings,
        store: Outbox,
        receiver: Receiver,
        render: Render,
        severity: Callable[[int], int],
        origin: Origin,
        alert: Alert,
        metrics: Metrics | None = None,
        *,
        draw: Callable[[float, float], float] = random.uniform,
    ) -> None:
        self.settings = settings
        self.store = store
        self.receiver = receiver
        self.render = render
        self.severity = severity
        self.origin = origin
        self.alert = alert
        self.retry = Backoff(settings.first_retry, settings.retry_max, draw)
        self.confirmations: dict[Confirmation, int] = {c: 0 for c in Confirmation}
        self.lag_rows = -1.0  # -1 until counted
        self._delivered_at: float | None = None  # monotonic: confirmed, or nothing waiting
        self._counted_at = 0.0
        self._alerted = False
        self._reported: set[int] = set()  # rows whose broken link was reported
        self._wake = asyncio.Event()
        if metrics is not None:
            metrics.watch_siem(lambda: self.lag_rows, self.delivery_age)

    def delivery_age(self) -> float:
        """Seconds since a batch was last confirmed or nothing was found waiting (-1 before
        either): how long the audit has not been reaching the SOC."""
        at = self._delivered_at
        return -1.0 if at is None else time.monotonic() - at

    async def run(self) -> None:
        """Export until cancelled. A failure of the exporter itself (the database away) is
        logged and retried like an outage of the SIEM: the task never ends on its own."""
        loop = asyncio.get_running_loop()

        def wake() -> None:  # from the writer's thread; a loop closed since: nothing to wake
            with contextlib.suppress(RuntimeError):
                loop.call_soon_threadsafe(self._wake.set)

        self.store.add_audit_listener(wake)
        cursor: SiemCursor | None = None
        try:
            while True:
                try:
                    if cursor is None:
                        cursor = await in_thread(
                            self.store.start_siem_cursor, from_now=self.settings.from_now
                        )
                    cursor = await self._step(cursor)
                except Exception:
                    log.exception("SIEM export failed; trying again")
                    cursor = None
                    await asyncio.sleep(self.retry.next())
        finally:
            self.store.remove_audit_listener(wake)

    async def _step(self, cursor: SiemCursor) -> SiemCursor:
        """One batch (or a wait when there is none); returns the cursor as it now is."""
        position = cursor.position
        assert position is not None, "a started cursor has a position"
        self._wake.clear()  # before the read: a row committed after it wakes the wait below
        rows = await in_thread(self.store.audit_after, position.last_id, self.settings.batch)
        if not rows:
            self.lag_rows, self._delivered_at = 0.0, time.monotonic()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._wake.wait(), self.settings.poll)
                # Woken by a new row: let the rows a burst writes gather for a moment, so
                # they share one TLS connection instead of a handshake each (a relay burst
                # wrote 301 rows in 257 batches before).
                await asyncio.sleep(GATHER_S)
            return cursor
        await self._count_lag(position)
        await self._check_links(position, rows)
        try:
            payload = b"".join(frame(self._message(row, cursor.installation)) for row in rows)
        except SyslogError as exc:
            return await self._failed(cursor, rows, exc)
        sending = asyncio.ensure_future(self._send(cursor, rows, payload))
        try:
            outcome = await asyncio.shield(sending)
        except asyncio.CancelledError:
            # Stopping: the batch on the wire may finish and move the cursor, so that the
            # next start does not send it again; cut short after STOP_GRACE_S.
            _, pending = await asyncio.wait([sending], timeout=STOP_GRACE_S)
            if pending:
                sending.cancel()
                await asyncio.wait([sending])
            raise
        if isinstance(outcome, DeliveryError):
            return await self._failed(cursor, rows, outcome)
        return outcome

    async def _send(
        self, cursor: SiemCursor, rows: list[ChainedAudit], payload: bytes
    ) -> SiemCursor | DeliveryError:
        """Deliver one batch and, once confirmed, move the cursor past it: the cursor as it
        is then, or the DeliveryError that says why the batch was not confirmed."""
        position = cursor.position
        assert position is not None, "a started cursor has a position"
        try:
            how = await self.receiver.deliver(payload)
        except DeliveryError as exc:
            return exc
        moved_to = SiemPosition(rows[-1].entry.id, rows[-1].hash)
        recovered = self._recovered_note(cursor)
        if not await in_thread(self.store.advance_siem_cursor, position, moved_to, recovered):
            # Rewound (the CLI) or moved by another exporter while the batch was out: go on
            # from where the cursor is now (what was just sent may be sent again).
            log.warning("the SIEM cursor moved while a batch was sent; reading it again")
            current = await in_thread(self.store.siem_cursor)
            assert current is not None, "the cursor row exists once started"
            return current
        self.confirmations[how] += 1
        self.retry.reset()
        self._delivered_at = time.monotonic()
        self.lag_rows = max(0.0, self.lag_rows - len(rows))
        if cursor.failures:
            await self._recovered(cursor)
        return SiemCursor(cursor.installation, moved_to, datetime.now(UTC), 0, None, None)

    def _message(self, row: ChainedAudit, installation: str) -> bytes:
        entry = row.entry
        try:
            rendered = self.render(entry, installation)
        except Exception as exc:  # the formatting half's failure stops this row, named
            raise SyslogError(f"cannot be rendered: {type(exc).__name__}: {exc}") from exc
        try:
            return message(
                severity=self.severity(rendered.severity_id),
                at=rendered.time,
                msgid=msgid_of(entry.action),
                body=rendered.body,
                origin=self.origin,
            )
        except SyslogError as exc:
            raise SyslogError(f"audit row {entry.id} ({entry.action}): {exc}") from None

    async def _failed(
        self, cursor: SiemCursor, rows: list[ChainedAudit], exc: Exception
    ) -> SiemCursor:
        """Note the failure (audited once per outage), alert once it has lasted long enough,
        and wait out the backoff; the batch stays after the cursor, for the next attempt."""
        error = str(exc)
        if isinstance(exc, SyslogError) and "audit row" not in error:
            error = f"audit row {rows[0].entry.id}..{rows[-1].entry.id}: {error}"
        note = AuditNote(ACTOR, UNREACHABLE, self.settings.target, {"error": error})
        updated = await in_thread(self.store.record_siem_failure, error, note)
        if updated.failures == 1:
            log.warning("SIEM %s unreachable: %s", self.settings.target, error)
        else:
            log.info("SIEM %s: attempt %d failed: %s", self.settings.target, updated.failures,
                     error)  # fmt: skip
        await self._count_lag(cursor.position)
        since = updated.failing_since
        lasted = (datetime.now(UTC) - since).total_seconds() if since else 0.0
        if not self._alerted and lasted >= self.settings.alert_after:
            self._alerted = True
            await self._tell_admins(
                doc(
                    para(
                        f"⚠ The audit log has not reached the SIEM ({self.settings.target}) "
                        f"for {_span(lasted)}: {max(0, int(self.lag_rows))} row(s) are waiting "
                        "(none is lost: they are sent, in order, once a batch gets through)."
                    ),
                    para(f"Last error: {error}"),
                )
            )
        await asyncio.sleep(self.retry.next())
        return updated

    def _recovered_note(self, cursor: SiemCursor) -> AuditNote | None:
        if not cursor.failures:
            return None
        since = cursor.failing_since
        lasted = (datetime.now(UTC) - since).total_seconds() if since else 0.0
        return AuditNote(
            ACTOR,
            RECOVERED,
            self.settings.target,
            {"failures": cursor.failures, "outage_s": round(lasted, 1)},
        )

    async def _recovered(self, cursor: SiemCursor) -> None:
        log.warning("SIEM %s reachable again after %d failed attempt(s)", self.settings.target,
                    cursor.failures)  # fmt: skip
        if self._alerted:
            self._alerted = False
            await self._tell_admins(
                doc(para(f"The audit log reaches the SIEM ({self.settings.target}) again."))
            )

    async def _tell_admins(self, document: Document) -> None:
        try:
            await self.alert(document)
        except HomeserverError as exc:  # the audit rows say it all the same
            log.error("could not alert the admins about the SIEM: %s", exc)

    async def _count_lag(self, position: SiemPosition | None) -> None:
        """Count the rows waiting, at most once a LAG_RECOUNT_S (a count over a large
        backlog is not free); in between each confirmed batch takes its rows off."""
        now = time.monotonic()
        if position is None or now - self._counted_at < LAG_RECOUNT_S:
            return
        self._counted_at = now
        self.lag_rows = float(await in_thread(self.store.audit_rows_after, position.last_id))

    async def _check_links(self, position: SiemPosition, rows: list[ChainedAudit]) -> None:
        """Each row must link to the one before it, the first to the cursor's hash. A row that
        does not (rows changed or removed in the database since the last batch) is still sent
        (the SOC should see what is there) and reported once: logged and audited, and the
        audit row goes to the SIEM in its turn."""
        previous = position.last_hash
        for row in rows:
            if row.prev_hash != previous and row.entry.id not in self._reported:
                self._reported.add(row.entry.id)
                log.error("audit row %d does not link to the row before it", row.entry.id)
                await in_thread(
                    self.store.append_audit,
                    ACTOR,
                    CHAIN_BROKEN,
                    str(row.entry.id),
                    {"expected_prev_hash": previous, "prev_hash": row.prev_hash},
                )
            previous = row.hash


def _span(seconds: float) -> str:
    minutes = int(seconds // 60)
    return f"{minutes} min" if minutes else f"{int(seconds)} s"
