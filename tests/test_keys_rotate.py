"""`liaison-bot keys rotate --data` / `--pickle`: every sealed value, the register signatures,
the audit log and nio's pickles move to the new key; a rotation killed half-way finishes when
run again, with every value opening under one of the two keys at every moment; bad input
changes nothing. On SQLite with the folder crypto store and on PostgreSQL with the database
crypto store (skipped without LIAISON_TEST_DATABASE_URL)."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
import vodozemac
from click.testing import CliRunner, Result
from nio.crypto import InboundGroupSession, OlmAccount, OutboundGroupSession, OutboundSession
from sqlalchemy import create_engine, delete, select, text, update
from sqlalchemy.engine import make_url

from bot.app import LiaisonBot
from bot.cli import main
from bot.config import load_config
from bot.devtools.botenv import SECRETS, BotEnv
from bot.devtools.e2ee_client import open_dm, talk
from bot.gate.config import register_entry
from bot.gate.publish import publish_settings
from bot.matrix.cryptostore import PrivateStore
from bot.matrix.dbstore import DatabaseStore, crypto_schema
from bot.matrix.rotate import crypto_stores, repickle
from bot.matrix.sync import MANIFEST, seal_manifest
from bot.matrix.trust import key_sealer
from bot.run import run_bot
from bot.services.digest import parts_binding as digest_binding
from bot.services.relay import SEAL_VERSION, item_binding, ledger_binding
from bot.startup import Secrets, StartupError
from bot.storage import (
    AuditRow,
    BotSessionRow,
    CrossSigningRow,
    DigestRunRow,
    HaLeaderRow,
    IntelItem,
    IntelItemRow,
    NewHeldTarget,
    NewHold,
    RelayEntry,
    RelayKind,
    RelayRow,
    ReleaseTargetRow,
    RoomRecord,
    RoomSnapshotRow,
    Store,
    StoreError,
    audit_key_from,
)
from bot.storage.gate_settings import SettingsRefused, read_gate_settings
from bot.storage.migrate import upgrade
from bot.storage.reader import RegisterReader
from bot.storage.records import Origin, RegisterVerifier
from bot.storage.runlock import hold_run_lock
from bot.storage.sealing import (
    Sealer,
    SealError,
    hold_binding,
    hold_sealer,
    reason_binding,
    reason_sealer,
)
from bot.storage.store import register_public_key
from policy.ids import RoomId, RoomKey
from policy.tagged import Precedence
from tests.matrix_harness import MakeClient
from tests.pg import fresh_schema

ROOT = Path(__file__).resolve().parent.parent
USER, DEVICE = "@liaison:example.org", "DEVICEONE"
OLD_DATA, NEW_DATA = "old-data-key-" + "a" * 40, "new-data-key-" + "b" * 40
OLD_PICKLE, NEW_PICKLE = "old-pickle-key-" + "c" * 40, "new-pickle-key-" + "d" * 40
# With --batch-size 2, fifteen batches of each: a kill after the second leaves far more work
# than could be done between the progress line and the signal, however the test is scheduled.
ITEMS = 30
MEGOLM = 30
WINDOW_END = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)
HELD_TARGETS = (("nato", "!nato:example.org"), ("eu", "!eu:example.org"))


@dataclass
class World:
    """A stopped bot's database and crypto store, with something in every sealed place."""

    config: Path
    url: str
    folder: Path
    in_database: bool

    def env(self, data: str = OLD_DATA, pickle: str = OLD_PICKLE, **extra: str) -> dict[str, str]:
        return {"LIAISON_DATA_KEY": data, "LIAISON_PICKLE_KEY": pickle, **extra}

    def cli(self, *args: str, data: str = OLD_DATA, pickle: str = OLD_PICKLE) -> Result:
        return CliRunner(env=self.env(data, pickle)).invoke(
            main, [*args[:2], "--config", str(self.config), *args[2:]]
        )

    def store(self, data: str) -> Store:
        return Store.from_url(self.url, audit_key_from(data))

    def crypto(self, pickle: str) -> Any:
        if self.in_database:
            return DatabaseStore(USER, DEVICE, "", pickle, database_url=self.url)
        return PrivateStore(USER, DEVICE, str(self.folder / "crypto"), pickle)


@pytest.fixture(params=["sqlite", "postgresql"])
def world(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[World]:
    if request.param == "sqlite":
        yield _world(tmp_path, f"sqlite:///{tmp_path / 'bot.db'}", in_database=False)
        return
    with fresh_schema() as url:
        yield _world(tmp_path, url, in_database=True)


def _world(folder: Path, url: str, *, in_database: bool) -> World:
    config = folder / "config.toml"
    config.write_text(
        f"""
[homeserver]
url = "http://127.0.0.1:8008"
user_id = "{USER}"
password_env = "LIAISON_PASSWORD"
pickle_key_env = "LIAISON_PICKLE_KEY"
[storage]
database_url = "{url}"
data_key_env = "LIAISON_DATA_KEY"
crypto_store = "{"database" if in_database else "crypto"}"
"""
    )
    world = World(config, url, folder, in_database)
    upgrade(url)
    (folder / "crypto").mkdir(mode=0o700)
    store = world.store(OLD_DATA)
    try:
        _fill(store)
        publish_settings(store, load_config(config))  # the settings the gate reads, signed
    finally:
        store.close()
    crypto = world.crypto(OLD_PICKLE)
    try:
        _fill_crypto(crypto)
    finally:
        crypto.database.close()
    return world


def _fill(store: Store) -> None:
    """As the bot would leave them: a keyed audit log, signed register rows, items, ledger
    rows, room snapshots, a digest run being posted, the login and the cross-signing keys."""
    store.key_audit_log()
    store.save_room(
        RoomRecord(
            RoomKey("deu"),
            "DEU",
            "DEU GEHEIM",
            "DEU",
            3,
            (),
            RoomId("!deu:example.org"),
            Origin.CONFIG,
        )
    )
    store.grant("cli:test", "@alice:example.org", "NATO", "SECRET", 3, nationality="DEU")
    items = Sealer(OLD_DATA, "intel-item", SEAL_VERSION)
    ledger = Sealer(OLD_DATA, "intel-ledger", SEAL_VERSION)
    for n in range(ITEMS):
        event_id = f"$item{n}"
        text = json.dumps({"text": f"secret text {n}", "topics": []})
        store.save_item(
            IntelItem(
                event_id, "deu", "!deu:example.org", "@alice:example.org", "DEU GEHEIM", "DEU",
                3, Precedence.ROUTINE, False, (),
                items.seal_text(text, item_binding(event_id, "deu", "DEU GEHEIM")),
                WINDOW_END - timedelta(minutes=n),
            )
        )  # fmt: skip
        txn = f"txn{n}"
        store.add_relays(
            [
                RelayEntry(
                    txn, RelayKind.COPY, event_id, event_id, "nato", "!nato:example.org",
                    ledger.seal_text(
                        json.dumps({"body": f"copy {n}"}),
                        ledger_binding(txn, "nato", "!nato:example.org"),
                    ),
                )
            ]
        )  # fmt: skip
    # A held item (national release control): two would-be copies, one denied with a reason.
    request = store.hold_release(
        NewHold(
            "$held", "deu", "!deu:example.org", "@alice:example.org", "DEU GEHEIM", "DEU", 3,
            WINDOW_END, WINDOW_END + timedelta(hours=4),
        ),
        [
            NewHeldTarget(
                key,
                room,
                hold_sealer(OLD_DATA).seal_text('{"body": "held"}', hold_binding("$held", key, room)),
            )
            for key, room in HELD_TARGETS
        ],
    )  # fmt: skip
    store.deny_release(
        request.id,
        ["eu"],
        "@bob:example.org",
        {"eu": reason_sealer(OLD_DATA).seal_text("not now", reason_binding("$held", "eu"))},
    )
    snapshots = Sealer(OLD_DATA, "room-snapshot")
    snapshot = json.dumps({"v": 1, "encrypted": True, "members": {"@alice:example.org": 1}})
    store.save_sync_token(
        "s42",
        {
            "!deu:example.org": "s42 " + snapshots.seal_text(snapshot, "!deu:example.org\ns42"),
            MANIFEST: seal_manifest(snapshots, "s42", {"!deu:example.org": "s42"}),
        },
    )
    parts = Sealer(audit_key_from(OLD_DATA).hex(), "digest-parts")
    store.claim_digest_run(
        "cfg-0",
        "deu",
        WINDOW_END,
        delayed=False,
        parts=parts.seal_text(
            json.dumps({"room_id": "!deu:example.org", "parts": []}),
            digest_binding("cfg-0", WINDOW_END, "deu"),
        ),
    )
    store.save_bot_session(
        USER, DEVICE, Sealer(OLD_PICKLE, "access-token").seal_text("syt_secret", DEVICE)
    )
    store.save_cross_signing(
        USER, "master-public", key_sealer(OLD_PICKLE).seal_text('{"k": 1}', USER), "cli:test"
    )


def _fill_crypto(crypto: Any) -> None:
    """An Olm account, an Olm session and Megolm inbound sessions, made by vodozemac."""
    account = OlmAccount()
    crypto.save_account(account)
    peer = OlmAccount()
    peer.generate_one_time_keys(1)
    one_time_key = next(iter(peer.one_time_keys["curve25519"].values()))
    session = OutboundSession(account, peer.identity_keys["curve25519"], one_time_key)
    crypto.save_session(peer.identity_keys["curve25519"], session)
    for n in range(MEGOLM):
        outbound = OutboundGroupSession()
        crypto.save_inbound_group_session(
            InboundGroupSession(
                outbound.session_key, "signing-ed25519", "sender-curve", f"!r{n}:x", []
            )
        )


# -- what opens with which key ------------------------------------------------------------


def _opens(sealer: Sealer, value: str, associated: str) -> bool:
    try:
        sealer.open_text(value, associated)
    except SealError:
        return False
    return True


def data_values(world: World, key: str) -> dict[str, list[bool]]:
    """For each sealed place under the data key: which values open with `key`."""
    items = Sealer(key, "intel-item", SEAL_VERSION)
    ledger = Sealer(key, "intel-ledger", SEAL_VERSION)
    snapshots = Sealer(key, "room-snapshot")
    parts = Sealer(audit_key_from(key).hex(), "digest-parts")
    store = Store.from_url(world.url)
    try:
        with store.session() as s:
            out = {
                "items": [
                    _opens(items, r.text, item_binding(r.event_id, r.room_key, r.label))
                    for r in s.scalars(select(IntelItemRow))
                ],
                "ledger": [
                    _opens(
                        ledger, r.content, ledger_binding(r.txn_id, r.target_key, r.target_room_id)
                    )
                    for r in s.scalars(select(RelayRow))
                ],
                "snapshots": [
                    _opens(snapshots, r.sealed, f"{MANIFEST}\ns42")
                    if r.room_id == MANIFEST
                    else _opens(snapshots, r.sealed.partition(" ")[2], f"{r.room_id}\ns42")
                    for r in s.scalars(select(RoomSnapshotRow))
                ],
                "digest": [
                    _opens(
                        parts,
                        r.parts or "",
                        digest_binding(r.schedule_key, r.window_end, r.room_key),
                    )
                    for r in s.scalars(select(DigestRunRow))
                ],
                "held copies": [
                    _opens(
                        hold_sealer(key),
                        r.content,
                        hold_binding(r.request.item_event_id, r.target_key, r.target_room_id),
                    )
                    for r in s.scalars(select(ReleaseTargetRow))
                ],
                "denial reasons": [
                    _opens(
                        reason_sealer(key),
                        r.reason,
                        reason_binding(r.request.item_event_id, r.target_key),
                    )
                    for r in s.scalars(select(ReleaseTargetRow))
                    if r.reason is not None
                ],
            }
    finally:
        store.close()
    assert [len(v) for v in out.values()] == [ITEMS, ITEMS, 2, 1, 2, 1]
    return out


def pickle_values(world: World, key: str) -> dict[str, list[bool]]:
    store = Store.from_url(world.url)
    try:
        with store.session() as s:
            token = s.scalars(select(BotSessionRow)).one()
            keys = s.scalars(select(CrossSigningRow)).one()
            out = {
                "token": [_opens(Sealer(key, "access-token"), token.access_token, DEVICE)],
                "cross-signing": [_opens(key_sealer(key), keys.sealed, USER)],
            }
    finally:
        store.close()
    crypto = world.crypto(key)
    try:
        try:
            out["account"] = [crypto.load_account() is not None]
        except Exception:
            out["account"] = [False]
        out["megolm"] = _megolm_opening(world, key)
    finally:
        crypto.database.close()
    return out


def _megolm_opening(world: World, key: str) -> list[bool]:
    """Which stored Megolm sessions open with `key`, one by one (nio's loader stops at the
    first that does not)."""
    found = []
    for crypto in crypto_stores(load_config(world.config)):
        with crypto.engine.connect() as conn:
            rows = conn.execute(
                text(f"SELECT session FROM {crypto.table('megolminboundsessions')}")
            ).all()
        crypto.engine.dispose()
        for (pickle,) in rows:
            # Opens with `key`: repickling "from some other key to `key`" says already there.
            try:
                found.append(repickle(vodozemac.InboundGroupSession, pickle, "x" * 40, key) is None)
            except SealError:
                found.append(False)
    assert len(found) == MEGOLM
    return found


def all_true(values: dict[str, list[bool]]) -> bool:
    return all(all(v) for v in values.values())


def none_true(values: dict[str, list[bool]]) -> bool:
    return not any(any(v) for v in values.values())


def register_reads(world: World, data_key: str) -> bool:
    """Whether the gate's reader, with the register key of `data_key`, accepts the rows."""
    reader = RegisterReader.from_url(world.url, register_public_key(data_key))
    try:
        if reader.clearance("@alice:example.org") is None:
            return False
    finally:
        reader.close()
    engine = create_engine(world.url)
    try:
        with engine.connect() as conn:  # and the bot's published gate settings
            verifier = RegisterVerifier.from_text(register_public_key(data_key))
            return read_gate_settings(conn, USER, verifier) is not None
    except SettingsRefused:
        return False
    finally:
        engine.dispose()


def audit_details(world: World) -> list[tuple[str, str]]:
    store = Store.from_url(world.url)
    try:
        with store.session() as s:
            return [(r.action, json.dumps(r.detail)) for r in s.scalars(select(AuditRow))]
    finally:
        store.close()


def key_file(folder: Path, key: str, name: str = "new-key") -> Path:
    path = folder / name
    path.write_text(key + "\n")
    path.chmod(0o600)
    return path


# -- the tests ----------------------------------------------------------------------------


def test_rotating_both_keys_moves_every_sealed_value(world: World) -> None:
    assert all_true(data_values(world, OLD_DATA)) and register_reads(world, OLD_DATA)
    result = world.cli(
        "keys", "rotate", "--data", "--new-key-file", str(key_file(world.folder, NEW_DATA))
    )
    assert result.exit_code == 0, result.output
    assert f"register_key = {register_public_key(NEW_DATA)}" in result.output
    assert f"intel items {ITEMS}/{ITEMS}" in result.output
    assert "held release copies 2/2" in result.output
    assert "release denial reasons 1/1" in result.output
    assert all_true(data_values(world, NEW_DATA))
    assert none_true(data_values(world, OLD_DATA))
    # The gate accepts the rows with the new register key, and no longer with the old one.
    assert register_reads(world, NEW_DATA) and not register_reads(world, OLD_DATA)
    verify = world.cli("audit", "verify", data=NEW_DATA)
    assert verify.exit_code == 0, verify.output
    # The bot's store reads the register with the new key.
    store = world.store(NEW_DATA)
    try:
        assert store.clearance("@alice:example.org") is not None
        assert store.room("deu") is not None
        store.append_audit("cli:test", "after.rotation")  # the log goes on under the new key
        assert store.verify_audit().intact
    finally:
        store.close()

    # The pickle key (the data key is now the new one).
    assert all_true(pickle_values(world, OLD_PICKLE))
    result = CliRunner(env=world.env(NEW_DATA, OLD_PICKLE, NEW_PICKLE_VAR=NEW_PICKLE)).invoke(
        main,
        ["keys", "rotate", "--pickle", "--config", str(world.config),
         "--new-key-env", "NEW_PICKLE_VAR"],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert f"Megolm inbound sessions {MEGOLM}/{MEGOLM}" in result.output
    assert all_true(pickle_values(world, NEW_PICKLE))
    assert none_true(pickle_values(world, OLD_PICKLE))
    assert world.cli("audit", "verify", data=NEW_DATA).exit_code == 0

    details = audit_details(world)
    rotated = [json.loads(d) for a, d in details if a == "keys.rotated"]
    assert [r["key"] for r in rotated] == ["data", "pickle"]
    assert rotated[0]["resealed"]["intel items"] == ITEMS
    assert rotated[0]["register_key"] == register_public_key(NEW_DATA)
    assert rotated[1]["resealed"]["Megolm inbound sessions"] == MEGOLM
    for _, detail in details:  # never a key
        for secret in (OLD_DATA, NEW_DATA, OLD_PICKLE, NEW_PICKLE):
            assert secret not in detail

    # Running it again is harmless: it says it is done and changes nothing.
    again = world.cli(
        "keys", "rotate", "--data", "--new-key-file", str(key_file(world.folder, NEW_DATA))
    )
    assert again.exit_code == 0 and "already under the new key" in again.output
    assert audit_details(world) == details


def _killed_at(world: World, which: str, line_start: str, new_key: Path, data_key: str) -> str:
    """Run the rotation as an administrator does, in its own process with small batches,
    and SIGKILL it as soon as it reports a batch starting with `line_start`."""
    env = {
        **os.environ,
        "PYTHONPATH": str(ROOT),
        "PYTHONUNBUFFERED": "1",
        **world.env(data_key, OLD_PICKLE),
    }
    process = subprocess.Popen(
        [sys.executable, "-m", "bot.cli", "keys", "rotate", f"--{which}",
         "--config", str(world.config), "--new-key-file", str(new_key), "--batch-size", "2"],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env, cwd=ROOT,
    )  # fmt: skip
    assert process.stdout is not None
    seen = []
    for line in process.stdout:
        seen.append(line)
        if line.startswith(line_start):
            process.send_signal(signal.SIGKILL)
            break
    process.wait(timeout=60)
    output = "".join(seen)
    assert process.returncode == -signal.SIGKILL, output
    return output


def test_a_data_rotation_killed_half_way_finishes_when_run_again(world: World) -> None:
    new_key = key_file(world.folder, NEW_DATA)
    _killed_at(world, "data", f"intel items 4/{ITEMS}", new_key, OLD_DATA)
    old, new = data_values(world, OLD_DATA), data_values(world, NEW_DATA)
    # Half-way: some items under the new key, the rest under the old, none under neither.
    assert any(new["items"]) and any(old["items"])
    for place in old:
        assert all(a != b for a, b in zip(old[place], new[place], strict=True)), place
    # The bot's key is still the old one: the log still verifies with it.
    assert world.cli("audit", "verify", data=OLD_DATA).exit_code == 0

    # Another new key now would strand what is under the first one: refused, nothing changed.
    before = audit_details(world)
    other = world.cli(
        "keys", "rotate", "--data",
        "--new-key-file", str(key_file(world.folder, "other-key-" + "e" * 40, "other")),
    )  # fmt: skip
    assert other.exit_code == 1 and "was cut off" in other.output
    assert audit_details(world) == before

    result = world.cli("keys", "rotate", "--data", "--new-key-file", str(new_key))
    assert result.exit_code == 0, result.output
    assert "resuming the cut-off rotation" in result.output
    assert all_true(data_values(world, NEW_DATA)) and none_true(data_values(world, OLD_DATA))
    assert register_reads(world, NEW_DATA) and not register_reads(world, OLD_DATA)
    assert world.cli("audit", "verify", data=NEW_DATA).exit_code == 0
    actions = [a for a, _ in audit_details(world)]
    assert actions.count("keys.rotating") == 1 and actions.count("keys.rotated") == 1


def test_a_pickle_rotation_killed_half_way_finishes_when_run_again(world: World) -> None:
    new_key = key_file(world.folder, NEW_PICKLE)
    _killed_at(world, "pickle", f"Megolm inbound sessions 4/{MEGOLM}", new_key, OLD_DATA)
    old, new = _megolm_opening(world, OLD_PICKLE), _megolm_opening(world, NEW_PICKLE)
    assert any(old) and any(new)
    assert all(a != b for a, b in zip(old, new, strict=True))

    result = world.cli("keys", "rotate", "--pickle", "--new-key-file", str(new_key))
    assert result.exit_code == 0, result.output
    assert "resuming the cut-off rotation" in result.output
    assert all_true(pickle_values(world, NEW_PICKLE))
    assert none_true(pickle_values(world, OLD_PICKLE))
    assert world.cli("audit", "verify").exit_code == 0


def test_bad_input_changes_nothing(world: World) -> None:
    before = (audit_details(world), data_values(world, OLD_DATA))
    weak = world.cli(
        "keys", "rotate", "--data", "--new-key-file", str(key_file(world.folder, "short"))
    )
    assert weak.exit_code == 2 and "too short (5 characters)" in weak.output
    loose = key_file(world.folder, NEW_DATA, "loose")
    loose.chmod(0o644)
    readable = world.cli("keys", "rotate", "--data", "--new-key-file", str(loose))
    assert readable.exit_code == 2 and "readable by others than its owner (mode 0644)" in (
        readable.output
    )
    assert "make a new key: this one may be known" in readable.output
    no_key = world.cli("keys", "rotate", "--data")
    assert no_key.exit_code == 2 and "--new-key-file" in no_key.output
    same = world.cli(
        "keys", "rotate", "--data", "--new-key-file", str(key_file(world.folder, OLD_DATA))
    )
    assert same.exit_code == 2 and "is the current data key" in same.output
    other = world.cli(
        "keys", "rotate", "--data", "--new-key-file", str(key_file(world.folder, OLD_PICKLE))
    )
    assert other.exit_code == 2 and "other key" in other.output
    wrong = world.cli(
        "keys", "rotate", "--data", "--new-key-file", str(key_file(world.folder, NEW_DATA)),
        data="wrong-data-key-" + "f" * 40,
    )  # fmt: skip
    assert wrong.exit_code == 1 and "not the key of this audit log" in wrong.output
    assert (audit_details(world), data_values(world, OLD_DATA)) == before


def test_an_altered_item_stops_the_rotation_before_it_starts(world: World) -> None:
    store = Store.from_url(world.url)
    try:
        with store.session() as s:
            s.execute(
                update(IntelItemRow).where(IntelItemRow.event_id == "$item3").values(label="LOWER")
            )
    finally:
        store.close()
    before = (audit_details(world), data_values(world, OLD_DATA))
    result = world.cli(
        "keys", "rotate", "--data", "--new-key-file", str(key_file(world.folder, NEW_DATA))
    )
    assert result.exit_code == 1 and "1 of the intel items" in result.output
    assert "Nothing was changed" in result.output
    assert (audit_details(world), data_values(world, OLD_DATA)) == before


def test_a_running_pair_is_refused(world: World) -> None:
    store = Store.from_url(world.url)
    try:
        with store.session() as s:
            s.merge(
                HaLeaderRow(
                    id=1,
                    epoch=3,
                    holder="node-a",
                    lease_until=datetime.now(UTC) + timedelta(minutes=5),
                    acquired_at=datetime.now(UTC),
                )
            )
    finally:
        store.close()
    result = world.cli(
        "keys", "rotate", "--data", "--new-key-file", str(key_file(world.folder, NEW_DATA))
    )
    assert result.exit_code == 1 and "node node-a holds the lease" in result.output
    assert all_true(data_values(world, OLD_DATA))


def test_rows_from_before_the_rotation_stay_checked(world: World) -> None:
    """After a rotation, with only the new key, a change to a row written under the old key
    is still found (the rekey row's anchor), as is a rekey row whose action is renamed."""
    result = world.cli(
        "keys", "rotate", "--data", "--new-key-file", str(key_file(world.folder, NEW_DATA))
    )
    assert result.exit_code == 0, result.output
    store = world.store(NEW_DATA)
    try:
        assert store.verify_audit().intact
        with store.session() as s:
            first = (
                s.scalars(select(AuditRow).where(AuditRow.action == "clearance.granted")).first()
                or s.scalars(select(AuditRow).order_by(AuditRow.id).offset(2)).first()
            )
            assert first is not None
            original = dict(first.detail)
            s.execute(
                update(AuditRow).where(AuditRow.id == first.id).values(detail={"forged": True})
            )
        verdict = store.verify_audit()
        assert not verdict.intact and "before the key rotation" in verdict.message
        with store.session() as s:
            s.execute(update(AuditRow).where(AuditRow.id == first.id).values(detail=original))
            s.execute(
                update(AuditRow)
                .where(AuditRow.action == "audit.rekeyed")
                .values(action="audit.something")
            )
        assert not store.verify_audit().intact
    finally:
        store.close()


# -- a real bot, after both keys are rotated ---------------------------------------------


async def test_the_bot_starts_and_works_with_the_new_keys(
    own_bot_env: BotEnv, make_client: MakeClient
) -> None:
    """Stop, rotate both keys, give the gate the new register_key, start with the new keys:
    the bot reuses its device (token and pickles open), and a clearance granted and an
    invitation sent from chat go through the gate, which checks rows with the new key."""
    env = own_bot_env
    assert env.bot is not None and env.bot.client is not None
    device = env.bot.client.device_id
    await env.stop()
    keys_env = {
        "LIAISON_TEST_DATA_KEY": SECRETS.data_key,
        "LIAISON_TEST_PICKLE_KEY": SECRETS.pickle_key,
        "NEW_KEY": NEW_DATA,
    }
    for which, new in (("--data", NEW_DATA), ("--pickle", NEW_PICKLE)):
        result = CliRunner(env=keys_env | {"NEW_KEY": new}).invoke(
            main,
            ["keys", "rotate", which, "--config", str(env.config_path), "--new-key-env", "NEW_KEY"],
        )
        assert result.exit_code == 0, result.output
        keys_env["LIAISON_TEST_DATA_KEY"] = NEW_DATA  # the data key is the new one from here
    env.server.add_register(register_entry(env.config), data_key=NEW_DATA)

    config = env.config
    env.store = Store.from_url(config.database_url())
    secrets = Secrets(NEW_PICKLE, NEW_DATA, env.bot_user.password, None, {})
    env.bot = LiaisonBot(config, env.store, secrets)
    await env.bot.start()
    await asyncio.wait_for(env.bot.synced.wait(), 60)
    assert env.bot.client is not None and env.bot.client.device_id == device

    admin = await make_client(env.admin)
    officer = await make_client(env.officer)
    dm = await open_dm(admin, env.bot_user.user_id)
    await talk(
        admin, dm, f'!clearance grant {env.officer.user_id} "NATO SECRET" --nationality DEU',
        "Clearance updated",
    )  # fmt: skip
    await talk(admin, dm, f"!invite {env.officer.user_id} nato-s", "Invited")
    assert await officer.wait_for_invite(inviter=env.bot_user.user_id) == env.room_id("nato-s")
    assert env.store.verify_audit().intact


# -- backup and restore, as docs/keys.md says -----------------------------------------------


def _restored_ok(world: World) -> None:
    """What a restore must give back: the audit log verifies, every sealed value opens, the
    crypto store's account and sessions load."""
    verify = world.cli("audit", "verify")
    assert verify.exit_code == 0, verify.output
    assert all_true(data_values(world, OLD_DATA)) and all_true(pickle_values(world, OLD_PICKLE))


def test_a_sqlite_backup_restores(tmp_path: Path) -> None:
    """`sqlite3 FILE ".backup COPY"` of the database and of the crypto store's file(s),
    taken with the bot stopped or running (it copies one consistent state), restored by
    copying them back: everything opens and verifies as before."""
    (tmp_path / "live").mkdir()
    world = _world(
        tmp_path / "live", f"sqlite:///{tmp_path / 'live' / 'bot.db'}", in_database=False
    )
    backup = tmp_path / "backup"
    backup.mkdir()
    crypto_files = sorted((world.folder / "crypto").glob("*.db"))
    assert crypto_files
    for source, target in [(world.folder / "bot.db", backup / "bot.db")] + [
        (f, backup / f.name) for f in crypto_files
    ]:
        subprocess.run(["sqlite3", str(source), f".backup '{target}'"], check=True)

    # Disaster: the live files are lost. Restore: copy the backups back, 0600.
    (world.folder / "bot.db").unlink()
    for f in crypto_files:
        f.unlink()
    for f in backup.iterdir():
        target = world.folder / ("bot.db" if f.name == "bot.db" else f"crypto/{f.name}")
        target.write_bytes(f.read_bytes())
        target.chmod(0o600)
    _restored_ok(world)


def test_a_pg_dump_restores(tmp_path: Path) -> None:
    """`pg_dump` of the bot's schema and of its crypto store's schema (nio_crypto beside
    public), restored over a damaged database with `pg_restore --clean --if-exists`, and
    again into a database where both schemas were dropped."""
    with fresh_schema() as url:
        world = _world(tmp_path, url, in_database=True)
        options = make_url(url).query["options"]
        assert isinstance(options, str)
        schema = options.removeprefix("-csearch_path=")
        server = make_url(url).set(drivername="postgresql", query={}).render_as_string(False)
        dump = tmp_path / "bot.dump"
        subprocess.run(
            ["pg_dump", "--format=custom", f"--file={dump}", "-n", schema,
             "-n", crypto_schema(schema), server],
            check=True,
        )  # fmt: skip
        engine = create_engine(server.replace("postgresql://", "postgresql+psycopg://", 1))
        try:
            with engine.begin() as conn:  # damage: items lost, the crypto account gone
                conn.execute(text(f'DELETE FROM "{schema}".relays'))
                conn.execute(text(f'DELETE FROM "{schema}".intel_items'))
                conn.execute(text(f'DELETE FROM "{crypto_schema(schema)}".accounts'))
            restore = ["pg_restore", "--clean", "--if-exists", f"--dbname={server}", str(dump)]
            subprocess.run(restore, check=True)
            _restored_ok(world)

            with engine.begin() as conn:
                for name in (crypto_schema(schema), schema):
                    conn.execute(text(f'DROP SCHEMA "{name}" CASCADE'))
            subprocess.run(["pg_restore", f"--dbname={server}", str(dump)], check=True)
            _restored_ok(world)
        finally:
            engine.dispose()


def test_a_writer_with_another_data_key_is_refused(world: World) -> None:
    """Writing with a key that is not the log's would seal the key marker under it and
    break the log for the real key: refused, nothing written, the log still verifies."""
    before = audit_details(world)
    store = world.store("another-data-key-" + "g" * 40)
    try:
        with pytest.raises(StoreError, match="not the key of this audit log"):
            store.append_audit("cli:test", "clearance.revoke", "@alice:example.org")
    finally:
        store.close()
    assert audit_details(world) == before
    assert world.cli("audit", "verify").exit_code == 0


def test_a_running_single_bot_is_refused(world: World) -> None:
    """A single bot holds the store's run lock while it runs (bot/storage/runlock.py): a
    rotation under it would reseal values the bot is using. The rotation takes the same
    lock, so it is refused, naming why, and changes nothing."""
    before = (audit_details(world), data_values(world, OLD_DATA))
    lock = hold_run_lock(world.url)
    try:
        result = world.cli(
            "keys", "rotate", "--data", "--new-key-file", str(key_file(world.folder, NEW_DATA))
        )
    finally:
        lock.release()
    assert result.exit_code == 1 and "another liaison-bot is running" in result.output
    assert "Nothing was changed" in result.output
    assert (audit_details(world), data_values(world, OLD_DATA)) == before


async def test_a_bot_does_not_start_on_a_cut_off_rotation(world: World) -> None:
    """Half-way, some values are sealed under the new key and some under the old: a bot
    started with either key would fail on the others. It refuses to start, saying how to
    finish, before it touches the homeserver (the config's homeserver is not even there)."""
    new_key = key_file(world.folder, NEW_DATA)
    await asyncio.to_thread(_killed_at, world, "data", f"intel items 4/{ITEMS}", new_key, OLD_DATA)
    config = load_config(world.config)
    secrets = Secrets.from_env_or_files(
        config, {**world.env(OLD_DATA, OLD_PICKLE), "LIAISON_PASSWORD": "unused"}
    )
    with pytest.raises(StartupError, match=r"rotation of the data key was cut off.*--data"):
        await run_bot(config, secrets)


def test_a_log_stripped_of_its_marker_is_not_laundered_by_a_rotation(world: World) -> None:
    """Someone with write access but not the key deletes the key marker and the bot's
    session row and re-hashes the log (after changing a row) without the key: `audit
    verify` says BROKEN (the bot has run here: its sync position and items are stored). A
    data key rotation would anchor every row before it under the new key and so vouch for
    it: refused, nothing changed, still not intact."""
    from bot.storage import AuditHeadRow, AuditRow, BotSessionRow
    from bot.storage.store import audit_hash

    store = world.store(OLD_DATA)
    try:
        with store.session() as session:
            session.execute(delete(BotSessionRow))
            prev = "0" * 64
            for row in session.scalars(select(AuditRow).order_by(AuditRow.id)):
                row.actor = "someone-else" if row.id == 1 else row.actor
                row.prev_hash = prev
                row.hash = prev = audit_hash(row)
            session.execute(update(AuditHeadRow).values(hash=prev, keyed_from=None, key_seal=None))
    finally:
        store.close()
    before = (audit_details(world), data_values(world, OLD_DATA))
    verify = world.cli("audit", "verify")
    assert verify.exit_code == 1, verify.output
    assert "no key marker though the bot has run" in verify.output
    rotated = world.cli(
        "keys", "rotate", "--data", "--new-key-file", str(key_file(world.folder, NEW_DATA))
    )
    assert rotated.exit_code == 1, rotated.output
    assert "the audit log does not verify" in rotated.output
    assert "no key marker" in rotated.output
    assert (audit_details(world), data_values(world, OLD_DATA)) == before
    assert world.cli("audit", "verify", data=NEW_DATA).exit_code == 1
