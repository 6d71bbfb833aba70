"""Time to build a digest of 10 000 stored items: read from the database, unseal each text,
filter by may_release, render (plain + HTML). Writes `digest_10k_s` into bench/results.json."""

from __future__ import annotations

import asyncio
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS, record
from bot.metrics import Metrics
from bot.services.digest import DigestService
from bot.services.rooms import ManagedRoom
from bot.services.search import search as find
from bot.storage import IntelItem, Store
from bot.storage.migrate import upgrade
from bot.storage.sealing import Sealer
from policy import make_room, parse_marking

T0 = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)


class Rooms:
    def __init__(self, rooms: dict[str, ManagedRoom]) -> None:
        self.by_key = rooms


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
    size = len(document.plain.encode()) + len(document.html.encode())
    figures = record(
        {
            "digest_10k_s": round(elapsed, 3),
            "digest_items": count,
            "digest_event_bytes": size,
            "search_10k_s": round(search_s, 3),
            "search_10k_matches": len(found),
        },
        "digest_machine",
    )
    print(f"machine: {figures['digest_machine']}")
    print(
        f"digest of {count} stored items (read, unseal, filter, render): {elapsed:.3f} s "
        f"(goal ≤ 1 s); event {size} bytes; search over the same items {search_s:.3f} s "
        f"({len(found)} matches)"
    )
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 10_000)
