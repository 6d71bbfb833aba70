"""Words several nations use at different ranks (SECRET is Romania's CONFIDENTIAL-level
word; Portugal's SECRETO and RESERVADO are one and two ranks below Spain's): never read at
the lower rank by default, neither when judging spillage nor when reading a marking in a
room; and did-you-mean finds the nation however its trigraph is written."""

from __future__ import annotations

import pytest

from policy import MarkingError, level_fits, make_room, parse_marking
from policy.tagged import levels_named


@pytest.mark.parametrize(
    ("body", "room"),
    [
        ("[SECRET // REL TO DEU, USA] text", "DEU VS-VERTRAULICH"),  # ROU SECRET is rank 2
        ("[SECRETO] text", "DEU GEHEIM"),  # PRT SECRETO is rank 3, ESP SECRETO 4
        ("[RESERVADO] text", "DEU VS-NUR FÜR DEN DIENSTGEBRAUCH"),  # PRT 1, ESP 3
        ("[RESERVADO] text", "NATO RESTRICTED"),
        ("[SECRET] text", "POL POUFNE"),
    ],
)
def test_a_word_with_a_reading_above_the_room_is_spillage(body: str, room: str) -> None:
    target = make_room(parse_marking(room))
    readings = levels_named(body, target.scheme)
    assert any(lv.rank <= target.rank for lv in readings), "a lower reading exists"
    decision = level_fits(readings, target)
    assert not decision.allowed and decision.spillage, decision
    assert "above the room's" in decision.reasons[0]


def test_a_word_whose_every_reading_fits_is_not_spillage() -> None:
    room = make_room(parse_marking("NATO SECRET"))
    decision = level_fits(levels_named("[SECRET] text", "DEU"), room)
    assert decision.allowed, decision


@pytest.mark.parametrize(
    ("word", "room", "lower"),
    [("SECRET", "ROU", "ROU SECRET"), ("SECRETO", "PRT", "PRT SECRETO"),
     ("RESERVADO", "PRT", "PRT RESERVADO")],
)  # fmt: skip
def test_the_rooms_reading_does_not_win_over_a_higher_one(word: str, room: str, lower: str) -> None:
    with pytest.raises(MarkingError, match=r"ambiguous.*write the trigraph") as info:
        parse_marking(f"{word} // REL TO NATO", room)
    assert lower in info.value.message
    assert parse_marking(f"{lower} // REL TO NATO", room).banner.startswith(lower)


def test_the_rooms_reading_wins_when_no_other_is_higher() -> None:
    assert parse_marking("SECRET", "BEL").banner == "BEL SECRET"  # ROU's is lower
    assert parse_marking("SECRETO", "ESP").banner == "ESP SECRETO"
    assert parse_marking("STRENG GEHEIM", "DEU").banner == "DEU STRENG GEHEIM"


def test_another_nations_exact_form_does_not_beat_the_rooms_own_level_typed_plainly() -> None:
    # Polish TAJNE, or Czech TAJNÉ typed without its accent, in a Czech room
    with pytest.raises(MarkingError, match="ambiguous") as info:
        parse_marking("TAJNE", "CZE")
    assert "CZE" in info.value.message and "POL" in info.value.message
    assert parse_marking("TAJNE", "POL").banner == "POL TAJNE"


@pytest.mark.parametrize(
    "written", ["DEU-GEHEIN", "DEUGEHEIN", "DEU/GEHEIN", "DEU_GEHEIN", "DEU. GEHEIN"]
)
def test_did_you_mean_finds_the_trigraph_however_it_is_written(written: str) -> None:
    with pytest.raises(MarkingError) as info:
        parse_marking(written)
    assert info.value.suggestions, info.value.message
    assert {lv.scheme for lv in info.value.suggestions} == {"DEU"}, info.value.message


def test_a_short_name_before_the_level_binds_the_hint_to_its_nation() -> None:
    with pytest.raises(MarkingError) as info:
        parse_marking("UK CONFIDENTIAL")  # the United Kingdom has no CONFIDENTIAL
    assert "GBR" in info.value.message
    assert "EU CONFIDENTIAL" not in info.value.message
    assert "USA" not in info.value.message
