"""The leader lease and the fences of a high-availability pair, on a real PostgreSQL (skipped
visibly without one), and the send gate on a clock the test moves."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import pytest
from sqlalchemy import create_engine, text, update
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DBAPIError

from bot.config import ConfigError, parse_config
from bot.ha import EXIT_LEASE_LOST, Fenced, HaNode, Role, SendGate
from bot.storage import HaLeaderRow, Store
from bot.storage.lease import LeaseState, LeaseStore, Takeover, work_name
from bot.storage.migrate import upgrade
from bot.storage.models import with_options
from tests.pg import fresh_schema

LEASE = timedelta(seconds=3)


@pytest.fixture
def pg_url() -> Iterator[str]:
    with fresh_schema() as url:
        upgrade(url)
        yield url


@pytest.fixture
def leases(pg_url: str) -> Iterator[tuple[LeaseStore, LeaseStore]]:
    a, b = LeaseStore(pg_url, "a"), LeaseStore(pg_url, "b")
    yield a, b
    a.close()
    b.close()


def expire(store: LeaseStore) -> None:
    """The holder went silent: its lease ran out (as the database's clock tells)."""
    with store.engine.begin() as conn:
        conn.execute(update(HaLeaderRow).values(lease_until=text("now() - interval '1 second'")))


def node_store(url: str, node: str, epoch: int) -> Store:
    params = {"application_name": work_name(node, epoch), "options": f"-c liaison.epoch={epoch}"}
    return Store.from_url(url, connect_params=lambda: params)


def test_one_holder_at_a_time_and_the_epoch_grows(leases: tuple[LeaseStore, LeaseStore]) -> None:
    a, b = leases
    first = a.acquire(LEASE)
    assert first == Takeover(1, None)
    held = b.acquire(LEASE)
    assert isinstance(held, LeaseState) and held.holder == "a" and held.held
    assert a.renew(1, LEASE)
    expire(a)
    second = b.acquire(LEASE)
    assert isinstance(second, Takeover) and second.epoch == 2
    assert second.previous is not None and second.previous.holder == "a"
    assert not a.renew(1, LEASE), "a lease taken over is never renewed"
    assert not a.release(1), "nor released by its old holder"
    assert b.release(2)
    third = a.acquire(LEASE)
    assert isinstance(third, Takeover) and third.epoch == 3, "a released lease is free at once"


def test_two_nodes_racing_for_a_free_lease_get_one_holder(
    leases: tuple[LeaseStore, LeaseStore],
) -> None:
    a, b = leases
    results: dict[str, object] = {}
    barrier = threading.Barrier(2)

    def race(store: LeaseStore) -> None:
        barrier.wait()
        results[store.node] = store.acquire(LEASE)

    threads = [threading.Thread(target=race, args=(s,)) for s in (a, b)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    winners = [n for n, r in results.items() if isinstance(r, Takeover)]
    assert len(winners) == 1, results


def test_a_fenced_epoch_writes_nothing_and_the_cli_still_does(
    pg_url: str, leases: tuple[LeaseStore, LeaseStore]
) -> None:
    a, b = leases
    assert a.acquire(LEASE) == Takeover(1, None)
    old, standby, cli = (
        node_store(pg_url, "a", 1),
        node_store(pg_url, "b", 0),
        Store.from_url(pg_url),
    )
    try:
        old.append_audit("liaison-bot", "test.write", None, {})  # the holder writes
        with pytest.raises(DBAPIError, match="fenced: epoch 0"):
            standby.append_audit("liaison-bot", "test.write", None, {})
        expire(a)
        assert isinstance(b.acquire(LEASE), Takeover)
        with pytest.raises(DBAPIError, match="fenced: epoch 1 no longer holds the lease") as err:
            old.append_audit("liaison-bot", "test.write", None, {})
        assert getattr(err.value.orig, "sqlstate", None) == "LB001"
        cli.append_audit("cli:admin", "test.write", None, {})  # no epoch: not a node
        new = node_store(pg_url, "b", 2)
        new.append_audit("liaison-bot", "test.write", None, {})
        new.close()
    finally:
        for store in (old, standby, cli):
            store.close()


def test_a_new_holder_ends_the_old_holders_open_transaction(
    pg_url: str, leases: tuple[LeaseStore, LeaseStore]
) -> None:
    a, b = leases
    a.acquire(LEASE)
    params = {"application_name": work_name("a", 1), "options": "-c liaison.epoch=1"}
    engine = create_engine(pg_url, connect_args=with_options(make_url(pg_url).query, params))
    conn = engine.connect()
    try:
        transaction = conn.begin()
        conn.execute(text("INSERT INTO routes (source_key, target_key, created_by, created_at) "
                          "VALUES ('x', 'y', 'paused', now())"))  # fmt: skip
        expire(a)
        took = b.acquire(LEASE)
        assert isinstance(took, Takeover) and took.previous is not None
        assert b.end_sessions(took.previous) >= 1
        with pytest.raises(DBAPIError):
            transaction.commit()
    finally:
        conn.close()
        engine.dispose()
    with Store.from_url(pg_url).session() as session:
        assert session.execute(text("SELECT count(*) FROM routes")).scalar() == 0


@pytest.mark.parametrize("isolation", ["READ COMMITTED", "REPEATABLE READ"])
def test_a_transaction_begun_before_a_takeover_cannot_commit_after_it(
    pg_url: str, leases: tuple[LeaseStore, LeaseStore], isolation: str
) -> None:
    """Even when its session is not ended (a missing grant, a name that did not match):
    the fence checks again at commit."""
    a, b = leases
    a.acquire(LEASE)
    params = {"application_name": "not-a-node-name", "options": "-c liaison.epoch=1"}
    engine = create_engine(
        pg_url,
        connect_args=with_options(make_url(pg_url).query, params),
        isolation_level=isolation.replace(" ", "_"),
    )
    try:
        with engine.connect() as conn:
            transaction = conn.begin()
            conn.execute(text("INSERT INTO routes (source_key, target_key, created_by, "
                              "created_at) VALUES ('x', 'y', 'paused', now())"))  # fmt: skip
            expire(a)
            assert isinstance(b.acquire(LEASE), Takeover), "the open transaction held it up"
            with pytest.raises(DBAPIError) as err:
                transaction.commit()
            assert getattr(err.value.orig, "sqlstate", None) in ("LB001", "40001")
    finally:
        engine.dispose()
    with Store.from_url(pg_url).session() as session:
        assert session.execute(text("SELECT count(*) FROM routes")).scalar() == 0


def test_a_temporary_table_cannot_stand_in_for_the_lease(
    pg_url: str, leases: tuple[LeaseStore, LeaseStore]
) -> None:
    a, b = leases
    a.acquire(LEASE)
    expire(a)
    b.acquire(LEASE)
    old = node_store(pg_url, "a", 1)
    try:
        with pytest.raises(DBAPIError, match="fenced"), old.session() as session:
            schema = session.execute(text("SELECT quote_ident(current_schema())")).scalar()
            session.execute(
                text("CREATE TEMPORARY TABLE ha_leader AS SELECT 1 AS id, 1::bigint AS epoch")
            )
            session.execute(text(f"SET LOCAL search_path = pg_temp, {schema}"))
            session.execute(text("INSERT INTO routes (source_key, target_key, created_by, "
                                 "created_at) VALUES ('x', 'y', 'forged', now())"))  # fmt: skip
    finally:
        old.close()


def test_every_table_but_the_lease_is_fenced(pg_url: str) -> None:
    """Every table of the bot's and of the crypto store's (its own schema) carries both
    fences; ha_leader none. A later revision adding a table without them fails here."""
    engine = create_engine(pg_url)

    def tables(query: str) -> set[tuple[str, str]]:
        with engine.connect() as conn:
            found = conn.execute(
                text(
                    "SELECT n.nspname, c.relname FROM pg_class c "
                    "JOIN pg_namespace n ON n.oid = c.relnamespace "
                    "WHERE c.relkind = 'r' AND n.nspname IN "
                    "(current_schema(), current_schema() || '_nio_crypto') " + query
                )
            ).all()
        return {(str(schema), str(name)) for schema, name in found}

    def with_trigger(name: str, deferred: bool) -> set[tuple[str, str]]:
        return tables(
            "AND EXISTS (SELECT 1 FROM pg_trigger t WHERE t.tgrelid = c.oid AND "
            f"t.tgname = '{name}'"
            + (" AND t.tgdeferrable AND t.tginitdeferred)" if deferred else ")")
        )

    try:
        every = tables("")
        statement, commit = (
            with_trigger("liaison_fence", False),
            with_trigger("liaison_fence_commit", True),
        )
    finally:
        engine.dispose()
    crypto = {t for s, t in every if s.endswith("_nio_crypto")}
    assert {"accounts", "olmsessions", "megolminboundsessions"} <= crypto
    unfenced = {t for _, t in every - statement} | {t for _, t in every - commit}
    assert unfenced == {"ha_leader", "alembic_version"}


# ---------------------------------------------------------------- the send gate


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_the_gate_opens_only_until_the_self_fence_time_after_a_renewal() -> None:
    clock = Clock()
    gate = SendGate(2.0, clock)
    with pytest.raises(Fenced):
        gate.check()  # shut before the first renewal
    gate.renewed(100.0)
    gate.check()
    clock.now = 101.9
    gate.check()
    clock.now = 102.0  # a pause: resumed past the self-fence time, before the watchdog runs
    with pytest.raises(Fenced):
        gate.check()
    clock.now = 112.0  # paused 10 s while a renewal begun at 101.5 was on the wire
    gate.renewed(101.5)  # its success, seen after the pause, opens nothing
    with pytest.raises(Fenced):
        gate.check()
    clock.now = 102.0
    gate.renewed(102.0)
    gate.check()
    gate.shut()
    gate.renewed(102.0)
    with pytest.raises(Fenced):
        gate.check()
    assert gate.refused == 4


# ---------------------------------------------------------------- config


BASE = """
[homeserver]
url = "http://127.0.0.1:8008"
user_id = "@liaison:example.org"
password_env = "P"
[storage]
database_url = "postgresql+psycopg://bot@db.example.org/liaison"
crypto_store = "database"
"""


@pytest.mark.parametrize(
    ("extra", "error"),
    [
        ("[ha]\nenabled = true", "ha: node: required when enabled"),
        ('[ha]\nnode = "a b"', "ha.node: bad node name 'a b'"),
        ('[ha]\nrenew = "1s"', "ha: renew: twice the renewal interval (1s) must be below"),
        ('[ha]\nlease = "2s"', "ha: self_fence: must be below the lease (2s)"),
        ('[ha]\nrenew = "fast"', "ha.renew: bad duration 'fast'"),
    ],
)
def test_inconsistent_ha_settings_are_refused_with_the_key(extra: str, error: str) -> None:
    with pytest.raises(ConfigError) as exc:
        parse_config(BASE + extra)
    assert any(error in line for line in exc.value.errors), exc.value.errors


@pytest.mark.parametrize(
    ("storage", "error"),
    [
        ('database_url = "sqlite:///x.db"\ncrypto_store = "data/crypto"', "PostgreSQL"),
        ('database_url = "postgresql+psycopg://bot@db/l"', 'crypto_store = "database"'),
    ],
)
def test_ha_needs_postgresql_and_the_database_crypto_store(storage: str, error: str) -> None:
    text_ = (
        BASE.split("[storage]")[0] + "[storage]\n" + storage + '\n[ha]\nenabled = true\nnode = "a"'
    )
    with pytest.raises(ConfigError) as exc:
        parse_config(text_)
    assert any("ha.enabled" in line and error in line for line in exc.value.errors), (
        exc.value.errors
    )


def test_sub_second_timings_read() -> None:
    config = parse_config(
        BASE + '[ha]\nenabled = true\nnode = "a"\nrenew = "0.25s"\nself_fence = "1500ms"'
    )
    assert config.ha.renew == timedelta(milliseconds=250)
    assert config.ha.self_fence == timedelta(milliseconds=1500)


# ---------------------------------------------------------------- the node's threads


def ha_config(url: str, node: str) -> str:
    return f"""
[homeserver]
url = "http://127.0.0.1:9"
user_id = "@liaison:example.org"
password_env = "P"
[storage]
database_url = "{url}"
crypto_store = "database"
[ha]
enabled = true
node = "{node}"
lease = "0.6s"
renew = "0.1s"
self_fence = "0.4s"
"""


class Exited(Exception):
    pass


def test_a_node_whose_lease_is_taken_exits_with_the_lease_lost_code(
    pg_url: str, tmp_path: Path
) -> None:
    codes: list[int] = []
    done = threading.Event()

    def exit_process(code: int) -> None:
        codes.append(code)
        done.set()

    node = HaNode(
        parse_config(ha_config(pg_url, "a"), base_dir=tmp_path), exit_process=exit_process
    )
    got = node.leases.acquire(node.lease)
    assert isinstance(got, Takeover)
    node._took(got, node._clock())  # as wait_for_lease does
    node.keep()
    other = LeaseStore(pg_url, "b")
    try:
        time.sleep(0.3)  # renewals succeed meanwhile: the node stays active
        assert codes == [] and node.gate.is_open()
        # Taken over in one statement: expiring it first would race the node's renewals.
        with other.engine.begin() as conn:
            conn.execute(update(HaLeaderRow).values(epoch=HaLeaderRow.epoch + 1, holder="b"))
        assert done.wait(2), "the node did not notice its lease was taken"
        assert codes == [EXIT_LEASE_LOST]
        assert not node.gate.is_open() and node.status.role is Role.FENCED
    finally:
        other.close()
        node.leases.close()


def test_the_watchdog_fences_a_node_whose_renewals_hang(pg_url: str, tmp_path: Path) -> None:
    codes: list[tuple[int, float]] = []
    done = threading.Event()
    hang, unblock = threading.Event(), threading.Event()

    def exit_process(code: int) -> None:
        codes.append((code, time.monotonic()))
        done.set()

    node = HaNode(
        parse_config(ha_config(pg_url, "a"), base_dir=tmp_path), exit_process=exit_process
    )
    got = node.leases.acquire(node.lease)
    assert isinstance(got, Takeover)
    node._took(got, node._clock())
    renew = node.leases.renew

    def stuck(epoch: int, lease: timedelta) -> bool:
        if hang.is_set():
            unblock.wait(30)  # a query on a dead socket: never returns
        return renew(epoch, lease)

    node.leases.renew = stuck  # type: ignore[method-assign]  # the dead socket, simulated
    node.keep()
    time.sleep(0.3)
    assert node.gate.is_open()
    hung_at = time.monotonic()
    hang.set()
    assert done.wait(2), "the watchdog did not fence the node"
    code, at = codes[0]
    assert code == EXIT_LEASE_LOST
    assert at - hung_at < 0.4 + 0.1 + 0.1, "fenced later than self_fence after the last renewal"
    assert not node.gate.is_open()
    unblock.set()
    node.leases.close()


def test_a_site_can_make_the_fence_refuse_sessions_that_say_nothing(
    pg_url: str, leases: tuple[LeaseStore, LeaseStore]
) -> None:
    """With `ALTER ROLE … SET liaison.epoch = 'unset'` (simulated here in the URL), a session
    that names no epoch is refused, while the bot's own sessions (the CLI's included) say
    what they are and pass."""
    a, _ = leases
    a.acquire(LEASE)
    url = make_url(pg_url)
    closed = url.update_query_dict(
        {"options": f"{url.query['options']} -c liaison.epoch=unset"}
    ).render_as_string(hide_password=False)
    cli = Store.from_url(closed)
    bare = create_engine(closed)
    try:
        cli.append_audit("cli:admin", "test.write", None, {})
        with pytest.raises(DBAPIError, match="invalid input syntax"), bare.begin() as conn:
            conn.execute(text("DELETE FROM routes"))
    finally:
        cli.close()
        bare.dispose()
