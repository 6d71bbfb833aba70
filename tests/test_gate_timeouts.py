"""The gate's limits on a register that does not answer, run for real.

The README promises "a 3-second limit per connection and statement": a register that hangs
must refuse the join or invite within seconds (fails closed, with the reason) rather than
hold one of the gate's four threads. Port 1 (refused at once) never runs those limits; here:

- a listener on 127.0.0.1 that accepts the connection and never answers (the connect limit);
- a real PostgreSQL (`LIAISON_TEST_DATABASE_URL`, else a visible skip) whose clearance table
  another session holds locked, so the gate's read waits on it (the statement limit);
- the same server behind a relay that stops passing its answers once connected (a server
  that hung, or a network that dropped the route, after the connection was made).

Every decision runs in a thread joined with a deadline, and whatever holds it up is released
afterwards, so a limit that does not hold fails the test instead of hanging it.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import date

import psycopg
import pytest
from sqlalchemy.engine import make_url

from bot.gate.config import RegisterSpec
from bot.gate.rules import Gate, Register, RoomLabel, Verdict
from bot.storage import Origin, RoomRecord, Store, audit_key_from
from bot.storage.migrate import upgrade
from bot.storage.store import register_public_key
from policy.ids import RoomId, RoomKey, UserId
from tests.pg import fresh_schema

BOT = "@liaison:hs"
ROOM = "!nato:hs"
LABEL = RoomLabel(True, BOT)
DATA_KEY = "gate-timeouts-data-key-0123456789abcdef"
LIMIT = 3.0  # the README's "3-second limit per connection and statement"
MARGIN = 2.0  # scheduling slack on a loaded machine; well under a second limit
DEADLINE = LIMIT + MARGIN


def _gate(url: str) -> Gate:
    # No cache (ttl 0): every decision reads the register.
    register = Register(
        RegisterSpec(
            bot_user_id=UserId(BOT), database=url, register_key=register_public_key(DATA_KEY)
        ),
        ttl=0.0,
    )
    return Gate(lambda: {BOT: register}, today=lambda: date(2026, 12, 3))


def _decide(
    decide: Callable[[], Verdict], release: Callable[[], None]
) -> tuple[Verdict | None, float]:
    """The verdict and the seconds it took; None if it took longer than DEADLINE, in which
    case `release` ends the hold so that the decision's thread does not outlive the test."""
    out: list[Verdict] = []
    started = time.monotonic()
    worker = threading.Thread(target=lambda: out.append(decide()), daemon=True)
    worker.start()
    worker.join(DEADLINE)
    elapsed = time.monotonic() - started
    if worker.is_alive():
        release()
        worker.join(LIMIT + MARGIN)
        return None, elapsed
    return out[0], elapsed


@dataclass
class SilentListener:
    """Accepts TCP connections on 127.0.0.1 and never reads from or writes to them."""

    sock: socket.socket = field(default_factory=socket.socket)
    held: list[socket.socket] = field(default_factory=list)
    _thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        port: int = self.sock.getsockname()[1]
        return port

    def start(self) -> None:
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self._thread = threading.Thread(target=self._accept, daemon=True)
        self._thread.start()

    def _accept(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:  # shut down by stop()
                return
            self.held.append(conn)

    def stop(self) -> None:
        """Closes every held connection (the client sees the end of the stream)."""
        if self.sock.fileno() == -1:  # stopped already
            return
        self.sock.shutdown(socket.SHUT_RDWR)  # wakes accept() on Linux
        self.sock.close()
        for conn in self.held:
            conn.close()
        if self._thread is not None:
            self._thread.join(5)
            assert not self._thread.is_alive()


@pytest.fixture
def silent() -> Iterator[SilentListener]:
    listener = SilentListener()
    listener.start()
    yield listener
    listener.stop()


def test_a_register_that_accepts_and_never_answers_fails_closed_within_the_limit(
    silent: SilentListener,
) -> None:
    gate = _gate(f"postgresql+psycopg://gate@127.0.0.1:{silent.port}/liaison")
    verdict, elapsed = _decide(lambda: gate.may_enter("@cleared:hs", ROOM, LABEL), silent.stop)
    assert verdict is not None, f"no decision within {DEADLINE} s: the connect limit did not hold"
    assert len(silent.held) >= 1, "the gate never reached the listener"
    assert not verdict.allowed
    assert f"the clearance register of {BOT} cannot be read" in verdict.reason
    assert "connection timeout expired" in verdict.reason, verdict.reason
    assert f"managed room {ROOM} admits nobody until it can" in verdict.reason
    # it waited for the limit (the listener held it), and no longer than the limit
    assert LIMIT - 0.1 <= elapsed < DEADLINE, elapsed


# --- a real server that hangs -----------------------------------------------------------


@pytest.fixture
def register_url() -> Iterator[str]:
    """A PostgreSQL register (fresh schema) listing ROOM, with @cleared:hs cleared for it."""
    with fresh_schema() as url:
        upgrade(url)
        store = Store.from_url(url, audit_key_from(DATA_KEY))
        store.key_audit_log()
        store.save_room(
            RoomRecord(
                key=RoomKey("nato-s"),
                name="nato-s",
                label="NATO SECRET",
                scheme="NATO",
                rank=3,
                audience=("BEL", "DEU", "POL"),
                room_id=RoomId(ROOM),
                origin=Origin.CONFIG,
            )
        )
        store.grant("t", "@cleared:hs", "NATO", "NATO SECRET", 3, nationality="POL")
        store.grant("t", "@other:hs", "NATO", "NATO SECRET", 3, nationality="DEU")
        store.close()
        yield url


def _libpq(url: str) -> str:
    """A SQLAlchemy postgresql+psycopg URL as a libpq connection string."""
    parsed = make_url(url)
    parts = {
        "host": parsed.host or "127.0.0.1",
        "port": str(parsed.port or 5432),
        "user": parsed.username or "",
        "dbname": parsed.database or "",
        "password": parsed.password or "",
        **{k: str(v) for k, v in parsed.query.items()},
    }
    return " ".join(f"{k}='{v}'" for k, v in parts.items() if v)


def test_a_read_the_server_holds_up_fails_closed_within_the_statement_limit(
    register_url: str,
) -> None:
    gate = _gate(register_url)
    assert gate.may_enter("@cleared:hs", ROOM, LABEL)  # the register reads, and admits
    with psycopg.connect(_libpq(register_url)) as locker:
        # another session holds the clearance table: the gate's read waits on the lock
        locker.execute("LOCK TABLE clearances IN ACCESS EXCLUSIVE MODE")
        verdict, elapsed = _decide(
            lambda: gate.may_enter("@cleared:hs", ROOM, LABEL), locker.rollback
        )
        locker.rollback()
    assert verdict is not None, f"no decision within {DEADLINE} s: no statement limit"
    assert not verdict.allowed
    assert f"the clearance register of {BOT} cannot be read" in verdict.reason
    assert "canceling statement due to statement timeout" in verdict.reason, verdict.reason
    assert "nato-s (NATO SECRET) admits nobody until it can" in verdict.reason
    assert LIMIT - 0.1 <= elapsed < DEADLINE, elapsed
    # the lock gone, the same person is admitted again: the refusal was the hang's alone
    assert gate.may_enter("@cleared:hs", ROOM, LABEL)


class FreezingRelay:
    """A TCP relay to PostgreSQL that passes everything until frozen, then holds every
    answer of the server (the connection stays open, nothing arrives)."""

    def __init__(self, host: str, port: int) -> None:
        self.upstream = (host, port)
        self.flowing = threading.Event()
        self.flowing.set()
        self.closed = False
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(8)
        self.port: int = self.sock.getsockname()[1]
        self.sockets: list[socket.socket] = []
        self.threads = [threading.Thread(target=self._accept, daemon=True)]
        self.threads[0].start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.sock.accept()
            except OSError:
                return
            server = socket.create_connection(self.upstream)
            self.sockets += [client, server]
            for src, dst, gated in ((client, server, False), (server, client, True)):
                pump = threading.Thread(target=self._pump, args=(src, dst, gated), daemon=True)
                self.threads.append(pump)
                pump.start()

    def _pump(self, src: socket.socket, dst: socket.socket, gated: bool) -> None:
        try:
            while data := src.recv(65536):
                if gated:
                    self.flowing.wait()
                if self.closed:
                    return
                dst.sendall(data)
        except OSError:
            return

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        self.flowing.set()  # held pumps wake, see `closed`, and pass nothing more
        self.sock.shutdown(socket.SHUT_RDWR)
        self.sock.close()
        for sock in self.sockets:
            with contextlib.suppress(OSError):  # already shut by the other end
                sock.shutdown(socket.SHUT_RDWR)
            sock.close()
        for thread in self.threads:
            thread.join(5)


def test_a_server_that_stops_answering_once_connected_fails_closed_within_the_limit(
    register_url: str,
) -> None:
    real = make_url(register_url)
    relay = FreezingRelay(real.host or "127.0.0.1", real.port or 5432)
    try:
        gate = _gate(real.set(host="127.0.0.1", port=relay.port).render_as_string(False))
        assert gate.may_enter("@cleared:hs", ROOM, LABEL)  # connected, and pooled
        relay.flowing.clear()
        verdict, elapsed = _decide(lambda: gate.may_enter("@other:hs", ROOM, LABEL), relay.close)
    finally:
        relay.close()
    assert verdict is not None, f"no decision within {DEADLINE} s: the gate waits for ever"
    assert not verdict.allowed
    assert f"the clearance register of {BOT} cannot be read" in verdict.reason
    assert 0 < elapsed < DEADLINE, elapsed
