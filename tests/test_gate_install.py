"""The gate as a Synapse admin installs it: settings read from the register the bot publishes
(not copied into homeserver.yaml), the schema and versions checked at start, no password in
homeserver.yaml, and nothing of the bot's Matrix client loaded into Synapse's environment.

On a real register (SQLite, and PostgreSQL where LIAISON_TEST_DATABASE_URL reaches one),
written by the bot's own store and read through the gate's read-only reader; the real
Synapse tests (tests/test_admin_room.py, tests/test_gate*.py) run the bot's published
settings through a real homeserver, since `register_entry` no longer copies them."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
import yaml
from click.testing import CliRunner
from sqlalchemy import create_engine, event, text, update

from bot.cli import main
from bot.config import parse_config
from bot.gate.config import (
    GateConfigError,
    RegisterSpec,
    package_version,
    parse_gate_config,
    register_entry,
)
from bot.gate.publish import gate_settings_of, publish_settings
from bot.gate.rules import (
    Gate,
    Register,
    RoomLabel,
    SchemaIncompatible,
    SchemaTooOld,
)
from bot.storage import GateSettingsRow, Origin, RoomRecord, Store, StoreError, audit_key_from
from bot.storage.gate_settings import (
    GATE_SETTINGS_PUBLISHED,
    GateSettings,
    publish_gate_settings,
    resign_gate_settings,
)
from bot.storage.migrate import upgrade
from bot.storage.models import SCHEMA_HEAD
from bot.storage.store import register_public_key
from policy.ids import RoomId, RoomKey, UserId
from tests.pg import fresh_schema

ROOT = Path(__file__).resolve().parent.parent
BOT = UserId("@liaison:hs")
ADMIN = "@chief:hs"
CLEARED = "@cleared:hs"
ADMIN_ROOM_ID = "!admins:hs"
LABEL = RoomLabel(True, BOT)
DATA_KEY = "gate-install-data-key-0123456789abcdef"
REGISTER_KEY = register_public_key(DATA_KEY)
TODAY = date(2026, 12, 6)

CONFIG = f"""
[homeserver]
url = "http://127.0.0.1:8008"
user_id = "{BOT}"
password_env = "LIAISON_PASSWORD"

[storage]
database_url = "sqlite:///data/liaison.db"

[bot]
admins = ["{ADMIN}"]
admin_room = "admins"
caveats = ["ALPHA"]

[[rooms]]
key = "admins"
name = "Admins"
label = "NATO RESTRICTED"
"""


def _store(url: str) -> Store:
    store = Store.from_url(url, audit_key_from(DATA_KEY))
    store.key_audit_log()
    return store


def _admin_room(store: Store) -> None:
    """The admin room, and two people cleared for it: the admin and someone else (an admin
    room takes only admins, on top of their clearance)."""
    for user in (ADMIN, CLEARED, "@mallory:hs"):
        store.grant("t", user, "NATO", "NATO SECRET", 3, nationality="DEU")
    store.save_room(
        RoomRecord(
            key=RoomKey("admins"),
            name="admins",
            label="NATO RESTRICTED",
            scheme="NATO",
            rank=1,
            audience=("BEL", "DEU", "POL"),
            room_id=RoomId(ADMIN_ROOM_ID),
            origin=Origin.CONFIG,
        )
    )


@pytest.fixture(params=["sqlite", "postgresql"])
def register_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    """A migrated register holding the admin room, nothing published yet."""

    def fill(url: str) -> str:
        upgrade(url)
        store = _store(url)
        _admin_room(store)
        store.close()
        return url

    if request.param == "sqlite":
        yield fill(f"sqlite:///{tmp_path / 'register.db'}")
        return
    with fresh_schema() as url:
        yield fill(url)


def _bot_config(tmp_path: Path, database_url: str | None = None) -> Any:
    text_ = CONFIG
    if database_url is not None:
        text_ = text_.replace('"sqlite:///data/liaison.db"', f'"{database_url}"')
    config = parse_config(text_)
    config._base_dir = tmp_path
    return config


def _publish(url: str, tmp_path: Path, **changes: Any) -> GateSettings:
    settings = gate_settings_of(_bot_config(tmp_path))
    if changes:
        settings = GateSettings.of(**{**_fields(settings), **changes})
    store = _store(url)
    try:
        publish_gate_settings(store, settings)
    finally:
        store.close()
    return settings


def _fields(settings: GateSettings) -> dict[str, Any]:
    return {
        "bot_user_id": settings.bot_user_id,
        "admins": settings.admins,
        "admin_room": settings.admin_room,
        "caveats": settings.caveats,
        "bot_version": settings.bot_version,
        "schema_revision": settings.schema_revision,
    }


def _gate(url: str, **spec: Any) -> tuple[Gate, Register]:
    spec.setdefault("register_key", REGISTER_KEY)
    register = Register(RegisterSpec(bot_user_id=BOT, database=url, **spec), ttl=2.0)
    return Gate(lambda: {BOT: register}, today=lambda: TODAY), register


def _engine(url: str) -> Any:
    return create_engine(url)


# ------------------------------------------------------------ 1. settings from the register


def test_the_bot_publishes_its_settings_at_start_and_the_gate_reads_them(
    register_url: str, tmp_path: Path
) -> None:
    """No copies in the gate's config: the admin room takes only the bot's admins because
    the bot published who they are."""
    gate, register = _gate(register_url)
    try:
        # nothing published, no copies: the gate knows no admin room (the bot's own rules
        # still apply to its invites)
        assert gate.may_enter(CLEARED, ADMIN_ROOM_ID, LABEL)
        store = _store(register_url)
        try:
            assert publish_settings(store, _bot_config(tmp_path)) is True
            assert publish_settings(store, _bot_config(tmp_path)) is False  # same: no change
            published = [e for e in store.recent_audit(50) if e.action == GATE_SETTINGS_PUBLISHED]
        finally:
            store.close()
        assert len(published) == 1, "audited once, when it changed"
        assert published[0].subject == BOT
        assert published[0].detail["admins"] == [ADMIN]
        assert published[0].detail["admin_room"] == "admins"
        # A refusal is never given from cached settings, and an admission is: the cached
        # "nothing published" still admits for the TTL...
        assert gate.may_enter(ADMIN, ADMIN_ROOM_ID, LABEL)
        register._settings.drop("")  # ...until it passes
        refused = gate.may_enter(CLEARED, ADMIN_ROOM_ID, LABEL)
        assert not refused and "is not an admin" in refused.reason, refused.reason
        assert gate.may_enter(ADMIN, ADMIN_ROOM_ID, LABEL)
        settings = register.settings()
        assert settings.source == "published"
        assert settings.admins == frozenset({ADMIN})
        assert settings.caveats == ("ALPHA",)
    finally:
        register.close()


def test_the_published_row_wins_over_copies_and_the_copies_are_said_to_be_ignored(
    register_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An older homeserver.yaml still carries copies: they count only while nothing is
    published; once the bot publishes, its row wins and the log says the copies are ignored
    (once, not at every read)."""
    gate, register = _gate(register_url, admins=[CLEARED], admin_room="admins")
    try:
        assert gate.may_enter(CLEARED, ADMIN_ROOM_ID, LABEL), "copies count while unpublished"
        assert not gate.may_enter(ADMIN, ADMIN_ROOM_ID, LABEL)
        _publish(register_url, tmp_path)
        caplog.set_level(logging.INFO, logger="bot.gate.rules")
        assert gate.may_enter(ADMIN, ADMIN_ROOM_ID, LABEL), "a refusal rereads the settings"
        refused = gate.may_enter(CLEARED, ADMIN_ROOM_ID, LABEL)
        assert not refused, "the published row wins: the copy's admin is no admin"
        register._settings.drop("")  # the TTL passing
        register.settings()
        ignored = [r for r in caplog.records if "in homeserver.yaml are ignored" in r.message]
        assert len(ignored) == 1, [r.message for r in caplog.records]
    finally:
        register.close()


def test_a_row_with_a_bad_signature_makes_nobody_admin(
    register_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """An attacker with write access to the database adds themselves to the admins (or
    moves the admin room): the row no longer verifies, so the gate ignores it, as if
    nothing were published, and says which row in its log."""
    _publish(register_url, tmp_path)
    engine = _engine(register_url)
    try:
        with engine.begin() as conn:
            conn.execute(
                update(GateSettingsRow)
                .where(GateSettingsRow.bot_user_id == BOT)
                .values(admins=[ADMIN, "@mallory:hs"])
            )
    finally:
        engine.dispose()
    caplog.set_level(logging.INFO, logger="bot.gate.rules")
    for copies in ({}, {"admins": ["@mallory:hs"], "admin_room": "admins"}):
        # with or without copies in homeserver.yaml: the row says the bot's config moved on
        gate, register = _gate(register_url, **copies)
        try:
            register.check_at_start()  # logged, not fatal: the bot's next start fixes it
            refused = gate.may_enter("@mallory:hs", ADMIN_ROOM_ID, LABEL)
            assert not refused, "a forged row makes nobody admin"
            assert f"the gate settings row of {BOT} does not verify" in refused.reason
            assert not gate.may_enter(ADMIN, ADMIN_ROOM_ID, LABEL), "deny by default"
            errors = [r.message for r in caplog.records if r.levelno == logging.ERROR]
            assert any("does not verify" in m and "admit nobody" in m for m in errors), errors
        finally:
            register.close()
    # the bot's next start replaces the forged row, and says so in the audit log
    store = _store(register_url)
    try:
        assert publish_settings(store, _bot_config(tmp_path)) is True
        published = [e for e in store.recent_audit(50) if e.action == GATE_SETTINGS_PUBLISHED]
        entry = max(published, key=lambda e: e.id)
        assert entry.detail["replaced_unverified"] is True
    finally:
        store.close()


def test_a_row_deleted_after_the_gate_read_it_closes_the_rooms(
    register_url: str, tmp_path: Path
) -> None:
    """Deleting the row would otherwise read as "a bot older than this gate" and fall back
    to the copies (or to no admin room): once read, its absence is refused."""
    _publish(register_url, tmp_path)
    gate, register = _gate(register_url)
    try:
        assert gate.may_enter(ADMIN, ADMIN_ROOM_ID, LABEL)
        engine = _engine(register_url)
        try:
            with engine.begin() as conn:
                conn.execute(text("DELETE FROM gate_settings"))
        finally:
            engine.dispose()
        register._settings.drop("")  # the TTL passing
        refused = gate.may_enter(CLEARED, ADMIN_ROOM_ID, LABEL)
        assert not refused and "was there and is gone" in refused.reason, refused.reason
        assert not gate.may_enter(ADMIN, ADMIN_ROOM_ID, LABEL)
    finally:
        register.close()


def test_a_key_rotation_can_sign_the_row_again(register_url: str, tmp_path: Path) -> None:
    """`resign_gate_settings`: what the data key's rotation does for this row, so that the
    gate given the new register_key reads it at once; a forged row is never vouched for."""
    from bot.storage.records import RegisterSigner

    _publish(register_url, tmp_path)
    old = RegisterSigner.from_audit_key(audit_key_from(DATA_KEY))
    new_key = "gate-install-new-data-key-0123456789"
    new = RegisterSigner.from_audit_key(audit_key_from(new_key))
    store = _store(register_url)
    try:
        assert resign_gate_settings(store, old, new) == (1, 0)
        assert resign_gate_settings(store, old, new) == (0, 0), "already under the new key"
    finally:
        store.close()
    _unused, register = _gate(register_url, register_key=register_public_key(new_key))
    try:
        assert register.settings().source == "published"
    finally:
        register.close()
    engine = _engine(register_url)
    try:
        with engine.begin() as conn:
            conn.execute(update(GateSettingsRow).values(admins=["@mallory:hs"]))
    finally:
        engine.dispose()
    store = _store(register_url)
    try:
        assert resign_gate_settings(store, old, new) == (0, 1), "a forged row stays refused"
    finally:
        store.close()


def test_a_store_without_the_data_key_publishes_nothing(register_url: str, tmp_path: Path) -> None:
    store = Store.from_url(register_url)  # no audit key, so no signer
    try:
        with pytest.raises(StoreError, match="needs the data key"):
            publish_settings(store, _bot_config(tmp_path))
    finally:
        store.close()
    _unused, register = _gate(register_url)
    try:
        assert register.settings().source == "no settings published"
    finally:
        register.close()


def test_synapse_config_prints_three_keys_and_no_copies(tmp_path: Path) -> None:
    path = tmp_path / "config.toml"
    path.write_text(CONFIG)
    env = {"LIAISON_DATA_KEY": DATA_KEY}
    result = CliRunner().invoke(main, ["gate", "synapse-config", "--config", str(path)], env=env)
    assert result.exit_code == 0, result.output
    (module,) = yaml.safe_load(result.stdout)["modules"]
    assert module["config"] == {
        "bot_user_id": BOT,
        "database": f"sqlite:///{tmp_path / 'data' / 'liaison.db'}",
        "register_key": REGISTER_KEY,
    }
    assert f"pip install 'liaison-bot[gate]=={package_version()}'" in result.stdout
    parse_gate_config(module["config"])  # what it prints, Synapse loads


# ------------------------------------------------------------ 2. versions tied


def test_a_database_older_than_the_gate_stops_its_start(tmp_path: Path) -> None:
    """Revision 0015 (before the settings table): the start is refused, naming both
    revisions and the command that fixes it; nothing is read as if it were current."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    upgrade(url, "0015")
    _gate_, register = _gate(url)
    try:
        with pytest.raises(SchemaTooOld) as err:
            register.check_at_start()
        message = str(err.value)
        assert "schema revision 0015" in message
        assert f"needs revision {SCHEMA_HEAD}" in message
        assert "run `liaison-bot db upgrade`" in message
        # met later (the start could not reach it), the managed room fails closed
        verdict = _gate_.may_enter(ADMIN, ADMIN_ROOM_ID, LABEL)
        assert not verdict
    finally:
        register.close()


def test_synapse_refuses_to_start_the_gate_on_an_old_database(tmp_path: Path) -> None:
    """Through the module's constructor, as Synapse calls it: a ConfigError, which Synapse
    prints and exits on."""
    pytest.importorskip("synapse")
    from synapse.config._base import ConfigError

    from bot.gate.module import LiaisonGate

    url = f"sqlite:///{tmp_path / 'old.db'}"
    upgrade(url, "0015")
    api = _FakeModuleApi()
    config = LiaisonGate.parse_config(
        {"bot_user_id": BOT, "database": url, "register_key": REGISTER_KEY}
    )
    from bot.storage.models import SCHEMA_HEAD

    with pytest.raises(
        ConfigError, match=rf"revision 0015.*needs revision {SCHEMA_HEAD}.*db upgrade"
    ):
        LiaisonGate(config, api)  # type: ignore[arg-type]  # the few calls the constructor makes
    assert api.callbacks == [], "no callback registered: the gate never ran"
    upgrade(url)
    LiaisonGate(config, api)  # type: ignore[arg-type]  # the few calls the constructor makes
    assert api.callbacks == ["spam", "third_party"]
    api.shutdown()


def test_an_unreachable_database_does_not_stop_the_start(tmp_path: Path) -> None:
    _unused, register = _gate(f"sqlite:///{tmp_path / 'absent.db'}")
    try:
        register.check_at_start()  # logged; the rooms fail closed until it answers
    finally:
        register.close()


def test_a_newer_database_is_read_on_while_the_tables_it_reads_are_unchanged(
    register_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """A bot upgraded before Synapse: its newer revision may add tables and columns (the
    gate's reads name their columns, so it reads on, with a warning naming both), but one
    that drops or renames what the gate reads stops its start."""
    _publish(register_url, tmp_path)
    newer = f"{int(SCHEMA_HEAD) + 1:04d}"
    engine = _engine(register_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = :v"), {"v": newer})
    finally:
        engine.dispose()
    caplog.set_level(logging.WARNING, logger="bot.gate.rules")
    gate, register = _gate(register_url)
    try:
        register.check_at_start()
        assert gate.may_enter(ADMIN, ADMIN_ROOM_ID, LABEL)
        warned = [r.message for r in caplog.records if "newer than this gate" in r.message]
        assert len(warned) == 1 and newer in warned[0] and SCHEMA_HEAD in warned[0], warned
    finally:
        register.close()
    engine = _engine(register_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("ALTER TABLE gate_settings RENAME COLUMN admins TO admin_ids"))
    finally:
        engine.dispose()
    gate, register = _gate(register_url)
    try:
        with pytest.raises(SchemaIncompatible, match=r"lacks what the gate reads.*admins"):
            register.check_at_start()
        assert not gate.may_enter(ADMIN, ADMIN_ROOM_ID, LABEL), "fails closed"
    finally:
        register.close()


def test_a_bot_of_another_version_is_named_in_a_warning(
    register_url: str, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    _publish(register_url, tmp_path, bot_version="0.0.1-older")
    caplog.set_level(logging.WARNING, logger="bot.gate.rules")
    gate, register = _gate(register_url)
    try:
        register.check_at_start()
        assert gate.may_enter(ADMIN, ADMIN_ROOM_ID, LABEL), "a warning, not a refusal"
        register._settings.drop("")
        register.settings()
        warned = [r.message for r in caplog.records if "upgrade them together" in r.message]
        assert len(warned) == 1, warned  # once per version seen, not at every read
        assert "0.0.1-older" in warned[0] and package_version() in warned[0]
    finally:
        register.close()


# ------------------------------------------------------------ 3. no password in homeserver.yaml


def test_a_database_url_with_a_password_is_refused_without_showing_it() -> None:
    with pytest.raises(GateConfigError) as err:
        parse_gate_config(
            {"bot_user_id": BOT, "database": "postgresql+psycopg://gate:s3cr3t-pw@db/liaison"}
        )
    message = str(err.value)
    assert "database_password_file" in message and "PGPASSFILE" in message
    assert "s3cr3t-pw" not in message and "***" not in message
    assert "postgresql+psycopg://gate@db/liaison" in message


def test_the_password_file_is_checked_when_synapse_reads_its_config(tmp_path: Path) -> None:
    base = {"bot_user_id": BOT, "database": "postgresql+psycopg://gate@db/liaison"}
    with pytest.raises(GateConfigError, match=r"database_password_file .*cannot read it"):
        parse_gate_config({**base, "database_password_file": str(tmp_path / "absent")})
    empty = tmp_path / "empty"
    empty.write_text("\n")
    with pytest.raises(GateConfigError, match="expected the password alone"):
        parse_gate_config({**base, "database_password_file": str(empty)})
    with pytest.raises(GateConfigError, match="absolute path"):
        parse_gate_config({**base, "database_password_file": "pw"})
    good = tmp_path / "pw"
    good.write_text("s3cr3t-pw\n")
    sqlite = {"bot_user_id": BOT, "database": f"sqlite:///{tmp_path / 'r.db'}"}
    with pytest.raises(GateConfigError, match="SQLite has no password"):
        parse_gate_config({**sqlite, "database_password_file": str(good)})
    spec = parse_gate_config({**base, "database_password_file": str(good)}).static_registers()[0]
    assert spec.database_password_file == str(good)


def test_the_password_from_the_file_reaches_the_connection_and_no_log(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """On PostgreSQL (trust auth in the test server: the password is carried, not needed):
    the file's password is what the driver gets at connect time, and nothing logged shows it."""
    secret = "file-pw-7c1d2e"
    path = tmp_path / "gate.password"
    path.write_text(secret + "\n")
    with fresh_schema() as url:
        upgrade(url)
        store = _store(url)
        _admin_room(store)
        store.close()
        caplog.set_level(logging.DEBUG)
        gate, register = _gate(url, database_password_file=str(path))
        seen: list[str | None] = []
        try:
            engine = register._read().engine

            @event.listens_for(engine, "do_connect")
            def _see(_d: Any, _r: Any, _a: Any, cparams: dict[str, Any]) -> None:
                seen.append(cparams.get("password"))

            assert not gate.may_enter("@nobody:hs", ADMIN_ROOM_ID, LABEL)
            assert seen and set(seen) == {secret}, seen
            assert secret not in str(engine.url)
            # a rotated password is read at the next connection, without a restart
            path.write_text("rotated-pw-99\n")
            engine.dispose()
            gate.may_enter("@nobody2:hs", ADMIN_ROOM_ID, LABEL)
            assert seen[-1] == "rotated-pw-99"
        finally:
            register.close()
    assert secret not in caplog.text and "rotated-pw-99" not in caplog.text


def test_synapse_config_leaves_the_password_out_and_names_a_file(tmp_path: Path) -> None:
    """The bot's own URL never holds a password (its config refuses one: .pgpass); a
    --database given with one is printed without it, and with a password file to fill."""
    with_password = "postgresql+psycopg://liaison_gate:g4te-pw@db.example.org/liaison"
    entry = register_entry(_bot_config(tmp_path), with_password)
    assert entry["database"] == "postgresql+psycopg://liaison_gate@db.example.org/liaison"
    assert entry["database_password_file"].startswith("/")
    path = tmp_path / "config.toml"
    path.write_text(CONFIG)
    result = CliRunner().invoke(
        main, ["gate", "synapse-config", "--config", str(path), "--database", with_password]
    )
    assert result.exit_code == 0, result.output
    assert "g4te-pw" not in result.output
    (module,) = yaml.safe_load(result.stdout)["modules"]
    assert module["config"]["database"] == entry["database"]
    assert module["config"]["database_password_file"] == entry["database_password_file"]
    assert "The database password is not printed" in result.stdout


# ------------------------------------------------------------ 4. a gate-only install


BLOCKER = """
import importlib.abc, sys

BLOCKED = ("nio", "aiohttp", "prometheus_client", "vodozemac")


class Blocker(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in BLOCKED:
            raise ImportError(f"{name} is not installed with liaison-bot[gate]")
        return None


# Synapse itself needs prometheus_client (and loads it first, as it does when it starts):
# what is checked is what the gate brings, so the blocker goes in after Synapse is loaded.
import synapse.module_api, synapse.config._base, synapse.events, synapse.api.errors
import synapse.logging.context, twisted.python.threadpool
sys.meta_path.insert(0, Blocker())
import bot.gate.config, bot.gate.rules, bot.gate.module
from bot.gate import LiaisonGate
assert "bot.gate.rules" in sys.modules
print("gate loaded")
"""


def test_the_gate_loads_with_nio_aiohttp_and_prometheus_client_blocked() -> None:
    """`pip install 'liaison-bot[gate]'` brings none of them: the gate must import without."""
    pytest.importorskip("synapse")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    result = subprocess.run(
        [sys.executable, "-c", BLOCKER], capture_output=True, text=True, cwd=ROOT, env=env
    )
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == "gate loaded"


def test_the_blocker_would_catch_an_import() -> None:
    """The probe can fail: with the bot's Matrix edge imported after the blocker, it does."""
    pytest.importorskip("synapse")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    probe = BLOCKER.replace(
        "import bot.gate.config,", "import bot.matrix.gateway, bot.gate.config,"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, env=env
    )
    assert result.returncode != 0
    assert "is not installed with liaison-bot[gate]" in result.stderr


# ------------------------------------------------------------ the module's constructor


class _FakeReactor:
    def __init__(self) -> None:
        self.triggers: list[Any] = []

    def addSystemEventTrigger(self, _phase: str, _event: str, fn: Any) -> None:  # Twisted's name
        self.triggers.append(fn)


class _FakeHs:
    def __init__(self) -> None:
        self.reactor = _FakeReactor()

    def get_reactor(self) -> _FakeReactor:
        return self.reactor


class _FakeModuleApi:
    """The calls `LiaisonGate.__init__` makes of Synapse's ModuleApi, and nothing more."""

    server_name = "hs"

    def __init__(self) -> None:
        self._hs = _FakeHs()
        self.callbacks: list[str] = []

    def register_spam_checker_callbacks(self, **_callbacks: Any) -> None:
        self.callbacks.append("spam")

    def register_third_party_rules_callbacks(self, **_callbacks: Any) -> None:
        self.callbacks.append("third_party")

    def shutdown(self) -> None:
        for fn in self._hs.reactor.triggers:
            fn()
