"""may_join, fits, may_release and dominant_label on the cases the classification rules name."""

from __future__ import annotations

from datetime import date
from typing import Any

import pytest

from policy import (
    CATALOGUE,
    Clearance,
    Decision,
    Label,
    Level,
    MarkingError,
    Room,
    dominant_label,
    fits,
    make_room,
    may_join,
    may_release,
    parse_marking,
    render,
)

TODAY = date(2026, 11, 25)


def room(marking: str, audience: list[str] | None = None) -> Room:
    return make_room(parse_marking(marking), audience)


def clearance(nationality: str = "DEU", *grants: str, **kw: Any) -> Clearance:
    levels = {lv.scheme: lv.level for lv in (parse_marking(g) for g in grants)}
    return Clearance("@x:example.org", nationality, levels, **kw)


NATO_S = room("NATO SECRET")
EU_S = room("EU SECRET")
DEU_G = room("DEU GEHEIM")


def test_cleared_officer_may_join_and_the_reason_says_why() -> None:
    decision = may_join(clearance("DEU", "NATO SECRET"), NATO_S, TODAY)
    assert decision.allowed
    assert "grant NATO SECRET covers NATO SECRET" in decision.reason


@pytest.mark.parametrize(
    ("person", "reason"),
    [
        (clearance("DEU", "NATO CONFIDENTIAL"), "below the room's NATO SECRET"),
        (clearance("DEU", "DEU STRENG GEHEIM"), "no NATO grant"),
        (clearance("UKR", "NATO SECRET"), "nationality UKR is not in the room's audience"),
        (clearance("DEU", "NATO SECRET", revoked=True), "revoked"),
        (clearance("DEU", "NATO SECRET", expires=date(2026, 11, 24)), "expired on 2026-11-24"),
    ],
)
def test_may_join_refusals_name_the_condition(person: Clearance, reason: str) -> None:
    decision = may_join(person, NATO_S, TODAY)
    assert not decision.allowed
    assert reason in decision.reason


def test_expiry_is_valid_through_that_day() -> None:
    assert may_join(clearance("DEU", "NATO SECRET", expires=TODAY), NATO_S, TODAY).allowed


def test_caveat_room_needs_the_briefing() -> None:
    atomal = room("NATO SECRET // ATOMAL")
    assert not may_join(clearance("DEU", "NATO SECRET"), atomal, TODAY).allowed
    briefed = clearance("DEU", "NATO SECRET", caveats=frozenset({"ATOMAL"}))
    assert may_join(briefed, atomal, TODAY).allowed


def test_rel_to_partner_room_admits_partner_nationals() -> None:
    partner = room("NATO SECRET // REL TO UKR")
    assert may_join(clearance("UKR", "NATO SECRET"), partner, TODAY).allowed


def test_narrowed_audience_excludes_others() -> None:
    narrowed = room("NATO SECRET", ["DEU", "FRA"])
    assert narrowed.audience == {"DEU", "FRA"}
    assert not may_join(clearance("ITA", "NATO SECRET"), narrowed, TODAY).allowed


def test_audience_outside_the_releasable_set_is_bad_input() -> None:
    with pytest.raises(MarkingError, match="outside the releasable set"):
        room("DEU GEHEIM", ["FRA"])
    with pytest.raises(MarkingError, match="at least one nation"):
        room("DEU GEHEIM", [])


def test_national_item_releasable_to_nato_goes_to_nato_room() -> None:
    label = parse_marking("GEHEIM // REL TO NATO", "DEU")
    assert may_release(label, DEU_G, NATO_S).allowed


def test_national_item_without_rel_to_is_not_releasable() -> None:
    decision = may_release(parse_marking("GEHEIM", "DEU"), DEU_G, NATO_S)
    assert not decision.allowed and not decision.spillage
    assert "not releasable to" in decision.reason


def test_nato_releasable_item_is_refused_for_eu_room() -> None:
    label = parse_marking("GEHEIM // REL TO NATO", "DEU")
    decision = may_release(label, DEU_G, EU_S)
    assert not decision.allowed
    assert "AUT" in decision.reason  # Austria is EU but not NATO


def test_write_down_is_refused() -> None:
    decision = may_release(
        parse_marking("GEHEIM // REL TO NATO", "DEU"), DEU_G, room("NATO CONFIDENTIAL")
    )
    assert not decision.allowed
    assert "write-down" in decision.reason


def test_caveat_the_target_lacks_is_refused() -> None:
    source = room("DEU GEHEIM // ATOMAL")
    decision = may_release(parse_marking("GEHEIM // ATOMAL // REL TO NATO", "DEU"), source, NATO_S)
    assert not decision.allowed
    assert "caveat ATOMAL" in decision.reason


def test_no_equivalent_is_named() -> None:
    # Every scheme in the data reaches rank 4, so take a room of a scheme the catalogue lacks.
    nowhere = Room(Label(Level("XYZ", 4, "XYZ TOP")), frozenset({"DEU"}))
    decision = fits(parse_marking("DEU GEHEIM"), nowhere)
    assert not decision.allowed
    assert "no equivalent of DEU GEHEIM in XYZ" in decision.reason


def test_a_level_the_room_scheme_lacks_is_refused_with_the_reason_not_rounded() -> None:
    # Belgium has no RESTRICTED: NATO RESTRICTED is not rounded up into a CONFIDENTIEL room.
    room = make_room(parse_marking("BEL CONFIDENTIEL"))
    decision = fits(parse_marking("NATO RESTRICTED"), room)
    assert not decision.allowed
    assert "BEL has no level equivalent to NATO RESTRICTED" in decision.reason
    # NATO UNCLASSIFIED has no national level at all
    decision = fits(parse_marking("NATO UNCLASSIFIED"), make_room(parse_marking("DEU GEHEIM")))
    assert not decision.allowed
    assert "DEU has no level equivalent to NATO UNCLASSIFIED" in decision.reason


def test_spillage_when_label_is_above_its_own_room() -> None:
    decision = may_release(parse_marking("STRENG GEHEIM", "DEU"), DEU_G, NATO_S)
    assert decision.spillage and not decision.allowed
    assert decision.reasons[0].startswith("spillage:")


def test_spillage_when_label_is_not_releasable_to_its_own_room() -> None:
    # A DEU-only item posted in a NATO room spills to 31 nations.
    decision = may_release(parse_marking("DEU GEHEIM"), NATO_S, EU_S)
    assert decision.spillage


def test_every_allow_has_a_printable_reason() -> None:
    decision = fits(parse_marking("NATO SECRET"), NATO_S)
    assert decision.allowed and decision.reason


def test_dominant_label_takes_highest_rank_and_union_of_caveats() -> None:
    items = [parse_marking("NATO CONFIDENTIAL // ATOMAL"), parse_marking("NATO SECRET // CRYPTO")]
    dominant = dominant_label(items, "NATO")
    assert dominant is not None
    assert render(dominant) == "NATO SECRET // ATOMAL // CRYPTO"


def test_dominant_label_rel_to_is_the_intersection_when_narrower() -> None:
    items = [
        parse_marking("DEU GEHEIM // REL TO FRA, ITA"),
        parse_marking("DEU GEHEIM // REL TO FRA"),
    ]
    dominant = dominant_label(items, "DEU", audience=frozenset({"DEU", "FRA", "ITA"}))
    assert dominant is not None
    assert dominant.rel_to == {"DEU", "FRA"}


def test_dominant_label_folds_complete_alliances() -> None:
    items = [
        parse_marking("NATO SECRET // REL TO UKR"),
        parse_marking("NATO SECRET // REL TO UKR, JPN"),
    ]
    dominant = dominant_label(
        items, "NATO", audience=frozenset(CATALOGUE.alliance_members["NATO"] | {"JPN", "UKR"})
    )
    assert dominant is not None
    assert render(dominant) == "NATO SECRET // REL TO NATO, UKR"


def test_dominant_label_of_nothing_is_none() -> None:
    assert dominant_label([], "NATO") is None


def test_level_fits_judges_the_level_alone() -> None:
    """Issue 14, finding 5: spillage as soon as the level can be read."""
    from policy import level_fits, levels_named

    restricted = make_room(parse_marking("NATO RESTRICTED"))
    spill = level_fits(levels_named("[COSMIC TOP SECRET // NOFORN] x", "NATO"), restricted)
    assert not spill.allowed and spill.spillage and "write-down" in spill.reason
    ambiguous = level_fits(levels_named("[SECRET // X] x"), restricted)
    assert not ambiguous.allowed and ambiguous.spillage
    assert level_fits(levels_named("[NATO RESTRICTED // X] x", "NATO"), restricted).allowed
    assert level_fits(levels_named("[NOT A LEVEL // X] x"), restricted).allowed  # unjudged
    assert levels_named("no tag at all") == ()
    assert levels_named("[unclosed") == ()


@pytest.mark.parametrize(
    ("person", "room_", "code"),
    [
        (clearance("FRA", "NATO CONFIDENTIAL"), NATO_S, "clearance.level_too_low"),
        (clearance("DEU", "DEU STRENG GEHEIM"), NATO_S, "clearance.no_grant_in_scheme"),
        (clearance("UKR", "NATO SECRET"), NATO_S, "audience.nationality_outside"),
        (clearance("DEU", "NATO SECRET", revoked=True), NATO_S, "clearance.revoked"),
        (clearance("DEU", "NATO SECRET"), room("NATO SECRET // CRYPTO"), "caveat.missing"),
        (clearance("DEU", "NATO SECRET"), NATO_S, "audience.nationality_in"),
    ],
)
def test_may_join_gives_a_code_per_reason(person: Clearance, room_: Room, code: str) -> None:
    """The code travels where the words may not (the SIEM export): it names the condition,
    never a level, caveat or nation."""
    decision = may_join(person, room_, TODAY)
    assert decision.code == code
    assert len(decision.codes) == len(decision.reasons)


@pytest.mark.parametrize(
    ("marking", "source", "target", "code"),
    [
        ("GEHEIM // REL TO NATO", DEU_G, EU_S, "releasability.nation_missing"),
        ("DEU GEHEIM // REL TO NATO", DEU_G, NATO_S, "level.within_room"),
        ("NATO SECRET // CRYPTO", NATO_S, NATO_S, "spillage"),
        ("COSMIC TOP SECRET", NATO_S, NATO_S, "spillage"),
        ("NATO SECRET", NATO_S, room("NATO CONFIDENTIAL"), "level.above_room"),
    ],
)
def test_may_release_gives_a_code_per_reason(
    marking: str, source: Room, target: Room, code: str
) -> None:
    decision = may_release(parse_marking(marking, source.scheme), source, target)
    assert decision.code == code
    if decision.spillage:  # the head, then what failed in the own room
        assert decision.codes[1:] == fits(parse_marking(marking, source.scheme), source).codes


def test_a_decision_without_a_code_per_reason_is_refused() -> None:
    with pytest.raises(ValueError, match="one code per reason"):
        Decision(False, ("one", "two"), codes=("clearance.none",))
    assert Decision(True, (), codes=()).code == ""
