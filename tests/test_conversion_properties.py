"""Properties of conversion across every scheme loaded: it keeps the rank, never goes up or
down through another scheme, and `fits` agrees with it."""

from __future__ import annotations

from hypothesis import given
from hypothesis import strategies as st

from policy import Label, Level, convert, current, fits, make_room, why_no_equivalent

LEVELS: list[Level] = sorted(lv for s in current().schemes.values() for lv in s.levels)
SCHEMES = sorted(current().schemes)
levels = st.sampled_from(LEVELS)
schemes = st.sampled_from(SCHEMES)
current_levels = levels.filter(lambda lv: not lv.legacy)


@given(levels, schemes)
def test_conversion_keeps_the_rank_or_refuses_with_a_reason(level: Level, scheme: str) -> None:
    converted = convert(level, scheme)
    if converted is None:
        reason = why_no_equivalent(level, scheme)
        assert reason.startswith(f"{scheme} has no level equivalent to {level.banner}")
        assert all(lv.rank != level.rank or lv.legacy for lv in current().schemes[scheme].levels)
    else:
        assert converted.rank == level.rank and converted.scheme == scheme


@given(levels, schemes, schemes)
def test_conversion_through_another_scheme_changes_nothing(
    level: Level, middle: str, target: str
) -> None:
    """A->B->C equals A->C whenever both are defined: no scheme rounds on the way."""
    via = convert(level, middle)
    if via is None:
        return
    through = convert(via, target)
    direct = convert(level, target)
    if through is not None:
        assert direct == through


@given(current_levels, schemes)
def test_there_and_back_is_the_identity(level: Level, other: str) -> None:
    there = convert(level, other)
    if there is not None:
        assert convert(there, level.scheme) == level


@given(levels, current_levels)
def test_fits_is_consistent_with_conversion(level: Level, room_level: Level) -> None:
    """A label (releasable to the room's own audience) fits a room exactly when its
    equivalent in the room's scheme exists at or below the room's rank; a room above it
    admits it too (dominance)."""
    room_label = Label(room_level)
    room = make_room(room_label)
    label = Label(level, rel_to=room.audience)
    decision = fits(label, room)
    equivalent = convert(level, room.scheme)
    assert decision.allowed == (equivalent is not None and equivalent.rank <= room.rank)
    if equivalent is None:
        assert why_no_equivalent(level, room.scheme) in decision.reason
    if decision.allowed:
        for higher in current().schemes[room.scheme].levels:
            if higher.rank >= room.rank and not higher.legacy:
                assert fits(label, make_room(Label(higher), room.audience)).allowed
