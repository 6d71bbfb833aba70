"""End-to-end benchmark: what the homeserver gate adds to an invite and a join.

Two real Synapses side by side, identical but for the gate (bot.gate): on each, a bot
account creates a labelled room and invites N people one after another over HTTP, and each
joins; every request is made on both servers in turn (alternating which goes first), so a
change in the machine's load touches both alike. The gate's register is a SQLite file
(and a PostgreSQL schema where LIAISON_TEST_DATABASE_URL names a server) with every invitee
cleared, so every request is allowed and runs the whole check: the room on record, the
invitee's clearance (read afresh on the invite; reused from the short cache on the join),
each row's signature (written through a store keyed as the bot's is; the gate holds the
register key, as `gate synapse-config` prints it), the rule. Reported: p50/p95 per
request with and without the gate, the difference of the p50s (goal: < 5 ms; written as
gate_{sqlite,postgres}_{invite,join}_added_p50_ms, and as gate_postgresql_… as before), the
median of the paired differences (…_paired_added_p50_ms: request i on one server minus
request i on the other, made back to back, so a change in the machine's load cancels out;
on a shared machine the difference of the p50s wanders by several ms between runs of the
same code, the paired figure much less) and the ratio.
Then the rule alone, in-process (µs, machine named): cached and uncached register reads.

Usage: python bench/gate.py [N]   (make bench: 100)
"""

from __future__ import annotations

import os
import secrets
import sys
import tempfile
import time
import urllib.parse
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import date
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS, percentile, record
from bot.devtools.devserver import DevServer, RegisteredUser
from bot.gate.config import RegisterSpec
from bot.gate.rules import LABEL_EVENT, Gate, Register, RoomLabel
from bot.services.rooms import label_content
from bot.storage import Origin, RoomRecord, Store, audit_key_from
from bot.storage.migrate import upgrade
from bot.storage.store import register_public_key
from policy import make_room, parse_marking
from policy.ids import RoomId, RoomKey, UserId

# The label event as the bot writes it (the gate refuses any other shape, even from a bot).
LABEL = label_content(make_room(parse_marking("NATO SECRET"), ("DEU", "POL")))
# The bench bot's data key: its rows are signed with the key derived from it, and the gate
# verifies them with the public half, so the figures include that check.
DATA_KEY = "bench-gate-data-key-0123456789abcdef"


def _store(url: str) -> Store:
    """The register as the bot writes it: keyed, so every row it writes is signed."""
    store = Store.from_url(url, audit_key_from(DATA_KEY))
    store.key_audit_log()
    return store


def _q(room_id: str) -> str:
    return urllib.parse.quote(room_id, safe="")


def _timed(server: DevServer, method: str, path: str, body: dict[str, Any], token: str) -> float:
    started = time.perf_counter()
    server.request(method, path, body, token=token)
    return (time.perf_counter() - started) * 1000


def _register(url: str, room_id: str | None, people: list[RegisteredUser]) -> None:
    upgrade(url)
    store = _store(url)
    try:
        if room_id is not None:
            store.save_room(
                RoomRecord(
                    key=RoomKey("nato-s"),
                    name="NATO SECRET liaison",
                    label="NATO SECRET",
                    scheme="NATO",
                    rank=3,
                    audience=("DEU", "POL"),
                    room_id=RoomId(room_id),
                    origin=Origin.CONFIG,
                )
            )
        for person in people:
            store.grant("bench", person.user_id, "NATO", "NATO SECRET", 3, nationality="POL")
    finally:
        store.close()


class Side:
    """One Synapse with a bot account, a labelled room and `n` people to bring in."""

    def __init__(self, server: DevServer, n: int, database: str | None) -> None:
        self.server = server
        self.bot = server.register(f"bench-bot-{secrets.token_hex(3)}", "pw-bench")
        self.people = [server.register(f"p{i}-{secrets.token_hex(3)}", "pw") for i in range(n)]
        if database is not None:
            _register(database, None, self.people)
            server.add_register(
                {"bot_user_id": self.bot.user_id, "database": database}, data_key=DATA_KEY
            )
        created = server.request(
            "POST",
            "/_matrix/client/v3/createRoom",
            {
                "preset": "private_chat",
                "initial_state": [{"type": LABEL_EVENT, "state_key": "", "content": LABEL}],
            },
            token=self.bot.access_token,
        )
        self.room_id: str = created["room_id"]
        if database is not None:
            _register(database, self.room_id, [])
        self.times: dict[str, list[float]] = {"invite": [], "join": []}

    def invite(self, i: int) -> None:
        self.times["invite"].append(
            _timed(
                self.server,
                "POST",
                f"/_matrix/client/v3/rooms/{_q(self.room_id)}/invite",
                {"user_id": self.people[i].user_id},
                self.bot.access_token,
            )
        )

    def join(self, i: int) -> None:
        self.times["join"].append(
            _timed(
                self.server,
                "POST",
                f"/_matrix/client/v3/join/{_q(self.room_id)}",
                {},
                self.people[i].access_token,
            )
        )


def run_pair(workdir: Path, n: int, database: str) -> tuple[dict[str, float], dict[str, float]]:
    """A Synapse without the gate and one with it, side by side; each request is made on
    one and then the other, so a drift in the machine's load touches both alike."""
    with (
        DevServer(workdir / "base", gate=False) as plain,
        DevServer(workdir / "gate", gate=True) as gated,
    ):
        base, gate = Side(plain, n, None), Side(gated, n, database)
        warm = 5  # unmeasured: connection set-up and Synapse's caches
        for i in range(n):
            for side in (base, gate) if i % 2 else (gate, base):
                side.invite(i)
            for side in (base, gate) if i % 2 else (gate, base):
                side.join(i)
        for side in (base, gate):
            for values in side.times.values():
                del values[:warm]
        summary = _summary(gate.times)
        for what, values in gate.times.items():
            # The i-th requests on both sides were made back to back: the median of their
            # differences is what the gate adds, with the machine's drift (other work on
            # its cores moves both p50s by more than the gate costs) paired away.
            paired = [g - b for g, b in zip(values, base.times[what], strict=True)]
            summary[f"{what}_paired_added_p50"] = round(percentile(paired, 0.5), 2)
        return _summary(base.times), summary


@contextmanager
def _postgres_schema() -> Iterator[str | None]:
    base = os.environ.get("LIAISON_TEST_DATABASE_URL")
    if not base:
        yield None
        return
    from sqlalchemy import create_engine, text
    from sqlalchemy.engine import make_url

    schema = f"bench_{secrets.token_hex(5)}"
    admin = create_engine(base, isolation_level="AUTOCOMMIT")
    try:
        with admin.connect() as conn:
            conn.execute(text(f'CREATE SCHEMA "{schema}"'))
    except Exception as exc:
        print(f"PostgreSQL variant skipped: {type(exc).__name__}", flush=True)
        admin.dispose()
        yield None
        return
    url = make_url(base).update_query_dict({"options": f"-csearch_path={schema}"})
    try:
        yield url.render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP SCHEMA "{schema}" CASCADE'))
        admin.dispose()


def micro(database: str) -> dict[str, float]:
    """The rule in-process: µs per decision with the register read cached and uncached."""
    person = "@micro:bench"
    store = _store(database)
    try:
        if store.clearance(person) is None:
            store.grant("bench", person, "NATO", "NATO SECRET", 3, nationality="POL")
        room = store.room("nato-s")
        assert room is not None and room.room_id is not None
        room_id = room.room_id
    finally:
        store.close()
    out: dict[str, float] = {}
    for name, ttl in (("cached", 60.0), ("uncached", 0.0)):
        spec = RegisterSpec(
            bot_user_id=UserId("@bot:bench"),
            database=database,
            register_key=register_public_key(DATA_KEY),
        )
        register = Register(spec, ttl=ttl)
        registers = {"@bot:bench": register}
        gate = Gate(registers.copy, today=lambda: date(2026, 12, 3))
        label = RoomLabel(True, "@bot:bench")
        assert gate.may_enter(person, room_id, label)
        rounds = 2000 if ttl else 300
        started = time.perf_counter()
        for _ in range(rounds):
            gate.may_enter(person, room_id, label)
        out[name] = (time.perf_counter() - started) / rounds * 1e6
        register.close()
    return out


def _summary(times: dict[str, list[float]]) -> dict[str, float]:
    return {
        f"{what}_{q}": round(percentile(values, p), 2)
        for what, values in times.items()
        for q, p in (("p50", 0.5), ("p95", 0.95))
    }


_SHORT = {"postgresql": "postgres"}


def main(n: int) -> None:
    figures: dict[str, Any] = {}
    with tempfile.TemporaryDirectory() as tmp, _postgres_schema() as pg:
        sqlite = f"sqlite:///{Path(tmp) / 'register.db'}"
        variants = [("sqlite", sqlite)] + ([("postgresql", pg)] if pg else [])
        for name, url in variants:
            print(f"with and without the gate ({name} register): {n} invites, joins", flush=True)
            base, gated = run_pair(Path(tmp) / name, n, url)
            for what in ("invite", "join"):
                added = round(gated[f"{what}_p50"] - base[f"{what}_p50"], 2)
                figures[f"gate_{name}_{what}_added_p50_ms"] = added
                # the names issue 24 gives them (gate_postgres_…), beside the old ones
                figures[f"gate_{_SHORT.get(name, name)}_{what}_added_p50_ms"] = added
                figures[f"gate_{_SHORT.get(name, name)}_{what}_paired_added_p50_ms"] = gated[
                    f"{what}_paired_added_p50"
                ]
                figures[f"gate_{name}_{what}_ratio_p50"] = round(
                    gated[f"{what}_p50"] / base[f"{what}_p50"], 3
                )
                for q in ("p50", "p95"):
                    figures[f"gate_{name}_{what}_{q}_ms"] = gated[f"{what}_{q}"]
                    figures[f"gate_{name}_baseline_{what}_{q}_ms"] = base[f"{what}_{q}"]
            for kind, us in micro(url).items():
                figures[f"gate_{name}_rule_{kind}_us"] = round(us, 1)
    figures["gate_requests"] = n
    merged = record(figures, "gate_machine")
    for key in sorted(merged):
        print(f"{key}: {merged[key]}")
    print(f"(written to {RESULTS})")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 100)
