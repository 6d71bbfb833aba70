"""`[logging]` (issue 28): level, text or JSON, an optional file; the libraries' INFO lines
(Alembic's migration steps among them) held back; a version banner as the first line of
`run`. Bad settings are refused naming the key, like the rest of the config."""

from __future__ import annotations

import json
import logging
import platform
import re
import socket
import textwrap
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path

import pytest

from bot.config import ConfigError, load_config, parse_config
from bot.logsetup import NOISY, banner, configure_logging
from bot.storage.migrate import upgrade
from tests.test_startup_wait import DATA_KEY, PICKLE_KEY, bot_env, start_run, stop, wait_for

BASE = '[homeserver]\nurl = "http://h"\nuser_id = "@b:h"\npassword_env = "P"\n'
RFC3339_UTC = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z\Z")


def errors_of(text: str, base_dir: Path | None = None) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, base_dir=base_dir)
    return info.value.errors


@pytest.fixture
def restore_logging() -> Iterator[None]:
    """configure_logging replaces the root logger's handlers: put pytest's back after."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    levels = {name: logging.getLogger(name).level for name in NOISY}
    yield
    for handler in root.handlers:
        if handler not in handlers:
            handler.close()
    root.handlers[:] = handlers
    root.setLevel(level)
    for name, old in levels.items():
        logging.getLogger(name).setLevel(old)


def test_defaults_and_settings() -> None:
    config = parse_config(BASE)
    assert (config.logging.level, config.logging.format, config.logging.file) == (
        "info",
        "text",
        None,
    )
    assert config.log_file() is None
    config = parse_config(BASE + '[logging]\nlevel = "warning"\nformat = "json"\n')
    assert (config.logging.level, config.logging.format) == ("warning", "json")


def test_bad_settings_are_refused_naming_the_key(tmp_path: Path) -> None:
    errors = errors_of(
        BASE + '[logging]\nlevel = "verbose"\nformat = "xml"\ncolour = true\n', tmp_path
    )
    assert errors == [
        "logging.level: Input should be 'debug', 'info', 'warning' or 'error'",
        "logging.format: Input should be 'text' or 'json'",
        "logging.colour: unknown key 'colour'",
    ]
    assert errors_of(BASE + '[logging]\nfile = "no-such-folder/bot.log"\n', tmp_path) == [
        f"logging.file: the log file's folder '{tmp_path / 'no-such-folder'}' does not exist"
    ]
    assert errors_of(BASE + '[logging]\nfile = "."\n', tmp_path) == [
        f"logging.file: '{tmp_path / '.'}' is a folder: give a file's path"
    ]


def test_the_file_is_relative_to_the_config(tmp_path: Path) -> None:
    (tmp_path / "logs").mkdir()
    path = tmp_path / "config.toml"
    path.write_text(BASE + '[logging]\nfile = "logs/bot.log"\n')
    assert load_config(path).log_file() == tmp_path / "logs" / "bot.log"


def test_json_lines_to_the_file_appended(tmp_path: Path, restore_logging: None) -> None:
    log_file = tmp_path / "bot.log"
    log_file.write_text("an earlier line\n")
    config = parse_config(
        BASE + f'[logging]\nformat = "json"\nfile = "{log_file}"\n', base_dir=tmp_path
    )
    assert configure_logging(config) == logging.INFO
    log = logging.getLogger("bot.test")
    log.debug("not at info")
    log.info("relayed %d item(s) to %s", 2, "nato-s")
    try:
        raise ValueError("the reason")
    except ValueError:
        log.exception("it failed")
    lines = log_file.read_text().splitlines()
    assert lines[0] == "an earlier line"
    entries = [json.loads(line) for line in lines[1:]]
    assert [(e["level"], e["logger"], e["message"]) for e in entries] == [
        ("info", "bot.test", "relayed 2 item(s) to nato-s"),
        ("error", "bot.test", "it failed"),
    ]
    assert all(RFC3339_UTC.match(e["time"]) for e in entries)
    assert "exception" not in entries[0]
    assert entries[1]["exception"].startswith("Traceback (most recent call last):")
    assert entries[1]["exception"].endswith("ValueError: the reason")


def test_the_log_file_is_private_and_never_a_symlink(tmp_path: Path, restore_logging: None) -> None:
    """The log names people and rooms: a new file is 0600 whatever the umask, an existing
    world-readable one loses those bits, and a symlink where the log goes (to a file the
    bot's user may write) is refused rather than followed."""
    import os

    os.umask(old := os.umask(0o022))
    try:
        log_file = tmp_path / "bot.log"
        config = parse_config(BASE + f'[logging]\nfile = "{log_file}"\n', base_dir=tmp_path)
        configure_logging(config)
        logging.getLogger("bot.test").warning("a line")
        assert log_file.stat().st_mode & 0o777 == 0o600
        log_file.chmod(0o644)
        configure_logging(config)
        assert log_file.stat().st_mode & 0o777 == 0o640
        victim = tmp_path / "victim"
        victim.write_text("not a log\n")
        log_file.unlink()
        log_file.symlink_to(victim)
        with pytest.raises(OSError, match="it is a symbolic link"):
            configure_logging(config)
        assert victim.read_text() == "not a log\n"
    finally:
        os.umask(old)


def test_levels_and_the_libraries(tmp_path: Path, restore_logging: None) -> None:
    log_file = tmp_path / "bot.log"
    config = parse_config(
        BASE + f'[logging]\nlevel = "warning"\nfile = "{log_file}"\n', base_dir=tmp_path
    )
    assert configure_logging(config) == logging.WARNING
    logging.getLogger("bot.x").info("quiet")
    logging.getLogger("bot.x").warning("heard")
    assert log_file.read_text().count("\n") == 1 and "WARNING bot.x: heard" in log_file.read_text()
    assert all(logging.getLogger(name).level == logging.WARNING for name in NOISY)
    assert configure_logging(config, verbose=True) == logging.DEBUG  # run -v
    assert all(logging.getLogger(name).level == logging.DEBUG for name in NOISY)
    debug = parse_config(BASE + '[logging]\nlevel = "debug"\n')
    assert configure_logging(debug) == logging.DEBUG


def test_a_migration_logs_no_alembic_lines(tmp_path: Path, restore_logging: None) -> None:
    log_file = tmp_path / "bot.log"
    config = parse_config(BASE + f'[logging]\nfile = "{log_file}"\n', base_dir=tmp_path)
    configure_logging(config)
    upgrade(f"sqlite:///{tmp_path / 'liaison.db'}")
    assert "alembic" not in log_file.read_text()


def test_the_banner_names_versions_and_places_but_no_secret(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(BASE)
    line = banner(load_config(path), path)
    assert line == (
        f"liaison-bot {metadata.version('liaison-bot')} (Python {platform.python_version()}, "
        f"matrix-nio {metadata.version('matrix-nio')}, vodozemac "
        f"{metadata.version('vodozemac')}) starting: node {socket.gethostname()}, "
        f"database sqlite:///{tmp_path / 'data' / 'liaison.db'}, config {path}"
    )


def test_run_logs_the_banner_first_then_one_line_for_the_database(tmp_path: Path) -> None:
    """A real `run` (held waiting for a homeserver that refuses connections): JSON lines to
    standard error and to the file, the banner first, "database at revision" once, nothing
    of Alembic's, and no secret anywhere."""
    with socket.socket() as closed:
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
        config = tmp_path / "config.toml"
        config.write_text(
            textwrap.dedent(
                f"""
                [homeserver]
                url = "http://127.0.0.1:{port}"
                user_id = "@liaison:example.org"
                password_env = "LIAISON_TEST_PASSWORD"
                pickle_key_env = "LIAISON_TEST_PICKLE_KEY"

                [storage]
                data_key_env = "LIAISON_TEST_DATA_KEY"

                [logging]
                format = "json"
                file = "bot.log"
                """
            )
        )
        password = "a-password-never-logged"
        env = bot_env(
            LIAISON_TEST_PASSWORD=password,
            LIAISON_TEST_PICKLE_KEY=PICKLE_KEY,
            LIAISON_TEST_DATA_KEY=DATA_KEY,
        )
        stderr = tmp_path / "stderr.log"
        proc = start_run(config, env, stderr)
        try:
            wait_for(stderr, "unreachable", proc)
            assert stop(proc) == 0
        finally:
            if proc.poll() is None:
                proc.kill()
    for text in (stderr.read_text(), (tmp_path / "bot.log").read_text()):
        entries = [json.loads(line) for line in text.splitlines()]
        assert entries[0]["message"].startswith("liaison-bot ")
        assert entries[0]["message"].endswith(f"config {config}")
        revisions = [e["message"] for e in entries if "database at revision" in e["message"]]
        assert len(revisions) == 1 and revisions[0].endswith("(upgraded)")
        assert not any(e["logger"].startswith("alembic") for e in entries)
        assert not any(s in text for s in (password, PICKLE_KEY, DATA_KEY))


def test_the_examples_logging_section_works_once_uncommented(tmp_path: Path) -> None:
    example = (Path(__file__).resolve().parent.parent / "config.example.toml").read_text()
    section = example.split("# [logging]", 1)[1]
    uncommented = "[logging]" + "\n".join(
        line.removeprefix("# ") for line in section.splitlines() if not line.startswith("#  ")
    )
    (tmp_path / "logs").mkdir()
    path = tmp_path / "config.toml"
    path.write_text(example.split("# [logging]", 1)[0] + uncommented + "\n")
    config = load_config(path)
    assert (config.logging.level, config.logging.format) == ("info", "text")
    assert config.log_file() == tmp_path / "logs" / "liaison-bot.log"
