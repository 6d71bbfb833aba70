"""The homeserver gate's decisions and config, without Synapse: a real (SQLite, and where
reachable PostgreSQL) register read through the read-only reader."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, date, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError

import commands.slash
from bot.config import parse_config
from bot.gate.config import (
    GateConfigError,
    RegisterSpec,
    module_entry,
    parse_gate_config,
    read_registers_file,
    register_entry,
)
from bot.gate.rules import COMMANDS_EVENT, LABEL_EVENT, UNLABELLED, Gate, Register, RoomLabel
from bot.storage import Origin, RoomRecord, Store, audit_key_from
from bot.storage.migrate import upgrade
from bot.storage.reader import RegisterReader
from bot.storage.store import register_public_key
from policy import make_room, parse_marking
from policy.ids import RoomId, RoomKey, UserId
from tests.pg import fresh_schema

BOT = UserId("@liaison:hs")
ROOM = "!nato:hs"
ADMIN_ROOM = "!admins:hs"
LABEL = RoomLabel(True, BOT)
# The register is written as the bot writes it, signed with the key derived from its data
# key, and read as a production gate reads it, verifying each row with the public half.
DATA_KEY = "gate-rules-data-key-0123456789abcdef"
REGISTER_KEY = register_public_key(DATA_KEY)


def _store(url: str) -> Store:
    store = Store.from_url(url, audit_key_from(DATA_KEY))
    store.key_audit_log()
    return store


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _fill(store: Store) -> None:
    for key, room_id, label in (
        ("nato-s", ROOM, "NATO SECRET"),
        ("admins", ADMIN_ROOM, "NATO RESTRICTED"),
    ):
        store.save_room(
            RoomRecord(
                key=RoomKey(key),
                name=key,
                label=label,
                scheme="NATO",
                rank=3 if label == "NATO SECRET" else 1,
                audience=("BEL", "DEU", "POL"),
                room_id=RoomId(room_id),
                origin=Origin.CONFIG,
            )
        )
    store.grant("t", "@cleared:hs", "NATO", "NATO SECRET", 3, nationality="POL")
    store.grant("t", "@low:hs", "NATO", "NATO RESTRICTED", 1, nationality="POL")
    store.grant("t", "@sec:hs", "NATO", "NATO SECRET", 3, nationality="DEU")


@pytest.fixture(params=["sqlite", "postgresql"])
def register_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'register.db'}"
        upgrade(url)
        store = _store(url)
        _fill(store)
        store.close()
        yield url
        return
    with fresh_schema() as url:
        upgrade(url)
        store = _store(url)
        _fill(store)
        store.close()
        yield url


def _gate(url: str, clock: Clock | None = None, **spec: Any) -> tuple[Gate, Register]:
    spec.setdefault("register_key", REGISTER_KEY)
    register = Register(
        RegisterSpec(bot_user_id=BOT, database=url, **spec), ttl=2.0, clock=clock or Clock()
    )
    return Gate(lambda: {BOT: register}, today=lambda: date(2026, 12, 3)), register


def test_the_rules_of_the_bot_decide(register_url: str) -> None:
    gate, _ = _gate(register_url)
    allowed = gate.may_enter("@cleared:hs", ROOM, LABEL)
    assert allowed and "grant NATO SECRET covers NATO SECRET" in allowed.reason
    low = gate.may_enter("@low:hs", ROOM, LABEL)
    assert not low and "grant NATO RESTRICTED is below the room's NATO SECRET" in low.reason
    nobody = gate.may_enter("@nobody:hs", ROOM, LABEL)
    assert not nobody and "no clearance on record for @nobody:hs" in nobody.reason
    assert "nato-s (NATO SECRET)" in nobody.reason
    assert gate.may_enter(BOT, ROOM, LABEL), "the bot itself always enters its rooms"


def test_rooms_that_are_not_managed_are_untouched(register_url: str) -> None:
    gate, _ = _gate(register_url)
    verdict = gate.may_enter("@nobody:hs", "!elsewhere:hs", UNLABELLED)
    assert verdict and "not a managed room" in verdict.reason
    # ...but a room the register lists is managed even before it carries the label
    assert not gate.may_enter("@nobody:hs", ROOM, UNLABELLED)
    assert gate.may_set_state("@someone:hs", "!elsewhere:hs", "m.room.power_levels", UNLABELLED)


def test_a_label_from_an_unknown_sender_or_a_room_off_the_register_is_refused(
    register_url: str,
) -> None:
    gate, _ = _gate(register_url)
    forged = gate.may_enter("@cleared:hs", "!forged:hs", RoomLabel(True, "@mallory:hs"))
    assert not forged and "set by @mallory:hs, which is not a bot" in forged.reason
    missing = gate.may_enter("@cleared:hs", "!notlisted:hs", LABEL)
    assert not missing and "its register does not list the room" in missing.reason


def test_admin_room_admits_admins_only(register_url: str) -> None:
    gate, _ = _gate(register_url, admins=["@sec:hs"], admin_room="admins")
    assert gate.may_enter("@sec:hs", ADMIN_ROOM, LABEL)
    refused = gate.may_enter("@cleared:hs", ADMIN_ROOM, LABEL)
    assert not refused and "is not an admin" in refused.reason


def test_revoked_expired_and_closed(register_url: str) -> None:
    store = _store(register_url)
    try:
        store.revoke("t", "@low:hs")
        store.grant(
            "t", "@old:hs", "NATO", "NATO SECRET", 3, nationality="POL", expires=date(2026, 1, 1)
        )
        record = store.room("nato-s")
        assert record is not None
        store.save_room(
            RoomRecord(
                key=RoomKey("closed"),
                name="closed",
                label="NATO SECRET",
                scheme="NATO",
                rank=3,
                audience=("POL",),
                room_id=RoomId("!closed:hs"),
                origin=Origin.CHAT,
                closed_at=datetime(2026, 11, 1, tzinfo=UTC),
            )
        )
    finally:
        store.close()
    gate, _ = _gate(register_url)
    assert "revoked" in gate.may_enter("@low:hs", ROOM, LABEL).reason
    assert "expired on 2026-01-01" in gate.may_enter("@old:hs", ROOM, LABEL).reason
    closed = gate.may_enter("@cleared:hs", "!closed:hs", LABEL)
    assert not closed and "was closed on 2026-11-01" in closed.reason


def test_a_grant_counts_at_once_and_a_revocation_within_the_ttl(register_url: str) -> None:
    clock = Clock()
    gate, _ = _gate(register_url, clock)
    assert not gate.may_enter("@new:hs", ROOM, LABEL)
    store = _store(register_url)
    try:
        store.grant("t", "@new:hs", "NATO", "NATO SECRET", 3, nationality="POL")
        assert gate.may_enter("@new:hs", ROOM, LABEL), "a refusal is never cached"
        store.revoke("t", "@new:hs")
        assert gate.may_enter("@new:hs", ROOM, LABEL), "a positive read lives for the TTL"
        clock.now += 2.5
        assert not gate.may_enter("@new:hs", ROOM, LABEL)
    finally:
        store.close()


def test_an_unreadable_register_refuses_managed_rooms_only(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'gone.db'}"
    gate, _ = _gate(url)
    refused = gate.may_enter("@cleared:hs", ROOM, LABEL)
    assert not refused
    assert f"the clearance register of {BOT} cannot be read" in refused.reason
    assert "admits nobody until it can" in refused.reason
    assert gate.may_enter("@cleared:hs", "!plain:hs", UNLABELLED)
    assert not (tmp_path / "gone.db").exists(), "the reader must never create a register"


def test_an_unreachable_postgres_register_fails_within_seconds() -> None:
    gate, _ = _gate("postgresql+psycopg://gate@127.0.0.1:1/none")
    started = datetime.now(UTC)
    refused = gate.may_enter("@cleared:hs", ROOM, LABEL)
    assert not refused and "OperationalError" in refused.reason
    assert (datetime.now(UTC) - started).total_seconds() < 10


def test_protected_state(register_url: str) -> None:
    gate, _ = _gate(register_url)
    for event_type in ("m.room.power_levels", "m.room.join_rules", "m.room.encryption"):
        refused = gate.may_set_state("@cleared:hs", ROOM, event_type, LABEL)
        assert not refused and f"only {BOT} may change {event_type}" in refused.reason
        assert gate.may_set_state(BOT, ROOM, event_type, LABEL)
    assert gate.may_set_state("@cleared:hs", ROOM, "m.room.topic", LABEL)
    forged = gate.may_set_state("@mallory:hs", "!own:hs", LABEL_EVENT, UNLABELLED)
    assert not forged and "only a liaison bot may set" in forged.reason
    assert gate.may_set_state(BOT, "!new:hs", LABEL_EVENT, UNLABELLED)


def test_only_the_managing_bot_sets_the_commands_a_managed_room_offers(
    register_url: str,
) -> None:
    """A member who set the MSC4332 commands event could have clients offer commands the
    bot never declared; the bot's own content is no threat to the room's closure."""
    assert COMMANDS_EVENT == commands.slash.COMMANDS_EVENT  # one spelling, checked
    gate, _ = _gate(register_url)
    content = {"sigil": "!", "commands": []}
    refused = gate.may_set_state("@cleared:hs", ROOM, COMMANDS_EVENT, LABEL, content)
    assert not refused and f"only {BOT} may change {COMMANDS_EVENT}" in refused.reason
    assert gate.may_set_state(BOT, ROOM, COMMANDS_EVENT, LABEL, content)
    # elsewhere (a DM, a room nobody manages) the room's own power levels decide
    assert gate.may_set_state("@x:hs", "!plain:hs", COMMANDS_EVENT, UNLABELLED, content)
    # and power levels that would let others reach it are refused like any protected type
    levels = {"users": {BOT: 100}, "users_default": 0, "invite": 100, "kick": 100,
              "ban": 100, "redact": 100, "state_default": 100}  # fmt: skip
    assert gate.may_set_state(BOT, ROOM, "m.room.power_levels", LABEL, levels)
    opened = {**levels, "events": {COMMANDS_EVENT: 0}}
    refused = gate.may_set_state(BOT, ROOM, "m.room.power_levels", LABEL, opened)
    assert not refused and f"{COMMANDS_EVENT} (0)" in refused.reason


def test_the_reader_cannot_write(register_url: str) -> None:
    reader = RegisterReader.from_url(register_url)
    try:
        assert reader.clearance("@cleared:hs") is not None
        with pytest.raises(SQLAlchemyError), reader.engine.begin() as conn:
            conn.execute(text("DELETE FROM clearance_grants"))
        assert reader.clearance("@cleared:hs") is not None
    finally:
        reader.close()


# ------------------------------------------------------------ config


@pytest.mark.parametrize(
    ("raw", "expected"),
    [
        ({}, "no register to enforce"),
        ({"bot_user_id": BOT}, "bot_user_id and database go together"),
        (
            {"bot_user_id": "liaison", "database": "sqlite:////x.db"},
            "config.bot_user_id: bad Matrix user id",
        ),
        ({"bot_user_id": BOT, "database": "sqlite:///rel.db"}, "config.database: SQLite register"),
        ({"bot_user_id": BOT, "database": "mysql://x/y"}, "unsupported database 'mysql'"),
        ({"bot_user_id": BOT, "database": "sqlite:////x.db", "ttl": 3}, "unknown key 'ttl'"),
        (
            {"bot_user_id": BOT, "database": "sqlite:////x.db", "cache_ttl_seconds": 600},
            "cache_ttl_seconds",
        ),
        (
            {"registers": [{"bot_user_id": BOT}]},
            "config.registers[0].database: required key is missing",
        ),
        ({"registers_file": "gate.json"}, "config.registers_file: give an absolute path"),
        ("bot.db", "expected a mapping"),
    ],
)
def test_bad_config_names_the_key(raw: Any, expected: str) -> None:
    with pytest.raises(GateConfigError) as info:
        parse_gate_config(raw, "config")
    assert expected in str(info.value)


def test_module_parse_config_raises_synapse_config_error() -> None:
    pytest.importorskip("synapse")
    from synapse.config._base import ConfigError

    from bot.gate import LiaisonGate

    with pytest.raises(ConfigError, match=r"modules\[bot.gate.LiaisonGate\].config.database"):
        LiaisonGate.parse_config({"bot_user_id": BOT, "database": "nope"})


def test_registers_file_entries_are_validated(tmp_path: Path) -> None:
    path = tmp_path / "registers.json"
    assert read_registers_file(path) == []
    path.write_text(
        '[{"bot_user_id": "@a:hs", "database": "sqlite:////a.db"}, {"bot_user_id": "@b:hs"}]'
    )
    with pytest.raises(GateConfigError, match=r"registers.json\[1\].database: required key"):
        read_registers_file(path)
    path.write_text("{not json")
    with pytest.raises(GateConfigError, match="cannot read"):
        read_registers_file(path)


CONFIG = """
[homeserver]
url = "http://127.0.0.1:8008"
user_id = "@liaison:example.org"
password_env = "LIAISON_PASSWORD"

[storage]
database_url = "sqlite:///data/liaison.db"

[bot]
admins = ["@sec:example.org"]
admin_room = "nato-s"
caveats = ["ALPHA"]

[[rooms]]
key = "nato-s"
name = "NATO SECRET liaison"
label = "NATO SECRET"
"""


def test_the_entry_printed_from_a_bot_config_loads(tmp_path: Path) -> None:
    config = parse_config(CONFIG)
    config._base_dir = tmp_path
    entry = register_entry(config)
    # The admins, admin room and caveats are not copied: the bot publishes them into the
    # register (tests/test_gate_install.py).
    assert entry == {
        "bot_user_id": "@liaison:example.org",
        "database": f"sqlite:///{tmp_path / 'data' / 'liaison.db'}",
    }
    module = module_entry([entry])
    assert module["module"] == "bot.gate.LiaisonGate"
    assert parse_gate_config(module["config"]).static_registers()[0].caveats == []
    # an older homeserver.yaml that carries the copies still loads
    old = parse_gate_config({**entry, "admins": ["@sec:example.org"], "caveats": ["ALPHA"]})
    assert old.static_registers()[0].caveats == ["ALPHA"]


def test_cli_prints_the_homeserver_yaml_entry(tmp_path: Path) -> None:
    import yaml
    from click.testing import CliRunner

    from bot.cli import main

    path = tmp_path / "config.toml"
    path.write_text(CONFIG)
    result = CliRunner().invoke(main, ["gate", "synapse-config", "--config", str(path)])
    assert result.exit_code == 0, result.output
    printed = yaml.safe_load(result.stdout)
    (module,) = printed["modules"]
    assert module["module"] == "bot.gate.LiaisonGate"
    assert module["config"]["database"] == f"sqlite:///{tmp_path / 'data' / 'liaison.db'}"
    parse_gate_config(module["config"])  # what it prints, Synapse loads

    role = "postgresql+psycopg://liaison_gate@db.example.org/liaison"
    result = CliRunner().invoke(
        main, ["gate", "synapse-config", "--config", str(path), "--database", role]
    )
    assert yaml.safe_load(result.stdout)["modules"][0]["config"]["database"] == role
    result = CliRunner().invoke(
        main, ["gate", "synapse-config", "--config", str(path), "--database", "mysql://x/y"]
    )
    assert result.exit_code == 2
    assert "--database: database: unsupported database 'mysql'" in result.stderr


def test_the_documented_postgres_grants_are_enough() -> None:
    """The documented role (docs/gate.md): SELECT on the four register tables, the bot's
    published settings and the schema's revision. The gate must work with exactly that."""
    import secrets as _secrets

    from sqlalchemy import create_engine
    from sqlalchemy.engine import make_url

    with fresh_schema() as url:
        upgrade(url)
        store = _store(url)
        _fill(store)
        store.close()
        parsed = make_url(url)
        options = parsed.query["options"]
        assert isinstance(options, str)  # one value, the search path
        schema = options.split("=", 1)[1]
        role = f"gate_{_secrets.token_hex(4)}"
        admin = create_engine(url, isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE ROLE "{role}" LOGIN'))
            conn.execute(text(f'GRANT USAGE ON SCHEMA "{schema}" TO "{role}"'))
            conn.execute(
                text(
                    "GRANT SELECT ON rooms, clearances, clearance_grants, clearance_caveats, "
                    f'gate_settings, alembic_version TO "{role}"'
                )
            )
        try:
            gate, register = _gate(parsed.set(username=role).render_as_string(hide_password=False))
            assert gate.may_enter("@cleared:hs", ROOM, LABEL)
            assert not gate.may_enter("@low:hs", ROOM, LABEL)
            register.close()
        finally:
            with admin.connect() as conn:
                conn.execute(text(f'REVOKE ALL ON ALL TABLES IN SCHEMA "{schema}" FROM "{role}"'))
                conn.execute(text(f'REVOKE ALL ON SCHEMA "{schema}" FROM "{role}"'))
                conn.execute(text(f'DROP ROLE "{role}"'))
            admin.dispose()


def test_a_room_of_a_bot_on_another_homeserver_is_judged_there(register_url: str) -> None:
    register = Register(
        RegisterSpec(bot_user_id=BOT, database=register_url, register_key=REGISTER_KEY), ttl=2.0
    )
    gate = Gate(lambda: {BOT: register}, today=lambda: date(2026, 12, 3), server_name="hs")
    remote = RoomLabel(True, "@liaison:nato.example")
    verdict = gate.may_enter("@anyone:hs", "!r:nato.example", remote)
    assert verdict and "nato.example's gate judges it" in verdict.reason
    assert gate.may_set_state("@anyone:hs", "!r:nato.example", "m.room.power_levels", remote)
    # ...but a label from an unknown local account is a forgery, refused
    forged = gate.may_enter("@cleared:hs", "!f:hs", RoomLabel(True, "@mallory:hs"))
    assert not forged and "not a bot this homeserver's gate knows" in forged.reason


def test_the_rooms_servers_are_enforced(register_url: str) -> None:
    store = _store(register_url)
    try:
        store.save_room(
            RoomRecord(
                key=RoomKey("fed"),
                name="fed",
                label="NATO SECRET",
                scheme="NATO",
                rank=3,
                audience=("BEL", "DEU", "POL"),
                room_id=RoomId("!fed:hs"),
                origin=Origin.CONFIG,
                servers=("hs", "nato.example"),
            )
        )
        store.grant("t", "@far:elsewhere.example", "NATO", "NATO SECRET", 3, nationality="POL")
        store.grant("t", "@near:nato.example", "NATO", "NATO SECRET", 3, nationality="POL")
    finally:
        store.close()
    gate, _ = _gate(register_url)
    assert gate.may_enter("@near:nato.example", "!fed:hs", LABEL)
    refused = gate.may_enter("@far:elsewhere.example", "!fed:hs", LABEL)
    assert not refused
    assert (
        "homeserver elsewhere.example is not allowed in the room (allowed: hs, nato.example)"
        in refused.reason
    )


def test_even_the_bot_cannot_open_the_room_or_hand_out_power(register_url: str) -> None:
    """A thief with the bot's token, or the admin API's make_room_admin (which sends as the
    room's most powerful local member), must not be able to open a managed room."""
    gate, _ = _gate(register_url)
    bot_levels = {"users": {BOT: 100}, "users_default": 0, "invite": 100, "kick": 100,
                  "ban": 100, "redact": 100, "state_default": 100}  # fmt: skip
    assert gate.may_set_state(BOT, ROOM, "m.room.power_levels", LABEL, bot_levels)
    raised = {**bot_levels, "users": {BOT: 100, "@cleared:hs": 100}}
    refused = gate.may_set_state(BOT, ROOM, "m.room.power_levels", LABEL, raised)
    assert not refused and "@cleared:hs would hold power only the bot may hold" in refused.reason
    lowered = {**bot_levels, "invite": 0}
    assert (
        "users_default 0 reaches the power"
        in gate.may_set_state(BOT, ROOM, "m.room.power_levels", LABEL, lowered).reason
    )
    public = gate.may_set_state(BOT, ROOM, "m.room.join_rules", LABEL, {"join_rule": "public"})
    assert not public and "join_rule must stay 'invite', not 'public'" in public.reason
    assert gate.may_set_state(BOT, ROOM, "m.room.join_rules", LABEL, {"join_rule": "invite"})
    for event_type in ("m.room.tombstone", "m.room.third_party_invite"):
        assert not gate.may_set_state("@cleared:hs", ROOM, event_type, LABEL, {})
    # outside managed rooms the content is nobody's business but the room's
    assert gate.may_set_state(
        "@x:hs", "!plain:hs", "m.room.join_rules", UNLABELLED, {"join_rule": "public"}
    )


def test_a_room_the_register_lists_is_judged_here_whoever_set_its_label(
    register_url: str,
) -> None:
    register = Register(
        RegisterSpec(bot_user_id=BOT, database=register_url, register_key=REGISTER_KEY), ttl=2.0
    )
    gate = Gate(lambda: {BOT: register}, today=lambda: date(2026, 12, 3), server_name="hs")
    odd = RoomLabel(True, "@liaison:elsewhere.example")
    refused = gate.may_enter("@nobody:hs", ROOM, odd)
    assert not refused and "no clearance on record" in refused.reason
    assert not gate.may_set_state("@nobody:hs", ROOM, "m.room.power_levels", odd, {})


# ------------------------------------------------------------ issue 24, item 3: content


def _bot_levels(**changes: Any) -> dict[str, Any]:
    """What the bot itself writes (bot.services.rooms.power_levels), changed by `changes`;
    a value of None leaves the key out."""
    from bot.services.rooms import power_levels

    content = power_levels(BOT)
    for key, value in changes.items():
        if value is None:
            content.pop(key, None)
        else:
            content[key] = value
    return content


def test_what_the_bot_writes_passes(register_url: str) -> None:
    from bot.services.rooms import Desired, power_levels, server_acl

    gate, _ = _gate(register_url)
    for levels in (power_levels(BOT), power_levels(BOT, bot_is_creator=True)):
        assert gate.may_set_state(BOT, ROOM, "m.room.power_levels", LABEL, levels)
    room = make_room(parse_marking("NATO SECRET"), None, ("hs", "127.0.0.1:8448"))
    for (event_type, _key), content in Desired.of("x", room).events.items():
        verdict = gate.may_set_state(BOT, ROOM, event_type, LABEL, content)
        assert verdict, verdict.reason
    assert gate.may_set_state(BOT, ROOM, "m.room.server_acl", LABEL, server_acl(["hs"]))


def test_a_missing_invite_level_is_the_specs_0(register_url: str) -> None:
    """The spec (and Synapse) read a power-levels content without `invite` as invite 0:
    everyone could invite. It was read as 50."""
    gate, _ = _gate(register_url)
    refused = gate.may_set_state(BOT, ROOM, "m.room.power_levels", LABEL, _bot_levels(invite=None))
    assert not refused
    assert "users_default 0 reaches the power to act on others" in refused.reason
    assert "invite 0 (absent: the spec's default)" in refused.reason
    # kick, ban, redact and state_default default to 50: above users_default 0, but not
    # above a member listed at 50
    for key in ("kick", "ban", "redact", "state_default"):
        content = _bot_levels(**{key: None}, users={BOT: 100, "@cleared:hs": 50})
        verdict = gate.may_set_state(BOT, ROOM, "m.room.power_levels", LABEL, content)
        assert not verdict and "@cleared:hs would hold power" in verdict.reason, key


@pytest.mark.parametrize(
    "event_type",
    [
        "m.room.join_rules",
        "m.room.power_levels",
        "m.room.server_acl",
        "m.room.history_visibility",
        "m.room.encryption",
        "m.room.guest_access",
        "m.room.tombstone",
        "m.room.third_party_invite",
        LABEL_EVENT,
    ],
)
def test_the_events_map_cannot_hand_members_power_over_protected_state(
    register_url: str, event_type: str
) -> None:
    gate, _ = _gate(register_url)
    events = {**_bot_levels()["events"], event_type: 0}
    refused = gate.may_set_state(
        BOT, ROOM, "m.room.power_levels", LABEL, _bot_levels(events=events)
    )
    assert not refused
    assert f"users_default (0) would reach the level to change {event_type} (0)" in refused.reason
    # a member listed at 10 reaches an entry of 10; state_default is the level of a
    # protected type the map leaves out
    events = {**_bot_levels()["events"], event_type: 10}
    users = {BOT: 100, "@cleared:hs": 10}
    content = _bot_levels(events=events, users=users)
    refused = gate.may_set_state(BOT, ROOM, "m.room.power_levels", LABEL, content)
    assert not refused and f"@cleared:hs (10) would reach the level to change {event_type}" in (
        refused.reason
    )
    events.pop(event_type)
    content = _bot_levels(events=events, users=users, state_default=10, invite=50, kick=50,
                          ban=50, redact=50)  # fmt: skip
    refused = gate.may_set_state(BOT, ROOM, "m.room.power_levels", LABEL, content)
    assert not refused
    assert "@cleared:hs would hold power only the bot may hold (>= 10)" in refused.reason


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        ({"invite": True}, "invite is not an integer: True"),
        ({"kick": 1.5}, "kick is not an integer: 1.5"),
        ({"events": ["m.room.join_rules"]}, "events is not an object"),
        ({"users": {BOT: 100, "@cleared:hs": "lots"}}, "users[@cleared:hs] is not an integer"),
        ({"events": {"m.room.join_rules": None}}, "events[m.room.join_rules] is not an integer"),
    ],
)
def test_power_levels_of_the_wrong_shape_are_refused(
    register_url: str, change: dict[str, Any], expected: str
) -> None:
    gate, _ = _gate(register_url)
    refused = gate.may_set_state(BOT, ROOM, "m.room.power_levels", LABEL, _bot_levels(**change))
    assert not refused and expected in refused.reason
    # ...but a string of digits is a level in room versions before 10, as Synapse reads it
    assert gate.may_set_state(BOT, ROOM, "m.room.power_levels", LABEL, _bot_levels(invite="100"))


@pytest.mark.parametrize(
    ("content", "expected"),
    [
        ({"allow": ["*"], "deny": [], "allow_ip_literals": False}, "'*' is a pattern"),
        ({"allow": ["hs", "*.example"], "allow_ip_literals": False}, "'*.example' is a pattern"),
        ({"allow": ["h?"], "allow_ip_literals": False}, "'h?' is a pattern"),
        ({"allow": ["hs"], "allow_ip_literals": True}, "allow_ip_literals must be false"),
        ({"allow": ["hs"]}, "absent (the spec's default: true)"),
        ({"allow": [], "allow_ip_literals": False}, "allow must list the room's servers"),
        ({"deny": ["evil.example"]}, "allow must list the room's servers"),
        ({"allow": ["hs", 3], "allow_ip_literals": False}, "ACL entry 3 is not a string"),
        ({"allow": ["hs:x"], "allow_ip_literals": False}, "'hs:x' is not a server name"),
        ({"allow": ["hs"], "deny": "x", "allow_ip_literals": False}, "deny must be a list"),
    ],
)
def test_an_acl_admits_named_servers_only(
    register_url: str, content: dict[str, Any], expected: str
) -> None:
    gate, _ = _gate(register_url)
    refused = gate.may_set_state(BOT, ROOM, "m.room.server_acl", LABEL, content)
    assert not refused and expected in refused.reason
    ip = {"allow": ["127.0.0.1", "127.0.0.1:8448", "[::1]:8448"], "allow_ip_literals": True}
    assert gate.may_set_state(BOT, ROOM, "m.room.server_acl", LABEL, ip)


def test_encryption_stays_megolm_and_a_managed_room_is_never_replaced(register_url: str) -> None:
    gate, _ = _gate(register_url)
    for content, expected in (
        ({}, "algorithm must stay 'm.megolm.v1.aes-sha2', not None"),
        ({"algorithm": "m.olm.v1.curve25519-aes-sha2"}, "not 'm.olm.v1.curve25519-aes-sha2'"),
        (
            {"algorithm": "m.megolm.v1.aes-sha2", "rotation_period_msgs": 10**6},
            "rotation_period_msgs must be a whole number from 1 to 100",
        ),
    ):
        refused = gate.may_set_state(BOT, ROOM, "m.room.encryption", LABEL, content)
        assert not refused and expected in refused.reason
    assert gate.may_set_state(
        BOT, ROOM, "m.room.encryption", LABEL, {"algorithm": "m.megolm.v1.aes-sha2"}
    )
    tombstone = {"body": "moved", "replacement_room": "!new:hs"}
    refused = gate.may_set_state(BOT, ROOM, "m.room.tombstone", LABEL, tombstone)
    assert not refused and "a managed room is never replaced" in refused.reason
    # outside managed rooms, none of it is the gate's business
    assert gate.may_set_state(BOT, "!plain:hs", "m.room.tombstone", UNLABELLED, tombstone)


def test_the_label_event_has_the_bots_shape_and_is_never_lowered(register_url: str) -> None:
    from bot.services.rooms import label_content

    gate, _ = _gate(register_url)
    secret = label_content(make_room(parse_marking("NATO SECRET")))
    assert gate.may_set_state(BOT, ROOM, LABEL_EVENT, LABEL, secret)
    assert gate.may_set_state(BOT, "!new:hs", LABEL_EVENT, UNLABELLED, secret)
    for content, expected in (
        ({"level": "NATO SECRET"}, "banner must be the room's marking as text, not None"),
        ({**secret, "banner": "NATO SEKRIT"}, "banner 'NATO SEKRIT' does not parse"),
        ({**secret, "rank": 1}, "rank 1 does not agree with banner 'NATO SECRET' (3)"),
        ({**secret, "rank": True}, "rank True does not agree"),
        ({**secret, "level": "NATO RESTRICTED"}, "level 'NATO RESTRICTED' does not agree"),
        ({**secret, "audience": "POL"}, "audience must be a non-empty list"),
    ):
        refused = gate.may_set_state(BOT, "!new:hs", LABEL_EVENT, UNLABELLED, content)
        assert not refused and expected in refused.reason
    lower = label_content(make_room(parse_marking("NATO RESTRICTED")))
    refused = gate.may_set_state(BOT, ROOM, LABEL_EVENT, LABEL, lower)
    assert not refused
    assert "below the label on record for nato-s (NATO SECRET, rank 3)" in refused.reason
    higher = label_content(make_room(parse_marking("COSMIC TOP SECRET")))
    assert gate.may_set_state(BOT, ROOM, LABEL_EVENT, LABEL, higher)


# ------------------------------------------------------------ item 10: _listed fails closed


def test_a_register_that_cannot_be_read_is_not_read_as_not_listing_the_room(
    tmp_path: Path,
) -> None:
    """A room labelled by another homeserver's bot may still be on our register: when that
    cannot be read, the gate refuses rather than leave the room to the other gate."""
    register = Register(
        RegisterSpec(bot_user_id=BOT, database=f"sqlite:///{tmp_path / 'gone.db'}"), ttl=2.0
    )
    gate = Gate(lambda: {BOT: register}, today=lambda: date(2026, 12, 3), server_name="hs")
    remote = RoomLabel(True, "@liaison:nato.example")
    refused = gate.may_enter("@anyone:hs", ROOM, remote)
    assert not refused
    assert f"the clearance register of {BOT} (OperationalError" in refused.reason
    assert f"cannot tell whether it manages {ROOM}; refused until it can" in refused.reason
    refused = gate.may_set_state("@anyone:hs", ROOM, "m.room.power_levels", remote, {})
    assert not refused and "cannot tell whether it manages" in refused.reason
    # a forged local label is refused with the same reason rather than "not a bot"
    forged = gate.may_enter("@anyone:hs", ROOM, RoomLabel(True, "@mallory:hs"))
    assert not forged and "cannot tell whether it manages" in forged.reason


# ------------------------------------------------------------ the reactor's cache-only path


def test_the_cache_only_path_never_reads_and_agrees_with_the_full_one(register_url: str) -> None:
    """Synapse's reactor asks `may_enter_cached` first: it must answer from the cache or
    not at all (a read there would stall the homeserver), and give the full path's answer."""
    reads: list[str] = []

    def open_reader(url: str, register_key: str | None, _password: str | None) -> RegisterReader:
        reads.append(url)
        return RegisterReader.from_url(url, register_key)

    clock = Clock()
    register = Register(
        RegisterSpec(bot_user_id=BOT, database=register_url, register_key=REGISTER_KEY),
        ttl=2.0, clock=clock, open_reader=open_reader,
    )  # fmt: skip
    gate = Gate(lambda: {BOT: register}, today=lambda: date(2026, 12, 3))
    assert gate.may_enter_cached("@cleared:hs", ROOM, LABEL) is None
    assert reads == [], "nothing opened on the cache-only path"
    full = gate.may_enter("@cleared:hs", ROOM, LABEL)
    assert gate.may_enter_cached("@cleared:hs", ROOM, LABEL) == full
    # a refusal is never cached, so the cache-only path cannot answer it
    assert not gate.may_enter("@nobody:hs", ROOM, LABEL)
    assert gate.may_enter_cached("@nobody:hs", ROOM, LABEL) is None
    clock.now += 2.5
    assert gate.may_enter_cached("@cleared:hs", ROOM, LABEL) is None, "the TTL holds here too"
    register.close()


def test_a_label_from_another_homeserver_is_judged_there_unless_the_room_is_ours(
    register_url: str,
) -> None:
    """check_event_for_spam hands over events other servers send: a label their bot sets in
    a room no bot here manages passes (its own gate judges it); in ours it is refused."""
    gate, _ = _gate(register_url)
    far = "@liaison:nato.example"
    remote = RoomLabel(True, far)
    verdict = gate.may_set_state(far, "!r:nato.example", LABEL_EVENT, remote, {}, federated=True)
    assert verdict and "@liaison:nato.example's own gate judges it" in verdict.reason
    refused = gate.may_set_state(far, ROOM, LABEL_EVENT, LABEL, {}, federated=True)
    assert not refused and f"{ROOM} is managed by {BOT}, not {far}" in refused.reason
    refused = gate.may_set_state(far, ROOM, LABEL_EVENT, UNLABELLED, {}, federated=True)
    assert not refused, "listed on our register, labelled or not"
    # sent from this server, the label stays a configured bot's alone
    assert not gate.may_set_state(far, "!r:nato.example", LABEL_EVENT, remote, {})


def test_a_third_party_invite_is_refused_even_from_the_bot(register_url: str) -> None:
    """Attack review of issue 24 (L3): the bot's token could plant an identity server key
    of its holder's own in a managed room."""
    gate, _ = _gate(register_url)
    invite = {"display_name": "x", "key_validity_url": "https://evil/", "public_key": "AAAA"}
    refused = gate.may_set_state(BOT, ROOM, "m.room.third_party_invite", LABEL, invite)
    assert not refused and "third-party invites" in refused.reason
    assert gate.may_set_state(BOT, "!plain:hs", "m.room.third_party_invite", UNLABELLED, invite)
