"""The laws of the classification domain, as hypothesis properties."""

from __future__ import annotations

from datetime import date, timedelta

from hypothesis import given, settings
from hypothesis import strategies as st

from policy import (
    CATALOGUE,
    Clearance,
    Label,
    Level,
    MarkingError,
    convert,
    dominant_label,
    fits,
    make_room,
    may_join,
    may_release,
    parse_marking,
    releasable_set,
    render,
)

LEVELS: list[Level] = sorted(lv for s in CATALOGUE.schemes.values() for lv in s.levels)
CAVEATS = list(CATALOGUE.default_caveats)
AUDIENCE_TOKENS = ["NATO", "EU", *sorted(CATALOGUE.countries)]
TODAY = date(2026, 11, 25)

levels = st.sampled_from(LEVELS)
caveat_sets = st.frozensets(st.sampled_from(CAVEATS), max_size=3)
rel_to_sets = st.frozensets(st.sampled_from(AUDIENCE_TOKENS), max_size=5)
labels = st.builds(Label, levels, caveat_sets, rel_to_sets)
nations = st.sampled_from(sorted(CATALOGUE.countries))


@st.composite
def rooms(draw: st.DrawFn):  # type: ignore[no-untyped-def]
    label = draw(
        st.builds(Label, levels.filter(lambda lv: not lv.legacy), caveat_sets, rel_to_sets)
    )
    full = sorted(releasable_set(label))
    narrowed = draw(st.one_of(st.none(), st.lists(st.sampled_from(full), min_size=1, max_size=4)))
    return make_room(label, narrowed)


@st.composite
def clearances(draw: st.DrawFn) -> Clearance:
    grants = draw(st.dictionaries(st.sampled_from(sorted(CATALOGUE.schemes)), st.integers(0, 4)))
    chosen: dict[str, Level] = {}
    for scheme, rank in grants.items():
        level = CATALOGUE.schemes[scheme].level_at_or_above(rank)
        if level is not None:
            chosen[scheme] = level
    expires = draw(
        st.one_of(st.none(), st.dates(TODAY - timedelta(days=400), TODAY + timedelta(days=400)))
    )
    return Clearance(
        user_id="@u:example.org",
        nationality=draw(st.one_of(nations, st.sampled_from(["DEU", "FRA", "UKR"]))),
        grants=chosen,
        caveats=draw(caveat_sets),
        expires=expires,
        revoked=draw(st.booleans()),
    )


@given(labels)
def test_parse_render_round_trip(label: Label) -> None:
    assert parse_marking(render(label)) == label


@given(labels, st.sampled_from(sorted(CATALOGUE.schemes)))
def test_parse_render_round_trip_in_any_room(label: Label, context: str) -> None:
    assert parse_marking(render(label), context) == label


@given(labels, rooms(), rooms())
def test_may_release_never_writes_down(label: Label, source, target) -> None:  # type: ignore[no-untyped-def]
    decision = may_release(label, source, target)
    if decision.allowed:
        equivalent = convert(label, target.scheme)
        assert equivalent is not None
        assert equivalent.rank <= target.rank


@given(labels, rooms(), rooms())
def test_may_release_never_leaves_the_releasable_set(label: Label, source, target) -> None:  # type: ignore[no-untyped-def]
    if may_release(label, source, target).allowed:
        assert target.audience <= releasable_set(label)


@given(labels, rooms(), rooms())
def test_may_release_never_adds_a_caveat_the_target_lacks(label: Label, source, target) -> None:  # type: ignore[no-untyped-def]
    if may_release(label, source, target).allowed:
        assert label.caveats <= target.caveats


@given(labels, rooms(), rooms())
def test_spillage_is_flagged_exactly_when_the_label_does_not_fit_its_source(
    label: Label, source, target
) -> None:  # type: ignore[no-untyped-def]
    decision = may_release(label, source, target)
    assert decision.spillage == (not fits(label, source).allowed)
    if decision.spillage:
        assert not decision.allowed


@given(labels, rooms(), rooms())
def test_every_decision_has_reasons(label: Label, source, target) -> None:  # type: ignore[no-untyped-def]
    decision = may_release(label, source, target)
    assert decision.reasons and all(r.strip() for r in decision.reasons)


@given(clearances(), rooms(), st.dates(TODAY - timedelta(days=800), TODAY + timedelta(days=800)))
def test_may_join_never_admits_an_invalid_clearance(
    clearance: Clearance, room, today: date
) -> None:  # type: ignore[no-untyped-def]
    decision = may_join(clearance, room, today)
    assert decision.reasons
    if decision.allowed:
        assert not clearance.revoked
        assert clearance.expires is None or today <= clearance.expires
        assert clearance.nationality in room.audience
        grant = clearance.grants.get(room.scheme)
        assert grant is not None and grant.rank >= room.rank
        assert room.caveats <= clearance.caveats


@given(clearances(), rooms())
def test_may_join_admits_when_every_condition_holds(clearance: Clearance, room) -> None:  # type: ignore[no-untyped-def]
    """The converse: deny-by-default must not deny a valid clearance."""
    grant = clearance.grants.get(room.scheme)
    valid = (
        not clearance.revoked
        and (clearance.expires is None or clearance.expires >= TODAY)
        and clearance.nationality in room.audience
        and grant is not None
        and grant.rank >= room.rank
        and room.caveats <= clearance.caveats
    )
    assert may_join(clearance, room, TODAY).allowed == valid


@given(levels, levels, st.sampled_from(sorted(CATALOGUE.schemes)))
def test_equivalence_is_monotone_in_rank(a: Level, b: Level, scheme: str) -> None:
    ca, cb = convert(Label(a), scheme), convert(Label(b), scheme)
    if a.rank <= b.rank and ca is not None and cb is not None:
        assert ca.rank <= cb.rank
    if a.rank <= b.rank and ca is None:
        assert cb is None


@given(levels, st.sampled_from(sorted(CATALOGUE.schemes)))
def test_conversion_protects_at_least_as_well_and_never_yields_legacy(
    level: Level, scheme: str
) -> None:
    converted = convert(Label(level), scheme)
    if converted is not None:
        assert converted.rank >= level.rank
        assert not converted.legacy
        assert converted.scheme == scheme


@given(st.lists(labels, min_size=1, max_size=6), st.sampled_from(["NATO", "EU", "DEU"]))
def test_dominant_label_is_at_least_every_item(items: list[Label], scheme: str) -> None:
    dominant = dominant_label(items, scheme)
    if dominant is None:
        return
    assert dominant.rank >= max(i.rank for i in items)
    assert all(i.caveats <= dominant.caveats for i in items)


@given(st.text(max_size=80), st.one_of(st.none(), st.sampled_from(sorted(CATALOGUE.schemes))))
@settings(max_examples=300)
def test_parse_is_total(text: str, context: str | None) -> None:
    try:
        label = parse_marking(text, context)
    except MarkingError as exc:
        assert str(exc)
    else:
        assert parse_marking(render(label)) == label
