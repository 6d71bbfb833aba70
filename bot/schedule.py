"""Standard cron for APScheduler 3, and the durations used across the config.

Why a translation: APScheduler 3's `CronTrigger.from_crontab("0 6 * * 0")` fires on Monday,
because it numbers weekdays from Monday; standard cron (and every admin) numbers them from
Sunday, with 7 also Sunday. We read the weekday field ourselves and hand APScheduler
unambiguous day names; every other field is APScheduler's own parser.
"""

from __future__ import annotations

import re
from datetime import timedelta, tzinfo

from apscheduler.triggers.cron import CronTrigger

_STD_NAMES = ("sun", "mon", "tue", "wed", "thu", "fri", "sat")
_DURATION = re.compile(r"^\s*(\d+(?:\.\d{1,3})?)\s*(ms|[smhdw])\s*$", re.IGNORECASE)
_UNITS = {
    "ms": "milliseconds",
    "s": "seconds",
    "m": "minutes",
    "h": "hours",
    "d": "days",
    "w": "weeks",
}


def parse_duration(text: str) -> timedelta:
    """`90s`, `5m`, `12h`, `7d`, `2w`, `0.5s`, `500ms` to a positive timedelta; ValueError
    naming the text. Fractions (up to three decimals) are for the high-availability timings,
    which are below a second."""
    match = _DURATION.match(text) if isinstance(text, str) else None
    if match is None:
        raise ValueError(
            f"bad duration {text!r}: expected a number and a unit ms, s, m, h, d or w "
            "(e.g. '5m', '24h', '0.5s')"
        )
    if "." in match.group(1) and match.group(2).lower() != "s":
        raise ValueError(f"bad duration {text!r}: only seconds take a fraction (e.g. '0.5s')")
    amount = float(match.group(1)) if "." in match.group(1) else int(match.group(1))
    if amount == 0:
        raise ValueError(f"bad duration {text!r}: must be longer than zero")
    return timedelta(**{_UNITS[match.group(2).lower()]: amount})


def format_duration(value: timedelta) -> str:
    if value.microseconds:
        return f"{value.total_seconds():g}s"
    seconds = int(value.total_seconds())
    for unit, size in (("w", 604800), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds % size == 0 and seconds >= 2 * size:  # "24h", "60s" rather than "1d", "1m"
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


def _weekday(token: str, expr: str) -> int:
    token = token.strip().lower()
    if token.isascii() and token.isdigit() and 0 <= int(token) <= 7:
        return int(token) % 7
    if token[:3] in _STD_NAMES and len(token) == 3:
        return _STD_NAMES.index(token)
    raise ValueError(
        f"bad weekday {token!r} in cron {expr!r}: use 0-7 (0 and 7 are Sunday) or sun-sat"
    )


def standard_weekdays(field: str, expr: str = "") -> frozenset[int]:
    """The weekdays (0 = Sunday … 6 = Saturday) that a standard cron weekday field selects."""
    expr = expr or field
    days: set[int] = set()
    for part in field.split(","):
        base, _, step_text = part.partition("/")
        step = 1
        if step_text:
            if not (step_text.isascii() and step_text.isdigit()) or int(step_text) == 0:
                raise ValueError(f"bad step {step_text!r} in cron {expr!r}")
            step = int(step_text)
        if base == "*":
            first, last = 0, 6
        elif "-" in base:
            lo, _, hi = base.partition("-")
            first, last = _weekday(lo, expr), _weekday(hi, expr)
            if last == 0 and first > 0:  # `5-7`, `fri-sun`: Sunday closes the week
                last = 7
            if last < first:
                raise ValueError(f"bad weekday range {base!r} in cron {expr!r}")
        elif step_text:
            raise ValueError(f"a step needs a range or '*', not {part!r}, in cron {expr!r}")
        else:
            first = last = _weekday(base, expr)
        days.update(d % 7 for d in range(first, last + 1, step))
    return frozenset(days)


def cron_trigger(expr: str, timezone: tzinfo | str) -> CronTrigger:
    """A trigger for a five-field standard cron expression; ValueError naming the expression."""
    fields = expr.split() if isinstance(expr, str) else []
    if any(not f.isascii() for f in fields):
        raise ValueError(f"bad cron {expr!r}: only ASCII digits, names and * , - / are allowed")
    if len(fields) != 5:
        raise ValueError(
            f"bad cron {expr!r}: expected 5 fields (minute hour day-of-month month weekday), "
            f"got {len(fields)}"
        )
    minute, hour, day, month, weekday = fields
    if weekday != "*":
        weekday = ",".join(_STD_NAMES[d] for d in sorted(standard_weekdays(weekday, expr)))
    try:
        return CronTrigger(
            minute=minute, hour=hour, day=day, month=month, day_of_week=weekday, timezone=timezone
        )
    except (ValueError, TypeError) as exc:
        raise ValueError(f"bad cron {expr!r}: {exc}") from None
