"""Which window a digest run posts, and what a start owes (issue 14, findings D1 and D2).

On a real SQLite store with a controllable clock, through the helpers of test_digest_logic.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import func, select

from bot.schedule import cron_trigger
from bot.services.digest import CatchUp, MissedWindows, fire_times, latest_fire_time, plan_catch_up
from bot.storage import Store
from bot.storage.migrate import upgrade
from bot.storage.models import DigestRunRow
from tests.test_digest_logic import T0, Clock, FakeMessenger, digest_service

EVERY_MINUTE = "* * * * *"  # 1 440 fire times a day


@pytest.fixture
def store(tmp_path: Path) -> Iterator[Store]:
    url = f"sqlite:///{tmp_path / 'd.db'}"
    upgrade(url)
    opened = Store.from_url(url)
    try:
        yield opened
    finally:
        opened.close()


def runs(store: Store) -> dict[str, int]:
    """How many digest_runs rows there are, by state."""
    with store.session() as session:
        rows = session.execute(
            select(DigestRunRow.state, func.count()).group_by(DigestRunRow.state)
        )
        return {state: count for state, count in rows}


def audited(store: Store, action: str) -> list[dict[str, object]]:
    return [e.detail for e in store.recent_audit(5000) if e.action == action]


# ---------------------------------------------------------------- D1: the window a run posts


def test_a_minutely_schedule_posts_the_window_ending_this_minute(store: Store) -> None:
    """D1: a run at 17:48:20 of a `* * * * *` schedule posts the window ending 17:48. Before,
    the run walked fire times forward from a day ago, stopped at 1 000 of them and posted the
    window ending 10:28 the same day."""
    bot, clock = FakeMessenger(), Clock(T0 + timedelta(hours=11, minutes=48, seconds=20))
    service = digest_service(store, clock, bot, cron=EVERY_MINUTE, window=timedelta(minutes=1))
    asyncio.run(service.fire("cfg-1"))
    assert len(bot.posted) == 1
    assert "Window 2026-11-23 17:47Z → 2026-11-23 17:48Z" in bot.posted[0][1]
    assert store.last_digest_run("cfg-1") == T0 + timedelta(hours=11, minutes=48)


@pytest.mark.parametrize(
    ("cron", "at", "end"),
    [
        (
            "*/2 * * * *",
            T0 + timedelta(hours=23, minutes=59, seconds=59),
            timedelta(hours=23, minutes=58),
        ),
        ("* 6-23 * * *", T0 + timedelta(hours=17, seconds=1), timedelta(hours=17)),
        ("0 6,18 * * *", T0 + timedelta(hours=13), timedelta(hours=12)),  # infrequent: unchanged
    ],
)
def test_a_run_posts_the_window_ending_at_the_newest_fire_time(
    store: Store, cron: str, at: datetime, end: timedelta
) -> None:
    """D1, other frequencies: the window always ends at the newest fire time not after now
    (the first two failed before: the walk stopped 1 000 fire times after a day ago)."""
    bot = FakeMessenger()
    service = digest_service(store, Clock(at), bot, cron=cron)
    asyncio.run(service.fire("cfg-1"))
    assert len(bot.posted) == 1
    assert store.last_digest_run("cfg-1") == T0 + end


CRONS = st.builds(
    " ".join,
    st.tuples(
        st.sampled_from(["*", "*/7", "0", "5,35", "59", "0-29"]),
        st.sampled_from(["*", "6,18", "*/5", "23", "2"]),
        st.sampled_from(["*", "1", "29-31", "*/10"]),
        st.sampled_from(["*", "2", "*/4", "3,10"]),
        st.sampled_from(["*", "1-5", "0", "6,0"]),
    ),
)


@settings(max_examples=200, deadline=None)
@given(
    cron=CRONS,
    zone=st.sampled_from(["UTC", "Europe/Berlin", "America/New_York", "Australia/Lord_Howe"]),
    at=st.datetimes(
        min_value=datetime(2025, 1, 1), max_value=datetime(2028, 12, 31), timezones=st.just(UTC)
    ),
    back=st.sampled_from([timedelta(minutes=3), timedelta(days=1), timedelta(days=7)]),
)
def test_latest_fire_time_is_the_last_of_a_forward_walk(
    cron: str, zone: str, at: datetime, back: timedelta
) -> None:
    """D1, the arithmetic: the backward search finds the newest fire time in (after, at] that
    a full forward walk (APScheduler's own stepping, previous fire time passed on) finds,
    whatever the frequency, time zone or span. The walk is the oracle, not "the earliest fire
    at or after t" asked afresh, because that disagrees with the scheduler at a DST gap:
    `* 2 * * 0` in Berlin fires at 03:00 CEST on the spring-forward Sunday."""
    trigger = cron_trigger(cron, zone)
    walked = fire_times(trigger, at - back, at, limit=7 * 24 * 60 + 1)
    assert latest_fire_time(trigger, at - back, at) == (walked[-1] if walked else None)


def test_fire_times_step_through_a_dst_fold_without_repeating() -> None:
    """D1/D2 arithmetic at a DST fold: Lord Howe turns its clocks back half an hour (02:00 to
    01:30 on 5 April 2026), so `59 * * * *` fires at 01:59 twice. The walk steps in UTC and
    finds each once; before, one microsecond past the second 01:59 was wall-clock arithmetic
    back onto the first, and the walk answered 15:29 UTC again until its limit (an unlimited
    count of skipped windows would never have ended)."""
    trigger = cron_trigger("59 * * * *", "Australia/Lord_Howe")
    day = datetime(2026, 4, 4, tzinfo=UTC)
    walked = fire_times(trigger, day + timedelta(hours=13), day + timedelta(hours=17))
    assert walked == [
        day + timedelta(hours=h, minutes=m) for h, m in ((13, 59), (14, 59), (15, 29), (16, 29))
    ]
    assert latest_fire_time(trigger, day, day + timedelta(hours=16)) == day + timedelta(
        hours=15, minutes=29
    )
    # a restart after a day's outage across the fold counts each missed 01:59 once, and ends
    # (the assertion above fails first on the old walk, which looped here without a limit)
    plan = plan_catch_up(trigger, day, day + timedelta(hours=17), timedelta(hours=2))
    assert plan == CatchUp(
        day + timedelta(hours=16, minutes=29),
        MissedWindows(day + timedelta(minutes=59), day + timedelta(hours=15, minutes=29), 16),
    )


# ---------------------------------------------------------------- D2: what a start owes


def test_the_first_start_owes_nothing(store: Store) -> None:
    """D2: with no run recorded the bot was never down for this schedule, so nothing is
    missed. Before, a `* * * * *` schedule's first start wrote 119 "skipped" rows and audit
    entries (the last 2 h) and posted one "delayed" digest at once."""
    bot, clock = FakeMessenger(), Clock(T0 + timedelta(hours=11, minutes=48, seconds=20))
    service = digest_service(store, clock, bot, cron=EVERY_MINUTE, window=timedelta(minutes=1))
    asyncio.run(service._catch_up(service.config_schedules()[0]))
    assert bot.posted == []
    assert runs(store) == {}
    assert audited(store, "digest.skipped") == []


def test_after_the_first_run_a_restart_catches_up_from_it(store: Store) -> None:
    """D2: once a window is recorded, a downtime after it is caught up as before: the newest
    missed window posted late, the older ones summarised in one skipped run."""
    bot = FakeMessenger()
    clock = Clock(T0 + timedelta(hours=11, minutes=49))
    service = digest_service(store, clock, bot, cron=EVERY_MINUTE, window=timedelta(minutes=1))
    schedule = service.config_schedules()[0]

    async def scenario() -> None:
        await service._catch_up(schedule)  # the first start: nothing
        await service.fire("cfg-1")  # the 17:49 run
        clock.now = T0 + timedelta(hours=11, minutes=55, seconds=30)  # down 17:50-17:55
        await service._catch_up(schedule)

    asyncio.run(scenario())
    assert len(bot.posted) == 2 and "delayed" in bot.posted[1][1]
    assert "17:54Z → 2026-11-23 17:55Z" in bot.posted[1][1]
    assert runs(store) == {"posted": 2, "skipped": 1}
    [skipped] = audited(store, "digest.skipped")
    assert skipped["windows"] == 5
    assert skipped["first_window_end"] == (T0 + timedelta(hours=11, minutes=50)).isoformat()
    assert skipped["window_end"] == (T0 + timedelta(hours=11, minutes=54)).isoformat()


def test_a_day_down_writes_one_skipped_summary_not_one_row_per_window(store: Store) -> None:
    """D2: a `* * * * *` schedule down for a day misses 1 440 windows; the newest is posted
    late and the 1 439 older ones become one skipped run and one audit entry that counts
    them. Before, it wrote one row and entry per window (up to 1 000, then lost the newest)."""
    bot, clock = FakeMessenger(), Clock(T0)
    service = digest_service(store, clock, bot, cron=EVERY_MINUTE, window=timedelta(minutes=1))
    schedule = service.config_schedules()[0]

    async def scenario() -> None:
        await service.fire("cfg-1")  # the 06:00 run
        clock.now = T0 + timedelta(days=1, seconds=30)  # back a day later
        await service._catch_up(schedule)
        await service._catch_up(schedule)  # a second restart: nothing new

    asyncio.run(scenario())
    assert len(bot.posted) == 2
    assert "2026-11-24 05:59Z → 2026-11-24 06:00Z (delayed" in bot.posted[1][1]
    assert runs(store) == {"posted": 2, "skipped": 1}
    [skipped] = audited(store, "digest.skipped")
    assert skipped["windows"] == 1439
    assert skipped["first_window_end"] == (T0 + timedelta(minutes=1)).isoformat()
    assert skipped["window_end"] == (T0 + timedelta(days=1, minutes=-1)).isoformat()
