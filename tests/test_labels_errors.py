"""Bad markings: each gives a MarkingError whose message names the offending text."""

from __future__ import annotations

import pytest

from policy import MarkingError, parse_marking

# (marking, context, text the message must contain)
BAD = [
    ("", None, "empty marking"),
    ("   ", None, "empty marking"),
    ("SECRTE", None, "unknown marking 'SECRTE' — did you mean"),
    ("NATO SECRTE", None, "'NATO SECRTE'"),
    ("NATOSECRET", None, "'NATOSECRET'"),
    ("COSMIC TOP SECRT", None, "'COSMIC TOP SECRT'"),
    ("GEHEIMM", None, "'GEHEIMM'"),
    ("STRENG-GEHEIM-X", None, "'STRENG-GEHEIM-X'"),
    ("EU SECERT", None, "'EU SECERT'"),
    ("UNCLASSIFIED", None, "'UNCLASSIFIED'"),  # NATO-only short name, no NATO context
    ("UNCLASSIFIED", "EU", "'UNCLASSIFIED'"),  # the EU has no rank 0
    ("SECRET", None, "ambiguous marking 'SECRET'"),
    ("SECRET", "DEU", "ambiguous marking 'SECRET'"),
    ("GEHEIM", None, "DEU GEHEIM"),
    ("GEHEIM", "NLD", "BEL GEHEIM"),
    ("TRÈS SECRET", None, "ambiguous marking 'TRÈS SECRET'"),
    ("TRES SECRET", None, "FRA TRES SECRET"),
    ("CHE SECRET", None, "no scheme for CHE"),  # Switzerland: a country, no scheme
    ("ISL LEYNDARMÁL", None, "ISL has no levels on record"),  # no public source: told why
    ("XYZ GEHEIM", None, "'XYZ GEHEIM'"),
    ("FRA GEHEIM", None, "'FRA GEHEIM'"),
    ("// NATO SECRET", None, "missing level"),
    ("NATO SECRET //", None, "empty qualifier at 14"),
    ("NATO SECRET // // ATOMAL", None, "empty qualifier"),
    ("NATO SECRET // REL TO", None, "'REL TO' with no audience"),
    ("NATO SECRET // RELEASABLE TO", None, "'REL TO' with no audience"),
    ("NATO SECRET // REL TO  ", None, "'REL TO' with no audience"),
    ("NATO SECRET // REL TO XYZ", None, "unknown audience 'XYZ' at 22"),
    ("NATO SECRET // REL TO DEU, QQQ", None, "unknown audience 'QQQ'"),
    ("NATO SECRET // REL TO DEU,,FRA", None, "empty audience"),
    ("NATO SECRET // REL TO DEU,", None, "empty audience"),
    ("NATO SECRET // REL TO Germny", None, "unknown audience 'Germny'"),
    ("NATO SECRET // REL TO NATO AND EU", None, "unknown audience 'NATO AND EU'"),
    ("NATO SECRET // FOOBAR", None, "unknown caveat 'FOOBAR' at 15 in 'NATO SECRET // FOOBAR'"),
    ("NATO SECRET // ATOMAL // BOHEMIAA", None, "unknown caveat 'BOHEMIAA'"),
    ("NATO SECRET // SIGINT", None, "(known: ATOMAL, BOHEMIA, CRYPTO)"),
    ("NATO SECRET // DEU GEHEIM", None, "second level 'DEU GEHEIM'"),
    ("NATO SECRET // NATO CONFIDENTIAL", None, "second level"),
    ("NATO SECRET NATO CONFIDENTIAL", None, "'NATO SECRET NATO CONFIDENTIAL'"),
    ("NATO SECRET/ REL TO EU", None, "'NATO SECRET/ REL TO EU'"),
    ("NATO SECRET\u200f", None, "U+200F"),
    ("NATO\u200bSECRET", None, "U+200B"),
    ("NATO SECRET\x00", None, "U+0000"),
    ("NATO SECRET // REL TO EU\u202e", None, "U+202E"),
    ("Ν\u0391TO SECRET", None, "unknown marking"),  # Greek capital letters that look Latin
    ("<b>NATO SECRET</b>", None, "'<b>NATO SECRET</b>'"),
    ("[NATO SECRET]", None, "'[NATO SECRET]'"),
    ("NATO SECRET" + " // ATOMAL" * 40, None, "marking too long"),
    ("X" * 10_000, None, "marking too long"),
    ("SECRET", "XYZ", "unknown scheme 'XYZ'"),
]


@pytest.mark.parametrize(("marking", "context", "message"), BAD)
def test_bad_marking_is_rejected_with_a_clear_message(
    marking: str, context: str | None, message: str
) -> None:
    with pytest.raises(MarkingError) as info:
        parse_marking(marking, context)
    assert message in str(info.value)


def test_at_least_forty_distinct_bad_markings_are_each_refused() -> None:
    """Counted on what the parser does, not on the length of the list: forty or more
    distinct (marking, context) cases, every one refused with a MarkingError."""
    refused: set[tuple[str, str | None]] = set()
    for marking, context, _ in BAD:
        try:
            parse_marking(marking, context)
        except MarkingError:
            refused.add((marking, context))
    accepted = {(m, c) for m, c, _ in BAD} - refused
    assert accepted == set()
    assert len(refused) >= 40


def test_non_text_is_rejected() -> None:
    with pytest.raises(MarkingError, match="must be text"):
        parse_marking(42)  # type: ignore[arg-type]  # deliberately not text: the parser must refuse it


def test_error_carries_position_of_the_bad_qualifier() -> None:
    with pytest.raises(MarkingError) as info:
        parse_marking("NATO SECRET // FOOBAR")
    assert info.value.position == 15
    assert info.value.text == "NATO SECRET // FOOBAR"


@pytest.mark.parametrize(
    ("text", "where"),
    [("NATO SECRET // REL TO DEU,,FRA", 26), ("NS//REL TO DEU,FRA,,GBR", 19)],
)
def test_an_empty_audience_is_placed_where_it_is(text: str, where: int) -> None:
    """The error's position is the empty entry's, not the start of the 'REL TO' segment."""
    with pytest.raises(MarkingError) as caught:
        parse_marking(text)
    assert "empty audience" in str(caught.value)
    assert caught.value.position == where and f"at {where} " in str(caught.value)
