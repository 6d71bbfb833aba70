"""Fuzzing the chat commands with hypothesis: the tokenizer, the command parser, pills, and
the dispatcher over the fake services (tests/fakes.py); strategies in tests/fuzzing.py."""

from __future__ import annotations

import asyncio
import re
import time
from collections.abc import Sequence
from datetime import date
from typing import Any

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from commands import build_registry
from commands.context import CommandError, Invocation, Role
from commands.dispatch import dispatch
from commands.registry import (
    MAX_COMMAND_LENGTH,
    Arg,
    Option,
    mention_pills,
    parse_command,
    resolve_pills,
    strip_prefix,
    tokenize,
)
from policy.ids import EventId, RoomId, UserId
from tests.fakes import FakeServices
from tests.fuzzing import FAST, FUZZ, FUZZ_SLOW, HTML_BITS, MEGABYTE, any_text, checked_html, mixed

REGISTRY = build_registry()
# The shapes the parser promises, written here independently of its own patterns.
USER_SHAPE = re.compile(r"@[^:\s]+:[A-Za-z0-9.\-\[\]:]+")
ROOM_KEY_SHAPE = re.compile(r"[a-z0-9][a-z0-9_-]{0,31}")


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
    declared: list[Arg | Option] = [*command.args, *command.options]
    for arg in declared:
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


def test_the_fake_services_answer_every_service_a_command_may_call() -> None:
    """A method missing here made a generated command fail as an internal error, at random
    (it did, for `!label check …`): every method of the Services port is faked."""
    import inspect

    from commands.services import Services

    wanted = {n for n, _ in inspect.getmembers(Services) if not n.startswith("_")}
    # its own methods: the ones it inherits from the port it subclasses do not answer
    faked = {n for n in vars(FakeServices) if not n.startswith("_")}
    assert sorted(wanted - faked) == []


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
        sender=UserId("@u:x"),
        room_id=RoomId("!r:x"),
        event_id=EventId("$e"),
        body=body,
        formatted_body=formatted,
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
