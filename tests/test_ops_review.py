"""Findings of the attack review of issue 28's operations code, each held by a test:
an administrator's mistake leaves nothing behind, and a read leaves nothing a bot running
as another user could trip over."""

from __future__ import annotations

import textwrap
from datetime import UTC, datetime
from pathlib import Path

from click.testing import CliRunner

from bot.cli import main

DATA = "d" * 40
PICKLE = "p" * 40
NEW = "n" * 40


def test_keys_rotate_on_a_wrong_path_creates_nothing(tmp_path: Path) -> None:
    """A database_url that names nothing: refused by name before the run lock is taken,
    which would otherwise make the folders and a lock file there."""
    missing = tmp_path / "no" / "such" / "liaison.db"
    config = tmp_path / "config.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            [homeserver]
            url = "http://127.0.0.1:9"
            user_id = "@liaison:example.org"
            password_env = "LIAISON_PASSWORD"

            [storage]
            database_url = "sqlite:///{missing}"
            """
        )
    )
    new_key = tmp_path / "new-key"
    new_key.write_text(NEW)
    new_key.chmod(0o600)
    env = {"LIAISON_DATA_KEY": DATA, "LIAISON_PICKLE_KEY": PICKLE}
    for which in ("--data", "--pickle"):
        result = CliRunner(env=env).invoke(
            main,
            ["keys", "rotate", which, "--config", str(config), "--new-key-file", str(new_key)],
        )
        assert result.exit_code == 2, result.output
        assert f"there is no database at {missing}" in result.stderr
        assert not (tmp_path / "no").exists()


async def test_a_planted_rotation_row_stops_the_bot_with_what_to_check(tmp_path: Path) -> None:
    """A `keys.rotating` entry no `keys.rotated` follows stops the bot (values may be under
    two keys). Someone with write access to the database can add one (breaking the chain,
    as they hold no key) to keep the bot down: the refusal says how to tell that apart from
    a real cut-off rotation, not only "finish it" (which the administrator cannot)."""
    import pytest
    from sqlalchemy import func, insert, select

    from bot.config import load_config
    from bot.run import run_bot
    from bot.startup import Secrets, StartupError
    from bot.storage import AuditRow, Store, audit_key_from
    from bot.storage.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'bot.db'}"
    upgrade(url)
    store = Store.from_url(url, audit_key_from(DATA))
    try:
        store.key_audit_log()
        with store.session() as session:
            newest = session.scalar(select(func.max(AuditRow.id)))
            session.execute(
                insert(AuditRow).values(
                    id=(newest or 0) + 1,
                    at=datetime.now(UTC).replace(microsecond=0),
                    actor="cli:root",
                    action="keys.rotating",
                    detail={"key": "data", "register_key": "planted"},
                    prev_hash="0" * 64,
                    hash="0" * 64,
                )
            )
    finally:
        store.close()
    config = tmp_path / "config.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            [homeserver]
            url = "http://127.0.0.1:9"
            user_id = "@liaison:example.org"
            password_env = "LIAISON_PASSWORD"

            [storage]
            database_url = "{url}"
            crypto_store = "crypto"
            """
        )
    )
    loaded = load_config(config)
    secrets = Secrets.from_env_or_files(
        loaded,
        {"LIAISON_PASSWORD": "unused", "LIAISON_DATA_KEY": DATA, "LIAISON_PICKLE_KEY": PICKLE},
    )
    with pytest.raises(StartupError) as info:
        await run_bot(loaded, secrets)
    assert "rotation of the data key was cut off" in str(info.value)
    assert "run `liaison-bot audit verify`" in str(info.value)


def test_a_homeserver_url_with_credentials_is_refused_without_echoing_them() -> None:
    """Every start-up attempt logs the homeserver's url: a password or a token put in it
    would land in the journal. Refused, and the error does not repeat it."""
    import pytest

    from bot.config import ConfigError, parse_config

    for url in (
        "https://bot:hunter2-secret@matrix.example.org",
        "https://matrix.example.org/?access_token=hunter2-secret",
        "https://matrix.example.org#hunter2-secret",
    ):
        with pytest.raises(ConfigError) as info:
            parse_config(f'[homeserver]\nurl = "{url}"\nuser_id = "@b:h"\npassword_env = "P"\n')
        assert len(info.value.errors) == 1
        assert info.value.errors[0].startswith("homeserver.url: bad homeserver url: no user")
        assert "hunter2" not in str(info.value)
    parse_config(
        '[homeserver]\nurl = "https://matrix.example.org:8448/"\nuser_id = "@b:h"\npassword_env = "P"\n'
    )


def test_a_stripped_log_is_not_keyed_again_nor_an_inserted_clearance_signed(
    database_url: str,
) -> None:
    """Someone with write access but not the key empties the audit log (or strips its key
    marker) and inserts an unsigned clearance for themselves. At the next start the bot
    would key the log afresh, find it "intact", and sign every unsigned register row: a
    clearance granted by SQL. The bot has run here (its sync position is stored), so the
    missing marker was removed: it refuses, signs nothing, and says to restore a backup."""
    import pytest
    from sqlalchemy import delete, select

    from bot.storage import AuditHeadRow, AuditRow, ClearanceRow, Store, audit_key_from
    from bot.storage.migrate import upgrade
    from bot.storage.records import StoreError

    upgrade(database_url)
    bot = Store.from_url(database_url, audit_key_from(DATA))
    try:
        bot.key_audit_log()
        bot.save_sync_token("s1_first_sync")
    finally:
        bot.close()
    attacker = Store.from_url(database_url)
    try:
        with attacker.session() as session:
            session.execute(delete(AuditRow))
            session.execute(delete(AuditHeadRow))
            session.add(ClearanceRow(user_id="@mallory:example.org", nationality="DEU"))
    finally:
        attacker.close()
    bot = Store.from_url(database_url, audit_key_from(DATA))
    try:
        with pytest.raises(StoreError, match="the bot has run on this database"):
            bot.key_audit_log()
        with bot.session() as session:
            row = session.scalars(select(ClearanceRow)).one()
            assert row.signature is None
            assert session.scalar(select(AuditRow.id).limit(1)) is None  # nothing keyed
        verdict = bot.verify_audit()
        assert not verdict.intact and "though the bot has run" in verdict.message
    finally:
        bot.close()


def test_verify_under_a_running_writer_sees_one_snapshot(database_url: str) -> None:
    """A row the running bot commits between the verification's read of the head and its
    read of the rows must not read as "newest rows missing" (a false BROKEN, exit 1, which
    says tampering). The append is made exactly there, from another connection."""
    from sqlalchemy import event

    from bot.storage import Store, audit_key_from
    from bot.storage.migrate import upgrade

    upgrade(database_url)
    checker = Store.from_url(database_url, audit_key_from(DATA))
    writer = Store.from_url(database_url, audit_key_from(DATA))
    try:
        checker.key_audit_log()
        fired: list[str] = []

        def append_between(_c: object, _cur: object, statement: str, *_: object) -> None:
            if not fired and "FROM audit_log" in statement and "ORDER BY" in statement:
                fired.append(statement)
                writer.append_audit("cli:test", "clearance.revoke", "@x:example.org")

        event.listen(checker.engine, "before_cursor_execute", append_between)
        if checker.engine.dialect.name == "sqlite":
            # SQLite: the reading transaction holds the write lock (BEGIN IMMEDIATE), so
            # the append would wait for it; the race is PostgreSQL's.
            event.remove(checker.engine, "before_cursor_execute", append_between)
        verdict = checker.verify_audit()
        assert verdict.intact, verdict.message
        assert checker.verify_audit().intact
    finally:
        checker.close()
        writer.close()


def test_keys_rotate_does_not_launder_a_stripped_log_with_no_trace_of_a_bot(
    tmp_path: Path,
) -> None:
    """The key marker stripped and the log re-hashed without the key, on a database that
    shows no trace of a running bot: the store's own check finds every row consistent,
    but `audit verify` cannot vouch for it (exit 2), and a data key rotation, whose anchor
    would vouch for every row before it under the new key, is refused."""
    from sqlalchemy import select, update

    from bot.storage import AuditHeadRow, AuditRow, Store, audit_key_from
    from bot.storage.migrate import upgrade
    from bot.storage.store import audit_hash

    url = f"sqlite:///{tmp_path / 'bot.db'}"
    upgrade(url)
    store = Store.from_url(url, audit_key_from(DATA))
    try:
        store.key_audit_log()
        store.append_audit("cli:root", "clearance.revoke", "@alice:example.org")
    finally:
        store.close()
    attacker = Store.from_url(url)
    try:
        with attacker.session() as session:
            prev = "0" * 64
            for row in session.scalars(select(AuditRow).order_by(AuditRow.id)):
                row.subject = "@bob:example.org" if row.subject else row.subject
                row.prev_hash = prev
                row.hash = prev = audit_hash(row)
            session.execute(update(AuditHeadRow).values(hash=prev, keyed_from=None, key_seal=None))
    finally:
        attacker.close()
    config = tmp_path / "config.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            [homeserver]
            url = "http://127.0.0.1:9"
            user_id = "@liaison:example.org"
            password_env = "LIAISON_PASSWORD"

            [storage]
            database_url = "{url}"
            crypto_store = "crypto"
            """
        )
    )
    new_key = tmp_path / "new-key"
    new_key.write_text(NEW)
    new_key.chmod(0o600)
    env = {"LIAISON_DATA_KEY": DATA, "LIAISON_PICKLE_KEY": PICKLE}
    verify = CliRunner(env=env).invoke(main, ["audit", "verify", "--config", str(config)])
    assert verify.exit_code == 2, verify.output
    rotated = CliRunner(env=env).invoke(
        main,
        ["keys", "rotate", "--data", "--config", str(config), "--new-key-file", str(new_key)],
    )
    assert rotated.exit_code == 1, rotated.output
    assert "the audit log does not verify" in rotated.stderr
    after = CliRunner(env={**env, "LIAISON_DATA_KEY": NEW}).invoke(
        main, ["audit", "verify", "--config", str(config)]
    )
    assert after.exit_code != 0, after.output


def test_a_fifo_as_the_new_key_file_is_refused_without_waiting(tmp_path: Path) -> None:
    """`keys rotate --new-key-file` reads the file as the bot reads a secret file: a FIFO
    (a mistake, or planted) is refused at once instead of blocking the command for ever.
    In a child with a hard timeout, so that a regression fails instead of hanging."""
    import os
    import subprocess
    import sys

    from bot.storage import Store, audit_key_from
    from bot.storage.migrate import upgrade

    url = f"sqlite:///{tmp_path / 'bot.db'}"
    upgrade(url)
    store = Store.from_url(url, audit_key_from(DATA))
    try:
        store.key_audit_log()
    finally:
        store.close()
    new_key = tmp_path / "new-key"
    os.mkfifo(new_key, 0o600)
    config = tmp_path / "config.toml"
    config.write_text(
        textwrap.dedent(
            f"""
            [homeserver]
            url = "http://127.0.0.1:9"
            user_id = "@liaison:example.org"
            password_env = "LIAISON_PASSWORD"

            [storage]
            database_url = "{url}"
            crypto_store = "crypto"
            """
        )
    )
    repo = Path(__file__).resolve().parent.parent
    done = subprocess.run(
        [sys.executable, "-m", "bot.cli", "keys", "rotate", "--data", "--config", str(config),
         "--new-key-file", str(new_key)],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(repo), "LIAISON_DATA_KEY": DATA,
             "LIAISON_PICKLE_KEY": PICKLE},
    )  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"--new-key-file: {new_key} is not a regular file. Nothing was changed." in (done.stderr)
