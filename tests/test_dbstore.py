"""The crypto store in PostgreSQL (bot/matrix/dbstore.py, issue 26), with real nio objects:
an Olm machine, Olm and Megolm sessions made by vodozemac, devices and their trust.

PostgreSQL only: skipped with a visible notice without LIAISON_TEST_DATABASE_URL. The
module migrates one fresh schema; each test's store is a device of its own in it.
"""

from __future__ import annotations

import secrets
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import peewee
import psycopg
import pytest
from nio.crypto import (
    InboundGroupSession,
    Olm,
    OlmAccount,
    OlmDevice,
    OutboundGroupSession,
    OutboundSession,
    OutgoingKeyRequest,
    TrustState,
)
from nio.store import MatrixStore
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from bot.matrix.dbstore import CryptoStoreMissing, DatabaseStore, crypto_schema, merge_params
from bot.storage.migrate import upgrade
from tests.pg import fresh_schema

PICKLE_KEY = "dbstore-test-pickle-key-0123456789abcdef"
BOT = "@liaison:example.org"


@pytest.fixture(scope="module")
def url() -> Iterator[str]:
    with fresh_schema() as url:
        upgrade(url)
        yield url


def _schema_of(url: str) -> str:
    options = make_url(url).query["options"]
    assert isinstance(options, str)
    return options.removeprefix("-csearch_path=")


def open_store(url: str, device_id: str, **kwargs: Any) -> DatabaseStore:
    return DatabaseStore(BOT, device_id, "", PICKLE_KEY, database_url=url, **kwargs)


@pytest.fixture
def device_id() -> str:
    return f"DEV{secrets.token_hex(4).upper()}"


@pytest.fixture
def store(url: str, device_id: str) -> Iterator[DatabaseStore]:
    """A store of a device of its own, its Olm account saved (as nio's Olm machine does)."""
    opened = open_store(url, device_id)
    opened.save_account(OlmAccount())
    yield opened
    opened.database.close()


@contextmanager
def statements(store: DatabaseStore) -> Iterator[list[str]]:
    """The SQL statements the store sends inside the block (peewee sends every query and
    savepoint through execute_sql; BEGIN and COMMIT go past it)."""
    sent: list[str] = []
    database = store.database
    original = database.execute_sql

    def counting(sql: str, params: Any = None, commit: Any = None) -> Any:
        sent.append(sql)
        return original(sql, params, commit)

    database.execute_sql = counting
    try:
        yield sent
    finally:
        del database.execute_sql


def _rows(url: str, sql: str, **params: Any) -> list[Any]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            return list(conn.execute(text(sql), params))
    finally:
        engine.dispose()


def _device(user: str, device_id: str, name: str = "") -> OlmDevice:
    return OlmDevice(
        user,
        device_id,
        {"ed25519": f"ed-{user}-{device_id}", "curve25519": f"cu-{user}-{device_id}"},
        display_name=name,
    )


def _group_session(room: str, chain: list[str]) -> InboundGroupSession:
    outbound = OutboundGroupSession()
    return InboundGroupSession(
        outbound.session_key, "signing-ed25519", "sender-curve25519", room, chain
    )


# -- the schema ---------------------------------------------------------------------------


def test_every_method_of_nio_store_is_the_database_store_own() -> None:
    """nio's own methods use nio's model classes, which are bound to no database here: a
    nio upgrade that adds a store method must fail here, not at run time."""
    public = {
        name
        for name in vars(MatrixStore)
        if not name.startswith("_") and callable(getattr(MatrixStore, name))
    } - {"upgrade_to_v2"}  # called only by nio's __post_init__, which is replaced
    assert public
    missing = sorted(name for name in public if name not in vars(DatabaseStore))
    assert not missing, missing


def test_the_tables_are_the_migrations_and_each_is_fenced(url: str, store: DatabaseStore) -> None:
    schema = crypto_schema(_schema_of(url))
    assert store.schema == schema
    for model in store.tables.all():
        table = model._meta.table_name
        columns = {
            name
            for (name,) in _rows(
                url,
                "SELECT column_name FROM information_schema.columns "
                "WHERE table_schema = :s AND table_name = :t",
                s=schema,
                t=table,
            )
        }
        assert columns == {f.column_name for f in model._meta.sorted_fields}, table
        triggers = _rows(
            url,
            "SELECT t.tgname FROM pg_trigger t JOIN pg_class c ON c.oid = t.tgrelid "
            "JOIN pg_namespace n ON n.oid = c.relnamespace "
            "WHERE n.nspname = :s AND c.relname = :t AND NOT t.tgisinternal",
            s=schema,
            t=table,
        )
        assert sorted(name for (name,) in triggers) == [
            "liaison_fence",
            "liaison_fence_commit",
        ], table


def test_a_database_without_the_tables_is_refused_with_what_to_run() -> None:
    """nio would create its tables; this store leaves that to the migration and says so.
    The downgrade takes the schema away, the upgrade brings it back."""
    with fresh_schema() as bare:
        upgrade(bare, "0013")
        with pytest.raises(CryptoStoreMissing, match="liaison-bot db upgrade"):
            open_store(bare, "DEVICE")
        upgrade(bare)
        open_store(bare, "DEVICE").database.close()
        from alembic import command

        from bot.storage.migrate import alembic_config

        command.downgrade(alembic_config(bare), "0013")
        schema = crypto_schema(_schema_of(bare))
        assert not _rows(bare, "SELECT 1 FROM pg_namespace WHERE nspname = :s", s=schema)
        with pytest.raises(CryptoStoreMissing, match="revision 0014"):
            open_store(bare, "DEVICE")


# -- account and Olm sessions ----------------------------------------------------------------


def test_nio_olm_machine_keeps_its_account_across_stores(url: str, device_id: str) -> None:
    first = open_store(url, device_id)
    try:
        olm = Olm(BOT, device_id, first)  # no account yet: nio makes one and saves it
        keys = olm.account.identity_keys
        olm.account.shared = True
        olm.save_account()
        olm.save_account()  # a second save updates the row
    finally:
        first.database.close()
    again = open_store(url, device_id)
    try:
        loaded = Olm(BOT, device_id, again)
        assert loaded.account.identity_keys == keys
        assert loaded.account.shared
    finally:
        again.database.close()
    assert _rows(
        url,
        f'SELECT count(*) FROM "{crypto_schema(_schema_of(url))}".accounts WHERE device_id = :d',
        d=device_id,
    ) == [(1,)]


def test_an_olm_session_saved_twice_is_one_row_with_its_last_use(
    url: str, device_id: str, store: DatabaseStore
) -> None:
    peer = OlmAccount()
    peer.generate_one_time_keys(1)
    one_time_key = next(iter(peer.one_time_keys["curve25519"].values()))
    ours = store.load_account()
    assert ours is not None
    session = OutboundSession(ours, peer.identity_keys["curve25519"], one_time_key)
    store.save_session(peer.identity_keys["curve25519"], session)
    session.encrypt("hello")  # moves its use time on
    store.save_session(peer.identity_keys["curve25519"], session)
    schema = crypto_schema(_schema_of(url))
    assert _rows(
        url, f'SELECT count(*) FROM "{schema}".olmsessions WHERE session_id = :s', s=session.id
    ) == [(1,)]
    reopened = open_store(url, device_id)
    try:
        loaded = reopened.load_sessions().get(peer.identity_keys["curve25519"])
    finally:
        reopened.database.close()
    assert loaded is not None and loaded.id == session.id
    assert loaded.use_time == session.use_time  # nio's SqliteStore gave the creation time
    assert loaded.creation_time == session.creation_time


# -- Megolm inbound sessions --------------------------------------------------------------


def test_room_keys_load_with_their_forwarding_chains_in_one_query(
    url: str, device_id: str, store: DatabaseStore
) -> None:
    made = [
        _group_session(f"!room{i % 7}:example.org", [f"fwd-{i}-{n}" for n in range(i % 3)])
        for i in range(40)
    ]
    for session in made:
        store.save_inbound_group_session(session)
    store.save_inbound_group_session(made[5])  # again: no second chain rows
    reopened = open_store(url, device_id)
    try:
        with statements(reopened) as sent:
            loaded = reopened.load_inbound_group_sessions()
    finally:
        reopened.database.close()
    assert len(sent) == 1, sent
    by_id = {s.id: s for s in loaded}
    assert set(by_id) == {s.id for s in made}
    for session in made:
        got = by_id[session.id]
        assert got.forwarding_chain == session.forwarding_chain
        assert (got.room_id, got.sender_key, got.ed25519) == (
            session.room_id,
            session.sender_key,
            session.ed25519,
        )
        assert got.first_known_index == session.first_known_index  # the pickle is the key


# -- device keys and trust ----------------------------------------------------------------


def test_device_keys_saved_twice_are_updated_not_doubled(
    url: str, device_id: str, store: DatabaseStore
) -> None:
    alice = _device("@alice:example.org", "PHONE", "old name")
    store.save_device_keys({alice.user_id: {alice.id: alice}})
    alice.display_name = "new name"
    alice.curve25519 = "new-curve"
    alice.deleted = True
    store.save_device_keys({alice.user_id: {alice.id: alice}})
    reopened = open_store(url, device_id)
    try:
        loaded = reopened.load_device_keys()[alice.user_id][alice.id]
    finally:
        reopened.database.close()
    assert loaded.display_name == "new name"
    assert loaded.keys == {"ed25519": alice.ed25519, "curve25519": "new-curve"}
    assert loaded.deleted
    schema = crypto_schema(_schema_of(url))
    assert _rows(
        url,
        f'SELECT count(*) FROM "{schema}".devicekeys WHERE user_id = :u',
        u=alice.user_id,
    ) == [(1,)]


@pytest.mark.parametrize(
    ("mark", "unmark", "state", "check"),
    [
        ("verify_device", "unverify_device", TrustState.verified, "is_device_verified"),
        ("blacklist_device", "unblacklist_device", TrustState.blacklisted, "is_device_blacklisted"),
        ("ignore_device", "unignore_device", TrustState.ignored, "is_device_ignored"),
    ],
)
def test_trust_round_trips_through_the_database(
    url: str, device_id: str, store: DatabaseStore, mark: str, unmark: str, state: Any, check: str
) -> None:
    bob = _device("@bob:example.org", "LAPTOP")
    store.save_device_keys({bob.user_id: {bob.id: bob}})
    store.load_device_keys()
    assert not getattr(store, check)(bob)
    assert not getattr(store, unmark)(bob)  # nothing to undo
    assert getattr(store, mark)(bob) and bob.trust_state == state
    assert not getattr(store, mark)(bob)  # already so
    assert getattr(store, check)(bob)

    def stored() -> Any:
        reopened = open_store(url, device_id)
        try:
            device = reopened.load_device_keys()[bob.user_id][bob.id]
            return device.trust_state, getattr(reopened, check)(device)
        finally:
            reopened.database.close()

    assert stored() == (state, True)
    assert getattr(store, unmark)(bob) and bob.trust_state == TrustState.unset
    assert stored() == (TrustState.unset, False)


def test_one_trust_state_at_a_time(store: DatabaseStore) -> None:
    carol = _device("@carol:example.org", "TABLET")
    store.save_device_keys({carol.user_id: {carol.id: carol}})
    store.verify_device(carol)
    store.blacklist_device(carol)
    assert not store.is_device_verified(carol) and store.is_device_blacklisted(carol)
    store.ignore_device(carol)
    assert not store.is_device_blacklisted(carol) and store.is_device_ignored(carol)


def test_trust_checks_are_answered_from_memory(
    url: str, device_id: str, store: DatabaseStore
) -> None:
    """nio's SqliteStore: three queries per check (300 checks took 890 ms). Here the trust
    states come with the device keys nio loads anyway, and a check sends nothing."""
    people = [_device(f"@p{i}:example.org", f"D{i}") for i in range(100)]
    store.save_device_keys({d.user_id: {d.id: d} for d in people})
    for device in people[::2]:
        store.verify_device(device)
    reopened = open_store(url, device_id)
    try:
        loaded = reopened.load_device_keys()
        devices = [loaded[d.user_id][d.id] for d in people]
        with statements(reopened) as sent:
            began = time.perf_counter()
            verdicts = [
                (
                    reopened.is_device_verified(d),
                    reopened.is_device_blacklisted(d),
                    reopened.is_device_ignored(d),
                )
                for d in devices
            ]
            took = time.perf_counter() - began
    finally:
        reopened.database.close()
    assert sent == []
    assert verdicts == [(i % 2 == 0, False, False) for i in range(100)]
    print(f"300 trust checks: {took * 1000:.2f} ms")


def test_a_store_that_never_loaded_the_devices_reads_their_trust_once(
    url: str, device_id: str, store: DatabaseStore
) -> None:
    dave = _device("@dave:example.org", "DESK")
    store.save_device_keys({dave.user_id: {dave.id: dave}})
    store.blacklist_device(dave)
    reopened = open_store(url, device_id)
    try:
        with statements(reopened) as sent:
            assert reopened.is_device_blacklisted(dave)
            assert reopened.is_device_blacklisted(dave)
            assert not reopened.is_device_verified(dave)
    finally:
        reopened.database.close()
    assert len(sent) == 1, sent


def test_ignore_devices_marks_many_at_once(url: str, device_id: str, store: DatabaseStore) -> None:
    """More devices than one statement takes, one named twice, and some stored by another
    store after this one read its devices (so found by a lookup, not in memory)."""
    crowd = [_device(f"@c{i}:example.org", f"D{i}") for i in range(1200)]
    store.save_device_keys({d.user_id: {d.id: d} for d in crowd[:1000]})
    store.verify_device(crowd[0])
    other = open_store(url, device_id)
    try:
        other.save_device_keys({d.user_id: {d.id: d} for d in crowd[1000:]})
    finally:
        other.database.close()
    store.ignore_devices([*crowd, crowd[3]])
    assert all(d.trust_state == TrustState.ignored for d in crowd)
    assert all(store.is_device_ignored(d) for d in crowd)
    assert not store.is_device_verified(crowd[0])
    reopened = open_store(url, device_id)
    try:
        loaded = reopened.load_device_keys()
        assert all(loaded[d.user_id][d.id].trust_state == TrustState.ignored for d in crowd)
    finally:
        reopened.database.close()
    with pytest.raises(LookupError, match=r"@nobody:example\.org"):
        store.ignore_devices([_device("@nobody:example.org", "X")])


# -- rooms, key requests, sync token ------------------------------------------------------


def test_rooms_key_requests_and_sync_token(url: str, device_id: str, store: DatabaseStore) -> None:
    store.save_encrypted_rooms({"!a:example.org", "!b:example.org"})
    store.save_encrypted_rooms({"!b:example.org", "!c:example.org"})
    store.delete_encrypted_room("!a:example.org")
    request = OutgoingKeyRequest("req-1", "session-1", "!b:example.org", "m.megolm.v1.aes-sha2")
    store.add_outgoing_key_request(request)
    store.add_outgoing_key_request(request)
    store.add_outgoing_key_request(OutgoingKeyRequest("req-2", "s2", "!c:example.org", "m"))
    store.remove_outgoing_key_request(OutgoingKeyRequest("req-2", "s2", "!c:example.org", "m"))
    assert store.load_sync_token() is None
    store.save_sync_token("s1_1")
    store.save_sync_token("s2_2")
    reopened = open_store(url, device_id)
    try:
        assert reopened.load_encrypted_rooms() == {"!b:example.org", "!c:example.org"}
        assert reopened.load_outgoing_key_requests() == {"req-1": request}
        assert reopened.load_sync_token() == "s2_2"
    finally:
        reopened.database.close()


# -- transactions and connections ---------------------------------------------------------


def test_a_rolled_back_transaction_leaves_nothing(
    url: str, device_id: str, store: DatabaseStore
) -> None:
    """CryptoClient handles each to-device event in `store.database.atomic()`: a failure
    inside leaves no row of it, and nothing of it in the store's memory either."""
    eve = _device("@eve:example.org", "PC")
    store.save_device_keys({eve.user_id: {eve.id: eve}})
    store.load_device_keys()
    room_key = _group_session("!r:example.org", ["fwd"])
    with pytest.raises(RuntimeError, match="injected"), store.database.atomic():
        store.save_inbound_group_session(room_key)
        store.verify_device(eve)
        store.save_sync_token("never")
        assert store.is_device_verified(eve)
        raise RuntimeError("injected")
    assert not store.is_device_verified(eve)  # memory forgot it with the rollback
    assert store.load_sync_token() is None
    reopened = open_store(url, device_id)
    try:
        assert list(reopened.load_inbound_group_sessions()) == []
        assert not reopened.is_device_verified(eve)
    finally:
        reopened.database.close()


def test_connect_params_reach_the_server_at_every_connect(url: str, device_id: str) -> None:
    """The high-availability code's parameters: its settings beside the URL's search_path,
    asked for again when the connection is replaced."""
    calls: list[int] = []

    def params() -> dict[str, str]:
        calls.append(1)
        return {
            "options": "-c liaison.epoch=7",
            "application_name": f"liaison-bot/node-a/e7/{len(calls)}",
        }

    store = open_store(url, device_id, connect_params=params)
    try:

        def settings() -> tuple[Any, ...]:
            return tuple(
                store.database.execute_sql(
                    "SELECT current_setting('application_name'), "
                    "current_setting('liaison.epoch'), current_schema()"
                ).fetchone()
            )

        assert settings() == ("liaison-bot/node-a/e7/1", "7", _schema_of(url))
        pid = store.database.execute_sql("SELECT pg_backend_pid()").fetchone()[0]
        _rows(url, "SELECT pg_terminate_backend(:p)", p=pid)
        with pytest.raises(peewee.OperationalError):
            settings()  # the statement that meets the dead connection fails: no retry
        assert settings() == ("liaison-bot/node-a/e7/2", "7", _schema_of(url))
    finally:
        store.database.close()


def test_a_fenced_process_writes_nothing(url: str, device_id: str, store: DatabaseStore) -> None:
    """Revision 0013's trigger on this store's tables: a process whose epoch no longer holds
    the lease is refused, one whose epoch holds it writes. Until main's 0013 (with its table
    `ha_leader`) is here, a stand-in table with the columns the fence reads."""
    engine = create_engine(url)
    stand_in = _rows(url, "SELECT to_regclass('ha_leader')") == [(None,)]
    try:
        with engine.begin() as conn:
            if stand_in:
                conn.execute(text("CREATE TABLE ha_leader (id int PRIMARY KEY, epoch bigint)"))
                conn.execute(text("INSERT INTO ha_leader VALUES (1, 8)"))
            else:
                conn.execute(text("DELETE FROM ha_leader"))
                conn.execute(
                    text(
                        "INSERT INTO ha_leader (id, epoch, holder, lease_until, acquired_at) "
                        "VALUES (1, 8, 'test', now() + interval '1 hour', now())"
                    )
                )
        stale = open_store(url, device_id, connect_params=lambda: {"options": "-c liaison.epoch=7"})
        current = open_store(
            url, device_id, connect_params=lambda: {"options": "-c liaison.epoch=8"}
        )
        try:
            with pytest.raises((peewee.DatabaseError, psycopg.Error), match="fenced"):
                stale.save_sync_token("from the old active")
            current.save_sync_token("from the new active")
            assert stale.load_sync_token() == "from the new active"  # reading is not fenced
        finally:
            stale.database.close()
            current.database.close()
    finally:
        with engine.begin() as conn:
            conn.execute(text("DROP TABLE ha_leader" if stand_in else "DELETE FROM ha_leader"))
        engine.dispose()


def test_options_from_the_url_and_the_caller_both_apply() -> None:
    assert merge_params(
        {"options": "-csearch_path=s", "dbname": "d"},
        {"options": "-c liaison.epoch=3", "application_name": "n"},
    ) == {"options": "-csearch_path=s -c liaison.epoch=3", "dbname": "d", "application_name": "n"}
    assert merge_params({}, {"options": "-c a=b"}) == {"options": "-c a=b"}


# -- figures ------------------------------------------------------------------------------


def test_three_thousand_room_keys_load_in_one_query(
    url: str, device_id: str, store: DatabaseStore
) -> None:
    """nio's SqliteStore: one query per session for its chain (3 000 took 1.1 s)."""
    for i in range(3000):
        store.save_inbound_group_session(_group_session(f"!r{i % 50}:example.org", [f"f{i}"]))
    reopened = open_store(url, device_id)
    try:
        with statements(reopened) as sent:
            began = time.perf_counter()
            loaded = list(reopened.load_inbound_group_sessions())
            took = time.perf_counter() - began
    finally:
        reopened.database.close()
    assert len(loaded) == 3000 and len(sent) == 1
    print(f"3 000 inbound group sessions loaded in {took * 1000:.0f} ms")


def test_login_builds_the_store_the_config_names(tmp_path: Path) -> None:
    """bot/matrix/session.py's one choice: the folder store (made private) or this one, bound
    to the bot's database URL and the caller's connection parameters."""
    from bot.config import parse_config
    from bot.matrix.cryptostore import PrivateStore
    from bot.matrix.session import crypto_store

    head = '[homeserver]\nurl = "http://h"\nuser_id = "@b:h"\npassword_env = "P"\n[storage]\n'
    folder = load_config_in(tmp_path, head + 'crypto_store = "crypto"\n')
    store_class, path = crypto_store(folder)
    assert store_class is PrivateStore and path == str(tmp_path / "crypto")
    assert (tmp_path / "crypto").stat().st_mode & 0o777 == 0o700

    def params() -> dict[str, str]:
        return {"application_name": "liaison-bot/node-a/e7"}

    database = parse_config(
        head + 'database_url = "postgresql+psycopg://u@db/liaison"\ncrypto_store = "database"\n'
    )
    factory, path = crypto_store(database, params)
    assert path  # nio loads no store for a client without one
    assert factory.func is DatabaseStore
    assert factory.keywords == {
        "database_url": "postgresql+psycopg://u@db/liaison",
        "connect_params": params,
    }


def load_config_in(folder: Path, text: str) -> Any:
    from bot.config import load_config

    (folder / "config.toml").write_text(text)
    return load_config(folder / "config.toml")
