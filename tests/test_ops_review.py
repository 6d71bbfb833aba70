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
