"""Config validation: every error listed with its key path; secrets only from the environment."""

from __future__ import annotations

import re
from datetime import timedelta
from pathlib import Path

import pytest

from bot.config import ConfigError, load_config, parse_config

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.toml"

MINIMAL = """
[homeserver]
url = "http://127.0.0.1:8008"
user_id = "@liaison:example.org"
password_env = "LIAISON_PASSWORD"
"""


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    return info.value.errors


def test_example_config_is_valid() -> None:
    config = load_config(EXAMPLE)
    assert [r.key for r in config.rooms] == ["deu", "nato-s", "eu-s"]
    assert config.rooms[0].parsed_label.banner == "DEU GEHEIM"
    assert config.bot.sweep_interval == timedelta(minutes=5)
    assert config.routes[0].source == "deu"
    assert "SIGINT" in config.caveats


def test_relative_sqlite_path_is_taken_from_the_config_folder(tmp_path: Path) -> None:
    path = tmp_path / "conf" / "bot.toml"
    path.parent.mkdir()
    path.write_text(MINIMAL)
    assert (
        load_config(path).database_url() == f"sqlite:///{tmp_path / 'conf' / 'data' / 'liaison.db'}"
    )


def test_defaults_fill_a_minimal_config() -> None:
    config = parse_config(MINIMAL)
    assert config.bot.command_prefixes == ["!", "/"]
    assert config.homeserver.device_trust == "cross-signed"
    assert config.storage.database_url.startswith("sqlite:///")


def test_unknown_marking_names_the_key_and_suggests() -> None:
    text = (
        MINIMAL
        + """
[[rooms]]
key = "a"
name = "A"
label = "NATO SECRET"
[[rooms]]
key = "b"
name = "B"
label = "SECRTE"
"""
    )
    [error] = errors_of(text)
    # each suggestion names its nation (which ones depends on the scheme data)
    assert error.startswith("rooms[1].label: unknown marking 'SECRTE' — did you mean '")
    assert re.search(r"'[A-Z]{3} SECRET'", error), error


def test_every_error_is_listed_at_once() -> None:
    text = """
[homeserver]
url = "ftp://x"
user_id = "liaison"
password = "hunter2"
[bot]
admns = []
sweep_interval = "5 minutes"
timezone = "Mars/Base"
[[rooms]]
key = "deu"
name = "x"
label = "DEU GEHEIM"
audience = ["FRA"]
[[rooms]]
key = "nato"
name = "y"
label = "SECRTE"
[[rooms]]
key = "nato"
name = "z"
label = "NATO SECRET"
[[routes]]
from = "deu"
to = ["nato-s"]
[[digests]]
room = "nowhere"
cron = "0 6 * *"
"""
    errors = errors_of(text)
    expected_prefixes = [
        "homeserver.url: bad homeserver url 'ftp://x'",
        "homeserver.user_id: bad Matrix user id 'liaison'",
        "homeserver.password: secrets are not read from the config file",
        "bot.admns: unknown key 'admns' — did you mean 'admins'?",
        "bot.sweep_interval: bad duration '5 minutes'",
        "bot.timezone: unknown timezone 'Mars/Base'",
        "rooms[0].audience: audience FRA is outside the releasable set of 'DEU GEHEIM'",
        "rooms[1].label: unknown marking 'SECRTE'",
        "rooms[2].key: duplicate room key 'nato'",
        "routes[0].to[0]: no room with key 'nato-s'",
        "digests[0].room: no room with key 'nowhere'",
        "digests[0].cron: bad cron '0 6 * *'",
    ]
    for prefix in expected_prefixes:
        assert any(e.startswith(prefix) for e in errors), (prefix, errors)
    assert len(errors) == len(expected_prefixes)


@pytest.mark.parametrize(
    ("snippet", "message"),
    [
        (
            '[storage]\ndatabase_url = "mysql://x/y"',
            "storage.database_url: unsupported database 'mysql'",
        ),
        ('[storage]\ndatabase_url = "postgresql://u:pw@h/db"', "must not hold a password"),
        (
            '[storage]\ncrypto_store = "database"',
            'storage.crypto_store: "database" keeps the crypto store in the database, which '
            "needs PostgreSQL: database_url is sqlite",
        ),
        (
            '[storage]\ndata_key = "abc"',
            "storage.data_key: secrets are not read from the config file",
        ),
        ('[bot]\ncommand_prefixes = ["go "]', "bot.command_prefixes: bad command prefix 'go'"),
        ('[bot]\ncaveats = ["two words"]', "bot.caveats: bad caveat 'two words'"),
        ('[bot]\nadmins = ["root"]', "bot.admins[0]: bad Matrix user id 'root'"),
        ('[bot]\nundecryptable_grace = "0s"', "must be longer than zero"),
        ('[metrics]\nbind = "nowhere"', "metrics.bind: bad bind address 'nowhere'"),
        (
            "[[rooms]]\nkey = 'Bad Key'\nname = 'x'\nlabel = 'NATO SECRET'",
            "rooms[0].key: bad room key 'Bad Key'",
        ),
        ("[[rooms]]\nkey = 'a'\nlabel = 'NATO SECRET'", "rooms[0].name: required key is missing"),
        ("[[rooms]]\nkey = 'a'\nname = 'x'\nlabel = 'SECRET'", "ambiguous marking 'SECRET'"),
        (
            "[[rooms]]\nkey = 'a'\nname = 'x'\nlabel = 'NATO SECRET // SIGINT'",
            "unknown caveat 'SIGINT'",
        ),
        (
            "[[rooms]]\nkey = 'a'\nname = 'x'\nlabel = 'NATO SECRET'\nroom_id = 'abc'",
            "rooms[0].room_id: bad room id 'abc'",
        ),
        (
            "[[rooms]]\nkey = 'a'\nname = 'x'\nlabel = 'NATO SECRET'\n[[routes]]\nfrom = 'a'\nto = ['a']",
            "routes[0].to[0]: a room cannot route to itself",
        ),
        (
            "[[rooms]]\nkey = 'a'\nname = 'x'\nlabel = 'NATO SECRET'\n[[digests]]\nroom = 'a'\ncron = '0 6 * * 8'",
            "bad weekday '8'",
        ),
        (
            "[[rooms]]\nkey = 'a'\nname = 'x'\nlabel = 'NATO SECRET'\n[[digests]]\nroom = 'a'\ncron = '61 6 * * *'",
            "digests[0].cron: bad cron '61 6 * * *'",
        ),
        (
            "[[rooms]]\nkey = 'a'\nname = 'x'\nlabel = 'NATO SECRET'\n[[digests]]\nroom = 'a'\ncron = '0 6 * * *'\nsources = ['b']",
            "digests[0].sources[0]: no room with key 'b'",
        ),
        (
            "[ingest]\n[[ingest.feeds]]\nkey = 'sat'\nroom = 'zz'\ntoken_env = 'T'",
            "ingest.feeds[0].room: no room with key 'zz'",
        ),
        (
            "[[ingest.feeds]]\nkey = 'sat'\nroom = 'zz'\ntoken = 'abc'",
            "ingest.feeds[0].token: secrets are not read",
        ),
    ],
)
def test_bad_values_name_their_key(snippet: str, message: str) -> None:
    errors = errors_of(MINIMAL + snippet)
    assert any(message in e for e in errors), errors


def test_the_crypto_store_is_a_folder_or_the_postgresql_database() -> None:
    """`crypto_store = "database"` (a high-availability pair shares it) needs PostgreSQL;
    anything else is a folder, relative to the config's, as before."""
    folder = parse_config(MINIMAL)
    assert not folder.crypto_store_in_database
    assert folder.crypto_store_path().name == "crypto"
    database = parse_config(
        MINIMAL
        + '[storage]\ndatabase_url = "postgresql+psycopg://liaison@db:5432/liaison"\n'
        + 'crypto_store = "database"\n'
    )
    assert database.crypto_store_in_database
    with pytest.raises(ValueError, match="no folder"):
        database.crypto_store_path()
    # A bad database_url is its own error, not also the crypto store's.
    errors = errors_of(
        MINIMAL + '[storage]\ndatabase_url = "mysql://x/y"\ncrypto_store = "database"'
    )
    assert [e.split(":")[0] for e in errors] == ["storage.database_url"]


def test_credentials_are_required() -> None:
    text = '[homeserver]\nurl = "http://h"\nuser_id = "@b:h"\n'
    assert errors_of(text) == [
        "homeserver: set password_env or access_token_env, or their *_file twins (the bot must "
        "log in)"
    ]


def test_missing_homeserver_section() -> None:
    assert errors_of("") == ["homeserver: required key is missing"]


def test_not_toml() -> None:
    [error] = errors_of("[homeserver\nurl=")
    assert "not valid TOML" in error


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        load_config(tmp_path / "nope.toml")
    assert "no such file" in info.value.errors[0]


def test_configured_caveat_is_usable_in_room_labels() -> None:
    text = (
        MINIMAL
        + "[bot]\ncaveats = ['sigint']\n[[rooms]]\nkey = 'a'\nname = 'x'\nlabel = 'NATO SECRET // SIGINT'"
    )
    config = parse_config(text)
    assert config.rooms[0].parsed_label.caveats == {"SIGINT"}


def test_missing_secrets_are_reported_by_key() -> None:
    config = parse_config(MINIMAL)
    missing = config.missing_secrets({"LIAISON_PASSWORD": "x"})
    assert missing == [
        "homeserver.pickle_key_env: environment variable LIAISON_PICKLE_KEY is not set",
        "storage.data_key_env: environment variable LIAISON_DATA_KEY is not set",
    ]
    assert (
        config.missing_secrets(
            {"LIAISON_PASSWORD": "x", "LIAISON_PICKLE_KEY": "k", "LIAISON_DATA_KEY": "d"}
        )
        == []
    )


def test_narrowed_audience_becomes_the_room_audience() -> None:
    text = (
        MINIMAL
        + "[[rooms]]\nkey = 'a'\nname = 'x'\nlabel = 'NATO SECRET'\naudience = ['DEU', 'France']"
    )
    assert parse_config(text).rooms[0].policy_room().audience == {"DEU", "FRA"}


def test_a_config_nested_too_deeply_is_an_error_naming_it() -> None:
    """tomllib recurses per nesting level: a hostile or broken config must not end the
    start with a RecursionError traceback."""
    from bot.config import ConfigError, parse_config

    with pytest.raises(ConfigError) as info:
        parse_config("x = " + "[" * 100_000 + "]" * 100_000, "deep.toml")
    assert info.value.errors == ["deep.toml: nested too deeply to read"]
