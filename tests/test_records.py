"""The typed states and keys the store hands out, parsed in one place."""

from __future__ import annotations

import pytest

from bot.storage import Origin, RelayKind, RelayState, RunState, ScheduleKey


@pytest.mark.parametrize(
    ("text", "origin", "number"),
    [("cfg-1", Origin.CONFIG, 1), ("db-42", Origin.CHAT, 42), ("cfg-10", Origin.CONFIG, 10)],
)
def test_a_schedule_key_parses_and_prints_back(text: str, origin: Origin, number: int) -> None:
    key = ScheduleKey.parse(text)
    assert key == ScheduleKey(origin, number)
    assert str(key) == text


@pytest.mark.parametrize(
    "text",
    [
        "",
        "cfg",
        "cfg-",
        "db-x",
        "db-01",
        "db--1",
        "xx-1",
        "db-1-2",
        "DB-1",
        " db-1",
        "db-١",
        "db-²",
    ],
)
def test_anything_else_is_not_a_schedule_key(text: str) -> None:
    assert ScheduleKey.parse(text) is None


def test_stored_states_keep_their_spelling() -> None:
    """The values are what the database holds (and what txn ids hash): renaming a member
    must not change them."""
    assert [k.value for k in RelayKind] == ["copy", "edit", "redact"]
    assert [s.value for s in RelayState] == ["pending", "sent", "stale"]
    assert [s.value for s in RunState] == ["posting", "posted", "skipped", "stale"]
    assert f"{RelayKind.COPY}|x" == "copy|x"
