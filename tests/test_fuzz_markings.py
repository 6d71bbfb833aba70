"""Fuzzing the marking parser and tagged messages (policy.labels, policy.tagged) with
hypothesis; the strategies are in tests/fuzzing.py."""

from __future__ import annotations

import time

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from policy import (
    CATALOGUE,
    MAX_TEXT_BYTES,
    Label,
    MarkingError,
    Precedence,
    TaggedMessage,
    parse_audience,
    parse_marking,
    parse_tagged,
    render,
)
from policy.labels import MAX_MARKING_LENGTH
from tests.fuzzing import FAST, FUZZ, INVISIBLES, LOOKALIKES, MEGABYTE, SCHEMES, SURROGATES, mixed

LEVEL_WORDS = list(CATALOGUE.spellings)
QUALIFIER_WORDS = [
    *CATALOGUE.default_caveats,
    "SIGINT",
    "REL TO",
    "RELEASABLE TO",
    "rel to",
    "NATO",
    "EU",
    "Germany",
    "France",
    *sorted(CATALOGUE.countries)[:20],
    " // ",
    "//",
    " / ",
    ", ",
]
marking_words = st.sampled_from(LEVEL_WORDS + QUALIFIER_WORDS)
markings = st.one_of(
    mixed(marking_words),
    st.builds(
        lambda level, quals: " // ".join([level, *quals]),
        st.sampled_from(LEVEL_WORDS),
        st.lists(mixed(marking_words, 3), max_size=3),
    ),
)
contexts = st.one_of(st.none(), st.sampled_from(SCHEMES), st.sampled_from(["nato", " DEU ", "XXX"]))
extra_caveat_sets = st.lists(st.sampled_from(["SIGINT", "HUMINT", "", " ", "sigint"]), max_size=2)


def assert_marking_error(exc: MarkingError) -> None:
    assert isinstance(exc, ValueError)
    assert str(exc).strip() and exc.message.strip()


@FUZZ
@given(text=markings, context=contexts, extra=extra_caveat_sets)
@example(text="ΝΑΤΟ SECRET", context=None, extra=[])
@example(text="NATO SECRET\ud800", context=None, extra=[])
@example(text="NATO SECRET // REL TO DEU\u202e, FRA", context="NATO", extra=[])
@example(text="[[[[NATO SECRET]]]]", context=None, extra=[])
@example(text="<script>alert(1)</script>", context=None, extra=[])
@example(text="SECRET\x00", context="NATO", extra=[])
@example(text="e" + "\u0301\u0316" * 200, context=None, extra=[])
def test_marking_parser_answers_a_label_or_a_marking_error(
    text: str, context: str | None, extra: list[str]
) -> None:
    """Any text: a Label that survives render -> parse unchanged, or MarkingError with a
    message; never another exception."""
    try:
        label = parse_marking(text, context, extra_caveats=extra)
    except MarkingError as exc:
        assert_marking_error(exc)
        return
    assert isinstance(label, Label)
    assert parse_marking(render(label), extra_caveats=extra) == label
    assert parse_marking(render(label), label.scheme, extra_caveats=extra) == label


@st.composite
def confusable_markings(draw: st.DrawFn) -> str:
    """A real ASCII level spelling with one Latin letter swapped for a look-alike."""
    spelling = draw(st.sampled_from([s for s in LEVEL_WORDS if s.isascii()]))
    spots = [i for i, ch in enumerate(spelling) if ch.upper() in LOOKALIKES]
    i = draw(st.sampled_from(spots))
    lookalike = draw(st.sampled_from(LOOKALIKES[spelling[i].upper()]))
    return spelling[:i] + lookalike + spelling[i + 1 :]


@FUZZ
@given(text=confusable_markings(), context=contexts)
@example(text="ΝΑΤΟ SECRET", context=None)
def test_look_alike_letters_never_read_as_a_marking(text: str, context: str | None) -> None:
    """`ΝΑΤΟ SECRET` in Greek capitals looks like NATO SECRET but is not: refuse it rather
    than guess (the reader and the bot must agree on what the label says)."""
    with pytest.raises(MarkingError) as info:
        parse_marking(text, context)
    assert_marking_error(info.value)


@FUZZ
@given(
    spelling=st.sampled_from(LEVEL_WORDS),
    mark=st.sampled_from(INVISIBLES + SURROGATES),
    data=st.data(),
)
def test_invisible_characters_inside_a_marking_are_refused(
    spelling: str, mark: str, data: st.DataObject
) -> None:
    """A zero-width, bidi, control or surrogate character hides what the marking says: it is
    refused with its code point named, wherever it sits."""
    i = data.draw(st.integers(0, len(spelling)))
    with pytest.raises(MarkingError) as info:
        parse_marking(spelling[:i] + mark + spelling[i:])
    assert f"U+{ord(mark):04X}" in str(info.value)


@pytest.mark.parametrize(
    "text",
    [
        "A" * MEGABYTE,
        "NATO SECRET // " * (MEGABYTE // 15),
        "[" * MEGABYTE,
        "e" + "\u0301\u0316" * (MEGABYTE // 2),  # combining marks: NFC sorts them, quadratically
        "\u200b" * MEGABYTE,
        "<script>" * (MEGABYTE // 8),
    ],
    ids=["letters", "qualifiers", "brackets", "combining", "zero-width", "html"],
)
def test_a_megabyte_marking_is_refused_quickly_for_its_length(text: str) -> None:
    """The marking parser bounds its input before any work: a huge marking costs nothing."""
    started = time.perf_counter()
    with pytest.raises(MarkingError) as info:
        parse_marking(text)
    assert time.perf_counter() - started < FAST
    assert "too long" in str(info.value) and f"at most {MAX_MARKING_LENGTH}" in str(info.value)


def test_a_megabyte_audience_token_is_refused_quickly() -> None:
    """Room audiences (config) go through the same folding: bounded the same way."""
    started = time.perf_counter()
    with pytest.raises(MarkingError) as info:
        parse_audience(["e" + "\u0301\u0316" * (MEGABYTE // 2)])
    assert time.perf_counter() - started < FAST
    assert "too long" in str(info.value)


# ---------------------------------------------------------------- tagged messages

precedence_words = st.sampled_from(
    ["FLASH", "flash", "IMMEDIATE", "PRIORITY", "ROUTINE", "EXERCISE", "FLSAH", "UPDATE", ""]
)


@st.composite
def tagged_bodies(draw: st.DrawFn) -> str:
    marking = draw(st.one_of(st.sampled_from(LEVEL_WORDS), markings))
    brackets = draw(st.lists(precedence_words | mixed(precedence_words, 3), max_size=3))
    text = draw(mixed(st.sampled_from(["#kiel", "#Logistics", "&#x", "word", "# ", "#"])))
    lead = draw(st.sampled_from(["", " ", "\n", "\u200b", "x"]))
    return lead + f"[{marking}]" + "".join(f" [{b}]" for b in brackets) + " " + text


@FUZZ
@given(body=st.one_of(tagged_bodies(), mixed(marking_words)), context=contexts)
@example(body="[NATO SECRET] hello \ud800", context=None)
@example(body="[NATO SECRET] <script>alert(1)</script> #x", context=None)
@example(body="[" * 500 + "NATO SECRET" + "]" * 500 + " x", context=None)
@example(body="[ΝΑΤΟ SECRET] x", context=None)
@example(body="[SECRET] [FLASH] [EXERCISE] [FLASH] x", context="NATO")
def test_tagged_parser_answers_none_a_message_or_a_marking_error(
    body: str, context: str | None
) -> None:
    """Untagged text is None; a tagged one is a message with text and a label that
    round-trips, or MarkingError with a message; nothing else ever comes out."""
    try:
        message = parse_tagged(body, context)
    except MarkingError as exc:
        assert body.lstrip().startswith("[")
        assert_marking_error(exc)
        return
    if message is None:
        assert not body.lstrip().startswith("[")
        return
    assert isinstance(message, TaggedMessage)
    assert message.text and message.text == message.text.strip()
    assert message.text in body
    assert parse_marking(render(message.label)) == message.label
    assert isinstance(message.precedence, Precedence)
    folded = message.text.casefold()
    for topic in message.topics:
        assert topic == topic.casefold() and f"#{topic}" in folded
    assert len(set(message.topics)) == len(message.topics)


@pytest.mark.parametrize(
    "body",
    [
        "[NATO SECRET] " + "x" * MEGABYTE,
        "[" * MEGABYTE,
        "[NATO SECRET] " + "\ud800" * MEGABYTE,
        "[NATO SECRET] " + "<script>alert(1)</script>" * (MEGABYTE // 25),
        "[" + "e" + "\u0301\u0316" * (MEGABYTE // 2) + "] x",
    ],
    ids=["text", "brackets", "surrogates", "html", "combining"],
)
def test_a_megabyte_tagged_message_is_refused_quickly_for_its_size(body: str) -> None:
    """Tagged messages are bounded in UTF-8 bytes (the encrypted event's limit)."""
    started = time.perf_counter()
    with pytest.raises(MarkingError) as info:
        parse_tagged(body)
    assert time.perf_counter() - started < FAST
    assert "too long" in str(info.value) and f"at most {MAX_TEXT_BYTES}" in str(info.value)


def test_deeply_nested_brackets_under_the_limit_are_refused_as_nested() -> None:
    """`[[[[…]]]]` is one clear error, not a recursion or a marking of brackets."""
    body = "[" * 10_000 + "NATO SECRET" + "]" * 10_000 + " text"
    with pytest.raises(MarkingError, match="nested"):
        parse_tagged(body)


@pytest.mark.parametrize("body", ["[NATO SECRET] hi \ud800", "[NATO SECRET\udfff] hi"])
def test_lone_surrogates_in_a_tagged_message_are_refused_with_a_clear_error(body: str) -> None:
    """JSON may carry a lone surrogate (`"\\ud800"`) into an event body; it cannot be stored
    or re-sent as UTF-8, so the parser refuses it instead of crashing on the size check."""
    with pytest.raises(MarkingError) as info:
        parse_tagged(body)
    assert "U+D" in str(info.value)
