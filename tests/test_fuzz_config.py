"""Fuzzing the config parser (bot.config) with hypothesis: random text and structured TOML
edits of config.example.toml; the shared strategies are in tests/fuzzing.py."""

from __future__ import annotations

import copy
import re
import time
import tomllib
from pathlib import Path
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from bot.config import Config, ConfigError, parse_config
from tests.fuzzing import FAST, FUZZ, FUZZ_SLOW, MEGABYTE, any_text, lone_surrogates, mixed

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.toml"
SOURCE = "<config>"
_KEY = r'(?:[A-Za-z0-9_-]+|"(?:[^"\\\x00-\x1f]|\\.)*")'
_PATH = rf"{_KEY}(?:\.{_KEY}|\[\d+\])*"
ERROR_LINE = re.compile(rf"^(?:{_PATH}|\(top level\)|{re.escape(SOURCE)}): \S", re.DOTALL)


def assert_config_errors(exc: ConfigError) -> None:
    assert exc.errors, "a ConfigError must list at least one error"
    for error in exc.errors:
        assert isinstance(error, str) and error.strip()
        assert ERROR_LINE.match(error), error


def check_config(text: str) -> Config | None:
    """Parse; on error check the error list; return the config when it was valid."""
    try:
        config = parse_config(text, SOURCE)
    except ConfigError as exc:
        assert_config_errors(exc)
        return None
    keys = [r.key for r in config.rooms]
    assert len(keys) == len(set(keys))
    for source, targets in config.route_targets().items():
        assert source in keys and set(targets) <= set(keys)
    for digest in config.digests:
        assert digest.room in keys and set(digest.sources or ()) <= set(keys)
    return config


def toml_string(text: str) -> str:
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)  # lone surrogates pass through raw: tomllib accepts them
    return '"' + "".join(out) + '"'


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value:
            return "nan"
        if value in (float("inf"), float("-inf")):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        pairs = (f"{toml_string(k)} = {toml_value(v)}" for k, v in value.items())
        return "{" + ", ".join(pairs) + "}"
    raise TypeError(value)


def toml_document(data: dict[str, Any]) -> str:
    """One `"key" = value` line per top-level key, tables inline: valid TOML for any data."""
    return "".join(f"{toml_string(k)} = {toml_value(v)}\n" for k, v in data.items())


BASE_CONFIG = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
MINIMAL_CONFIG = {"homeserver": copy.deepcopy(BASE_CONFIG["homeserver"])}
CONFIG_KEYS = sorted(
    {
        "homeserver", "storage", "bot", "metrics", "rooms", "routes", "digests", "ingest",
        "url", "user_id", "password_env", "access_token_env", "pickle_key_env", "device_name",
        "device_trust", "database_url", "crypto_store", "data_key_env", "command_prefixes",
        "admins", "officers", "caveats", "timezone", "admin_room", "sweep_interval",
        "digest_catchup_grace", "undecryptable_grace", "dm_join_timeout", "bind", "key", "name", "label",
        "room_id", "audience", "from", "to", "room", "cron", "window", "sources", "feeds",
        "token_env", "release", "password", "access_token", "token", "admns", "",
    }
)  # fmt: skip
INTERESTING_VALUES = [
    "NATO SECRET",
    "DEU GEHEIM // REL TO NATO",
    "ΝΑΤΟ SECRET",
    "SECRET",
    "5m",
    "0s",
    "99999999999999999999d",
    "999999999999d",
    "UTC",
    "Europe",
    "Europe/",
    "Europe/Berlin/..",
    "__init__.py",
    "a" * 300,
    "0 6 * * *",
    "0 6 * * ²",
    "* * * * 8",
    "*/0 * * * *",
    "@a:b",
    "!r:x",
    "sqlite:///x.db",
    "postgresql://u:p@h/db",
    "postgresql+psycopg://h:99999/db",
    "mysql://h/db",
    "127.0.0.1:9464",
    "h:²",
    ":0",
    "deu",
    "nato-s",
    "eu-s",
    "DEU",
    "NATO",
    "cross-signed",
    "tofu",
    "SIGINT",
    "!",
    "",
]
scalars = st.one_of(
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(),
    st.sampled_from(INTERESTING_VALUES),
    mixed(st.sampled_from(INTERESTING_VALUES), 3),
)
toml_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(CONFIG_KEYS) | any_text, inner, max_size=3)
    ),
    max_leaves=6,
)


def _containers(value: Any, out: list[Any]) -> list[Any]:
    if isinstance(value, dict | list):
        out.append(value)
        for child in value.values() if isinstance(value, dict) else value:
            _containers(child, out)
    return out


DURATIONS = ["5m", "0s", "-5m", "1.5h", "99999999999999999999d", "999999999999d", "٣m", 5]
ROOM_KEYS = ["deu", "nato-s", "eu-s", "zzz", "Deu", "deu\n", "", "a" * 33, ["deu"], 1]
FIELD_VALUES: dict[tuple[str, ...], dict[str, list[Any]]] = {
    ("homeserver",): {
        "url": ["https://hs", "ftp://x", "http://", "http://h:99999", ""],
        "user_id": ["@a:b", "liaison", "@a:b\n", "@:b", "@a:b:c"],
        "password_env": ["X", "1X", "", "X Y", None],
        "access_token_env": ["T", "T\n"],
        "device_trust": ["tofu", "cross-signed", "TOFU", ""],
    },
    ("storage",): {
        "database_url": [
            "sqlite:///x.db", "postgresql://u:p@h/db", "postgresql+psycopg://h:99999/db",
            "mysql://h/db", "", "://", "sqlite:////" + "x" * 300,
        ],
        "data_key_env": ["K", "K-1"],
    },
    ("bot",): {
        "timezone": ["UTC", "Europe", "Europe/", "Europe/Berlin/..", "__init__.py", "a" * 300,
                     "Mars/Base", "", "/etc/passwd", "../UTC", "zoneinfo", "Europe/__pycache__"],
        "sweep_interval": DURATIONS,
        "digest_catchup_grace": DURATIONS,
        "undecryptable_grace": DURATIONS,
        "dm_join_timeout": DURATIONS,
        "command_prefixes": [["!"], ["!!!!"], [], ["a"], [" "], ["!", 1], "!"],
        "caveats": [["SIGINT"], ["si gint"], ["x"], [""], ["e" + "\u0301\u0316" * 600], "SIGINT"],
        "admins": [["@a:b"], ["a"], "@a:b"],
        "admin_room": ["!r:x", "r", "!r"],
    },
    ("metrics",): {"bind": ["127.0.0.1:9464", "h:²", ":0", "h:0", "h:65536", "h", "[::1]:80"]},
    ("rooms", "*"): {
        "key": ROOM_KEYS,
        "name": ["", "x" * 201, "<script>alert(1)</script>", "A"],
        "label": ["NATO SECRET", "ΝΑΤΟ SECRET", "SECRET", "GEHEIM", "NATO SECRET // FOO",
                  "DEU GEHEIM // REL TO NATO", "NATO SECRET\u202e", "S" * 2000, ""],
        "audience": [["DEU"], ["XXX"], [], ["NATO"], ["EU", "USA"], "DEU", ["x" * 300]],
        "room_id": ["!a:b", "a", "!a"],
    },
    ("routes", "*"): {"from": ROOM_KEYS, "to": [["deu"], ["nato-s", "zzz"], [], "deu", [[1]]]},
    ("digests", "*"): {
        "room": ROOM_KEYS,
        "cron": ["0 6 * * *", "0 6 * * ²", "* * * * 8", "*/0 * * * *", "0 6 * * 5-7",
                 "99999999999999999999 * * * *", "0 6 * * sun-mon", "", "a b c d e"],
        "window": DURATIONS,
        "sources": [["deu"], ["zzz"], [], "deu"],
    },
    ("ingest", "feeds", "*"): {
        "key": ["f", "f", [1], {"a": 1}, 1.5, ""],
        "room": ROOM_KEYS,
        "token_env": ["T", "", "1"],
        "release": [True, "yes"],
    },
}  # fmt: skip


def _table(data: dict[str, Any], path: tuple[str, ...], draw: st.DrawFn) -> dict[str, Any] | None:
    """The table at `path` ("*": one table of an array of tables), created when missing."""
    node: Any = data
    for part in path:
        if part == "*":
            if not isinstance(node, list):
                return None
            if not node or not draw(st.integers(0, 3)):
                node.append({})
            node = node[draw(st.integers(0, len(node) - 1))]
        elif isinstance(node, dict):
            node = node.setdefault(
                part, [] if part in ("rooms", "routes", "digests", "feeds") else {}
            )
        else:
            return None
    return node if isinstance(node, dict) else None


@st.composite
def config_documents(draw: st.DrawFn) -> dict[str, Any]:
    """The example config (or the minimal one) with a few edits: a known key set to a value
    chosen to hurt, or a random edit anywhere (new keys, other types, deletions, copies)."""
    data: dict[str, Any] = copy.deepcopy(draw(st.sampled_from([BASE_CONFIG, MINIMAL_CONFIG])))
    for _ in range(draw(st.integers(0, 6))):
        if draw(st.booleans()):
            path = draw(st.sampled_from(sorted(FIELD_VALUES)))
            table = _table(data, path, draw)
            if table is not None:
                key = draw(st.sampled_from(sorted(FIELD_VALUES[path])))
                choices = [v for v in FIELD_VALUES[path][key] if v is not None]
                table[key] = copy.deepcopy(draw(st.sampled_from(choices) | toml_values))
            continue
        target = draw(st.sampled_from(_containers(data, [])))
        action = draw(st.sampled_from(["set", "set", "delete", "copy"]))
        if isinstance(target, dict):
            keys = sorted(target)
            key = draw(
                st.sampled_from(keys or CONFIG_KEYS) | st.sampled_from(CONFIG_KEYS) | any_text
            )
            if action == "delete" and keys:
                target.pop(draw(st.sampled_from(keys)))
            elif action == "copy" and keys:
                target[key] = copy.deepcopy(target[draw(st.sampled_from(keys))])
            else:
                target[key] = draw(toml_values)
        elif target:
            i = draw(st.integers(0, len(target) - 1))
            if action == "delete":
                target.pop(i)
            elif action == "copy":
                target.append(copy.deepcopy(target[i]))
            else:
                target[i] = draw(toml_values)
        else:
            target.append(draw(toml_values))
    return data


@FUZZ
@given(
    text=st.text(st.characters(codec=None) | lone_surrogates, max_size=200)
    | mixed(st.sampled_from(["[", "]", "[[rooms]]", "=", '"', "\n", "key", "label", "homeserver"]))
)
@example(text="\ud800")
@example(text="[a]\n[a]\n")
@example(text="[[[[[[[[[[[[[[[[[[[[")
def test_config_parser_answers_a_config_or_listed_errors_for_any_text(text: str) -> None:
    """Random text: a Config, or ConfigError whose every error starts with its key path or
    the source name; never another exception."""
    check_config(text)


@FUZZ_SLOW
@given(data=config_documents())
@example(data={**MINIMAL_CONFIG, "bot": {"timezone": "Europe"}})
@example(data={**MINIMAL_CONFIG, "bot": {"timezone": "a" * 300}})
@example(data={**MINIMAL_CONFIG, "bot": {"sweep_interval": "99999999999999999999d"}})
@example(data={**MINIMAL_CONFIG, "ingest": {"feeds": [{"key": [1]}, {"key": [1]}]}})
@example(data={**MINIMAL_CONFIG, "metrics": {"bind": "h:²"}})
@example(data={"homeserver": {**MINIMAL_CONFIG["homeserver"], "a\nb: fake": 1, "": 2}})
@example(
    data={
        **MINIMAL_CONFIG,
        "rooms": [
            {
                "key": "a",
                "name": "A",
                "label": "NATO SECRET",
                "audience": ["e" + "\u0301\u0316" * 3000],
            }
        ],
    }
)
@example(
    data={
        **MINIMAL_CONFIG,
        "bot": {"caveats": ["e" + "\u0301\u0316" * 3000]},
        "rooms": [{"key": "a", "name": "A", "label": "NATO SECRET"}],
    }
)
def test_config_parser_answers_a_config_or_listed_errors_for_any_document(
    data: dict[str, Any],
) -> None:
    """Structured TOML: valid sections with random keys and values mixed in; valid configs
    keep their promises (unique room keys, references that resolve)."""
    check_config(toml_document(data))


def test_config_example_round_trips_through_the_toml_writer() -> None:
    """The structured strategy's writer is faithful: the example survives it."""
    assert tomllib.loads(toml_document(BASE_CONFIG)) == BASE_CONFIG
    assert check_config(toml_document(BASE_CONFIG)) is not None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("\x01" * MEGABYTE, f"{SOURCE}: not valid TOML"),
        ("[" * MEGABYTE, f"{SOURCE}: not valid TOML"),
        (
            toml_document(
                {**MINIMAL_CONFIG, "rooms": [{"key": "a", "name": "A", "label": "S" * MEGABYTE}]}
            ),
            "rooms[0].label: marking too long",
        ),
        (
            toml_document({**MINIMAL_CONFIG, "bot": {"timezone": "Europe/" + "x" * MEGABYTE}}),
            "bot.timezone: unknown timezone",
        ),
        (
            toml_document({**MINIMAL_CONFIG, "x" * MEGABYTE: 1}),
            "unknown key",
        ),
    ],
    ids=["control", "brackets", "label", "timezone", "key"],
)
def test_a_megabyte_config_is_answered_quickly(text: str, expected: str) -> None:
    """A huge file, key or value is one clear error at its key path, in about no time."""
    started = time.perf_counter()
    with pytest.raises(ConfigError) as info:
        parse_config(text, SOURCE)
    assert time.perf_counter() - started < FAST * 2
    assert_config_errors(info.value)
    assert any(expected in e for e in info.value.errors), info.value.errors[:3]


def test_a_megabyte_comment_is_still_a_valid_config() -> None:
    """Size alone is not an error: only what the values say."""
    text = toml_document(MINIMAL_CONFIG) + "# " + "<script>" * (MEGABYTE // 8) + "\n"
    assert check_config(text) is not None


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"bot": {"timezone": "Europe"}}, "bot.timezone: unknown timezone 'Europe'"),
        ({"bot": {"sweep_interval": "99999999999999d"}}, "bot.sweep_interval: bad duration"),
        ({"ingest": {"feeds": [{"key": [1]}, {"key": [1]}]}}, "ingest.feeds[0].key:"),
        ({"metrics": {"bind": "h:²"}}, "metrics.bind: bad bind address 'h:²'"),
        ({"homeserver": {**MINIMAL_CONFIG["homeserver"], "a\nb": 1}}, 'homeserver."a\\nb": '),
    ],
    ids=[
        "timezone-folder",
        "duration-overflow",
        "unhashable-feed-key",
        "digit-port",
        "newline-key",
    ],
)
def test_config_bugs_found_by_fuzzing_are_reported_as_errors(
    data: dict[str, Any], expected: str
) -> None:
    """Each of these crashed parse_config (IsADirectoryError, OverflowError, TypeError) or
    gave a muddled message or key path before the fix."""
    with pytest.raises(ConfigError) as info:
        parse_config(toml_document({**MINIMAL_CONFIG, **data}), SOURCE)
    assert_config_errors(info.value)
    assert any(e.startswith(expected) for e in info.value.errors), info.value.errors
