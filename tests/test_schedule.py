"""Standard cron on APScheduler 3: 0 and 7 are Sunday (APScheduler's own parser says Monday)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from bot.schedule import cron_trigger, format_duration, parse_duration, standard_weekdays

MONDAY = datetime(2026, 11, 23, 0, 0, tzinfo=UTC)


def next_fire(expr: str, after: datetime = MONDAY) -> datetime:
    fire: datetime | None = cron_trigger(expr, "UTC").get_next_fire_time(None, after)
    assert fire is not None
    return fire


@pytest.mark.parametrize(
    ("expr", "weekday"),
    [("0 6 * * 0", 6), ("0 6 * * 7", 6), ("0 6 * * sun", 6), ("0 6 * * 1", 0), ("0 6 * * 6", 5)],
)
def test_weekday_numbers_are_standard(expr: str, weekday: int) -> None:
    assert next_fire(expr).weekday() == weekday  # Python: Monday 0 … Sunday 6


def test_weekday_ranges_and_steps() -> None:
    assert standard_weekdays("1-5") == {1, 2, 3, 4, 5}
    assert standard_weekdays("5-7") == {5, 6, 0}
    assert standard_weekdays("fri-sun") == {5, 6, 0}
    assert standard_weekdays("*/2") == {0, 2, 4, 6}
    assert standard_weekdays("0,3") == {0, 3}


def test_twice_daily() -> None:
    first = next_fire("0 6,18 * * *")
    assert (first.hour, first.minute) == (6, 0)
    assert next_fire("0 6,18 * * *", first + timedelta(seconds=1)).hour == 18


def test_timezone_is_applied() -> None:
    fire = cron_trigger("0 6 * * *", "Europe/Berlin").get_next_fire_time(None, MONDAY)
    assert fire is not None and fire.astimezone(UTC).hour == 5


@pytest.mark.parametrize(
    "expr",
    [
        "",
        "0 6 * *",
        "0 6 * * * *",
        "61 * * * *",
        "0 6 * * 8",
        "0 6 * * mon-sun-x",
        "0 6 * * 3/2",
        "0 6 * * 5-1",
        "0 6 * * */0",
    ],
)
def test_bad_cron_is_rejected_naming_it(expr: str) -> None:
    with pytest.raises(ValueError, match="cron"):
        cron_trigger(expr, "UTC")


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("90s", timedelta(seconds=90)),
        ("5m", timedelta(minutes=5)),
        ("12h", timedelta(hours=12)),
        ("7d", timedelta(days=7)),
        ("2w", timedelta(weeks=2)),
        ("0.5s", timedelta(milliseconds=500)),
        ("500ms", timedelta(milliseconds=500)),
        ("2.25s", timedelta(milliseconds=2250)),
    ],
)
def test_durations(text: str, value: timedelta) -> None:
    assert parse_duration(text) == value
    assert parse_duration(format_duration(value)) == value


@pytest.mark.parametrize(
    "text", ["", "5", "m", "5 minutes", "-5m", "0h", "1.5h", "0.0001s", "0ms", "1.s"]
)
def test_bad_durations(text: str) -> None:
    with pytest.raises(ValueError, match="bad duration"):
        parse_duration(text)
