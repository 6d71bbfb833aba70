"""Digest content and scheduling with a controllable clock (no homeserver)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.metrics import Metrics
from bot.schedule import cron_trigger
from bot.services.digest import (
    CatchUp,
    DigestItem,
    DigestService,
    MissedWindows,
    build_digest,
    fire_times,
    plan_catch_up,
    select_items,
)
from bot.services.ports import Device
from bot.services.rooms import ManagedRoom
from bot.storage import DigestSchedule, Origin, Store
from bot.storage.migrate import upgrade
from bot.storage.sealing import Sealer
from commands.document import Document
from policy import Precedence, make_room, parse_marking
from policy.ids import EventId, RoomId, RoomKey
from tests.fakes import NoMessenger

NATO = ManagedRoom(
    RoomKey("nato-s"),
    "NATO SECRET liaison",
    make_room(parse_marking("NATO SECRET")),
    RoomId("!n:x"),
)
DEU = ManagedRoom(
    RoomKey("deu"), "DEU cell", make_room(parse_marking("DEU GEHEIM")), RoomId("!d:x")
)
T0 = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)  # a Monday


def item(
    event_id: str,
    marking: str,
    source: ManagedRoom,
    minutes: int,
    *,
    precedence: Precedence = Precedence.ROUTINE,
    exercise: bool = False,
    topics: tuple[str, ...] = (),
    text: str = "text",
) -> DigestItem:
    return DigestItem(
        event_id,
        parse_marking(marking, source.policy.scheme),
        source.key,
        source,
        precedence,
        exercise,
        topics,
        text,
        T0 + timedelta(minutes=minutes),
    )


def test_only_what_the_room_may_see_sorted_by_precedence_then_time() -> None:
    chosen = select_items(
        NATO,
        [
            item("$a", "GEHEIM // REL TO NATO", DEU, 5),
            item("$b", "GEHEIM", DEU, 6),  # national only: never in a NATO digest
            item("$c", "NATO SECRET", NATO, 7, precedence=Precedence.FLASH),
            item("$a", "GEHEIM // REL TO NATO", DEU, 5),  # the same source event twice
            item("$d", "COSMIC TOP SECRET", NATO, 8),  # above the room (spillage): never shown
        ],
    )
    assert [i.event_id for i in chosen] == ["$c", "$a"]


def test_digest_heading_banner_counts_topics_and_escaping() -> None:
    chosen = select_items(
        NATO,
        [
            item(
                "$a", "GEHEIM // REL TO NATO", DEU, 5, topics=("kiel",), text="<script>x</script>"
            ),
            item(
                "$c",
                "NATO CONFIDENTIAL",
                NATO,
                7,
                precedence=Precedence.FLASH,
                topics=("kiel", "air"),
            ),
            item("$e", "NATO SECRET", NATO, 9, exercise=True, text="drill"),
        ],
    )
    document = build_digest(NATO, chosen, T0, T0 + timedelta(hours=12))
    plain = document.plain
    assert plain.splitlines()[0] == "NATO SECRET"  # the dominant label of every item shown
    assert "Window 2026-11-23 06:00Z → 2026-11-23 18:00Z" in plain
    assert "2 item(s): FLASH 1, ROUTINE 1. By source: deu 1, nato-s 1." in plain
    assert plain.index("FLASH (1)") < plain.index("ROUTINE (1)")
    assert "Topics: #kiel (2), #air (1)" in plain
    assert (
        "Exercise traffic (1, not counted above)" in plain and "EXERCISE EXERCISE EXERCISE" in plain
    )
    assert "<script>" not in document.html and "&lt;script&gt;" in document.html


def test_empty_window_says_so_in_one_line_under_the_room_banner() -> None:
    document = build_digest(NATO, [], T0, T0 + timedelta(hours=1))
    assert document.plain.splitlines()[0] == "NATO SECRET"
    assert "No items in this window." in document.plain


def test_very_large_window_is_summarised_within_the_event_size() -> None:
    many = [item(f"$x{i}", "NATO SECRET", NATO, i % 600, text="y" * 400) for i in range(10_000)]
    document = build_digest(NATO, select_items(NATO, many), T0, T0 + timedelta(hours=12))
    assert len(document.plain.encode()) + len(document.html.encode()) < 65_536
    assert "10000 item(s)" in document.plain
    assert "more ROUTINE item(s) not shown" in document.plain


def test_fire_times_and_catch_up_plan() -> None:
    trigger = cron_trigger("0 6,18 * * *", "UTC")
    assert fire_times(trigger, T0, T0 + timedelta(days=1)) == [
        T0 + timedelta(hours=12),
        T0 + timedelta(days=1),
    ]
    grace = timedelta(hours=2)
    # down over the 18:00 run, back at 19:00: post it once, late
    assert plan_catch_up(trigger, T0, T0 + timedelta(hours=13), grace) == CatchUp(
        T0 + timedelta(hours=12)
    )
    # back at 21:00: too late to post; skip it
    assert plan_catch_up(trigger, T0, T0 + timedelta(hours=15), grace) == CatchUp(
        None, MissedWindows(T0 + timedelta(hours=12), T0 + timedelta(hours=12), 1)
    )
    # down for two days, back 30 min after a run: the newest is posted, the rest skipped
    assert plan_catch_up(trigger, T0, T0 + timedelta(days=2, minutes=30), grace) == CatchUp(
        T0 + timedelta(days=2),
        MissedWindows(T0 + timedelta(hours=12), T0 + timedelta(days=1, hours=12), 3),
    )
    # nothing missed
    assert (
        plan_catch_up(trigger, T0 + timedelta(hours=12), T0 + timedelta(hours=13), grace)
        == CatchUp()
    )


@dataclass
class FakeMessenger(NoMessenger):
    """The digest service's messenger port: records what it would post (it only posts and
    alerts; notices, redactions and sender look-ups are failures, as NoMessenger's)."""

    posted: list[tuple[str, str, str | None]] = field(default_factory=list)
    user_id: str = "@bot:x"

    alerts: list[str] = field(default_factory=list)

    async def send(
        self,
        room_id: str,
        content: dict[str, Any],
        tx_id: str | None = None,
        also_to: Sequence[Device] = (),
    ) -> EventId:
        self.posted.append((room_id, content["body"], tx_id))
        return EventId(f"$digest{len(self.posted)}")

    async def alert_admins(self, document: Document, tx_id: str | None = None) -> None:
        self.alerts.append(document.plain)


def run_state(store: Store, window_end: datetime) -> str | None:
    """The state of cfg-1's run for the window ending then; None when it has none."""
    run = store.digest_run("cfg-1", window_end)
    return None if run is None else run.state


@dataclass
class Clock:
    now: datetime


async def no_audit(actor: str, action: str, subject: str | None, detail: dict[str, Any]) -> None:
    return None


def digest_service(
    store: Store,
    clock: Clock,
    messenger: FakeMessenger,
    *,
    cron: str = "0 6,18 * * *",
    window: timedelta = timedelta(hours=12),
) -> DigestService:
    """The service on a real database, with one config schedule (cfg-1) for nato-s."""
    config = SimpleNamespace(
        digests=[SimpleNamespace(room="nato-s", cron=cron, window=window, sources=["nato-s"])],
        bot=SimpleNamespace(
            timezone="UTC", digest_catchup_grace=timedelta(hours=2), caveats=["BALTOPS"]
        ),
    )
    return DigestService(
        config,  # type: ignore[arg-type]  # Config: only digests and bot (its timezone, grace, caveats)
        store,
        SimpleNamespace(by_key={"nato-s": NATO, "deu": DEU}),  # type: ignore[arg-type]  # RoomDirectory: only by_key
        messenger,
        no_audit,
        Metrics(lambda: None),
        lambda item: ("text", ()),
        clock=lambda: clock.now,
        sealer=Sealer("digest-test-key-0123456789abcdef", "digest-parts"),
    )


def test_catch_up_posts_once_and_a_restart_never_posts_the_same_window_twice(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'd.db'}"
    upgrade(url)
    store = Store.from_url(url)
    try:
        bot, clock = FakeMessenger(), Clock(T0)
        service = digest_service(store, clock, bot)
        schedule = service.config_schedules()[0]
        assert schedule == DigestSchedule(
            "cfg-1", "nato-s", "0 6,18 * * *", 43200, ("nato-s",), Origin.CONFIG
        )

        async def scenario() -> None:
            await service.post_window(schedule, T0, delayed=False)  # the 06:00 run
            clock.now = T0 + timedelta(hours=13)  # down over 18:00, back at 19:00
            await service._catch_up(schedule)
            await service._catch_up(schedule)  # a second restart: nothing new
            await service.post_window(schedule, T0 + timedelta(hours=12), delayed=True)  # replayed
            clock.now = T0 + timedelta(days=1, hours=5)  # down again, back 23 h later
            await service._catch_up(schedule)

        asyncio.run(scenario())
        windows = [p[1] for p in bot.posted]
        assert len(bot.posted) == 2
        assert "delayed" in windows[1] and "06:00Z → 2026-11-23 18:00Z" in windows[1]
        assert len({p[2] for p in bot.posted}) == 2  # one transaction id per window
        # back 5 h after the next day's 06:00 run: too late to post, so skipped
        assert run_state(store, T0 + timedelta(days=1)) == "skipped"
        assert run_state(store, T0 + timedelta(hours=12)) == "posted"
        entries = store.recent_audit(10)
        posted = [
            (e.subject, e.detail["window_end"], e.detail["delayed"])
            for e in reversed(entries)
            if e.action == "digest.posted"
        ]
        assert posted == [  # one entry per post, none for the replay
            ("cfg-1", T0.isoformat(), False),
            ("cfg-1", (T0 + timedelta(hours=12)).isoformat(), True),
        ]
    finally:
        store.close()


def test_missed_windows_older_than_the_grace_are_skipped_and_audited(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'd.db'}"
    upgrade(url)
    store = Store.from_url(url)
    try:
        bot, clock = FakeMessenger(), Clock(T0)
        service = digest_service(store, clock, bot)
        schedule = service.config_schedules()[0]
        asyncio.run(service.post_window(schedule, T0, delayed=False))
        clock.now = T0 + timedelta(hours=15)  # 18:00 missed by 3 h
        asyncio.run(service._catch_up(schedule))
        assert len(bot.posted) == 1
        assert run_state(store, T0 + timedelta(hours=12)) == "skipped"
        assert any(e.action == "digest.skipped" for e in store.recent_audit(5))
    finally:
        store.close()


def test_the_banner_covers_exercise_items_too() -> None:
    """Finding 6: the banner that opens and closes a digest is the dominant label of every
    item shown. Exercise items are kept out of the counts but are no less classified; before,
    a NATO SECRET drill went out under a NATO UNCLASSIFIED banner."""
    chosen = select_items(
        NATO,
        [
            item("$u", "NATO UNCLASSIFIED", NATO, 5),
            item("$x", "NATO SECRET", NATO, 6, exercise=True, text="drill"),
        ],
    )
    lines = build_digest(NATO, chosen, T0, T0 + timedelta(hours=12)).plain.splitlines()
    assert lines[0] == "NATO SECRET" and lines[-1] == "NATO SECRET"


MARKINGS = [
    ("NATO UNCLASSIFIED", NATO),
    ("NATO RESTRICTED", NATO),
    ("NATO CONFIDENTIAL", NATO),
    ("NATO SECRET", NATO),
    ("VS-NfD // REL TO NATO", DEU),
    ("GEHEIM // REL TO NATO", DEU),
]


@settings(max_examples=150, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(MARKINGS), st.booleans()), min_size=1, max_size=6))
def test_the_banner_is_at_least_every_shown_item(
    picks: list[tuple[tuple[str, ManagedRoom], bool]],
) -> None:
    """Finding 6, as a property: whatever mix of real and exercise items a digest shows, its
    banner ranks at or above each of them (it fails before the fix on any exercise item
    above every real one)."""
    candidates = [
        item(f"${n}", marking, source, n, exercise=exercise)
        for n, ((marking, source), exercise) in enumerate(picks)
    ]
    chosen = select_items(NATO, candidates)
    banner = build_digest(NATO, chosen, T0, T0 + timedelta(hours=1)).plain.splitlines()[0]
    shown = parse_marking(banner, "NATO")
    assert all(shown.rank >= i.label.rank for i in chosen)


def test_a_digest_shows_another_rooms_item_only_where_it_was_released(tmp_path: Path) -> None:
    """Issue 14, findings 10 and 7: with `deu` among its sources, the NATO digest shows a
    DEU item only if it was relayed into the NATO room (a stored, unreleased
    `DEU GEHEIM // REL TO NATO` item stays out); an item whose label carries a configured
    caveat is read with it (it used to vanish)."""
    from bot.storage import IntelItem, RelayEntry, RelayKind

    url = f"sqlite:///{tmp_path / 'd.db'}"
    upgrade(url)
    store = Store.from_url(url)

    def stored(event_id: str, room: ManagedRoom, label: str) -> None:
        parsed = parse_marking(label, extra_caveats=["BALTOPS"])
        store.save_item(
            IntelItem(
                event_id, room.key, room.room_id, "@lo:x", parsed.banner, parsed.scheme,
                parsed.rank, Precedence.ROUTINE, False, (), "sealed", T0 + timedelta(hours=1),
            )
        )  # fmt: skip

    try:
        stored("$kept", DEU, "DEU GEHEIM // REL TO NATO")
        stored("$released", DEU, "DEU GEHEIM // REL TO NATO")
        stored("$own", NATO, "NATO SECRET")
        copy = RelayEntry("txn1", RelayKind.COPY, "$released", "$released", "nato-s", "!n:x", "")
        store.add_relays([copy])
        store.relay_sent("txn1", "$copy")
        service = digest_service(store, Clock(T0), FakeMessenger())
        service.open_item = lambda item: (f"text of {item.event_id}", ())
        document = asyncio.run(
            service.compose(NATO, ["nato-s", "deu"], T0, T0 + timedelta(hours=12))
        )
        assert "text of $released" in document.plain and "text of $own" in document.plain
        assert "text of $kept" not in document.plain
        own_only = asyncio.run(service.compose(NATO, ["nato-s"], T0, T0 + timedelta(hours=12)))
        assert "text of $released" in own_only.plain  # what reached the room is its traffic
        assert "text of $kept" not in own_only.plain
    finally:
        store.close()


def test_a_stored_label_with_a_configured_caveat_is_read_with_it(tmp_path: Path) -> None:
    """Issue 14, finding 7: such items vanished from digests (and search)."""
    from bot.storage import IntelItem

    baltops = ManagedRoom(
        RoomKey("nato-s"),
        "Baltic ops",
        make_room(parse_marking("NATO SECRET // BALTOPS", extra_caveats=["BALTOPS"])),
        RoomId("!n:x"),
    )
    url = f"sqlite:///{tmp_path / 'd.db'}"
    upgrade(url)
    store = Store.from_url(url)
    try:
        store.save_item(
            IntelItem(
                "$cav", "nato-s", "!n:x", "@lo:x", "NATO SECRET // BALTOPS", "NATO", 3,
                Precedence.ROUTINE, False, (), "sealed", T0 + timedelta(hours=1),
            )
        )  # fmt: skip
        service = digest_service(store, Clock(T0), FakeMessenger())
        service.rooms.by_key["nato-s"] = baltops
        service.open_item = lambda item: ("text with a caveat", ())
        document = asyncio.run(service.compose(baltops, ["nato-s"], T0, T0 + timedelta(hours=12)))
        assert "text with a caveat" in document.plain
    finally:
        store.close()


def test_a_digest_of_many_long_items_fits_one_encrypted_event() -> None:
    """Issue 14, finding 8: the size is judged as sent (JSON, encrypted, base64), not as
    plain + HTML: 60 items of 500 characters used to make an event the homeserver refused,
    and the window was lost."""
    from bot.wire import EVENT_LIMIT, encrypted_size

    every = list(Precedence)  # 25 a precedence are shown: spread them to show more
    many = [
        item(f"$i{n}", "NATO SECRET", NATO, n, precedence=every[n % 4], text="observation " * 42)
        for n in range(60)
    ]
    document = build_digest(NATO, many, T0, T0 + timedelta(hours=12))
    content = {"msgtype": "m.notice", "body": document.plain, "formatted_body": document.html}
    assert encrypted_size(content) <= EVENT_LIMIT
    assert "item(s) not shown" in document.plain  # counted, not silently cut


def test_a_large_window_is_split_into_events_that_each_fit() -> None:
    """Issue 14, finding 8: every item shown, in as few events as fit the limit each."""
    from bot.services.digest import build_digest_parts
    from bot.wire import EVENT_LIMIT, encrypted_size
    from policy.adatp4774 import from_json, to_label

    every = list(Precedence)
    many = [
        item(f"$i{n}", "NATO SECRET", NATO, n, precedence=every[n % 4], text=f"obs{n} " * 80)
        for n in range(60)
    ]
    parts = build_digest_parts(NATO, select_items(NATO, many), T0, T0 + timedelta(hours=12))
    assert len(parts) > 1
    labelled: list[str] = []
    for n, part in enumerate(parts, 1):
        assert encrypted_size(part.content) <= EVENT_LIMIT
        assert f"part {n} of {len(parts)}" in part.plain
        items_field = part.content["io.github.liaison_bot.digest"]["items"]
        labelled += [i["source_event"] for i in items_field]
        for entry in items_field:  # each item's own machine-readable label, and NATO's
            meta = from_json(entry["io.github.liaison_bot.label"])
            assert to_label(meta.originator) == parse_marking("NATO SECRET")
    assert sorted(labelled) == sorted(f"$i{n}" for n in range(60))
    shown = "\n".join(p.plain for p in parts)
    assert all(f"obs{n} " in shown for n in range(60)) and "not shown" not in shown
    small = build_digest_parts(NATO, select_items(NATO, many[:3]), T0, T0 + timedelta(hours=1))
    assert len(small) == 1 and "part 1" not in small[0].plain


def test_stored_labels_are_read_once_per_banner_and_errors_are_not_kept() -> None:
    from policy import MarkingError, stored_label

    first = stored_label("DEU GEHEIM // REL TO NATO", ())
    assert stored_label("DEU GEHEIM // REL TO NATO", ()) is first
    assert first == parse_marking("DEU GEHEIM // REL TO NATO")
    for _ in range(2):  # refused every time, never cached as something else
        with pytest.raises(MarkingError):
            stored_label("DEU NOT A LEVEL", ())
