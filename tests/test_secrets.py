"""The bot's secrets (issue 14, finding 17): never shown by repr or str, weak keys refused at
start with the rule named, and keys that pass derived as before."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from bot.config import parse_config
from bot.startup import MIN_KEY_CHARS, Secrets, StartupError
from bot.storage.sealing import Sealer

CONFIG = parse_config(
    """
[homeserver]
url = "http://127.0.0.1:8008"
user_id = "@liaison:example.org"
password_env = "LIAISON_PASSWORD"

[[rooms]]
key = "nato-s"
name = "NATO SECRET liaison"
label = "NATO SECRET"

[ingest]
[[ingest.feeds]]
key = "sat"
room = "nato-s"
token_env = "LIAISON_FEED_SAT"
"""
)
GOOD_PICKLE = "p" * 20 + "0123456789abcdef"
GOOD_DATA = "d" * 40
ENV = {
    "LIAISON_PASSWORD": "hunter2-password",
    "LIAISON_PICKLE_KEY": GOOD_PICKLE,
    "LIAISON_DATA_KEY": GOOD_DATA,
    "LIAISON_FEED_SAT": "feed-token-sat-9",
}


def test_repr_and_str_show_no_secret() -> None:
    secrets = Secrets.from_env_or_files(CONFIG, ENV)
    secrets_with_token = Secrets("pickle-value", "data-value", None, "syt_access_token", {})
    for shown in (
        repr(secrets),
        str(secrets),
        f"{secrets}",
        f"{[secrets]}",
        repr(secrets_with_token),
    ):
        for value in (*ENV.values(), "pickle-value", "data-value", "syt_access_token"):
            assert value not in shown, (value, shown)
    assert repr(secrets) == (
        "Secrets(pickle_key=<hidden>, data_key=<hidden>, password=<hidden>, "
        "access_token=None, feed_tokens={'sat': <hidden>})"
    )


def test_a_good_key_passes() -> None:
    secrets = Secrets.from_env_or_files(CONFIG, ENV)
    assert (secrets.pickle_key, secrets.data_key) == (GOOD_PICKLE, GOOD_DATA)
    assert secrets.password == "hunter2-password"
    assert secrets.feed_tokens == {"sat": "feed-token-sat-9"}
    exact = Secrets.from_env_or_files(CONFIG, {**ENV, "LIAISON_DATA_KEY": "x" * MIN_KEY_CHARS})
    assert exact.data_key == "x" * MIN_KEY_CHARS


@pytest.mark.parametrize(
    ("variable", "path"),
    [
        ("LIAISON_DATA_KEY", "storage.data_key_env"),
        ("LIAISON_PICKLE_KEY", "homeserver.pickle_key_env"),
    ],
)
def test_a_short_key_is_refused_naming_the_variable_and_the_rule(variable: str, path: str) -> None:
    short = "correct horse battery staple"  # a passphrase: 28 characters
    with pytest.raises(StartupError) as info:
        Secrets.from_env_or_files(CONFIG, {**ENV, variable: short})
    message = str(info.value)
    assert message.startswith("weak keys, refusing to start: ")
    assert f"{path}: environment variable {variable} is too short (28 characters)" in message
    assert f"at least {MIN_KEY_CHARS} characters" in message
    assert short not in message
    assert MIN_KEY_CHARS == 32


def test_both_short_keys_are_named_at_once() -> None:
    with pytest.raises(StartupError) as info:
        Secrets.from_env_or_files(
            CONFIG, {**ENV, "LIAISON_DATA_KEY": "data", "LIAISON_PICKLE_KEY": "p"}
        )
    assert "LIAISON_DATA_KEY" in str(info.value) and "LIAISON_PICKLE_KEY" in str(info.value)


def test_keys_that_pass_are_derived_as_before() -> None:
    # sealed before the key rule existed: existing databases must still open
    sealed = "v1:lo2V+GUkDv6CHmBNvriNwVuECLaTpc0fc0QyyPrET5bSAqi+VkCO"
    assert Sealer("k" * 40, "intel").open_text(sealed, "item-1") == "still opens"


def test_run_refuses_a_short_key_before_touching_anything(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(
        '[homeserver]\nurl = "http://127.0.0.1:9"\nuser_id = "@liaison:example.org"\n'
        'password_env = "LIAISON_PASSWORD"\n'
    )
    env = {**os.environ, **ENV, "LIAISON_DATA_KEY": "test-data-key"}
    result = subprocess.run(
        [str(Path(sys.executable).parent / "liaison-bot"), "run", "--config", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 1, result.stderr
    assert "weak keys, refusing to start" in result.stderr
    assert "LIAISON_DATA_KEY is too short (13 characters)" in result.stderr
    assert "test-data-key" not in result.stderr + result.stdout
    assert not (tmp_path / "data").exists()
