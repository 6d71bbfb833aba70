"""Findings of the attack review of issue 28's operations code, each held by a test:
an administrator's mistake leaves nothing behind, and a read leaves nothing a bot running
as another user could trip over."""

from __future__ import annotations

import textwrap
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
