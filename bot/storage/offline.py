"""Opening the bot's database for an offline command (the CLI): only an existing database at
the schema this code was written for, never created and never migrated, and read-only for
a command that only reads.

Why: a read pointed at a wrong path used to create a fresh database and answer "the register
is empty" with exit 0, and a read on a live database migrated it under a running older bot
and its homeserver gate. Only `liaison-bot db upgrade` creates or migrates (`migrate.py`).
"""

from __future__ import annotations

import hmac
import os
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from urllib.parse import quote

from sqlalchemy import Engine, func, select
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from bot.storage.models import (
    SCHEMA_HEAD,
    AuditHeadRow,
    AuditRow,
    BotSessionRow,
    ClearanceRow,
    RoomRow,
    make_engine,
)
from bot.storage.records import StoreError
from bot.storage.store import Store, audit_hash, head_seal_ok

# PostgreSQL: every transaction of a reading command's sessions is read-only, so the server
# itself refuses a write (an audit row, a row made again) rather than trusting our code.
READ_ONLY_OPTIONS = {"options": "-c liaison.epoch= -c default_transaction_read_only=on"}


class DatabaseRefused(StoreError):
    """The database cannot be used by an offline command as it is; `upgrade_helps` says
    whether `liaison-bot db upgrade` is the remedy (missing, or behind this code)."""

    def __init__(self, message: str, *, upgrade_helps: bool) -> None:
        super().__init__(message)
        self.upgrade_helps = upgrade_helps


class ReadOnlyStore(Store):
    """A store that never writes: a register row that does not verify is left out and
    noted in `refused` (for the command to report) instead of being audited, which a
    read-only session could not do."""

    def __init__(self, engine: Engine, audit_key: bytes | None = None) -> None:
        super().__init__(engine, audit_key)
        self.refused: list[tuple[str, str]] = []

    def _refuse(self, session: Session, kind: str, name: str, signature: str | None) -> None:
        if (kind, name) not in self.refused:  # the command names it, once (_report_refused)
            self.refused.append((kind, name))


def safe_url(url: str) -> str:
    """The URL as it may be shown: the password masked."""
    return make_url(url).render_as_string(hide_password=True)


def open_existing(url: str, audit_key: bytes | None = None, *, read_only: bool) -> Store:
    """The store of the database at `url`, which must exist and be at SCHEMA_HEAD: a
    `ReadOnlyStore` on a read-only connection (`read_only`), else a `Store`. Raises
    DatabaseRefused naming the database (password masked) and the revisions otherwise;
    nothing is created (no SQLite file, no table) and nothing is migrated."""
    shown = safe_url(url)
    parsed = make_url(url)
    if parsed.get_backend_name() == "sqlite":
        path = parsed.database
        if path in (None, "", ":memory:") or parsed.query.get("uri"):
            raise DatabaseRefused(
                f"database {shown}: an offline command needs a database file", upgrade_helps=False
            )
        if not os.path.isfile(str(path)):
            raise DatabaseRefused(
                f"there is no database at {path} (no such file; database_url {shown})",
                upgrade_helps=True,
            )
        if read_only:
            # mode=ro: SQLite opens the file read-only, so no write (nor a new file) can happen.
            # Quoted twice: SQLAlchemy unquotes the path once, SQLite's URI parser once more
            # (a '#' or '?' left bare would end the path there and drop mode=ro).
            absolute = quote(quote(str(Path(str(path)).absolute())))
            engine = make_engine(f"sqlite:///file:{absolute}?mode=ro&uri=true")
        else:
            engine = make_engine(url)
    else:
        engine = make_engine(url, (lambda: dict(READ_ONLY_OPTIONS)) if read_only else None)
    try:
        _check_revision(engine, shown)
    except BaseException:
        engine.dispose()
        raise
    return ReadOnlyStore(engine, audit_key) if read_only else Store(engine, audit_key)


def _check_revision(engine: Engine, shown: str) -> None:
    from bot.storage.migrate import is_known_revision, revision_of

    try:
        with engine.connect() as conn:
            revision = revision_of(conn)
    except SQLAlchemyError as exc:
        cause: BaseException = getattr(exc, "orig", None) or exc
        said = " ".join(str(cause).split())  # a driver's message may span lines: one line
        raise DatabaseRefused(
            f"cannot read database {shown}: {type(cause).__name__}: {said}", upgrade_helps=False
        ) from None
    if revision is None:
        raise DatabaseRefused(
            f"database {shown} holds no liaison-bot schema (no alembic_version table)",
            upgrade_helps=True,
        )
    if revision == SCHEMA_HEAD:
        return
    if is_known_revision(revision):
        raise DatabaseRefused(
            f"database {shown} is at revision {revision}, this liaison-bot needs {SCHEMA_HEAD}",
            upgrade_helps=True,
        )
    raise DatabaseRefused(
        f"database {shown} is at revision {revision}, written by a newer liaison-bot (this one "
        f"knows revisions up to {SCHEMA_HEAD}): use that version, or restore a backup made "
        "for this one",
        upgrade_helps=False,
    )


# ---------------------------------------------------------------- audit verify


class ChainStatus(StrEnum):
    INTACT = "intact"
    BROKEN = "broken"  # tampering (or damage) found: exit 1
    CANNOT_VERIFY = "cannot_verify"  # no verdict: the key is missing or does not fit: exit 2


@dataclass(frozen=True, slots=True)
class ChainCheck:
    status: ChainStatus
    entries: int
    message: str
    reason: str | None = None  # CANNOT_VERIFY: "no_key" or "wrong_key"


def check_chain(store: Store) -> ChainCheck:
    """`Store.verify_audit`, telling "this check cannot be made" apart from "broken".

    Without the data key a keyed log cannot be checked at all. When the key marker does
    not verify under the key given, either the key is not the one the log was written with,
    or someone changed the marker. The marker alone cannot tell the two apart, but the rows
    can: a row whose HMAC verifies under the key proves it is the right key (nobody without
    it can make one), so the marker was changed: broken. When no row verifies, the key is
    wrong, OR someone rewrote the marker and every keyed row; no check can tell those two
    apart, so the answer is "cannot verify" (never intact), and says so. Whatever someone
    with write access to the database does, the answer is never exit 0 for a changed log:
    at worst it is "cannot verify" (exit 2) instead of "broken" (exit 1)."""
    key = store.audit_key
    with store.session() as session:
        head = session.get(AuditHeadRow, 1)
        keyed_from = head.keyed_from if head is not None else None
        if head is not None and keyed_from is not None:
            if key is None:
                return ChainCheck(
                    ChainStatus.CANNOT_VERIFY,
                    0,
                    "the data key is not set, and the log is keyed with it",
                    "no_key",
                )
            if not head_seal_ok(head, key):
                verifying = _rows_verifying(session, key)
                if verifying:
                    return ChainCheck(
                        ChainStatus.BROKEN,
                        0,
                        f"the key marker was changed or the head moved ({verifying} row(s) "
                        "verify under this data key, so the key is right and the head is not: "
                        "its newest rows may have been deleted)",
                    )
                return ChainCheck(
                    ChainStatus.CANNOT_VERIFY,
                    0,
                    "the data key given does not open this log: neither its key marker nor "
                    "any row verifies under it. Either it is not the key the log was written "
                    "with, or someone rewrote the marker and every keyed row; this check "
                    "cannot tell the two apart. Run it again with the bot's data key; if it "
                    "still says this, treat the log as tampered with",
                    "wrong_key",
                )
        rows = session.scalar(select(func.count(AuditRow.id))) or 0
        unkeyed = keyed_from is None and rows != 0
        if rows == 0:
            # Every register change and the bot's first start write an audit row in the
            # same transaction: an empty log beside them was emptied.
            written = [
                what
                for what, model in (
                    ("clearances", ClearanceRow),
                    ("rooms", RoomRow),
                    ("the bot's session", BotSessionRow),
                )
                if session.scalar(select(func.count()).select_from(model)) != 0
            ]
            if written:
                return ChainCheck(
                    ChainStatus.BROKEN,
                    0,
                    f"the log is empty, but the database holds {', '.join(written)}, which "
                    "were audited when written: the log's rows were deleted",
                )
    verdict = store.verify_audit()
    if not verdict.intact:
        return ChainCheck(ChainStatus.BROKEN, verdict.entries, verdict.message)
    if unkeyed:
        # Rows hashed without the key prove nothing against someone with write access to
        # the database: they can delete the key marker (and the bot's session row) and
        # re-hash the whole log. A log the bot has written is always keyed (it keys it when
        # it starts), so an unkeyed one is either one only keyless CLI runs wrote, before
        # the bot ever ran on it, or one whose marker was removed: never "intact".
        return ChainCheck(
            ChainStatus.CANNOT_VERIFY,
            verdict.entries,
            f"the log's {verdict.entries} entries carry no key marker, so anyone with write "
            "access to the database could have rewritten them: either the bot has never run "
            "on this database (it keys the log when it starts; start it once), or someone "
            "removed the marker; if the bot has run here, treat the log as tampered with",
            "unkeyed",
        )
    return ChainCheck(ChainStatus.INTACT, verdict.entries, verdict.message)


def _rows_verifying(session: Session, key: bytes) -> int:
    """How many audit rows carry an HMAC under `key` (wherever the marker says keying
    began: someone who changed the marker may have moved it)."""
    count = 0
    for row in session.scalars(select(AuditRow).order_by(AuditRow.id)):
        if hmac.compare_digest(audit_hash(row, key), row.hash):
            count += 1
    return count
