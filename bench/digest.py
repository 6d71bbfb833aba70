"""Time to build a digest of 10 000 stored items: read from the database, unseal each text,
filter by may_release, render (plain + HTML). Writes `digest_10k_s` into bench/results.json.

Then `!search` at scale, always over 100 000 stored items (whatever the argument): the
Inventory as the app builds it, its first search (which opens every item into the in-memory
index) and the median of 20 searches with different words after it: `search_100k_first_s`,
`search_100k_p50_s`, and the index's memory as tracemalloc counts it, `search_100k_index_mb`.
"""

from __future__ import annotations

import asyncio
import random
import statistics
import sys
import tempfile
import time
import tracemalloc
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS, record
from bot.metrics import Metrics
from bot.services.digest import DigestService
from bot.services.rooms import ManagedRoom
from bot.services.search import Inventory
from bot.services.search import search as find
from bot.storage import IntelItem, IntelItemRow, RelayKind, RelayRow, RelayState, Store
from bot.storage.migrate import upgrade
from bot.storage.sealing import Sealer
from policy import make_room, parse_marking

T0 = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)


SCALE = 100_000  # the search-at-scale figures are always over this many items
SEARCHES = 20


class Rooms:
    def __init__(self, rooms: dict[str, ManagedRoom]) -> None:
        self.by_key = rooms

    def managed(self, key: str) -> ManagedRoom:
        return self.by_key[key]


def digests(store: Store, rooms: dict[str, ManagedRoom], sealer: Sealer) -> DigestService:
    """The digest service on its own, with the ports a digest build uses (nothing is sent)."""
    config = SimpleNamespace(digests=[], bot=SimpleNamespace(timezone="UTC", caveats=[]))
    return DigestService(
        config,  # type: ignore[arg-type]
        store,
        Rooms(rooms),  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        None,  # type: ignore[arg-type]
        Metrics(lambda: None),
        lambda item: (sealer.open_text(item.text, item.event_id), item.topics),
    )


# Words for the 100 000 texts, drawn unevenly (a few common, most rare), so that a search's
# matches are a realistic part of the store rather than all or nothing.
VOCABULARY = [
    f"{stem}{n}"
    for stem in ("convoy", "radar", "vessel", "patrol", "bridge", "depot")
    for n in range(40)
]
FILLER = [
    "observed",
    "near",
    "grid",
    "reference",
    "with",
    "escort",
    "moving",
    "north",
    "at",
    "speed",
]


def bulk_store(store: Store, sealer: Sealer, rooms: dict[str, ManagedRoom], now: datetime) -> None:
    """SCALE items (and a sent copy into nato-s of each releasable DEU one) in a few big
    inserts: storing them one by one through save_item would take minutes."""
    markings = [
        ("nato-s", "NATO SECRET"),
        ("nato-s", "NATO CONFIDENTIAL"),
        ("deu", "DEU GEHEIM // REL TO NATO"),
        ("deu", "DEU GEHEIM"),
    ]
    rng = random.Random(4774)
    weights = [1 / (rank + 1) for rank in range(len(VOCABULARY))]
    items: list[dict[str, Any]] = []
    relays: list[dict[str, Any]] = []
    for i in range(SCALE):
        key, marking = markings[i % len(markings)]
        label = parse_marking(marking)
        event_id = f"$scale{i}"
        words = rng.choices(VOCABULARY, weights, k=4) + rng.sample(FILLER, 6)
        rng.shuffle(words)
        text = f"Report {i}: " + " ".join(words).capitalize() + "."
        items.append(
            {
                "event_id": event_id,
                "room_key": key,
                "room_id": rooms[key].room_id,
                "sender": "@lo:x",
                "label": label.banner,
                "scheme": label.scheme,
                "rank": label.rank,
                "precedence": i % 4,
                "exercise": i % 50 == 0,
                "topics": [f"t{i % 30}"],
                "text": sealer.seal_text(text, event_id),
                "origin": "chat",
                "created_at": now - timedelta(days=20) + timedelta(seconds=15 * i),
            }
        )
        if marking == "DEU GEHEIM // REL TO NATO":
            relays.append(
                {
                    "txn_id": f"lbscale{i}",
                    "kind": RelayKind.COPY,
                    "source_event_id": event_id,
                    "item_event_id": event_id,
                    "target_key": "nato-s",
                    "target_room_id": rooms["nato-s"].room_id,
                    "state": RelayState.SENT,
                    "content": "",
                    "target_event_id": f"$copy{i}",
                }
            )
    with store.engine.begin() as conn:
        conn.execute(IntelItemRow.__table__.insert(), items)
        conn.execute(RelayRow.__table__.insert(), relays)


def search_at_scale(store: Store, sealer: Sealer, rooms: dict[str, ManagedRoom]) -> dict[str, Any]:
    """The first search and the median of SEARCHES more over SCALE items, as `!search`
    runs them (throttle, membership, index, rendering), and the index's memory."""
    now = datetime.now(UTC)
    bulk_store(store, sealer, rooms, now)

    def inventory() -> Inventory:
        async def audit(*args: Any) -> None:
            return None

        service = digests(store, rooms, sealer)
        return Inventory(store, Rooms(rooms), lambda user, room: True, service.item_of, audit)  # type: ignore[arg-type]

    rng = random.Random(17)
    queries = [rng.sample(VOCABULARY[:60], rng.choice((1, 1, 2))) for _ in range(SEARCHES)]

    async def timed() -> tuple[float, list[float], list[int]]:
        search = inventory()
        began = time.perf_counter()
        await search.search("@u0:x", "nato-s", ["report"], None, None, False)  # type: ignore[arg-type]
        first = time.perf_counter() - began
        times, matches = [], []
        for n, words in enumerate(queries, 1):
            began = time.perf_counter()
            answer = await search.search(f"@u{n}:x", "nato-s", words, None, None, False)  # type: ignore[arg-type]
            times.append(time.perf_counter() - began)
            matches.append(int(answer.plain.split(" match(es)")[0].rsplit(" ", 1)[1]))
        return first, times, matches

    first, times, matches = asyncio.run(timed())

    async def held() -> int:
        search = inventory()
        tracemalloc.start()
        before = tracemalloc.get_traced_memory()[0]
        await search.search("@u0:x", "nato-s", ["report"], None, None, False)  # type: ignore[arg-type]
        size = tracemalloc.get_traced_memory()[0] - before
        tracemalloc.stop()
        assert len(search.opened) == SCALE
        return size

    index_bytes = asyncio.run(held())
    return {
        "search_100k_items": SCALE,
        "search_100k_first_s": round(first, 3),
        "search_100k_p50_s": round(statistics.median(times), 3),
        "search_100k_max_s": round(max(times), 3),
        "search_100k_matches_p50": int(statistics.median(matches)),
        "search_100k_index_mb": round(index_bytes / 1e6, 1),
    }


def main(count: int = 10_000) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'bench.db'}"
        upgrade(url)
        store = Store.from_url(url)
        sealer = Sealer("bench-data-key", "intel")
        nato = ManagedRoom(
            "nato-s", "NATO SECRET liaison", make_room(parse_marking("NATO SECRET")), "!n:x"
        )
        deu = ManagedRoom("deu", "DEU cell", make_room(parse_marking("DEU GEHEIM")), "!d:x")
        markings = [
            ("nato-s", "NATO SECRET"),
            ("nato-s", "NATO CONFIDENTIAL"),
            ("deu", "DEU GEHEIM // REL TO NATO"),
            ("deu", "DEU GEHEIM"),
        ]
        for i in range(count):
            key, marking = markings[i % len(markings)]
            label = parse_marking(marking)
            event_id = f"$bench{i}"
            store.save_item(
                IntelItem(
                    event_id=event_id,
                    room_key=key,
                    room_id=f"!{key}:x",
                    sender="@lo:x",
                    label=label.banner,
                    scheme=label.scheme,
                    rank=label.rank,
                    precedence=i % 4,
                    exercise=i % 50 == 0,
                    topics=(f"t{i % 30}",),
                    text=sealer.seal_text(f"report {i}: " + "observation " * 20, event_id),
                    created_at=T0 + timedelta(seconds=i),
                )
            )
        service = digests(store, {"nato-s": nato, "deu": deu}, sealer)
        began = time.perf_counter()
        document = asyncio.run(service.compose(nato, ["nato-s", "deu"], T0, T0 + timedelta(days=1)))
        elapsed = time.perf_counter() - began
        # The shared inventory search over the same 10 000 items, as !search runs it.
        began = time.perf_counter()
        stored = store.items_since(T0, 10_000)
        candidates = [c for c in (service.item_of(i) for i in stored) if c is not None]
        found = find(nato, candidates, ["report", "observation"], None, False)
        search_s = time.perf_counter() - began
        store.close()
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{Path(tmp) / 'scale.db'}"
        upgrade(url)
        store = Store.from_url(url)
        scale = search_at_scale(store, sealer, {"nato-s": nato, "deu": deu})
        store.close()
    size = len(document.plain.encode()) + len(document.html.encode())
    figures = record(
        {
            "digest_10k_s": round(elapsed, 3),
            "digest_items": count,
            "digest_event_bytes": size,
            "search_10k_s": round(search_s, 3),
            "search_10k_matches": len(found),
            **scale,
        },
        "digest_machine",
    )
    print(f"machine: {figures['digest_machine']}")
    print(
        f"digest of {count} stored items (read, unseal, filter, render): {elapsed:.3f} s "
        f"(goal ≤ 1 s); event {size} bytes; search over the same items {search_s:.3f} s "
        f"({len(found)} matches)"
    )
    print(
        f"search over {SCALE} stored items: first {scale['search_100k_first_s']} s (opens "
        f"every item into the index, {scale['search_100k_index_mb']} MB), then p50 "
        f"{scale['search_100k_p50_s']} s (goal ≤ 0.3 s), max {scale['search_100k_max_s']} s, "
        f"median {scale['search_100k_matches_p50']} matches"
    )
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000)
