"""Migrations build the schema the models describe; the audit chain detects tampering."""

from __future__ import annotations

from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import delete, inspect, select, update

from bot.storage import AuditHeadRow, AuditRow, Base, Store, make_engine
from bot.storage.migrate import head_revision, upgrade


def test_upgrade_creates_every_table_on_an_empty_database(database_url: str) -> None:
    assert upgrade(database_url) == head_revision()
    engine = make_engine(database_url)
    try:
        tables = set(inspect(engine).get_table_names())
    finally:
        engine.dispose()
    assert set(Base.metadata.tables) <= tables


def test_a_start_knows_the_schema_is_current_without_alembic(
    database_url: str, tmp_path: Path
) -> None:
    """`run` skips loading Alembic when the database is at SCHEMA_HEAD, so the constant must
    be the migrations' head; any other state (new, behind, missing) means migrate."""
    from bot.storage import schema_is_current
    from bot.storage.models import SCHEMA_HEAD

    assert head_revision() == SCHEMA_HEAD
    assert not schema_is_current(f"sqlite:///{tmp_path / 'nowhere' / 'bot.db'}")
    assert not (tmp_path / "nowhere").exists()  # asking made nothing
    upgrade(database_url, "0009")
    assert not schema_is_current(database_url)
    upgrade(database_url)
    assert schema_is_current(database_url)


def test_models_and_migrations_agree(database_url: str) -> None:
    upgrade(database_url)
    engine = make_engine(database_url)
    try:
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            diff = compare_metadata(ctx, Base.metadata)
    finally:
        engine.dispose()
    assert diff == []


def test_upgrade_twice_changes_nothing(database_url: str) -> None:
    first = upgrade(database_url)
    assert upgrade(database_url) == first


def _store(url: str) -> Store:
    upgrade(url)
    return Store.from_url(url)


def test_audit_chain_verifies_when_untouched(database_url: str) -> None:
    store = _store(database_url)
    try:
        assert store.verify_audit().intact  # empty log
        for i in range(5):
            store.append_audit(
                "@admin:example.org",
                "clearance.grant",
                f"@u{i}:example.org",
                {"level": "NATO SECRET"},
            )
        verdict = store.verify_audit()
        assert verdict.intact and verdict.entries == 5
        assert [e.subject for e in store.recent_audit(2)] == ["@u4:example.org", "@u3:example.org"]
    finally:
        store.close()


def test_audit_detects_a_modified_row(database_url: str) -> None:
    store = _store(database_url)
    try:
        for i in range(3):
            store.append_audit("@a:x", "invite", f"@u{i}:x")
        with store.session() as s:
            s.execute(update(AuditRow).where(AuditRow.id == 2).values(subject="@someone-else:x"))
        verdict = store.verify_audit()
        assert not verdict.intact and "row 2" in verdict.message
    finally:
        store.close()


def test_audit_detects_a_deleted_middle_row(database_url: str) -> None:
    store = _store(database_url)
    try:
        for i in range(3):
            store.append_audit("@a:x", "invite", f"@u{i}:x")
        with store.session() as s:
            s.execute(delete(AuditRow).where(AuditRow.id == 2))
        verdict = store.verify_audit()
        assert not verdict.intact and "row 3" in verdict.message
    finally:
        store.close()


def test_audit_detects_a_deleted_newest_row(database_url: str) -> None:
    store = _store(database_url)
    try:
        for i in range(3):
            store.append_audit("@a:x", "invite", f"@u{i}:x")
        with store.session() as s:
            s.execute(delete(AuditRow).where(AuditRow.id == 3))
        verdict = store.verify_audit()
        assert not verdict.intact and "newest rows missing" in verdict.message
    finally:
        store.close()


def test_audit_detects_a_rewritten_head(database_url: str) -> None:
    store = _store(database_url)
    try:
        store.append_audit("@a:x", "invite", "@u:x")
        with store.session() as s:
            s.execute(update(AuditHeadRow).values(hash="f" * 64))
        assert not store.verify_audit().intact
    finally:
        store.close()


def test_concurrent_audit_appends_keep_the_chain(database_url: str) -> None:
    """Two writers (bot and CLI) appending at once must serialise, not fork the chain."""
    from concurrent.futures import ThreadPoolExecutor

    upgrade(database_url)
    stores = [Store.from_url(database_url) for _ in range(2)]
    try:

        def write(n: int) -> None:
            for i in range(15):
                stores[n].append_audit(f"@writer{n}:x", "test", f"{i}")

        with ThreadPoolExecutor(2) as pool:
            list(pool.map(write, [0, 1]))
        verdict = stores[0].verify_audit()
        assert verdict.intact and verdict.entries == 30
    finally:
        for store in stores:
            store.close()


def test_sync_token_round_trip(database_url: str) -> None:
    store = _store(database_url)
    try:
        assert store.sync_token() is None
        store.save_sync_token("s1_2_3")
        store.save_sync_token("s4_5_6")
        assert store.sync_token() == "s4_5_6"
    finally:
        store.close()


def test_a_keyed_log_detects_a_rewrite_with_recomputed_hashes(database_url: str) -> None:
    """Issue 14, finding 9: with write access to the database (not the data key) one can
    rewrite a row and recompute every SHA-256 link and the head; the keyed chain says so."""
    from bot.storage import audit_hash, audit_key_from

    store = _store(database_url)
    store.audit_key = audit_key_from("the-data-key-of-at-least-32-characters")
    try:
        store.key_audit_log()
        for i in range(3):
            store.append_audit("@a:x", "invite", f"@u{i}:x")
        assert store.verify_audit().intact
        with store.session() as s:  # the attacker: rewrite row 3, re-chain, move the head
            rows = list(s.scalars(select(AuditRow).order_by(AuditRow.id)))
            rows[2].subject = "@someone-else:x"
            prev = rows[1].hash
            for row in rows[2:]:
                row.prev_hash, row.hash = prev, audit_hash(row)
                prev = row.hash
            s.execute(update(AuditHeadRow).values(hash=prev, keyed_from=None, key_seal=None))
        verdict = store.verify_audit()
        assert not verdict.intact
        with store.session() as s:  # or leave the marker and re-hash with plain SHA-256
            s.execute(update(AuditHeadRow).values(keyed_from=1))
        assert not store.verify_audit().intact
    finally:
        store.close()


def test_a_keyed_log_refuses_a_writer_without_the_key(database_url: str) -> None:
    from bot.storage import StoreError, audit_key_from

    keyed = _store(database_url)
    keyed.audit_key = audit_key_from("the-data-key-of-at-least-32-characters")
    keyed.key_audit_log()
    keyed.close()
    plain = _store(database_url)
    try:
        with pytest.raises(StoreError, match="keyed with the data key"):
            plain.append_audit("@a:x", "invite", "@u:x")
        # Nor can it check the log: refused (StoreError), not reported broken.
        with pytest.raises(StoreError, match=r"keyed with the data key: set it .* to verify it"):
            plain.verify_audit()
    finally:
        plain.close()


async def test_a_cancelled_caller_waits_for_its_store_call_to_end() -> None:
    """A thread cannot be stopped: a task cancelled while its store write ran used to end at
    once, and the write landed after the bot had stopped (test_restart saw the sync token
    and snapshots change under it). Now the cancellation is seen once the call is over."""
    import asyncio
    import threading

    from bot.storage import in_thread

    started, release, finished = threading.Event(), threading.Event(), threading.Event()

    def write() -> None:
        started.set()
        release.wait(10)
        finished.set()

    task = asyncio.ensure_future(in_thread(write))
    await asyncio.to_thread(started.wait, 10)
    task.cancel()
    for _ in range(5):  # loop iterations enough for the cancellation to be delivered
        await asyncio.sleep(0)
    assert not task.done()  # the write still runs: so does the task
    release.set()
    with pytest.raises(asyncio.CancelledError):
        await task
    assert finished.is_set()
