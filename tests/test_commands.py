"""The command registry and dispatcher, without a homeserver (fake services)."""

from __future__ import annotations

from datetime import date

import pytest

from commands import build_registry
from commands.context import CommandError, Invocation, Role
from commands.dispatch import Outcome, dispatch
from commands.document import Banner, Code, Mention, doc, para
from commands.registry import mention_pills, parse_command, resolve_pills, strip_prefix, tokenize
from policy.ids import EventId, RoomId, UserId
from tests.fakes import FakeServices

REGISTRY = build_registry()


def test_tokenize_quotes_straight_and_curly() -> None:
    assert [t.text for t in tokenize('grant @a:b "NATO SECRET" --x 1')] == [
        "grant",
        "@a:b",
        "NATO SECRET",
        "--x",
        "1",
    ]
    assert [t.text for t in tokenize("grant “NATO SECRET” ‘EU SECRET’")] == [
        "grant",
        "NATO SECRET",
        "EU SECRET",
    ]
    assert [t.text for t in tokenize("don't stop")] == ["don't", "stop"]


def test_tokenize_unbalanced_quote_is_an_error() -> None:
    with pytest.raises(CommandError, match="unbalanced quote"):
        tokenize('grant "NATO SECRET')


def test_prefixes() -> None:
    assert strip_prefix("!rooms", ["!", "/"]) == ("!", "rooms")
    assert strip_prefix("  /rooms", ["!", "/"]) == ("/", "rooms")
    assert strip_prefix("! rooms", ["!"]) is None
    assert strip_prefix("hello", ["!"]) is None


def test_pills_replace_display_names() -> None:
    formatted = 'clearance grant <a href="https://matrix.to/#/@lo-deu:example.org">Lo Deu</a> x'
    assert mention_pills(formatted) == [("Lo Deu", "@lo-deu:example.org")]
    assert (
        resolve_pills("clearance grant Lo Deu x", formatted)
        == "clearance grant @lo-deu:example.org x"
    )


def test_pills_ignore_other_links_and_bad_html() -> None:
    assert mention_pills('<a href="https://example.org">x</a>') == []
    assert mention_pills("<a href=") == []


def test_parse_full_command() -> None:
    parsed = parse_command(
        REGISTRY,
        'clearance grant @a:b "NATO SECRET" --nationality DEU --caveat ATOMAL --caveat CRYPTO --expires 2027-01-01',
    )
    assert parsed.command.name == "clearance grant"
    assert parsed.values == {
        "user": "@a:b",
        "marking": "NATO SECRET",
        "nationality": "DEU",
        "caveat": ["ATOMAL", "CRYPTO"],
        "expires": date(2027, 1, 1),
    }


@pytest.mark.parametrize(
    "line",
    [
        "search convoy kiel --topic logistics --since 7d --exercise",
        "search --topic logistics convoy --exercise kiel --since 7d",
        "search --exercise --since=7d --topic logistics convoy kiel",
    ],
)
def test_search_options_come_from_the_declaration_wherever_they_stand(line: str) -> None:
    assert parse_command(REGISTRY, line).values == {
        "words": ["convoy", "kiel"],
        "topic": "logistics",
        "since": "7d",
        "exercise": True,
    }


def test_search_option_errors_come_from_the_parser() -> None:
    with pytest.raises(CommandError, match="did you mean --topic"):
        parse_command(REGISTRY, "search convoy --topc x")
    with pytest.raises(CommandError, match="--since needs a value"):
        parse_command(REGISTRY, "search convoy --since")
    assert parse_command(REGISTRY, "search --topic kiel").values["words"] == []


def test_two_word_commands_win_over_one_word() -> None:
    assert parse_command(REGISTRY, "audit verify").command.name == "audit verify"
    assert parse_command(REGISTRY, "audit 5").values == {"n": 5}


@pytest.mark.parametrize(
    ("line", "message"),
    [
        ("", "empty command"),
        ("roms", "unknown command 'roms' — did you mean !rooms"),
        ("clearance", "did you mean"),
        ("clearance grnt @a:b X", "did you mean !clearance grant"),
        ("clearance grant bob X", "expected a user like @name:server, got 'bob'"),
        ("clearance grant @a:b", "missing MARKING"),
        ("clearance grant @a:b X Y", "unexpected argument 'Y'"),
        ("clearance grant @a:b X --expires tomorrow", "--expires: 'tomorrow' is not a date"),
        (
            "clearance grant @a:b X --nation DEU",
            "unknown option --nation — did you mean --nationality?",
        ),
        ("clearance grant @a:b X --nationality", "--nationality needs a value"),
        ("clearance grant @a:b X --nationality DEU --nationality FRA", "--nationality given twice"),
        ("invite @a:b NATO", "'NATO' is not a room key"),
        ("audit 0", "expected a whole number"),
        ("audit -1", "expected a whole number"),
        ("rooms now", "unexpected argument 'now'"),
        ("x" * 5000, "command too long"),
    ],
)
def test_bad_commands_name_the_problem(line: str, message: str) -> None:
    with pytest.raises(CommandError) as info:
        parse_command(REGISTRY, line)
    assert message in info.value.message


def test_usage_comes_from_the_declaration() -> None:
    with pytest.raises(CommandError) as info:
        parse_command(REGISTRY, "clearance grant @a:b")
    assert (
        info.value.usage
        == "!clearance grant @USER MARKING [--nationality XXX] [--expires YYYY-MM-DD] [--caveat C]…"
    )


def test_document_escapes_user_text_in_html_only() -> None:
    d = doc(para("<b>hi</b> & ", Code("<x>"), Banner("NATO SECRET", 3), Mention('@a"b:c')))
    assert d.plain == '<b>hi</b> & <x>NATO SECRET@a"b:c'
    assert "<b>hi</b>" not in d.html
    assert "&lt;b&gt;hi&lt;/b&gt; &amp; <code>&lt;x&gt;</code>" in d.html
    assert "&quot;" in d.html


def invocation(body: str, sender: str = "@u:x") -> Invocation:
    return Invocation(
        sender=UserId(sender), room_id=RoomId("!r:x"), event_id=EventId("$e"), body=body
    )


async def run(body: str, roles: set[Role], services: FakeServices | None = None) -> Outcome | None:
    return await dispatch(
        REGISTRY,
        invocation(body),
        frozenset({Role.ANYONE, *roles}),
        services or FakeServices(),
        ["!", "/"],
    )


async def test_non_admin_running_admin_command_is_refused_and_audited() -> None:
    services = FakeServices()
    outcome = await run('!clearance grant @a:b "NATO SECRET" --nationality DEU', set(), services)
    assert outcome is not None and not outcome.ok
    assert "is for admins only" in outcome.reply.document.plain
    assert services.grants == []
    assert services.audits[0][1] == "command.denied"


async def test_bad_arguments_answer_with_usage_change_nothing_and_are_audited() -> None:
    services = FakeServices()
    outcome = await run("!clearance grant bob", {Role.ADMIN}, services)
    assert outcome is not None and not outcome.ok
    assert "Usage: !clearance grant @USER MARKING" in outcome.reply.document.plain
    assert services.grants == []
    assert services.audits[0][1] == "command.error"


async def test_service_error_reaches_the_user() -> None:
    services = FakeServices()
    outcome = await run("!clearance grant @a:b BAD", {Role.ADMIN}, services)
    assert outcome is not None and "unknown marking 'BAD'" in outcome.reply.document.plain


async def test_help_lists_only_what_the_user_may_run() -> None:
    outcome = await run("!help", set())
    assert outcome is not None
    text = outcome.reply.document.plain
    assert "!rooms" in text and "!whoami" in text
    assert "!clearance grant" not in text and "!audit" not in text
    admin = await run("!help", {Role.ADMIN})
    assert admin is not None and "!clearance grant" in admin.reply.document.plain


async def test_help_for_one_command() -> None:
    outcome = await run("/help clearance grant", set())
    assert outcome is not None
    assert "!clearance grant @USER MARKING" in outcome.reply.document.plain
    assert "Example: !clearance grant" in outcome.reply.document.plain


async def test_invite_refusal_shows_the_reason() -> None:
    outcome = await run("!invite @none-x:y nato-s", {Role.OFFICER})  # no record (tests/fakes.py)
    assert outcome is not None and not outcome.ok
    assert "no clearance on record for @none-x:y" in outcome.reply.document.plain


async def test_room_names_are_escaped_in_html() -> None:
    outcome = await run("!rooms", set())
    assert outcome is not None
    assert "<script>" not in outcome.reply.document.html
    assert "NATO &lt;script&gt;" in outcome.reply.document.html


async def test_not_a_command_is_ignored() -> None:
    assert await run("hello there", set()) is None


async def test_show_other_users_clearance_needs_admin() -> None:
    services = FakeServices()
    outcome = await run("!clearance show @other:x", set(), services)
    assert outcome is not None and "only admins" in outcome.reply.document.plain
    denied = [a for a in services.audits if a[1] == "command.denied"]
    assert len(denied) == 1 and len(services.audits) == 1  # audited once, by the dispatcher
    assert denied[0][2] == "clearance show"
    assert denied[0][3]["reason"] == "not admin" and denied[0][3]["user"] == "@other:x"


def test_every_command_has_an_example_or_takes_no_arguments() -> None:
    for command in REGISTRY.commands.values():
        assert command.summary
        assert command.example or not command.args, command.name


@pytest.mark.parametrize(
    "user_id",
    ["@a\x1b[2Jb:example.org", "@a\x7fb:example.org", "@bjørn:example.org", "@a\x00:example.org"],
)
def test_a_user_id_with_a_control_or_non_ascii_character_is_refused(user_id: str) -> None:
    """An ESC in a registered user id would reach an operator's terminal through
    `clearance list`; the spec's user ids are printable ASCII."""
    from commands.registry import USER_ID

    assert not USER_ID.match(user_id)
    assert USER_ID.match("@lo-deu_1=x/y+z:example.org")
