"""Tagged messages: `[MARKING] [PRECEDENCE] text #topic`."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from policy import MarkingError, Precedence, parse_marking, parse_tagged, render


def test_untagged_message_is_none() -> None:
    assert parse_tagged("hello [NATO SECRET]") is None
    assert parse_tagged("") is None


def test_marking_precedence_topics() -> None:
    msg = parse_tagged(
        "[GEHEIM // REL TO NATO] [flash] convoy at #Kiel, see #logistics #kiel", "DEU"
    )
    assert msg is not None
    assert render(msg.label) == "DEU GEHEIM // REL TO NATO"
    assert msg.precedence is Precedence.FLASH
    assert msg.text == "convoy at #Kiel, see #logistics #kiel"
    assert msg.topics == ("kiel", "logistics")
    assert not msg.exercise


def test_default_precedence_is_routine_and_context_short_names_apply() -> None:
    msg = parse_tagged("[SECRET] x", "NATO")
    assert msg is not None and msg.precedence is Precedence.ROUTINE
    assert msg.label.banner == "NATO SECRET"


@pytest.mark.parametrize(
    "body",
    [
        "[NS] [EXERCISE] [PRIORITY] drill",
        "[NS] [PRIORITY] [EXERCISE] drill",
        "[NS] [exercise] drill",
    ],
)
def test_exercise_bracket_before_or_after_precedence(body: str) -> None:
    msg = parse_tagged(body)
    assert msg is not None and msg.exercise and msg.text == "drill"


def test_a_third_bracket_is_text() -> None:
    msg = parse_tagged("[NS] [IMMEDIATE] [UPDATE] new position")
    assert msg is not None and msg.text == "[UPDATE] new position"


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ("[NATO SECRTE] x", "unknown marking 'NATO SECRTE'"),
        ("[NATO SECRET x", "unclosed '['"),
        ("[NATO [SECRET]] x", "nested '['"),
        ("[NATO SECRET]", "has no text"),
        ("[NATO SECRET] [FLASH]", "has no text"),
        ("[NATO SECRET] [FLSH] x", "did you mean 'FLASH'"),
        ("[NATO SECRET] [EXERSICE] x", "did you mean 'EXERCISE'"),
        ("[] x", "empty marking"),
        ("[NATO SECRET] " + "x" * 40_000, "message too long: 40014 bytes"),
    ],
)
def test_malformed_tags_name_the_problem(body: str, message: str) -> None:
    with pytest.raises(MarkingError) as info:
        parse_tagged(body)
    assert message in str(info.value)


def test_exactly_forty_thousand_bytes_is_allowed() -> None:
    body = "[NS] " + "é" * ((40_000 - 5) // 2)
    assert len(body.encode()) <= 40_000
    assert parse_tagged(body) is not None


@given(st.text(max_size=200))
def test_parse_tagged_is_total(body: str) -> None:
    try:
        parse_tagged(body, "NATO")
    except MarkingError as exc:
        assert str(exc)


@pytest.mark.parametrize(
    "body",
    [
        "[PRIORITY] [COSMIC TOP SECRET] the plan",
        "[EXERCISE] [COSMIC TOP SECRET] the plan",
        "[FLASH] [EXERCISE] [NATO SECRET] the plan",
    ],
)
def test_a_marking_after_the_precedence_is_compared_with_the_label(body: str) -> None:
    """Issue 24, finding 8: only the first bracket was compared with the machine-readable
    label, so a precedence first let any marking through under a low label."""
    low = parse_marking("NATO UNCLASSIFIED")
    with pytest.raises(MarkingError, match="disagree"):
        parse_tagged(body, "NATO", label=low)


def test_a_label_with_a_matching_marking_after_the_precedence_is_read() -> None:
    label = parse_marking("NATO SECRET")
    message = parse_tagged("[FLASH] [EXERCISE] [NATO SECRET] #kiel x", "NATO", label=label)
    assert message is not None and message.label == label and message.exercise
    assert message.precedence.name == "FLASH" and message.text == "#kiel x"
    text = parse_tagged("[PRIORITY] [UPDATE] x", "NATO", label=label)  # a bracket of text
    assert text is not None and text.text == "[UPDATE] x"


@pytest.mark.parametrize(
    "body",
    ["[FLASH] [STRENG GEHEIM] x", "[EXERCISE] [PRIORITY] [STRENG GEHEIM] x", "[STRENG GEHEIM] x"],
)
def test_the_level_is_read_behind_a_leading_precedence(body: str) -> None:
    """Attack review of issue 24 (H1): spillage was judged on the first bracket only, so a
    precedence put first left `[FLASH] [STRENG GEHEIM] …` in a GEHEIM room."""
    from policy.tagged import levels_named

    assert [lvl.name for lvl in levels_named(body, "DEU")] == ["STRENG GEHEIM"]
    assert levels_named("[FLASH] words", "DEU") == ()
    assert levels_named("[FLASH] [UPDATE] words", "DEU") == ()
