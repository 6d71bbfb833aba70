"""Secrets from files (issue 28): every `*_env` key has a `*_file` twin (systemd credentials,
container secrets), read at start with the same rules as the variables; `check-config`
refuses what `run` would refuse; one variable or file never serves two secrets."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

import bot.startup
from bot.cli import main
from bot.config import ConfigError, load_config
from bot.startup import (
    MIN_KEY_CHARS,
    SecretError,
    Secrets,
    read_data_key,
    read_pickle_key,
)

REPO = Path(__file__).resolve().parent.parent
PICKLE = "pickle-from-file-0123456789abcdef-0123"
DATA = "data-from-file-0123456789abcdef-012345"
PASSWORD = "password from a file"
FEED = "feed-token-from-a-file"


def secret(path: Path, value: str, mode: int = 0o600) -> Path:
    path.write_text(value)
    path.chmod(mode)
    return path


def config_with_files(folder: Path, extra_homeserver: str = "", extra: str = "") -> Path:
    """A config whose secrets all come from files beside it (relative paths)."""
    secret(folder / "pickle", PICKLE + "\n")
    secret(folder / "data-key", DATA + "\n")
    secret(folder / "password", PASSWORD + "\n")
    secret(folder / "feed", FEED)
    config = folder / "config.toml"
    config.write_text(
        textwrap.dedent(
            """
            [homeserver]
            url = "http://127.0.0.1:9"
            user_id = "@liaison:example.org"
            password_file = "password"
            pickle_key_file = "pickle"
            {extra_homeserver}

            [storage]
            data_key_file = "data-key"

            [[rooms]]
            key = "nato-s"
            name = "NATO SECRET liaison"
            label = "NATO SECRET"

            [ingest]
            [[ingest.feeds]]
            key = "sat"
            room = "nato-s"
            token_file = "feed"
            {extra}
            """
        ).format(extra_homeserver=extra_homeserver, extra=extra)
    )
    return config


def errors_of(path: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        load_config(path)
    return info.value.errors


def no_liaison_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith("LIAISON_")}


def test_secrets_are_read_from_files_relative_to_the_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config = load_config(config_with_files(tmp_path))
    monkeypatch.chdir("/")  # relative to the config's folder, not the working one
    secrets = Secrets.from_env_or_files(config, {})
    assert secrets.pickle_key == PICKLE  # one trailing newline stripped
    assert secrets.data_key == DATA
    assert secrets.password == PASSWORD  # inner spaces kept
    assert secrets.feed_tokens == {"sat": FEED}
    assert secrets.access_token is None
    shown = repr(secrets) + str(secrets)
    assert not any(value in shown for value in (PICKLE, DATA, PASSWORD, FEED))


def test_only_one_trailing_newline_is_stripped(tmp_path: Path) -> None:
    config = load_config(config_with_files(tmp_path))
    secret(tmp_path / "password", "two newlines\n\n")
    assert Secrets.from_env_or_files(config, {}).password == "two newlines\n"
    secret(tmp_path / "password", "windows line\r\n")
    assert Secrets.from_env_or_files(config, {}).password == "windows line"


def test_a_file_readable_by_others_is_refused_with_the_fix(tmp_path: Path) -> None:
    config = load_config(config_with_files(tmp_path))
    for mode in (0o644, 0o640, 0o604, 0o660):
        secret(tmp_path / "data-key", DATA, mode)
        with pytest.raises(SecretError) as info:
            Secrets.from_env_or_files(config, {})
        path = tmp_path / "data-key"
        assert info.value.problems == [
            f"storage.data_key_file: {path} is readable by others than its owner "
            f"(mode {mode:04o}): chmod 600 {path}"
        ]
        assert str(info.value).startswith("unusable secret files, refusing to start: ")
        assert DATA not in str(info.value)
    secret(tmp_path / "data-key", DATA, 0o400)  # owner-only, read-only: fine
    assert Secrets.from_env_or_files(config, {}).data_key == DATA


def test_systemd_credentials_are_taken_whatever_their_mode(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """systemd manages /run/credentials/<unit>/ (its mode is not the administrator's to
    fix); the folder is stood in for here, as making it needs systemd."""
    credentials = tmp_path / "run-credentials"
    (credentials / "liaison-bot.service").mkdir(parents=True)
    monkeypatch.setattr(bot.startup, "CREDENTIALS_DIR", credentials)
    data = secret(credentials / "liaison-bot.service" / "data-key", DATA, 0o640)
    config_path = config_with_files(tmp_path)
    config_path.write_text(
        config_path.read_text().replace('data_key_file = "data-key"', f'data_key_file = "{data}"')
    )
    assert Secrets.from_env_or_files(load_config(config_path), {}).data_key == DATA
    outside = secret(tmp_path / "elsewhere", DATA, 0o640)
    config_path.write_text(config_path.read_text().replace(str(data), str(outside)))
    with pytest.raises(SecretError, match="chmod 600"):
        Secrets.from_env_or_files(load_config(config_path), {})


def test_a_missing_or_empty_file_is_refused_naming_key_and_path(tmp_path: Path) -> None:
    config = load_config(config_with_files(tmp_path))
    (tmp_path / "pickle").unlink()
    secret(tmp_path / "feed", "\n")
    with pytest.raises(SecretError) as info:
        Secrets.from_env_or_files(config, {})
    assert info.value.problems == [
        f"homeserver.pickle_key_file: no such file {tmp_path / 'pickle'}",
        f"ingest.feeds[0].token_file: {tmp_path / 'feed'} is empty",
    ]


def test_a_folder_is_not_a_secret_file(tmp_path: Path) -> None:
    config = load_config(config_with_files(tmp_path))
    (tmp_path / "password").unlink()
    (tmp_path / "password").mkdir(mode=0o700)
    with pytest.raises(SecretError) as info:
        Secrets.from_env_or_files(config, {})
    assert info.value.problems[0].startswith(f"homeserver.password_file: cannot read {tmp_path}")


def test_a_short_key_in_a_file_is_refused_like_one_in_a_variable(tmp_path: Path) -> None:
    config = load_config(config_with_files(tmp_path))
    secret(tmp_path / "pickle", "x" * (MIN_KEY_CHARS - 1) + "\n")
    with pytest.raises(SecretError) as info:
        Secrets.from_env_or_files(config, {})
    assert info.value.problems == [
        f"homeserver.pickle_key_file: file {tmp_path / 'pickle'} is too short "
        f"({MIN_KEY_CHARS - 1} characters); the key must be {bot.startup.KEY_RULE}"
    ]


def test_variable_and_file_for_one_secret_are_refused(tmp_path: Path) -> None:
    both = config_with_files(tmp_path, extra_homeserver='pickle_key_env = "LIAISON_PICKLE_KEY"')
    assert errors_of(both) == [
        "homeserver: pickle_key_env, pickle_key_file: set one of the two, not both"
    ]
    both.write_text(
        both.read_text()
        .replace('pickle_key_env = "LIAISON_PICKLE_KEY"', "")
        .replace('token_file = "feed"', 'token_file = "feed"\ntoken_env = "FEED"')
    )
    assert errors_of(both) == [
        "ingest.feeds[0]: token_env, token_file: set one of the two, not both"
    ]


def test_one_variable_or_file_for_two_secrets_is_refused(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        '[homeserver]\nurl = "http://h"\nuser_id = "@b:h"\npassword_env = "P"\n'
        'pickle_key_env = "LIAISON_KEY"\n[storage]\ndata_key_env = "LIAISON_KEY"\n'
    )
    assert errors_of(config) == [
        "(top level): homeserver.pickle_key_env, storage.data_key_env: the same environment "
        "variable LIAISON_KEY for two secrets; give each its own"
    ]
    files = config_with_files(tmp_path)
    files.write_text(
        files.read_text().replace('data_key_file = "data-key"', 'data_key_file = "./pickle"')
    )
    assert errors_of(files) == [
        "(top level): homeserver.pickle_key_file, storage.data_key_file: the same file "
        f"{tmp_path / 'pickle'} for two secrets; give each its own"
    ]


def test_the_cli_reads_keys_from_files(tmp_path: Path) -> None:
    config = load_config(config_with_files(tmp_path))
    assert read_data_key(config) == DATA
    assert read_pickle_key(config) == PICKLE
    secret(tmp_path / "data-key", DATA, 0o644)
    with pytest.raises(SecretError, match=r"storage\.data_key_file: .* chmod 600"):
        read_data_key(config)


def test_check_config_applies_runs_rules(tmp_path: Path) -> None:
    """What `run` refuses, `check-config` refuses (exit 2, every problem named, no value)."""
    runner = CliRunner(env=no_liaison_env())
    path = config_with_files(tmp_path)
    result = runner.invoke(main, ["check-config", "--config", str(path)])
    assert result.exit_code == 0, result.stderr
    assert "OK" in result.stdout and "secrets readable" in result.stdout
    secret(tmp_path / "data-key", "short\n")
    secret(tmp_path / "password", PASSWORD, 0o644)
    result = runner.invoke(main, ["check-config", "--config", str(path)])
    assert result.exit_code == 2
    assert result.stderr.splitlines() == [
        f"error: homeserver.password_file: {tmp_path / 'password'} is readable by others "
        f"than its owner (mode 0644): chmod 600 {tmp_path / 'password'}",
        f"error: storage.data_key_file: file {tmp_path / 'data-key'} is too short (5 characters); "
        f"the key must be {bot.startup.KEY_RULE}",
    ]
    assert "short" not in result.stdout and PASSWORD not in result.stderr


def test_check_config_refuses_a_five_character_key_and_one_variable_for_two(
    tmp_path: Path,
) -> None:
    config = tmp_path / "config.toml"
    config.write_text('[homeserver]\nurl = "http://h"\nuser_id = "@b:h"\npassword_env = "P"\n')
    env = {**no_liaison_env(), "P": "pw", "LIAISON_PICKLE_KEY": "x" * 40}
    result = CliRunner(env={**env, "LIAISON_DATA_KEY": "abcde"}).invoke(
        main, ["check-config", "--config", str(config)]
    )
    assert result.exit_code == 2
    assert (
        "error: storage.data_key_env: environment variable LIAISON_DATA_KEY is too short "
        "(5 characters)" in result.stderr
    )
    config.write_text(config.read_text() + '[storage]\ndata_key_env = "LIAISON_PICKLE_KEY"\n')
    result = CliRunner(env=env).invoke(main, ["check-config", "--config", str(config)])
    assert result.exit_code == 2
    assert (
        "homeserver.pickle_key_env, storage.data_key_env: the same environment variable "
        "LIAISON_PICKLE_KEY for two secrets" in result.stderr
    )


def test_run_refuses_an_open_secret_file_before_touching_anything(tmp_path: Path) -> None:
    path = config_with_files(tmp_path)
    secret(tmp_path / "pickle", PICKLE, 0o644)
    env = {**no_liaison_env(), "PYTHONPATH": str(REPO)}
    result = subprocess.run(
        [sys.executable, "-m", "bot.cli", "run", "--config", str(path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    assert "unusable secret files, refusing to start: homeserver.pickle_key_file:" in result.stderr
    assert f"chmod 600 {tmp_path / 'pickle'}" in result.stderr
    assert PICKLE not in result.stderr + result.stdout
    assert not (tmp_path / "data").exists()  # no database, no crypto store


def test_the_examples_file_keys_work_once_uncommented(tmp_path: Path) -> None:
    example = (REPO / "config.example.toml").read_text()
    lines = []
    for line in example.splitlines():
        if line.startswith(("password_env", "pickle_key_env", "data_key_env")):
            continue  # a *_file replaces its *_env (the feed is in a commented section)
        if line.startswith("# ") and '_file = "/run/credentials/' in line and "feed" not in line:
            line = line.removeprefix("# ")
        lines.append(line)
    path = tmp_path / "config.toml"
    path.write_text("\n".join(lines))
    sources = load_config(path).secret_sources()
    unit = "/run/credentials/liaison-bot.service/"
    assert {name: (s.key, s.name) for name, s in sources.items()} == {
        # the names deploy/liaison-bot.service's LoadCredential= lines give them
        "pickle_key": ("homeserver.pickle_key_file", unit + "pickle_key"),
        "data_key": ("storage.data_key_file", unit + "data_key"),
        "password": ("homeserver.password_file", unit + "password"),
        "access_token": ("homeserver.access_token_file", unit + "access_token"),
    }


def test_an_offline_command_finds_its_own_units_credential(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """`systemd-run -p LoadCredential=data-key:…` puts the key under the command's own
    unit, not the service's the config names: it is found by name there."""
    credentials = tmp_path / "run-credentials"
    monkeypatch.setattr(bot.startup, "CREDENTIALS_DIR", credentials)
    own = credentials / "run-u42.service"
    own.mkdir(parents=True)
    secret(own / "data-key", DATA + "\n", 0o400)
    path = config_with_files(tmp_path)
    service = credentials / "liaison-bot.service" / "data-key"
    path.write_text(
        path.read_text().replace('data_key_file = "data-key"', f'data_key_file = "{service}"')
    )
    config = load_config(path)
    with pytest.raises(SecretError, match=f"no such file {service}"):
        read_data_key(config)  # outside systemd: the service's path, refused by name
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(own))
    assert read_data_key(config) == DATA
    (own / "data-key").unlink()
    with pytest.raises(SecretError, match=f"no such file {own / 'data-key'}"):
        read_data_key(config)


def test_an_offline_command_refuses_an_unusable_key_file_in_one_line(tmp_path: Path) -> None:
    path = config_with_files(tmp_path)
    secret(tmp_path / "data-key", DATA, 0o644)
    result = CliRunner(env=no_liaison_env()).invoke(
        main, ["gate", "synapse-config", "--config", str(path)]
    )
    assert result.exit_code == 2
    assert isinstance(result.exception, SystemExit)  # not a traceback
    assert result.stderr == (
        "error: unusable secret files, cannot read the key: storage.data_key_file: "
        f"{tmp_path / 'data-key'} is readable by others than its owner (mode 0644): "
        f"chmod 600 {tmp_path / 'data-key'}\n"
    )


# ---------------------------------------------------------------- review (issue 28)


def test_a_fifo_named_as_a_secret_file_is_refused_without_waiting(tmp_path: Path) -> None:
    """A FIFO (named by mistake, or planted) would block a plain open() for ever, and the
    bot with it: it is opened without blocking and refused as not a regular file. Run in a
    child with a hard timeout, so that a regression fails instead of hanging the suite."""
    config_with_files(tmp_path)
    (tmp_path / "data-key").unlink()
    os.mkfifo(tmp_path / "data-key", 0o600)
    probe = (
        "import sys\n"
        "from bot.config import load_config\n"
        "from bot.startup import SecretError, Secrets\n"
        "try:\n"
        f"    Secrets.from_env_or_files(load_config({str(tmp_path / 'config.toml')!r}), {{}})\n"
        "except SecretError as exc:\n"
        "    print(exc.problems)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", probe],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PYTHONPATH": str(REPO)},
        check=True,
    )
    assert done.stdout.strip() == str(
        [f"storage.data_key_file: {tmp_path / 'data-key'} is not a regular file"]
    )


def test_a_device_or_a_huge_file_is_refused_before_it_is_read(tmp_path: Path) -> None:
    config = load_config(config_with_files(tmp_path))
    big = secret(tmp_path / "password", "x" * (bot.startup.MAX_SECRET_BYTES + 1))
    with pytest.raises(SecretError) as info:
        Secrets.from_env_or_files(config, {})
    assert info.value.problems == [
        f"homeserver.password_file: {big} is too large for a secret "
        f"({bot.startup.MAX_SECRET_BYTES + 1} bytes, at most {bot.startup.MAX_SECRET_BYTES}): "
        "is it the right file?"
    ]
    big.unlink()
    big.symlink_to("/dev/zero")  # endless: a read would never end
    with pytest.raises(SecretError) as info:
        Secrets.from_env_or_files(config, {})
    assert info.value.problems == [f"homeserver.password_file: {big} is not a regular file"]


def test_a_symlink_into_the_credentials_folder_does_not_lend_its_exemption(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The exemption from the mode rule is judged on the file really opened, not on where
    the path resolves afterwards: a symlink repointed into the credentials folder between
    the open and the check does not exempt the open file outside it."""
    credentials = tmp_path / "run-credentials"
    credentials.mkdir()
    monkeypatch.setattr(bot.startup, "CREDENTIALS_DIR", credentials)
    config = load_config(config_with_files(tmp_path))
    outside = secret(tmp_path / "open-key", DATA, 0o644)
    inside = secret(credentials / "data-key", "another-key-0123456789abcdef-0123456789")
    link = tmp_path / "data-key"
    link.unlink()
    link.symlink_to(outside)
    real_fstat = os.fstat

    def fstat(fd: int) -> os.stat_result:
        found = real_fstat(fd)
        if found.st_ino == outside.stat().st_ino and link.resolve() == outside:
            link.unlink()  # the swap: after the open, before the checks
            link.symlink_to(inside)
        return found

    monkeypatch.setattr(os, "fstat", fstat)
    with pytest.raises(SecretError, match="chmod 600"):
        Secrets.from_env_or_files(config, {})


def test_one_key_behind_two_paths_or_two_variables_is_refused(tmp_path: Path) -> None:
    """The config refuses one path or variable for both keys; a hard link, a symlink or two
    variables holding one value are refused by the values, naming both keys, not the key."""
    config = load_config(config_with_files(tmp_path))
    (tmp_path / "data-key").unlink()
    os.link(tmp_path / "pickle", tmp_path / "data-key")
    with pytest.raises(SecretError) as info:
        Secrets.from_env_or_files(config, {})
    assert info.value.problems == [
        f"homeserver.pickle_key_file: file {tmp_path / 'pickle'}, storage.data_key_file: file "
        f"{tmp_path / 'data-key'}: the pickle key and the data key are the same key; give each "
        "its own"
    ]
    assert PICKLE not in str(info.value)
    (tmp_path / "data-key").unlink()
    (tmp_path / "data-key").symlink_to(tmp_path / "pickle")
    with pytest.raises(SecretError, match="the same key"):
        Secrets.from_env_or_files(config, {})
    env_config = tmp_path / "env.toml"
    env_config.write_text(
        '[homeserver]\nurl = "http://h"\nuser_id = "@b:h"\npassword_env = "P"\n'
        'pickle_key_env = "K1"\n[storage]\ndata_key_env = "K2"\n'
    )
    with pytest.raises(SecretError, match="the same key"):
        Secrets.from_env_or_files(load_config(env_config), {"P": "p", "K1": DATA, "K2": DATA})
