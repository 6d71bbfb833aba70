"""The gate verifies register rows with the register's public key (`register_key`).

An attacker who can write the bot's database (but holds no data key) must not get anyone
into a managed room: a clearance row inserted or raised with SQL, or a room row changed,
counts for nothing, and the refusal names the row. First the key's config (parsing, the
printed entry, the registers file the test homeservers read), then the rules without
Synapse, then a real Synapse running the gate."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from bot.config import parse_config
from bot.devtools.botenv import SECRETS, BotEnv
from bot.devtools.devserver import DevServer, DevServerError, RegisteredUser
from bot.gate.config import (
    GateConfigError,
    RegisterSpec,
    module_entry,
    parse_gate_config,
    read_registers_file,
    register_entry,
)
from bot.gate.rules import Gate, Register, RoomLabel
from bot.storage import Origin, RoomRecord, Store, audit_key_from
from bot.storage.migrate import upgrade
from bot.storage.store import register_public_key
from policy import parse_marking
from policy.ids import RoomId, RoomKey, UserId
from tests.matrix_harness import MakeUser
from tests.test_gate import _call, _invite, _membership, _q, _refused, _stolen_login

BOT = UserId("@liaison:hs")
ROOM = "!nato:hs"
LABEL = RoomLabel(True, BOT)
DATA_KEY = "register-key-test-data-key-0123456789abcdef"
KEY = register_public_key(DATA_KEY)
UNVERIFIED = "does not verify (altered in the database?)"


# ------------------------------------------------------------ config


def test_register_key_is_read_flat_listed_and_from_a_registers_file(tmp_path: Path) -> None:
    flat = parse_gate_config(
        {"bot_user_id": BOT, "database": "sqlite:////r.db", "register_key": f" {KEY} "}
    )
    assert flat.static_registers()[0].register_key == KEY, "whitespace around it is dropped"
    listed = parse_gate_config(
        {"registers": [{"bot_user_id": BOT, "database": "sqlite:////r.db", "register_key": KEY}]}
    )
    assert listed.static_registers()[0].register_key == KEY
    path = tmp_path / "registers.json"
    path.write_text(json.dumps([{"bot_user_id": BOT, "database": "/x", "register_key": KEY}]))
    with pytest.raises(GateConfigError, match=r"registers.json\[0\].database"):
        read_registers_file(path)
    path.write_text(
        json.dumps([{"bot_user_id": BOT, "database": "sqlite:////r.db", "register_key": KEY}])
    )
    assert read_registers_file(path)[0].register_key == KEY
    none = parse_gate_config({"bot_user_id": BOT, "database": "sqlite:////r.db"})
    assert none.static_registers()[0].register_key is None, "optional: old deployments load"


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        (
            {"bot_user_id": BOT, "database": "sqlite:////r.db", "register_key": "ed25519:abc"},
            "config.register_key: a register key is 'ed25519:' and 32 bytes in base64",
        ),
        (
            {"bot_user_id": BOT, "database": "sqlite:////r.db", "register_key": KEY[8:]},
            "config.register_key: a register key is 'ed25519:'",
        ),
        (
            {"bot_user_id": BOT, "database": "sqlite:////r.db", "register_key": 42},
            "config.register_key: expected the register's public key as text",
        ),
        (
            {
                "registers": [
                    {"bot_user_id": BOT, "database": "sqlite:////r.db", "register_key": ""}
                ]
            },
            "config.registers[0].register_key: a register key is 'ed25519:'",
        ),
        ({"register_key": KEY, "registers_file": "/r.json"}, "register_key belongs to the"),
    ],
)
def test_a_malformed_register_key_is_refused_at_parse_naming_the_key(
    raw: Any, expected: str
) -> None:
    with pytest.raises(GateConfigError) as info:
        parse_gate_config(raw, "config")
    assert expected in str(info.value)


def test_the_error_says_where_the_key_comes_from() -> None:
    with pytest.raises(GateConfigError) as info:
        parse_gate_config(
            {"bot_user_id": BOT, "database": "sqlite:////r.db", "register_key": "ed25519:abc"}
        )
    assert "not 'ed25519:abc'; liaison-bot gate synapse-config prints it" in str(info.value)


def test_synapse_refuses_to_start_on_a_malformed_register_key() -> None:
    pytest.importorskip("synapse")
    from synapse.config._base import ConfigError

    from bot.gate import LiaisonGate

    with pytest.raises(ConfigError, match=r"LiaisonGate\].config.register_key: a register key"):
        LiaisonGate.parse_config(
            {"bot_user_id": BOT, "database": "sqlite:////r.db", "register_key": "ed25519:x"}
        )


CONFIG = """
[homeserver]
url = "http://127.0.0.1:8008"
user_id = "@liaison:example.org"
password_env = "LIAISON_PASSWORD"

[storage]
database_url = "sqlite:///data/liaison.db"

[[rooms]]
key = "nato-s"
name = "NATO SECRET liaison"
label = "NATO SECRET"
"""


def test_the_printed_entry_carries_the_key_the_data_key_gives(tmp_path: Path) -> None:
    import yaml
    from click.testing import CliRunner

    from bot.cli import main

    config = parse_config(CONFIG)
    config._base_dir = tmp_path
    entry = register_entry(config, data_key=DATA_KEY)
    assert entry["register_key"] == KEY
    assert DATA_KEY not in json.dumps(entry), "only the public key is written"
    assert parse_gate_config(module_entry([entry])["config"]).register_key == KEY

    path = tmp_path / "config.toml"
    path.write_text(CONFIG)
    args = ["gate", "synapse-config", "--config", str(path)]
    keyed = CliRunner(env={"LIAISON_DATA_KEY": DATA_KEY}).invoke(main, args)
    assert keyed.exit_code == 0, keyed.output
    printed = yaml.safe_load(keyed.stdout)["modules"][0]["config"]
    assert printed["register_key"] == KEY
    assert DATA_KEY not in keyed.output
    assert "register_key" not in keyed.stderr
    unkeyed = CliRunner(env={"LIAISON_DATA_KEY": ""}).invoke(main, args)
    assert unkeyed.exit_code == 0, unkeyed.output
    assert "register_key" not in yaml.safe_load(unkeyed.stdout)["modules"][0]["config"]
    assert "the data key (LIAISON_DATA_KEY) is not readable, so no register_key" in unkeyed.stderr
    assert "anyone who can write the database can grant clearances" in unkeyed.stderr


def test_the_test_homeservers_registers_file_carries_the_key(tmp_path: Path) -> None:
    server = DevServer(tmp_path / "hs")  # never started: only its registers file is written
    server.add_register({"bot_user_id": BOT, "database": "sqlite:////r.db"}, data_key=DATA_KEY)
    (entry,) = read_registers_file(server.gate_registers_path)
    assert entry.register_key == KEY
    assert DATA_KEY not in server.gate_registers_path.read_text()
    with pytest.raises(
        DevServerError, match="its register_key differs from the one data_key gives"
    ):
        server.add_register(
            {"bot_user_id": BOT, "database": "sqlite:////r.db", "register_key": KEY},
            data_key="another-data-key-0123456789abcdef",
        )


# ------------------------------------------------------------ the rules, without Synapse


def _room(room_id: str = ROOM, label: str = "NATO SECRET") -> RoomRecord:
    return RoomRecord(
        key=RoomKey("nato-s"),
        name="NATO SECRET liaison",
        label=label,
        scheme="NATO",
        rank=parse_marking(label).rank,
        audience=("DEU", "POL"),
        room_id=RoomId(room_id),
        origin=Origin.CONFIG,
    )


@pytest.fixture
def keyed_url(database_url: str) -> Iterator[str]:
    """A register written as the bot writes it: every row signed."""
    upgrade(database_url)
    store = Store.from_url(database_url, audit_key_from(DATA_KEY))
    store.key_audit_log()
    store.save_room(_room())
    store.grant("t", "@cleared:hs", "NATO", "NATO SECRET", 3, nationality="POL")
    store.grant("t", "@low:hs", "NATO", "NATO RESTRICTED", 1, nationality="POL")
    store.close()
    yield database_url


def _sql(url: str, statement: str, **params: Any) -> None:
    """What an attacker with write access to the database (and no data key) can do."""
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            conn.execute(text(statement), params)
    finally:
        engine.dispose()


def _forge_clearance(url: str, user_id: str, level: str = "NATO SECRET") -> None:
    """A clearance row inserted with SQL, carrying a real signature copied from another
    row (the best a database writer can do without the key)."""
    _sql(
        url,
        "INSERT INTO clearances (user_id, nationality, created_at, updated_at, signature) "
        "VALUES (:user, 'POL', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, "
        "(SELECT signature FROM clearances WHERE user_id = '@cleared:hs'))",
        user=user_id,
    )
    _sql(
        url,
        "INSERT INTO clearance_grants (clearance_id, scheme, level, rank, granted_at) "
        "SELECT id, 'NATO', :level, :rank, CURRENT_TIMESTAMP FROM clearances "
        "WHERE user_id = :user",
        user=user_id,
        level=level,
        rank=parse_marking(level).rank,
    )


def _raise_grant(url: str, user_id: str, level: str) -> None:
    _sql(
        url,
        "UPDATE clearance_grants SET level = :level, rank = :rank WHERE clearance_id = "
        "(SELECT id FROM clearances WHERE user_id = :user)",
        user=user_id,
        level=level,
        rank=parse_marking(level).rank,
    )


def _gate(url: str, register_key: str | None = KEY) -> tuple[Gate, Register]:
    spec = RegisterSpec(bot_user_id=BOT, database=url, register_key=register_key)
    register = Register(spec, ttl=2.0)
    return Gate(lambda: {BOT: register}, today=lambda: date(2026, 12, 3)), register


def test_a_clearance_row_that_does_not_verify_admits_nobody(keyed_url: str) -> None:
    gate, register = _gate(keyed_url)
    assert gate.may_enter("@cleared:hs", ROOM, LABEL), "rows the bot signed verify"
    _forge_clearance(keyed_url, "@mallory:hs")
    forged = gate.may_enter("@mallory:hs", ROOM, LABEL)
    assert not forged
    assert f"the register row of @mallory:hs {UNVERIFIED}" in forged.reason
    assert "nato-s (NATO SECRET)" in forged.reason
    _raise_grant(keyed_url, "@low:hs", "NATO SECRET")
    raised = gate.may_enter("@low:hs", ROOM, LABEL)
    assert not raised and f"the register row of @low:hs {UNVERIFIED}" in raised.reason
    # the note of a refused row is not carried to the next read
    nobody = gate.may_enter("@nobody:hs", ROOM, LABEL)
    assert not nobody and "no clearance on record for @nobody:hs" in nobody.reason
    assert gate.may_enter("@cleared:hs", ROOM, LABEL)
    register.close()


def test_a_room_row_that_does_not_verify_closes_the_room_labelled_or_not(
    keyed_url: str,
) -> None:
    gate, register = _gate(keyed_url)
    # lowered with SQL, to let the RESTRICTED-cleared in
    _sql(keyed_url, "UPDATE rooms SET label = 'NATO RESTRICTED', rank = 1 WHERE key = 'nato-s'")
    for label in (LABEL, RoomLabel(False)):
        refused = gate.may_enter("@low:hs", ROOM, label)
        assert not refused
        assert f"the register row of room nato-s ({ROOM}) {UNVERIFIED}" in refused.reason
        assert f"{ROOM} admits nobody until it does" in refused.reason
        assert not gate.may_enter("@cleared:hs", ROOM, label)
    # nor may anyone but the bot change its protected state meanwhile
    assert not gate.may_set_state("@mallory:hs", ROOM, "m.room.join_rules", RoomLabel(False))
    # a room row pointed with SQL at another room does not make that one managed by it
    _sql(keyed_url, "UPDATE rooms SET room_id = '!other:hs' WHERE key = 'nato-s'")
    refused = gate.may_enter("@low:hs", "!other:hs", LABEL)
    assert not refused and UNVERIFIED in refused.reason
    register.close()


def test_without_a_register_key_rows_are_honoured_and_the_gate_says_so(
    keyed_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """What a deployment from before signed rows keeps until it sets the key: the gate
    works as it did, and warns whenever it opens such a register."""
    with caplog.at_level(logging.WARNING, logger="bot.gate.rules"):
        gate, register = _gate(keyed_url, register_key=None)
    assert f"register of {BOT} has no register_key: its rows are NOT verified" in caplog.text
    _forge_clearance(keyed_url, "@mallory:hs")
    assert gate.may_enter("@mallory:hs", ROOM, LABEL), "unverified: the forged row counts"
    register.close()
    with caplog.at_level(logging.WARNING, logger="bot.gate.rules"):
        caplog.clear()
        keyed, register = _gate(keyed_url)
    assert "NOT verified" not in caplog.text
    assert not keyed.may_enter("@mallory:hs", ROOM, LABEL)
    register.close()


def test_a_register_key_of_another_bot_verifies_nothing(keyed_url: str) -> None:
    """A gate given the wrong key (another bot's, or a changed data key) fails closed."""
    gate, register = _gate(keyed_url, register_public_key("another-data-key-0123456789abcdef"))
    refused = gate.may_enter("@cleared:hs", ROOM, LABEL)
    assert not refused and UNVERIFIED in refused.reason
    register.close()


# ------------------------------------------------------------ a real Synapse with the gate


@pytest.fixture
def keyed_gate(bot_env: BotEnv) -> BotEnv:
    """The module's bot, its register entry carrying register_key, as `gate synapse-config`
    prints it for a production homeserver: the gate verifies every row it reads."""
    entry = register_entry(bot_env.config)
    bot_env.server.add_register(entry, data_key=SECRETS.data_key)
    written = json.loads(bot_env.server.gate_registers_path.read_text())
    (ours,) = [e for e in written if e["bot_user_id"] == bot_env.bot_user.user_id]
    assert ours["register_key"] == register_public_key(SECRETS.data_key)
    return bot_env


async def _grant(env: BotEnv, user: RegisteredUser, level: str) -> None:
    assert env.bot is not None
    await env.bot.commands.grant(
        UserId(env.admin.user_id),
        UserId(user.user_id),
        level,
        nationality="DEU",
        expires=None,
        caveats=(),
    )


def _db(env: BotEnv) -> str:
    return env.config.database_url()


async def test_a_clearance_row_inserted_with_sql_lets_nobody_in(
    keyed_gate: BotEnv, make_user: MakeUser
) -> None:
    env = keyed_gate
    server, room_id = env.server, env.room_id("deu")
    cleared, mallory = make_user("cleared"), make_user("mallory")
    await _grant(env, cleared, "DEU GEHEIM")  # a real row, whose signature is copied
    _sql(
        _db(env),
        "INSERT INTO clearances (user_id, nationality, created_at, updated_at, signature) "
        "VALUES (:user, 'DEU', CURRENT_TIMESTAMP, CURRENT_TIMESTAMP, "
        "(SELECT signature FROM clearances WHERE user_id = :cleared))",
        user=mallory.user_id,
        cleared=cleared.user_id,
    )
    _sql(
        _db(env),
        "INSERT INTO clearance_grants (clearance_id, scheme, level, rank, granted_at) "
        "SELECT id, 'DEU', 'DEU GEHEIM', :rank, CURRENT_TIMESTAMP FROM clearances "
        "WHERE user_id = :user",
        user=mallory.user_id,
        rank=parse_marking("DEU GEHEIM").rank,
    )
    reason = f"the register row of {mallory.user_id} {UNVERIFIED}"
    token = await _stolen_login(server, env.bot_user)
    path = f"/_matrix/client/v3/rooms/{_q(room_id)}/invite"
    error = await _refused(server, "POST", path, {"user_id": mallory.user_id}, token)
    assert reason in error and "deu (DEU GEHEIM)" in error
    # nor by a server admin forcing the join (the event check, past the spam checker)
    hsadmin = make_user("hsadmin", admin=True)
    error = await _refused(
        server,
        "POST",
        f"/_synapse/admin/v1/join/{_q(room_id)}",
        {"user_id": mallory.user_id},
        hsadmin.access_token,
    )
    assert reason in error
    assert await _membership(server, token, room_id, mallory.user_id) is None


async def test_a_clearance_row_raised_with_sql_lets_nobody_in(
    keyed_gate: BotEnv, make_user: MakeUser
) -> None:
    env = keyed_gate
    server, room_id = env.server, env.room_id("deu")
    low = make_user("low")
    await _grant(env, low, "DEU VS-VERTRAULICH")
    token = await _stolen_login(server, env.bot_user)
    path = f"/_matrix/client/v3/rooms/{_q(room_id)}/invite"
    error = await _refused(server, "POST", path, {"user_id": low.user_id}, token)
    assert "is below the room's DEU GEHEIM" in error, "the signed row, as granted"
    _sql(
        _db(env),
        "UPDATE clearance_grants SET level = 'DEU GEHEIM', rank = :rank WHERE clearance_id = "
        "(SELECT id FROM clearances WHERE user_id = :user)",
        user=low.user_id,
        rank=parse_marking("DEU GEHEIM").rank,
    )
    error = await _refused(server, "POST", path, {"user_id": low.user_id}, token)
    assert f"the register row of {low.user_id} {UNVERIFIED}" in error
    assert await _membership(server, token, room_id, low.user_id) is None


async def test_a_properly_granted_user_still_gets_in(
    keyed_gate: BotEnv, make_user: MakeUser
) -> None:
    env = keyed_gate
    server, room_id = env.server, env.room_id("deu")
    member = make_user("member")
    await _grant(env, member, "DEU GEHEIM")
    token = await _stolen_login(server, env.bot_user)
    await _invite(server, token, room_id, member.user_id)
    await _call(server, "POST", f"/_matrix/client/v3/join/{_q(room_id)}", {}, member.access_token)
    assert await _membership(server, token, room_id, member.user_id) == "join"
