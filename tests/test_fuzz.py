"""Fuzzing the input parsers (markings and tagged messages, chat commands, the config file)
and the HTML of what the bot posts, with hypothesis.

Why: every parser here reads text written by someone else: a chat member, a homeserver, an
operator. Each must answer any input with a result or its own documented error, fast, and
nothing a user typed may reach the HTML of a reply, a relayed copy or a digest unescaped.
The strategies mix the grammar's own words with adversarial text: look-alike Greek and
Cyrillic letters, bidi and zero-width marks, combining characters, NUL bytes, lone
surrogates (which JSON can carry into a Matrix event), HTML and deeply nested brackets.
"""

from __future__ import annotations

import asyncio
import copy
import re
import time
import tomllib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from bot.config import Config, ConfigError, parse_config
from bot.services.digest import DigestItem, build_digest, select_items
from bot.services.render import relay_copy
from bot.services.rooms import ManagedRoom
from commands import build_registry
from commands.context import CommandError, Invocation, Role
from commands.dispatch import dispatch
from commands.document import BANNER_COLOURS, Document, doc, para
from commands.registry import (
    MAX_COMMAND_LENGTH,
    mention_pills,
    parse_command,
    resolve_pills,
    strip_prefix,
    tokenize,
)
from commands.services import (
    InviteOutcome,
    RevokeOutcome,
    RoomSummary,
    RouteSummary,
    StatusInfo,
)
from policy import (
    CATALOGUE,
    MAX_TEXT_BYTES,
    Decision,
    Label,
    MarkingError,
    Precedence,
    TaggedMessage,
    make_room,
    parse_audience,
    parse_marking,
    parse_tagged,
    render,
)
from policy.labels import MAX_MARKING_LENGTH

REGISTRY = build_registry()
# The shapes the parser promises, written here independently of its own patterns.
USER_SHAPE = re.compile(r"@[^:\s]+:[A-Za-z0-9.\-\[\]:]+")
ROOM_KEY_SHAPE = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")
EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.toml"
MEGABYTE = 1_000_000
FAST = 2.0  # seconds: generous for a loaded CI runner; the parsers answer in milliseconds

FUZZ = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ_SLOW = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ---------------------------------------------------------------- adversarial text

# Latin letters and their Greek / Cyrillic look-alikes (not canonically equivalent: NFC keeps
# them apart, unlike the Kelvin sign, which *is* a K after normalisation).
LOOKALIKES: dict[str, str] = {
    "A": "ΑА",
    "B": "ΒВ",
    "C": "С",
    "E": "ΕЕ",
    "H": "ΗН",
    "I": "ΙІ",
    "K": "ΚК",
    "M": "ΜМ",
    "N": "Ν",
    "O": "ΟО",
    "P": "ΡР",
    "S": "Ѕ",
    "T": "ΤТ",
    "X": "ΧХ",
    "Y": "ΥУ",
    "Z": "Ζ",
}
INVISIBLES = ["\u200f", "\u202e", "\u200b", "\ufeff", "\u200d", "\u2066", "\u00ad", "\x00"]
COMBINING = ["\u0301", "\u0316", "\u0308", "\u0327", "\u20dd", "\u0336"]
SURROGATES = ["\ud800", "\udfff", "\udc80", "\ud83d"]
HTML_BITS = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    '<a href="javascript:alert(1)">x</a>',
    "<iframe src=//evil>",
    "<svg/onload=alert(1)>",
    '"><b>',
    "&amp;",
    "&lt;",
    "&#60;script&#62;",
    "<!-- x -->",
    "<![CDATA[x]]>",
    "</p>",
    "<br>",
    "'",
    '"',
    "&",
]
SHAPES = ["[", "]", "[[[[", "]]]]", "//", " / ", "/", ",", "--", "#", "\n", "\t", " ", "\u00a0"]
QUOTES = ['"', "'", "“", "”", "„", "‘", "’", "«", "»"]
CONFUSABLE_MARKINGS = [
    "ΝΑΤΟ SECRET",  # Greek capitals
    "NАТО SECRET",  # Cyrillic А, Т, О
    "NATO SЕCRET",  # Cyrillic Е
    "СOSMIC TOP SECRET",  # Cyrillic С
    "ЕU SECRET",
    "NATO SECRET // REL TO DЕU",
    "NATO SECRET // АTOMAL",
]

adversarial_bits = st.sampled_from(
    [*INVISIBLES, *COMBINING, *SURROGATES, *HTML_BITS, *SHAPES, *QUOTES, *CONFUSABLE_MARKINGS]
)
lone_surrogates = st.characters(categories=["Cs"])
any_text = st.text(st.characters(codec=None) | lone_surrogates, max_size=40)


def mixed(words: st.SearchStrategy[str], max_size: int = 8) -> st.SearchStrategy[str]:
    """Grammar words, adversarial bits and random text, concatenated."""
    return st.lists(st.one_of(words, adversarial_bits, any_text), max_size=max_size).map("".join)


# ---------------------------------------------------------------- HTML allow-list check

ALLOWED_TAGS = {"p", "br", "strong", "font", "code", "pre", "ul", "li", "h4", "a"}


class _AllowList(HTMLParser):
    """Fails on any tag, attribute or markup the renderers never produce; keeps the text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.problems: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in ALLOWED_TAGS:
            self.problems.append(f"tag <{tag}>")
        elif tag == "font":
            if len(attrs) != 1 or attrs[0][0] != "color" or attrs[0][1] not in BANNER_COLOURS:
                self.problems.append(f"font attributes {attrs!r}")
        elif tag == "a":
            href = attrs[0][1] if len(attrs) == 1 and attrs[0][0] == "href" else None
            if href is None or not href.startswith("https://matrix.to/#/"):
                self.problems.append(f"link attributes {attrs!r}")
        elif attrs:
            self.problems.append(f"attributes on <{tag}>: {attrs!r}")
        if tag == "br":
            self.text.append("\n")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.problems.append(f"self-closing <{tag}/>")

    def handle_endtag(self, tag: str) -> None:
        if tag not in ALLOWED_TAGS - {"br"}:
            self.problems.append(f"end tag </{tag}>")

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def handle_comment(self, data: str) -> None:
        self.problems.append(f"comment {data!r}")

    def handle_decl(self, decl: str) -> None:
        self.problems.append(f"declaration {decl!r}")

    def handle_pi(self, data: str) -> None:
        self.problems.append(f"processing instruction {data!r}")

    def unknown_decl(self, data: str) -> None:
        self.problems.append(f"unknown declaration {data!r}")


def checked_html(html_text: str) -> str:
    """Assert that `html_text` holds only the renderers' own markup; return its text."""
    parser = _AllowList()
    parser.feed(html_text)
    parser.close()
    assert not parser.problems, (parser.problems, html_text[:500])
    lowered = html_text.casefold()
    for bad in ("<script", "<img", "<iframe", "<svg", '<a href="j'):
        assert bad not in lowered, (bad, html_text[:500])
    return "".join(parser.text)


def test_the_html_check_catches_unescaped_markup() -> None:
    """The allow-list check itself must be able to fail, or the properties below prove nothing."""
    for bad in (
        "<p><script>alert(1)</script></p>",
        '<p><img src=x onerror="alert(1)"></p>',
        '<a href="javascript:alert(1)">x</a>',
        '<font color="red" onmouseover="x">x</font>',
        "<p><!-- hidden --></p>",
        '<p class="x">x</p>',
    ):
        with pytest.raises(AssertionError):
            checked_html(bad)
    assert checked_html(doc(para("<script>x</script>")).html) == "<script>x</script>"


# ================================================================ 1. markings

SCHEMES = sorted(CATALOGUE.schemes)
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


# ================================================================ 2. chat commands

COMMAND_WORDS = sorted({w for name in REGISTRY.commands for w in name.split()})
OPTION_WORDS = sorted(
    {f"--{o.name}" for c in REGISTRY.commands.values() for o in c.options} | {"--x", "--", "---"}
)
VALUE_WORDS = [
    "@a:b",
    "@lo-deu:example.org",
    "@<script>:x",
    '@a"b:c',
    "bob",
    "nato-s",
    "deu",
    "NATO",
    "nato-s,deu",
    "nato-s,,",
    "2027-01-01",
    "2027-02-30",
    "tomorrow",
    "0",
    "5",
    "10000",
    "10001",
    "²",
    "٣",
    "-1",
    "9" * 50,
    '"NATO SECRET"',
    "“EU SECRET”",
    "'x",
    "all",
    '"0 6 * * *"',
    "12h",
    "[NATO SECRET] [FLASH] convoy #kiel",
]
command_words = st.sampled_from(COMMAND_WORDS + OPTION_WORDS + VALUE_WORDS)
separators = st.sampled_from([" ", " ", "  ", "\t", "\n", "\u00a0", "\u2003", "="])


KIND_VALUES: dict[str, list[str]] = {
    "user": ["@a:b", "@lo-deu:example.org", "@<script>:x", '@a"b:c', "@a:b\n", "@a:b ", "bob"],
    "room_key": ["nato-s", "deu", "nato-s\n", "NATO", "a" * 33, "-x"],
    "room_keys": ["nato-s", "nato-s,deu", "nato-s, deu", "nato-s,,", "deu\n"],
    "int": ["1", "20", "10000", "10001", "0", "-1", "²", "٣", "١٠", "9" * 50, " 5"],
    "date": ["2027-01-01", "2027-02-30", "20270101", "2027-W01-1", "tomorrow", "²"],
    "text": ["NATO SECRET", "all", "0 6 * * *", "12h", "db-3", "<script>alert(1)</script>"],
    "rest": ["[NATO SECRET] [FLASH] convoy #kiel", "3Lbn e1Pz", "<img src=x onerror=alert(1)>"],
    "words": ["convoy kiel", "3Lbn --exercise e1Pz", "<img src=x onerror=alert(1)>"],
    "flag": [""],
}


def quoted(value: str) -> st.SearchStrategy[str]:
    """The value bare, or quoted the ways a chat client might (curly quotes included)."""
    pairs = [('"', '"'), ("'", "'"), ("“", "”"), ("„", "“"), ("«", "»"), ('"', "")]
    return st.sampled_from([value, *(f"{a}{value}{b}" for a, b in pairs)])


@st.composite
def argument_values(draw: st.DrawFn, kind: str) -> str:
    value = draw(st.sampled_from(KIND_VALUES[kind]) | mixed(st.sampled_from(KIND_VALUES[kind]), 3))
    return draw(quoted(value))


@st.composite
def command_lines(draw: st.DrawFn) -> str:
    """A declared command with arguments and options of the right kinds, some of them
    subtly wrong, shuffled a little, or plain noise after a command name."""
    command = REGISTRY.commands[draw(st.sampled_from(sorted(REGISTRY.commands)))]
    words = [command.name]
    for arg in command.args:
        if draw(st.integers(0, 5)):
            words.append(draw(argument_values(arg.kind)))
    for option in command.options:
        for _ in range(draw(st.integers(0, 2))):
            words.append(f"--{option.name}")
            if option.kind != "flag":
                words.append(draw(argument_values(option.kind)))
    if not draw(st.integers(0, 3)):
        words.extend(draw(st.lists(command_words | mixed(command_words, 3), max_size=2)))
    if draw(st.booleans()):
        words = [words[0], *draw(st.permutations(words[1:]))]
    if not draw(st.integers(0, 4)):
        words[0] = draw(mixed(command_words, 3))
    out = words[0]
    for word in words[1:]:
        out += draw(separators) + word
    return out


lines = st.one_of(command_lines(), mixed(command_words))


@FUZZ
@given(line=lines)
@example(line='grant "NATO SECRET')
@example(line="“x„ y")
@example(line="audit ²")
@example(line='"a"b')
def test_tokenizer_splits_or_raises_command_error(line: str) -> None:
    """Tokens come in order, each where the line says it starts; only CommandError escapes."""
    try:
        tokens = tokenize(line)
    except CommandError as exc:
        assert exc.message.strip()
        return
    last = -1
    for token in tokens:
        assert token.start > last
        last = token.start
        if line[token.start] in "\"'“”„‘’«":
            assert token.text in line[token.start + 1 :]
        else:
            assert line[token.start : token.start + len(token.text)] == token.text
            assert token.text and not any(c.isspace() for c in token.text)


@FUZZ
@given(line=lines)
@example(line="audit ²")
@example(line="audit ٣")
@example(line="clearance grant @a:b X --expires 2027-02-30")
@example(line="relay nato-s,deu [NATO SECRET] <script>alert(1)</script>")
@example(line="x" * (MAX_COMMAND_LENGTH + 1))
@example(line="search --exercise")
@example(line="search kiel --topic <b> convoy --since 7d")
def test_command_parser_answers_a_command_or_a_command_error(line: str) -> None:
    """Parsed values have the declared kinds; every refusal is a CommandError with a message
    (and the usage, when given, is the command's own)."""
    try:
        parsed = parse_command(REGISTRY, line, "!")
    except CommandError as exc:
        assert exc.message.strip()
        assert exc.usage is None or exc.usage.startswith("!")
        return
    command = parsed.command
    assert REGISTRY.commands[command.name] is command
    assert set(parsed.values) == {a.name for a in command.args} | {o.name for o in command.options}
    for arg in [*command.args, *command.options]:
        value = parsed.values[arg.name]
        if value is None or value is False or value == []:
            continue
        values = value if isinstance(value, list) and arg.kind != "room_keys" else [value]
        for one in values:
            if arg.kind == "user":
                assert USER_SHAPE.fullmatch(one)
            elif arg.kind == "room_key":
                assert ROOM_KEY_SHAPE.fullmatch(one)
            elif arg.kind == "room_keys":
                assert one and all(ROOM_KEY_SHAPE.fullmatch(k) for k in one)
            elif arg.kind == "int":
                assert isinstance(one, int) and 0 < one <= 10_000
            elif arg.kind == "date":
                assert isinstance(one, date)
            elif arg.kind == "flag":
                assert one is True
            else:
                assert isinstance(one, str)


@st.composite
def formatted_bodies(draw: st.DrawFn) -> str | None:
    if draw(st.booleans()):
        return None
    parts = []
    for _ in range(draw(st.integers(0, 4))):
        user = draw(st.sampled_from(VALUE_WORDS[:5]) | any_text)
        name = draw(st.sampled_from(["Lo Deu", "grant", "", "<b>x</b>"]) | any_text)
        href = draw(
            st.sampled_from(
                [
                    f"https://matrix.to/#/{user}",
                    "https://matrix.to/#/%40a%3Ab",
                    "https://matrix.to/#/@a:b%0A",
                    "https://example.org",
                    "javascript:alert(1)",
                ]
            )
        )
        parts.append(f'<a href="{href}">{name}</a>')
        parts.append(draw(mixed(st.sampled_from(HTML_BITS), 3)))
    return "".join(parts)


@FUZZ
@given(body=lines, formatted=formatted_bodies())
@example(body="clearance grant Lo Deu x", formatted='<a href="https://matrix.to/#/@a:b">Lo Deu')
@example(body="x", formatted="<a href=")
@example(body="x", formatted="<a href='https://matrix.to/#/%F0%9F:x\ud800'>x</a>")
def test_pills_never_raise_and_only_name_real_user_ids(body: str, formatted: str | None) -> None:
    """Malformed HTML gives no pills, never an exception; pills are whole user ids only (no
    trailing %0A newline), and without pills the body is left alone."""
    pills = mention_pills(formatted)
    for _text, user_id in pills:
        assert USER_SHAPE.fullmatch(user_id)
    resolved = resolve_pills(body, formatted)
    if not pills:
        assert resolved == body


@dataclass
class FakeServices:
    """Every service answers, echoing user input into its documents (so escaping is
    exercised); a handler that still fails has a bug of its own."""

    audits: list[tuple[str, str, str | None, dict[str, Any]]] = field(default_factory=list)

    async def clearance(self, user_id: str) -> Any:
        return None if user_id.startswith("@none") else _record(user_id)

    async def clearances(self) -> Sequence[Any]:
        return [_record("@a:b"), _record('@<img src=x>:"y"')]

    async def grant(self, actor: str, user_id: str, level: str, **kw: Any) -> Any:
        try:
            parse_marking(level)
        except MarkingError as exc:
            raise CommandError(f"LEVEL: {exc}") from None
        return _record(user_id)

    async def revoke(self, actor: str, user_id: str, scope: str | None) -> RevokeOutcome:
        return RevokeOutcome(_record(user_id), (scope or "all",))

    async def confirm_identity(self, actor: str, user_id: str, key: str) -> Any:
        return _record(user_id, key)

    async def digest_now(self, actor: str, room_key: str, roles: frozenset[Any]) -> str:
        return f"{room_key} <script>"

    async def digest_schedule(
        self,
        actor: str,
        room_key: str,
        cron: str,
        window: str | None,
        sources: Sequence[str] | None,
    ) -> str:
        return f"{room_key} {cron} {window} {sources}"

    async def digest_list(self) -> list[str]:
        return ["cfg-1: <b>nato-s</b>"]

    async def digest_cancel(self, actor: str, key: str) -> None:
        if not key.startswith("db-"):
            raise CommandError(f"no schedule {key!r}")

    async def relay_message(
        self, invocation: Invocation, targets: Sequence[str], message: str
    ) -> Document:
        return doc(para("Relayed to ", ", ".join(targets), ": ", message))

    async def invite(self, actor: str, user_id: str, room_key: str) -> InviteOutcome:
        allowed = room_key == "nato-s"
        return InviteOutcome(Decision(allowed, (f"{user_id} <i>checked</i>",)), allowed)

    async def rooms(self) -> Sequence[RoomSummary]:
        return [RoomSummary("nato-s", "NATO <script>", "NATO SECRET", 3, 2, "!r:x")]

    async def routes(self) -> Sequence[RouteSummary]:
        return [RouteSummary("deu", ("nato-s", "<eu>"))]

    async def audit_recent(self, limit: int) -> Sequence[Any]:
        return [_Audit(1, datetime(2026, 1, 1, tzinfo=UTC), "@a:b", "x<y", None, {"e": "<&>"})]

    async def audit_verify(self) -> Any:
        return _Verdict(True, 3, "3 entries <ok>")

    async def status(self) -> StatusInfo:
        return StatusInfo(3700.0, None, 3, 0, ("cfg-1 <x>",), "DEV<ICE>")

    async def search(
        self,
        actor: str,
        room_key: str,
        words: Sequence[str],
        topic: str | None,
        since: str | None,
        exercise: bool,
    ) -> Document:
        return doc(para("Searched ", room_key, " for ", " ".join(words), f" {topic} {since}"))

    async def room_create(
        self, actor: str, key: str, name: str, label_text: str, audience: Sequence[str] | None
    ) -> Any:
        try:
            label = parse_marking(label_text)
        except MarkingError as exc:
            raise CommandError(f"LABEL: {exc}") from None
        return _Room(key, name, label.banner, _Policy(label.rank))

    async def room_close(self, actor: str, key: str) -> list[str]:
        return [f"@{key}<x>:y"]

    async def route_change(self, actor: str, source: str, target: str, add: bool) -> None:
        if source == target:
            raise CommandError("a room cannot route to itself")

    async def room_policies(self) -> list[tuple[str, str, Any]]:
        nato = make_room(parse_marking("NATO SECRET"), None)
        return [("nato-s", "NATO <script>", nato)]

    async def known_caveats(self) -> Sequence[str]:
        return ["<ATOMAL>"]

    async def audit(
        self, actor: str, action: str, subject: str | None, detail: dict[str, Any]
    ) -> None:
        self.audits.append((actor, action, subject, detail))


@dataclass(frozen=True)
class _Policy:
    rank: int


@dataclass(frozen=True)
class _Room:
    key: str
    name: str
    banner: str
    policy: _Policy


def test_the_fake_services_answer_every_service_a_command_may_call() -> None:
    """A method missing here made a generated command fail as an internal error, at random
    (it did, for `!label check …`): every method of the Services port is faked."""
    import inspect

    from commands.services import Services

    wanted = {n for n, _ in inspect.getmembers(Services) if not n.startswith("_")}
    faked = {n for n, _ in inspect.getmembers(FakeServices) if not n.startswith("_")}
    assert sorted(wanted - faked) == []


@dataclass(frozen=True)
class _Grant:
    scheme: str = "NATO"
    level: str = "NATO SECRET"
    rank: int = 3


@dataclass(frozen=True)
class _Record:
    user_id: str
    nationality: str = "DEU"
    grants: tuple[_Grant, ...] = (_Grant(),)
    caveats: frozenset[str] = frozenset({"<ATOMAL>"})
    expires: date | None = date(2027, 1, 1)
    revoked_at: datetime | None = None
    identity_key: str | None = "AAAABBBB<>"
    identity_pending: str | None = None


def _record(user_id: str, pending: str | None = None) -> _Record:
    return _Record(user_id, identity_pending=pending)


@dataclass(frozen=True)
class _Audit:
    id: int
    at: datetime
    actor: str
    action: str
    subject: str | None
    detail: dict[str, Any]


@dataclass(frozen=True)
class _Verdict:
    intact: bool
    entries: int
    message: str


prefix_sets = st.sampled_from([("!", "/"), ("!",), ("/",), ("!!", "!"), ("$",)])
role_sets = st.frozensets(st.sampled_from(list(Role)))


@st.composite
def message_bodies(draw: st.DrawFn) -> str:
    lead = draw(st.sampled_from(["", " ", "\n", "\u200b"]))
    prefix = draw(st.sampled_from(["!", "/", "!!", "$", "", "! "]))
    return lead + prefix + draw(lines)


async def _dispatch(
    body: str,
    formatted: str | None,
    roles: frozenset[Role],
    prefixes: Sequence[str],
    services: FakeServices,
) -> Any:
    invocation = Invocation(
        sender="@u:x", room_id="!r:x", event_id="$e", body=body, formatted_body=formatted
    )
    return await dispatch(REGISTRY, invocation, roles | {Role.ANYONE}, services, prefixes)


@FUZZ_SLOW
@given(
    body=message_bodies() | any_text,
    formatted=formatted_bodies(),
    roles=role_sets,
    prefixes=prefix_sets,
)
@example(body="!audit ²", formatted=None, roles=frozenset({Role.ADMIN}), prefixes=("!",))
@example(body="!help <script>", formatted=None, roles=frozenset(), prefixes=("!",))
@example(
    body="!relay nato-s \ud800", formatted=None, roles=frozenset({Role.OFFICER}), prefixes=("!",)
)
@example(body="!!rooms", formatted=None, roles=frozenset(), prefixes=("!!", "!"))
@example(
    body="!label check [NATO SECRET] [FLASH] convoy #kiel",
    formatted=None,
    roles=frozenset(),
    prefixes=("!", "/"),
)
@example(body="!search <b>x</b> --topic kiel", formatted=None, roles=frozenset(), prefixes=("!",))
@example(
    body='!room create tf1 "Task <force>" "NATO SECRET"',
    formatted=None,
    roles=frozenset({Role.ADMIN}),
    prefixes=("!",),
)
@example(body="!room close tf1", formatted=None, roles=frozenset({Role.ADMIN}), prefixes=("!",))
@example(
    body="!route add deu nato-s", formatted=None, roles=frozenset({Role.ADMIN}), prefixes=("!",)
)
def test_dispatcher_answers_every_message_with_a_safe_reply(
    body: str,
    formatted: str | None,
    roles: frozenset[Role],
    prefixes: Sequence[str],
) -> None:
    """Not a command: None. A command: a reply that renders, holds only our own markup, and
    is never the internal-error line (the fake services never fail, so a crash is a handler
    bug); every refusal is audited."""
    services = FakeServices()
    outcome = asyncio.run(_dispatch(body, formatted, roles, prefixes, services))
    if strip_prefix(body, prefixes) is None:
        assert outcome is None
        return
    assert outcome is not None
    plain = outcome.reply.document.plain
    assert plain.strip()
    checked_html(outcome.reply.document.html)
    assert not any(a[3].get("error") == "internal error" for a in services.audits), plain
    if not outcome.ok:
        assert plain.startswith("⚠ ") and plain.splitlines()[0][2:].strip()
        assert services.audits and services.audits[-1][1] in ("command.error", "command.denied")


@pytest.mark.parametrize(
    ("body", "formatted"),
    [
        ("!" + "x" * MEGABYTE, None),
        ("!rooms " + "\u202e" * MEGABYTE, None),
        ('!clearance grant @a:b "' + "[" * MEGABYTE, None),
        (
            "!clearance grant Lo Deu " + "Lo Deu " * (MEGABYTE // 7),
            '<a href="https://matrix.to/#/@a:b">Lo Deu</a>' * (MEGABYTE // 45),
        ),
    ],
    ids=["letters", "bidi", "open-quote", "pills"],
)
def test_a_megabyte_command_is_refused_quickly_for_its_length(
    body: str, formatted: str | None
) -> None:
    """Commands are bounded at 4000 characters, after pills are resolved: the refusal says
    so, whatever the body or its formatted_body hold."""
    started = time.perf_counter()
    outcome = asyncio.run(
        _dispatch(body, formatted, frozenset({Role.ADMIN}), ("!",), FakeServices())
    )
    assert time.perf_counter() - started < FAST
    assert outcome is not None and not outcome.ok
    assert "command too long" in outcome.reply.document.plain
    assert f"at most {MAX_COMMAND_LENGTH}" in outcome.reply.document.plain


# ================================================================ 3. the config file

SOURCE = "<config>"
_KEY = r'(?:[A-Za-z0-9_-]+|"(?:[^"\\\x00-\x1f]|\\.)*")'
_PATH = rf"{_KEY}(?:\.{_KEY}|\[\d+\])*"
ERROR_LINE = re.compile(rf"^(?:{_PATH}|\(top level\)|{re.escape(SOURCE)}): \S", re.DOTALL)


def assert_config_errors(exc: ConfigError) -> None:
    assert exc.errors, "a ConfigError must list at least one error"
    for error in exc.errors:
        assert isinstance(error, str) and error.strip()
        assert ERROR_LINE.match(error), error


def check_config(text: str) -> Config | None:
    """Parse; on error check the error list; return the config when it was valid."""
    try:
        config = parse_config(text, SOURCE)
    except ConfigError as exc:
        assert_config_errors(exc)
        return None
    keys = [r.key for r in config.rooms]
    assert len(keys) == len(set(keys))
    for source, targets in config.route_targets().items():
        assert source in keys and set(targets) <= set(keys)
    for digest in config.digests:
        assert digest.room in keys and set(digest.sources or ()) <= set(keys)
    return config


def toml_string(text: str) -> str:
    out = []
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)  # lone surrogates pass through raw: tomllib accepts them
    return '"' + "".join(out) + '"'


def toml_value(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if value != value:
            return "nan"
        if value in (float("inf"), float("-inf")):
            return "inf" if value > 0 else "-inf"
        return repr(value)
    if isinstance(value, str):
        return toml_string(value)
    if isinstance(value, list):
        return "[" + ", ".join(toml_value(v) for v in value) + "]"
    if isinstance(value, dict):
        pairs = (f"{toml_string(k)} = {toml_value(v)}" for k, v in value.items())
        return "{" + ", ".join(pairs) + "}"
    raise TypeError(value)


def toml_document(data: dict[str, Any]) -> str:
    """One `"key" = value` line per top-level key, tables inline: valid TOML for any data."""
    return "".join(f"{toml_string(k)} = {toml_value(v)}\n" for k, v in data.items())


BASE_CONFIG = tomllib.loads(EXAMPLE.read_text(encoding="utf-8"))
MINIMAL_CONFIG = {"homeserver": copy.deepcopy(BASE_CONFIG["homeserver"])}
CONFIG_KEYS = sorted(
    {
        "homeserver", "storage", "bot", "metrics", "rooms", "routes", "digests", "ingest",
        "url", "user_id", "password_env", "access_token_env", "pickle_key_env", "device_name",
        "device_trust", "database_url", "crypto_store", "data_key_env", "command_prefixes",
        "admins", "officers", "caveats", "timezone", "admin_room", "sweep_interval",
        "digest_catchup_grace", "undecryptable_grace", "dm_join_timeout", "bind", "key", "name", "label",
        "room_id", "audience", "from", "to", "room", "cron", "window", "sources", "feeds",
        "token_env", "release", "password", "access_token", "token", "admns", "",
    }
)  # fmt: skip
INTERESTING_VALUES = [
    "NATO SECRET",
    "DEU GEHEIM // REL TO NATO",
    "ΝΑΤΟ SECRET",
    "SECRET",
    "5m",
    "0s",
    "99999999999999999999d",
    "999999999999d",
    "UTC",
    "Europe",
    "Europe/",
    "Europe/Berlin/..",
    "__init__.py",
    "a" * 300,
    "0 6 * * *",
    "0 6 * * ²",
    "* * * * 8",
    "*/0 * * * *",
    "@a:b",
    "!r:x",
    "sqlite:///x.db",
    "postgresql://u:p@h/db",
    "postgresql+psycopg://h:99999/db",
    "mysql://h/db",
    "127.0.0.1:9464",
    "h:²",
    ":0",
    "deu",
    "nato-s",
    "eu-s",
    "DEU",
    "NATO",
    "cross-signed",
    "tofu",
    "SIGINT",
    "!",
    "",
]
scalars = st.one_of(
    st.booleans(),
    st.integers(-(2**63), 2**63 - 1),
    st.floats(),
    st.sampled_from(INTERESTING_VALUES),
    mixed(st.sampled_from(INTERESTING_VALUES), 3),
)
toml_values = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(st.sampled_from(CONFIG_KEYS) | any_text, inner, max_size=3)
    ),
    max_leaves=6,
)


def _containers(value: Any, out: list[Any]) -> list[Any]:
    if isinstance(value, dict | list):
        out.append(value)
        for child in value.values() if isinstance(value, dict) else value:
            _containers(child, out)
    return out


DURATIONS = ["5m", "0s", "-5m", "1.5h", "99999999999999999999d", "999999999999d", "٣m", 5]
ROOM_KEYS = ["deu", "nato-s", "eu-s", "zzz", "Deu", "deu\n", "", "a" * 33, ["deu"], 1]
FIELD_VALUES: dict[tuple[str, ...], dict[str, list[Any]]] = {
    ("homeserver",): {
        "url": ["https://hs", "ftp://x", "http://", "http://h:99999", ""],
        "user_id": ["@a:b", "liaison", "@a:b\n", "@:b", "@a:b:c"],
        "password_env": ["X", "1X", "", "X Y", None],
        "access_token_env": ["T", "T\n"],
        "device_trust": ["tofu", "cross-signed", "TOFU", ""],
    },
    ("storage",): {
        "database_url": [
            "sqlite:///x.db", "postgresql://u:p@h/db", "postgresql+psycopg://h:99999/db",
            "mysql://h/db", "", "://", "sqlite:////" + "x" * 300,
        ],
        "data_key_env": ["K", "K-1"],
    },
    ("bot",): {
        "timezone": ["UTC", "Europe", "Europe/", "Europe/Berlin/..", "__init__.py", "a" * 300,
                     "Mars/Base", "", "/etc/passwd", "../UTC", "zoneinfo", "Europe/__pycache__"],
        "sweep_interval": DURATIONS,
        "digest_catchup_grace": DURATIONS,
        "undecryptable_grace": DURATIONS,
        "dm_join_timeout": DURATIONS,
        "command_prefixes": [["!"], ["!!!!"], [], ["a"], [" "], ["!", 1], "!"],
        "caveats": [["SIGINT"], ["si gint"], ["x"], [""], ["e" + "\u0301\u0316" * 600], "SIGINT"],
        "admins": [["@a:b"], ["a"], "@a:b"],
        "admin_room": ["!r:x", "r", "!r"],
    },
    ("metrics",): {"bind": ["127.0.0.1:9464", "h:²", ":0", "h:0", "h:65536", "h", "[::1]:80"]},
    ("rooms", "*"): {
        "key": ROOM_KEYS,
        "name": ["", "x" * 201, "<script>alert(1)</script>", "A"],
        "label": ["NATO SECRET", "ΝΑΤΟ SECRET", "SECRET", "GEHEIM", "NATO SECRET // FOO",
                  "DEU GEHEIM // REL TO NATO", "NATO SECRET\u202e", "S" * 2000, ""],
        "audience": [["DEU"], ["XXX"], [], ["NATO"], ["EU", "USA"], "DEU", ["x" * 300]],
        "room_id": ["!a:b", "a", "!a"],
    },
    ("routes", "*"): {"from": ROOM_KEYS, "to": [["deu"], ["nato-s", "zzz"], [], "deu", [[1]]]},
    ("digests", "*"): {
        "room": ROOM_KEYS,
        "cron": ["0 6 * * *", "0 6 * * ²", "* * * * 8", "*/0 * * * *", "0 6 * * 5-7",
                 "99999999999999999999 * * * *", "0 6 * * sun-mon", "", "a b c d e"],
        "window": DURATIONS,
        "sources": [["deu"], ["zzz"], [], "deu"],
    },
    ("ingest", "feeds", "*"): {
        "key": ["f", "f", [1], {"a": 1}, 1.5, ""],
        "room": ROOM_KEYS,
        "token_env": ["T", "", "1"],
        "release": [True, "yes"],
    },
}  # fmt: skip


def _table(data: dict[str, Any], path: tuple[str, ...], draw: st.DrawFn) -> dict[str, Any] | None:
    """The table at `path` ("*": one table of an array of tables), created when missing."""
    node: Any = data
    for part in path:
        if part == "*":
            if not isinstance(node, list):
                return None
            if not node or not draw(st.integers(0, 3)):
                node.append({})
            node = node[draw(st.integers(0, len(node) - 1))]
        elif isinstance(node, dict):
            node = node.setdefault(
                part, [] if part in ("rooms", "routes", "digests", "feeds") else {}
            )
        else:
            return None
    return node if isinstance(node, dict) else None


@st.composite
def config_documents(draw: st.DrawFn) -> dict[str, Any]:
    """The example config (or the minimal one) with a few edits: a known key set to a value
    chosen to hurt, or a random edit anywhere (new keys, other types, deletions, copies)."""
    data = copy.deepcopy(draw(st.sampled_from([BASE_CONFIG, MINIMAL_CONFIG])))
    for _ in range(draw(st.integers(0, 6))):
        if draw(st.booleans()):
            path = draw(st.sampled_from(sorted(FIELD_VALUES)))
            table = _table(data, path, draw)
            if table is not None:
                key = draw(st.sampled_from(sorted(FIELD_VALUES[path])))
                choices = [v for v in FIELD_VALUES[path][key] if v is not None]
                table[key] = copy.deepcopy(draw(st.sampled_from(choices) | toml_values))
            continue
        target = draw(st.sampled_from(_containers(data, [])))
        action = draw(st.sampled_from(["set", "set", "delete", "copy"]))
        if isinstance(target, dict):
            keys = sorted(target)
            key = draw(
                st.sampled_from(keys or CONFIG_KEYS) | st.sampled_from(CONFIG_KEYS) | any_text
            )
            if action == "delete" and keys:
                target.pop(draw(st.sampled_from(keys)))
            elif action == "copy" and keys:
                target[key] = copy.deepcopy(target[draw(st.sampled_from(keys))])
            else:
                target[key] = draw(toml_values)
        elif target:
            i = draw(st.integers(0, len(target) - 1))
            if action == "delete":
                target.pop(i)
            elif action == "copy":
                target.append(copy.deepcopy(target[i]))
            else:
                target[i] = draw(toml_values)
        else:
            target.append(draw(toml_values))
    return data


@FUZZ
@given(
    text=st.text(st.characters(codec=None) | lone_surrogates, max_size=200)
    | mixed(st.sampled_from(["[", "]", "[[rooms]]", "=", '"', "\n", "key", "label", "homeserver"]))
)
@example(text="\ud800")
@example(text="[a]\n[a]\n")
@example(text="[[[[[[[[[[[[[[[[[[[[")
def test_config_parser_answers_a_config_or_listed_errors_for_any_text(text: str) -> None:
    """Random text: a Config, or ConfigError whose every error starts with its key path or
    the source name; never another exception."""
    check_config(text)


@FUZZ_SLOW
@given(data=config_documents())
@example(data={**MINIMAL_CONFIG, "bot": {"timezone": "Europe"}})
@example(data={**MINIMAL_CONFIG, "bot": {"timezone": "a" * 300}})
@example(data={**MINIMAL_CONFIG, "bot": {"sweep_interval": "99999999999999999999d"}})
@example(data={**MINIMAL_CONFIG, "ingest": {"feeds": [{"key": [1]}, {"key": [1]}]}})
@example(data={**MINIMAL_CONFIG, "metrics": {"bind": "h:²"}})
@example(data={"homeserver": {**MINIMAL_CONFIG["homeserver"], "a\nb: fake": 1, "": 2}})
@example(
    data={
        **MINIMAL_CONFIG,
        "rooms": [
            {
                "key": "a",
                "name": "A",
                "label": "NATO SECRET",
                "audience": ["e" + "\u0301\u0316" * 3000],
            }
        ],
    }
)
@example(
    data={
        **MINIMAL_CONFIG,
        "bot": {"caveats": ["e" + "\u0301\u0316" * 3000]},
        "rooms": [{"key": "a", "name": "A", "label": "NATO SECRET"}],
    }
)
def test_config_parser_answers_a_config_or_listed_errors_for_any_document(
    data: dict[str, Any],
) -> None:
    """Structured TOML: valid sections with random keys and values mixed in; valid configs
    keep their promises (unique room keys, references that resolve)."""
    check_config(toml_document(data))


def test_config_example_round_trips_through_the_toml_writer() -> None:
    """The structured strategy's writer is faithful: the example survives it."""
    assert tomllib.loads(toml_document(BASE_CONFIG)) == BASE_CONFIG
    assert check_config(toml_document(BASE_CONFIG)) is not None


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("\x01" * MEGABYTE, f"{SOURCE}: not valid TOML"),
        ("[" * MEGABYTE, f"{SOURCE}: not valid TOML"),
        (
            toml_document(
                {**MINIMAL_CONFIG, "rooms": [{"key": "a", "name": "A", "label": "S" * MEGABYTE}]}
            ),
            "rooms[0].label: marking too long",
        ),
        (
            toml_document({**MINIMAL_CONFIG, "bot": {"timezone": "Europe/" + "x" * MEGABYTE}}),
            "bot.timezone: unknown timezone",
        ),
        (
            toml_document({**MINIMAL_CONFIG, "x" * MEGABYTE: 1}),
            "unknown key",
        ),
    ],
    ids=["control", "brackets", "label", "timezone", "key"],
)
def test_a_megabyte_config_is_answered_quickly(text: str, expected: str) -> None:
    """A huge file, key or value is one clear error at its key path, in about no time."""
    started = time.perf_counter()
    with pytest.raises(ConfigError) as info:
        parse_config(text, SOURCE)
    assert time.perf_counter() - started < FAST * 2
    assert_config_errors(info.value)
    assert any(expected in e for e in info.value.errors), info.value.errors[:3]


def test_a_megabyte_comment_is_still_a_valid_config() -> None:
    """Size alone is not an error: only what the values say."""
    text = toml_document(MINIMAL_CONFIG) + "# " + "<script>" * (MEGABYTE // 8) + "\n"
    assert check_config(text) is not None


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        ({"bot": {"timezone": "Europe"}}, "bot.timezone: unknown timezone 'Europe'"),
        ({"bot": {"sweep_interval": "99999999999999d"}}, "bot.sweep_interval: bad duration"),
        ({"ingest": {"feeds": [{"key": [1]}, {"key": [1]}]}}, "ingest.feeds[0].key:"),
        ({"metrics": {"bind": "h:²"}}, "metrics.bind: bad bind address 'h:²'"),
        ({"homeserver": {**MINIMAL_CONFIG["homeserver"], "a\nb": 1}}, 'homeserver."a\\nb": '),
    ],
    ids=[
        "timezone-folder",
        "duration-overflow",
        "unhashable-feed-key",
        "digit-port",
        "newline-key",
    ],
)
def test_config_bugs_found_by_fuzzing_are_reported_as_errors(
    data: dict[str, Any], expected: str
) -> None:
    """Each of these crashed parse_config (IsADirectoryError, OverflowError, TypeError) or
    gave a muddled message or key path before the fix."""
    with pytest.raises(ConfigError) as info:
        parse_config(toml_document({**MINIMAL_CONFIG, **data}), SOURCE)
    assert_config_errors(info.value)
    assert any(e.startswith(expected) for e in info.value.errors), info.value.errors


# ================================================================ 4. HTML of what is posted

user_texts = st.text(
    st.characters(codec=None) | lone_surrogates | st.sampled_from("<>&\"'"), max_size=60
) | mixed(st.sampled_from(["<", ">", "&", '"', "'", "\n"]), 6)
LABELS = [
    parse_marking(m)
    for m in (
        "NATO SECRET",
        "NATO SECRET // ATOMAL // REL TO EU",
        "DEU GEHEIM // REL TO NATO",
        "NATO CONFIDENTIAL",
        "EU RESTRICTED",
        "COSMIC TOP SECRET // BOHEMIA",
    )
]


@FUZZ
@given(
    text=user_texts,
    label=st.sampled_from(LABELS),
    precedence=st.sampled_from(list(Precedence)),
    exercise=st.booleans(),
    scheme=st.sampled_from(SCHEMES),
    source_name=user_texts,
    sender=user_texts,
)
@example(
    text="<script>alert(1)</script><img src=x onerror=alert(1)>",
    label=LABELS[0],
    precedence=Precedence.FLASH,
    exercise=True,
    scheme="NATO",
    source_name='<a href="javascript:x">',
    sender='@"><iframe>:x',
)
def test_relayed_copy_html_escapes_everything_the_user_wrote(
    text: str,
    label: Label,
    precedence: Precedence,
    exercise: bool,
    scheme: str,
    source_name: str,
    sender: str,
) -> None:
    """formatted_body carries only the renderer's tags, and the user's text comes back out
    of it intact (escaped, not dropped)."""
    content = relay_copy(
        label=label,
        precedence=precedence,
        exercise=exercise,
        text=text,
        target_scheme=scheme,
        source_key="deu",
        source_name=source_name,
        sender=sender,
        sent_at=datetime(2026, 11, 25, 14, 5, tzinfo=UTC),
        source_event_id="$e",
    )
    shown = checked_html(content["formatted_body"])
    assert text in shown and source_name in shown and sender in shown
    assert text in content["body"]


NATO_ROOM = ManagedRoom(
    "nato-s", "NATO SECRET liaison", make_room(parse_marking("NATO SECRET")), "!n:x"
)
DEU_ROOM = ManagedRoom("deu", "DEU cell", make_room(parse_marking("DEU GEHEIM")), "!d:x")
T0 = datetime(2026, 11, 23, 6, 0, tzinfo=UTC)


@st.composite
def digest_items(draw: st.DrawFn) -> DigestItem:
    source = draw(st.sampled_from([NATO_ROOM, DEU_ROOM, None]))
    return DigestItem(
        event_id=draw(st.sampled_from(["$a", "$b", "$c"]) | user_texts),
        label=draw(st.sampled_from(LABELS)),
        source_key=draw(st.sampled_from(["nato-s", "deu"]) | user_texts),
        source=source,
        precedence=draw(st.sampled_from(list(Precedence))),
        exercise=draw(st.booleans()),
        topics=tuple(draw(st.lists(user_texts, max_size=3))),
        text=draw(user_texts | st.sampled_from(["<b>" * 300, "&" * 600])),
        created_at=T0 + timedelta(minutes=draw(st.integers(0, 600))),
    )


@FUZZ_SLOW
@given(
    items=st.lists(digest_items(), max_size=8),
    room_name=user_texts,
    room_key=st.sampled_from(["nato-s"]) | user_texts,
)
@example(
    items=[
        DigestItem(
            "$x", LABELS[0], "nato-s", NATO_ROOM, Precedence.FLASH, False, ("<t>",),
            "bad \ud800 <script>", T0,
        )
    ],
    room_name="<script>",
    room_key="k",
)  # fmt: skip
def test_digest_html_escapes_everything_the_user_wrote(
    items: list[DigestItem], room_name: str, room_key: str
) -> None:
    """Selected or not, every item text, topic, source key and the room's name are escaped
    in the digest's HTML; the digest renders whatever the items hold."""
    room = ManagedRoom(room_key, room_name, NATO_ROOM.policy, "!n:x")
    selected = select_items(room, items)
    for chosen in (selected, items):
        document = build_digest(room, chosen, T0, T0 + timedelta(hours=12))
        shown = checked_html(document.html)
        assert room_name in shown and room_key in shown
        for item in chosen:
            if len(item.text) <= 500:  # longer texts are cut at 500 characters
                assert item.text in shown
            assert item.source_key in shown
            for topic in item.topics:
                assert f"#{topic} (" in shown
