"""Structured slash commands (MSC4332): the published commands event, generated from the
declarations, is valid for every role and vocabulary; a structured command parses to what
the same command typed parses to; every bad payload is refused naming the argument; and the
dispatcher runs, refuses and audits structured commands like typed ones."""

from __future__ import annotations

import asyncio
import re
from collections.abc import Mapping
from datetime import date
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from commands import build_registry
from commands.context import CommandError, Invocation, Role
from commands.dispatch import Outcome, dispatch
from commands.registry import Arg, Command, Option, Registry, parse_command, strip_prefix
from commands.slash import (
    COMMAND_FIELD,
    COMMANDS_EVENT,
    Vocabulary,
    describe,
    parse_structured,
    syntax_of,
)
from policy.ids import EventId, RoomId, UserId
from tests.fakes import FakeServices
from tests.fuzzing import FUZZ_SLOW

REGISTRY = build_registry()
ROLE_SETS = {
    "admin": frozenset({Role.ANYONE, Role.ADMIN}),
    "officer": frozenset({Role.ANYONE, Role.OFFICER}),
    "member": frozenset({Role.ANYONE, Role.MEMBER}),
    "anyone": frozenset({Role.ANYONE}),
}
VOCABULARY = Vocabulary(
    room_keys=("deu", "nato-s", "tf-baltic"), schemes=("DEU", "EU", "NATO"), precedences=()
)
# MSC4332's argument types, written here independently of commands/slash.py.
MSC_TYPES = {
    "string",
    "integer",
    "boolean",
    "enum",
    "user_id",
    "room_id",
    "room_alias",
    "event_id",
    "server_name",
    "permalink",
}
PLACEHOLDER = re.compile(r"\{([^{}]*)\}")
GRANT = (
    "clearance grant {user} {marking} --nationality {nationality} --expires {expires} "
    "--caveat {caveat...}"
)


def body_of(text: Mapping[str, Any]) -> str:
    """The one plain-text body of an `m.text` description."""
    bodies = text["m.text"]
    assert isinstance(bodies, list) and len(bodies) == 1
    body = bodies[0]["body"]
    assert isinstance(body, str)
    return body


def assert_valid(content: Mapping[str, Any], roles: frozenset[Role], sigil: str = "!") -> None:
    """The event content follows MSC4332 as this project reads it, and says every declared
    argument and option of every command `roles` may use, once."""
    assert content["sigil"] == sigil
    listed = [c["syntax"].split(" {")[0].split(" --")[0] for c in content["commands"]]
    expected = sorted(c.name for c in REGISTRY.commands.values() if c.allowed(roles))
    assert listed == expected
    for entry, name in zip(content["commands"], listed, strict=True):
        command = REGISTRY.commands[name]
        syntax: str = entry["syntax"]
        assert body_of(entry["description"]).strip()
        placeholders = PLACEHOLDER.findall(syntax)
        arguments = entry["arguments"]
        assert isinstance(arguments, list) and len(arguments) == len(placeholders), syntax
        names = [p.removesuffix("...") for p in placeholders]
        assert len(set(names)) == len(names), syntax
        assert all(re.fullmatch(r"[a-z][a-z0-9_-]*", n) for n in names), syntax
        declared = [a.name for a in command.args] + [o.name for o in command.options]
        assert sorted(names) == sorted(declared), syntax
        for option in command.options:
            assert f"--{option.name} {{{option.name}" in syntax, (syntax, option.name)
        variadic = [i for i, p in enumerate(placeholders) if p.endswith("...")]
        assert len(variadic) <= 1 and variadic in ([], [len(placeholders) - 1]), syntax
        assert syntax.endswith("}") or not placeholders
        for i, argument in enumerate(arguments):
            assert argument["type"] in MSC_TYPES, (syntax, argument)
            assert body_of(argument["description"]).strip(), (syntax, i)
            assert bool(argument.get("variadic", False)) == (i in variadic), (syntax, i)
            assert set(argument) <= {"type", "description", "enum", "variadic"}
            if argument["type"] == "enum":
                values = argument["enum"]
                assert values and all(isinstance(v, str) and v for v in values), syntax
                assert len(set(values)) == len(values)
            else:
                assert "enum" not in argument


# ---------------------------------------------------------------- the published event


@pytest.mark.parametrize("who", sorted(ROLE_SETS))
@pytest.mark.parametrize("vocabulary", [VOCABULARY, Vocabulary()], ids=["vocabulary", "empty"])
def test_every_declared_command_yields_a_valid_event(who: str, vocabulary: Vocabulary) -> None:
    roles = ROLE_SETS[who]
    assert_valid(describe(REGISTRY, roles, vocabulary), roles)


def test_the_admin_sees_every_command_and_anyone_only_theirs() -> None:
    admin = {c["syntax"] for c in describe(REGISTRY, ROLE_SETS["admin"], VOCABULARY)["commands"]}
    anyone = describe(REGISTRY, ROLE_SETS["anyone"], VOCABULARY)["commands"]
    assert GRANT in admin
    assert not any(c["syntax"].startswith("clearance grant") for c in anyone)
    assert {c["syntax"] for c in anyone} <= {syntax_of(c) for c in REGISTRY.commands.values()}


room_keys = st.from_regex(re.compile(r"[a-z0-9][a-z0-9_-]{0,12}"), fullmatch=True)
schemes = st.from_regex(re.compile(r"[A-Z]{2,5}"), fullmatch=True)
vocabularies = st.builds(
    Vocabulary,
    room_keys=st.lists(room_keys, max_size=5, unique=True).map(lambda v: tuple(sorted(v))),
    schemes=st.lists(schemes, max_size=4, unique=True).map(lambda v: tuple(sorted(v))),
    precedences=st.lists(schemes, max_size=3, unique=True).map(lambda v: tuple(sorted(v))),
)


@FUZZ_SLOW
@given(vocabulary=vocabularies, who=st.sampled_from(sorted(ROLE_SETS)), sigil=st.just("!"))
def test_the_event_is_valid_and_deterministic_for_any_vocabulary(
    vocabulary: Vocabulary, who: str, sigil: str
) -> None:
    roles = ROLE_SETS[who]
    content = describe(REGISTRY, roles, vocabulary, sigil)
    assert_valid(content, roles, sigil)
    copy = Vocabulary(
        tuple(vocabulary.room_keys), tuple(vocabulary.schemes), tuple(vocabulary.precedences)
    )
    assert describe(build_registry(), roles, copy) == content


def _arguments(syntax: str, vocabulary: Vocabulary = VOCABULARY) -> dict[str, dict[str, Any]]:
    (entry,) = [
        c
        for c in describe(REGISTRY, frozenset(Role), vocabulary)["commands"]
        if c["syntax"] == syntax
    ]
    names = [p.removesuffix("...") for p in PLACEHOLDER.findall(syntax)]
    return dict(zip(names, entry["arguments"], strict=True))


def test_clearance_grant_is_published_as_the_issue_shows() -> None:
    command = REGISTRY.commands["clearance grant"]
    assert syntax_of(command) == GRANT
    arguments = _arguments(GRANT)
    assert [a["type"] for a in arguments.values()] == [
        "user_id",
        "string",
        "string",
        "string",
        "string",
    ]
    assert arguments["caveat"]["variadic"] is True
    assert "YYYY-MM-DD" in body_of(arguments["expires"]["description"])
    assert "optional" in body_of(arguments["nationality"]["description"])


def test_types_follow_the_declared_kinds() -> None:
    search = syntax_of(REGISTRY.commands["search"])
    assert search == "search --topic {topic} --since {since} --exercise {exercise} {words...}"
    assert _arguments(search)["exercise"]["type"] == "boolean"
    assert _arguments(search)["words"] == {
        "type": "string",
        "variadic": True,
        "description": _arguments(search)["words"]["description"],
    }
    assert _arguments("audit {n}")["n"]["type"] == "integer"
    assert _arguments("invite {user} {room}")["room"] == {
        "type": "enum",
        "enum": ["deu", "nato-s", "tf-baltic"],
        "description": {"m.text": [{"body": "the room's key"}]},
    }
    assert _arguments("label schemes {code}")["code"]["enum"] == ["DEU", "EU", "NATO"]
    relay = _arguments("relay {targets} {message}")
    assert relay["targets"]["type"] == "string" and relay["message"]["type"] == "string"
    # The key of a room being created cannot be one of the existing ones.
    create = _arguments(syntax_of(REGISTRY.commands["room create"]))
    assert create["key"]["type"] == "string"


def test_an_enum_with_an_empty_vocabulary_is_published_as_a_string() -> None:
    arguments = _arguments("invite {user} {room}", Vocabulary())
    assert arguments["room"]["type"] == "string" and "enum" not in arguments["room"]
    assert _arguments("label schemes {code}", Vocabulary())["code"]["type"] == "string"


def test_the_vocabulary_choices_are_marked_on_the_declarations() -> None:
    (code,) = REGISTRY.commands["label schemes"].args
    assert code.choices == "schemes"
    assert REGISTRY.commands["room create"].args[0].fresh
    # No command takes a precedence as an argument of its own (relay's is inside the
    # tagged message): should one, it must name the vocabulary.
    for command in REGISTRY.commands.values():
        items: list[Arg | Option] = [*command.args, *command.options]
        for item in items:
            if "precedence" in item.name:
                assert item.choices == "precedences", command.name


def test_descriptions_never_empty_even_without_help() -> None:
    async def handler(ctx: Any, values: Mapping[str, Any]) -> Any:
        raise AssertionError

    registry = Registry()
    registry.add(
        Command(
            "t",
            "A test.",
            handler,
            args=(Arg("who", "user"), Arg("when", "date", optional=True)),
            options=(Option("quiet", "flag"), Option("n", "int")),
        )
    )
    (entry,) = describe(registry, frozenset({Role.ANYONE}), Vocabulary())["commands"]
    texts = [body_of(a["description"]) for a in entry["arguments"]]
    assert all(t.strip() for t in texts)
    assert "@name:server" in texts[0] and "YYYY-MM-DD" in texts[1]


def test_options_offer_their_choices_and_typed_parsing_ignores_them() -> None:
    command = Command(
        "pick",
        "Pick.",
        _nothing,
        options=(Option("scheme", choices="schemes"), Option("prec", choices="precedences")),
    )
    registry = _registry(command)
    (entry,) = describe(registry, frozenset({Role.ANYONE}), VOCABULARY)["commands"]
    scheme, prec = entry["arguments"]
    assert scheme["type"] == "enum" and scheme["enum"] == ["DEU", "EU", "NATO"]
    assert prec["type"] == "string"  # no precedences in this vocabulary: no empty enum
    assert parse_command(registry, "pick --scheme xx").values == {"scheme": "xx", "prec": None}
    with pytest.raises(CommandError, match=r"argument 'scheme'.*did you mean 'EU'"):
        parse_structured(registry, structured(syntax_of(command), scheme="EUU"), VOCABULARY)


def _registry(*commands: Command) -> Registry:
    registry = Registry()
    for command in commands:
        registry.add(command)
    return registry


async def _nothing(ctx: Any, values: Mapping[str, Any]) -> Any:
    raise AssertionError("not run")


def test_two_lists_make_only_the_last_variadic_and_a_rest_follows_the_options() -> None:
    lists = Command(
        "lists",
        "Words and a repeated option.",
        _nothing,
        args=(Arg("words", "words", optional=True),),
        options=(Option("tag", "text", repeat=True), Option("to", "room_key", repeat=True)),
    )
    rest = Command(
        "rest",
        "A rest and an option.",
        _nothing,
        args=(Arg("text", "rest"),),
        options=(Option("x"),),
    )
    registry = _registry(lists, rest)
    assert syntax_of(lists) == "lists {words} --tag {tag} --to {to...}"
    assert syntax_of(rest) == "rest --x {x} {text}"
    content = describe(registry, frozenset({Role.ANYONE}), VOCABULARY)
    first = content["commands"][0]["arguments"]
    assert [a["type"] for a in first] == ["string", "string", "enum"]
    assert [a.get("variadic", False) for a in first] == [False, False, True]
    parsed = parse_structured(
        registry,
        {
            "syntax": syntax_of(lists),
            "arguments": {"words": "a  b", "tag": "x, y", "to...": ["deu"]},
        },
        VOCABULARY,
    )
    assert parsed.values == {"words": ["a", "b"], "tag": ["x", "y"], "to": ["deu"]}


# ---------------------------------------------------------------- parsing


def structured(syntax: str, **arguments: Any) -> dict[str, Any]:
    return {"syntax": syntax, "arguments": arguments}


def test_a_structured_grant_parses_as_the_typed_one() -> None:
    typed = parse_command(
        REGISTRY,
        'clearance grant @a:b "NATO SECRET" --nationality DEU --caveat ATOMAL --expires 2027-01-01',
    )
    payload = structured(
        GRANT,
        user="@a:b",
        marking="NATO SECRET",
        nationality="DEU",
        expires="2027-01-01",
        **{"caveat...": ["ATOMAL"]},
    )
    parsed = parse_structured(REGISTRY, payload, VOCABULARY)
    assert parsed.command is typed.command
    assert parsed.values == typed.values
    assert parsed.values["expires"] == date(2027, 1, 1)
    assert parse_structured(
        REGISTRY, structured(GRANT, user="@a:b", marking="X"), VOCABULARY
    ).values == {
        "user": "@a:b",
        "marking": "X",
        "nationality": None,
        "expires": None,
        "caveat": [],
    }


def test_absent_optional_values_take_the_typed_defaults() -> None:
    search = syntax_of(REGISTRY.commands["search"])
    parsed = parse_structured(REGISTRY, structured(search, topic="kiel"), VOCABULARY)
    assert parsed.values == parse_command(REGISTRY, "search --topic kiel").values
    for empty in ("", None):
        values = parse_structured(
            REGISTRY, structured(search, topic="kiel", since=empty, exercise=None), VOCABULARY
        ).values
        assert values["since"] is None and values["exercise"] is False
    assert parse_structured(REGISTRY, {"syntax": "rooms"}, VOCABULARY).values == {}
    assert parse_structured(REGISTRY, structured("audit {n}"), VOCABULARY).values == {"n": None}


def test_the_variadic_key_may_carry_its_dots() -> None:
    search = syntax_of(REGISTRY.commands["search"])
    for key in ("words", "words..."):
        parsed = parse_structured(REGISTRY, structured(search, **{key: ["a", "b"]}), VOCABULARY)
        assert parsed.values["words"] == ["a", "b"]


def test_room_keys_and_enums_are_checked_only_for_shape_without_a_vocabulary() -> None:
    parsed = parse_structured(
        REGISTRY, structured("invite {user} {room}", user="@a:b", room="elsewhere"), Vocabulary()
    )
    assert parsed.values["room"] == "elsewhere"
    relay = parse_structured(
        REGISTRY,
        structured("relay {targets} {message}", targets="nato-s, deu", message=" [X] y "),
        VOCABULARY,
    )
    assert relay.values == {"targets": ["nato-s", "deu"], "message": "[X] y"}


@pytest.mark.parametrize(
    ("payload", "needles"),
    [
        (["not", "a", "mapping"], [COMMAND_FIELD, "expected an object", "an array"]),
        ({"syntax": 5}, ["syntax", "expected a string", "a number"]),
        ({"syntax": "rooms", "arguments": ["x"]}, ["arguments", "expected an object"]),
        (
            {"syntax": "clearance grant {user} {level}"},
            ["unknown command syntax", f"did you mean {GRANT!r}"],
        ),
        ({"syntax": "clearnce list"}, ["unknown command syntax", "did you mean 'clearance list'"]),
        ({"syntax": "xyzzy"}, ["unknown command syntax 'xyzzy'"]),
        (structured(GRANT, user="@a:b"), ["missing argument 'marking'", "expected a string"]),
        (
            structured(GRANT, user="@a:b", marking="X", nationalty="DEU"),
            ["unknown argument 'nationalty'", "did you mean 'nationality'"],
        ),
        (
            structured(GRANT, user="@a:b", marking="X", **{"marking...": "Y"}),
            ["unknown argument 'marking...'"],
        ),
        (
            structured(GRANT, user="@a:b", marking="X", caveat=["A"], **{"caveat...": ["B"]}),
            ["argument 'caveat' given twice"],
        ),
        (structured("audit {n}", n="5"), ["argument 'n'", "JSON number", "a string"]),
        (structured("audit {n}", n=True), ["argument 'n'", "JSON number", "got true"]),
        (structured("audit {n}", n=5.0), ["argument 'n'", "JSON number"]),
        (structured("audit {n}", n=0), ["argument 'n'", "1-10000"]),
        (structured("audit {n}", n=10_001), ["argument 'n'", "1-10000"]),
        (structured(GRANT, user="@a:b", marking=True), ["argument 'marking'", "got true"]),
        (structured(GRANT, user="bob", marking="X"), ["argument 'user'", "@name:server", "'bob'"]),
        (structured(GRANT, user="@a:b\n", marking="X"), ["argument 'user'", "@name:server"]),
        (
            structured(GRANT, user="@a:b", marking="X", expires="2027-02-30"),
            ["argument 'expires'", "not a date YYYY-MM-DD"],
        ),
        (
            structured(GRANT, user="@a:b", marking="X", expires="20270101"),
            ["argument 'expires'", "not a date YYYY-MM-DD"],
        ),
        (
            structured(GRANT, user="@a:b", marking="X", caveat="ATOMAL"),
            ["argument 'caveat'", "an array", "a string"],
        ),
        (
            structured(GRANT, user="@a:b", marking="X", caveat=["A", 3]),
            ["argument 'caveat'", "an array"],
        ),
        (
            structured("invite {user} {room}", user="@a:b", room="nato"),
            ["argument 'room'", "'nato' is not a room key", "did you mean 'nato-s'"],
        ),
        (
            structured("relay {targets} {message}", targets="nato-s,natos", message="x"),
            ["argument 'targets'", "'natos'", "did you mean 'nato-s'"],
        ),
        (
            structured("relay {targets} {message}", targets=",", message="x"),
            ["argument 'targets'", "room keys"],
        ),
        (
            structured("label schemes {code}", code="deu"),
            ["argument 'code'", "not one of the scheme codes", "did you mean 'DEU'"],
        ),
        (
            structured(
                "search --topic {topic} --since {since} --exercise {exercise} {words...}",
                exercise="yes",
            ),
            ["argument 'exercise'", "boolean"],
        ),
        (
            structured("relay {targets} {message}", targets="deu", message="x" * 5000),
            ["too long", "'message'"],
        ),
        (
            structured("relay {targets} {message}", targets="deu", message="   "),
            ["missing argument 'message'"],
        ),
    ],
)
def test_bad_payloads_are_refused_naming_what_is_wrong(payload: Any, needles: list[str]) -> None:
    with pytest.raises(CommandError) as info:
        parse_structured(REGISTRY, payload, VOCABULARY)
    for needle in needles:
        assert needle in info.value.message, (needle, info.value.message)
    syntax = payload.get("syntax") if isinstance(payload, Mapping) else None
    known = [c for c in REGISTRY.commands.values() if syntax == syntax_of(c)]
    assert info.value.usage == (known[0].usage("!") if known else None)


def test_a_long_hostile_value_is_not_echoed_whole() -> None:
    with pytest.raises(CommandError) as info:
        parse_structured(
            REGISTRY, structured(GRANT, user="@" + "x" * 3000, marking="X"), VOCABULARY
        )
    assert len(info.value.message) < 200


def test_deep_or_huge_arrays_are_refused_not_crashing() -> None:
    deep: list[Any] = []
    for _ in range(100_000):
        deep = [deep]
    with pytest.raises(CommandError, match="argument 'caveat'"):
        parse_structured(
            REGISTRY, structured(GRANT, user="@a:b", marking="X", caveat=deep), VOCABULARY
        )
    many = structured(GRANT, user="@a:b", marking="X", caveat=[""] * 100_000)
    with pytest.raises(CommandError, match=r"too long.*'caveat'"):
        parse_structured(REGISTRY, many, VOCABULARY)
    with pytest.raises(CommandError, match="command syntax too long"):
        parse_structured(REGISTRY, {"syntax": "x" * 1_000_000}, VOCABULARY)


# ---------------------------------------------------------------- round trip


def _user_ids() -> st.SearchStrategy[str]:
    return st.from_regex(re.compile(r"@[a-z0-9._=-]{1,12}:[a-z0-9.-]{1,12}"), fullmatch=True)


# Text a user types into a client's argument field: no quotes (the typed grammar quotes with
# them), no control characters.
_TEXT = st.text(
    st.characters(
        categories=("L", "N", "P", "S", "Zs"),
        exclude_characters="\"'“”„‘’«»",
    ),
    min_size=1,
    max_size=20,
).filter(lambda s: not s.lstrip().startswith("--"))


def _shown(value: str) -> str:
    """A value as a client writes it into the body: quoted when it has white space."""
    return f'"{value}"' if any(c.isspace() for c in value) else value


@st.composite
def filled(draw: st.DrawFn, command: Command, vocabulary: Vocabulary) -> tuple[str, dict[str, Any]]:
    """Valid structured values for `command` (by its published types), and the body a
    client sends with them: the syntax filled in, absent optional values left out, a flag
    written bare when on and left out when off (the typed grammar's spelling)."""
    syntax = syntax_of(command)
    (entry,) = [
        c
        for c in describe(REGISTRY, frozenset(Role), vocabulary)["commands"]
        if c["syntax"] == syntax
    ]
    declared: dict[str, Arg | Option] = {a.name: a for a in command.args}
    declared |= {o.name: o for o in command.options}
    arguments: dict[str, Any] = {}
    words = [command.name]
    pieces = syntax.removeprefix(command.name).split()
    placeholders = [p for p in pieces if p.startswith("{")]
    for placeholder, argument in zip(placeholders, entry["arguments"], strict=True):
        name = placeholder.strip("{}").removesuffix("...")
        item = declared[name]
        option = isinstance(item, Option)
        optional = option or (isinstance(item, Arg) and item.optional)
        if optional and draw(st.booleans()):
            continue
        if argument.get("variadic"):
            # one --caveat VALUE: the typed grammar repeats the option for more
            size = (1, 1) if option else (1, 4)
            element = _TEXT.filter(lambda s: not any(c.isspace() for c in s))
            value: Any = draw(st.lists(element, min_size=size[0], max_size=size[1]))
            shown = " ".join(_shown(v) for v in value)
        elif argument["type"] == "enum":
            value = draw(st.sampled_from(argument["enum"]))
            shown = value
        elif argument["type"] == "user_id":
            value = shown = draw(_user_ids())
        elif argument["type"] == "integer":
            value = draw(st.integers(1, 10_000))
            shown = str(value)
        elif argument["type"] == "boolean":
            value = draw(st.booleans())
            shown = ""
        elif item.kind == "room_key":
            value = shown = draw(room_keys)
        elif item.kind == "room_keys":
            value = shown = ",".join(
                draw(st.lists(st.sampled_from(vocabulary.room_keys), min_size=1, max_size=3))
            )
        elif item.kind == "date":
            value = shown = draw(st.dates()).isoformat()
        elif item.kind == "rest":
            value = draw(_TEXT.filter(str.strip))
            shown = value  # the rest of the line, never quoted
        else:
            value = draw(_TEXT)
            shown = _shown(value)
        arguments[placeholder.strip("{}")] = value
        if option:
            if argument["type"] == "boolean":
                words += [f"--{name}"] if value else []
            else:
                words += [f"--{name}", shown]
        else:
            words.append(shown)
    return "!" + " ".join(words), {"syntax": syntax, "arguments": arguments}


@settings(FUZZ_SLOW, max_examples=20)
@pytest.mark.parametrize("name", sorted(REGISTRY.commands))
@given(data=st.data())
def test_the_body_a_client_sends_parses_to_the_structured_values(
    name: str, data: st.DataObject
) -> None:
    """For every declared command and valid values of its published types, the typed
    parse of the body a client sends equals the structured parse of the values."""
    body, payload = data.draw(filled(REGISTRY.commands[name], VOCABULARY))
    stripped = strip_prefix(body, ["!"])
    assert stripped is not None
    typed = parse_command(REGISTRY, stripped[1])
    parsed = parse_structured(REGISTRY, payload, VOCABULARY)
    assert parsed.command is typed.command is REGISTRY.commands[name]
    assert parsed.values == typed.values


# ---------------------------------------------------------------- dispatch


def invocation(body: str, payload: Mapping[str, Any] | None, sender: str = "@u:x") -> Invocation:
    return Invocation(
        sender=UserId(sender),
        room_id=RoomId("!r:x"),
        event_id=EventId("$e"),
        body=body,
        structured=payload,
    )


async def run(
    body: str,
    payload: Mapping[str, Any] | None,
    roles: set[Role],
    services: FakeServices,
    vocabulary: Vocabulary | None = VOCABULARY,
) -> Outcome | None:
    return await dispatch(
        REGISTRY,
        invocation(body, payload),
        frozenset({Role.ANYONE, *roles}),
        services,
        ["!"],
        vocabulary=vocabulary,
    )


GRANT_PAYLOAD = structured(GRANT, user="@a:b", marking="NATO SECRET", nationality="DEU")
GRANT_BODY = '!clearance grant @a:b "NATO SECRET" --nationality DEU'


async def test_a_structured_command_by_a_non_admin_is_denied_and_audited_as_structured() -> None:
    services = FakeServices()
    outcome = await run(GRANT_BODY, GRANT_PAYLOAD, {Role.OFFICER}, services)
    assert outcome is not None and not outcome.ok
    assert "is for admins only" in outcome.reply.document.plain
    assert services.grants == []
    assert [(a[1], a[2]) for a in services.audits] == [("command.denied", "clearance grant")]
    assert services.audits[0][3]["structured"] is True


async def test_a_structured_command_runs_from_its_payload_and_audits_the_body_agreement() -> None:
    services = FakeServices()
    outcome = await run(GRANT_BODY, GRANT_PAYLOAD, {Role.ADMIN}, services)
    assert outcome is not None and outcome.ok
    assert services.grants == [
        (
            "@u:x",
            "@a:b",
            "NATO SECRET",
            {"nationality": "DEU", "expires": None, "caveats": []},
        )
    ]
    assert services.audits == [
        (
            "@u:x",
            "command.structured",
            "clearance grant",
            {"room_id": "!r:x", "body_agrees": True, "structured": True},
        )
    ]


@pytest.mark.parametrize(
    "body",
    [
        '!clearance grant @a:b "NATO CONFIDENTIAL" --nationality DEU',  # says something else
        "/clearance grant NATO SECRET for a:b",  # no command to the bot at all
        '!clearance grant @a:b "NATO SECRET',  # does not parse
        "!rooms",  # another command
    ],
)
async def test_a_body_that_says_something_else_is_run_from_the_payload_and_noted(
    body: str,
) -> None:
    services = FakeServices()
    outcome = await run(body, GRANT_PAYLOAD, {Role.ADMIN}, services)
    assert outcome is not None and outcome.ok
    assert [g[2] for g in services.grants] == ["NATO SECRET"]
    (row,) = services.audits
    assert row[1] == "command.structured" and row[3]["body_agrees"] is False
    assert not any("NATO" in str(v) or "a:b" in str(v) for v in row[3].values())


async def test_a_bad_payload_is_answered_with_usage_and_audited_as_structured() -> None:
    services = FakeServices()
    payload = structured(GRANT, user="bob", marking="NATO SECRET")
    outcome = await run(GRANT_BODY, payload, {Role.ADMIN}, services)
    assert outcome is not None and not outcome.ok
    plain = outcome.reply.document.plain
    assert "argument 'user'" in plain and "Usage: !clearance grant @USER MARKING" in plain
    assert services.grants == []
    (row,) = services.audits
    assert row[1] == "command.error" and row[3]["structured"] is True
    assert row[3]["reason_code"] == "command.invalid"


async def test_a_handler_error_of_a_structured_command_is_audited_as_structured() -> None:
    services = FakeServices()
    payload = structured(GRANT, user="@a:b", marking="BAD")
    outcome = await run("", payload, {Role.ADMIN}, services)
    assert (
        outcome is not None and not outcome.ok and "unknown marking" in outcome.reply.document.plain
    )
    (row,) = services.audits
    assert (row[1], row[2], row[3]["structured"]) == ("command.error", "clearance grant", True)


async def test_typed_commands_are_not_marked_structured() -> None:
    services = FakeServices()
    outcome = await run(GRANT_BODY, None, {Role.OFFICER}, services)
    assert outcome is not None and not outcome.ok
    (row,) = services.audits
    assert row[1] == "command.denied" and "structured" not in row[3]
    assert await run("not a command", None, set(), services) is None


async def test_without_a_vocabulary_room_keys_are_checked_for_shape_only() -> None:
    services = FakeServices()
    payload = structured("invite {user} {room}", user="@a:b", room="nato-s")
    outcome = await run("!invite @a:b nato-s", payload, {Role.OFFICER}, services, None)
    assert outcome is not None and outcome.ok
    assert services.audits[-1][3]["body_agrees"] is True


async def test_help_names_the_slash_commands() -> None:
    services = FakeServices()
    outcome = await run("!help", None, set(), services)
    assert outcome is not None and "MSC4332" in outcome.reply.document.plain
    assert "/ commands" in outcome.reply.document.plain


def test_the_event_names() -> None:
    assert COMMANDS_EVENT == "org.matrix.msc4332.commands"
    assert COMMAND_FIELD == "org.matrix.msc4332.command"


@settings(FUZZ_SLOW, max_examples=10)
@pytest.mark.parametrize("name", sorted(REGISTRY.commands))
@given(data=st.data())
def test_dispatching_structured_commands_never_crashes(name: str, data: st.DataObject) -> None:
    """Valid values for every command, dispatched by someone holding every role to the
    fake services: a reply, never the internal error; every row marked structured, and a
    success noted with a body that agrees."""
    body, payload = data.draw(filled(REGISTRY.commands[name], VOCABULARY))
    services = FakeServices()
    roles = {Role.ADMIN, Role.OFFICER, Role.MEMBER}
    outcome = asyncio.run(run(body, payload, roles, services))
    assert outcome is not None and outcome.command == name
    assert not any(a[3].get("error") == "internal error" for a in services.audits)
    assert all(a[3].get("structured") is True for a in services.audits)
    if outcome.ok:
        assert services.audits[-1][1:3] == ("command.structured", name)
        assert services.audits[-1][3]["body_agrees"] is True
