"""Issue 24, finding 1 and "a schema for every event the bot reads": the content of each
event the bot acts on is checked at the Matrix edge (bot/matrix/schemas.py), so a member's
malformed event becomes a named problem, never an exception; and an event whose handling
fails anyway is isolated (PoisonGuard), never retried for ever."""

from __future__ import annotations

import contextlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bot.matrix.events import MAX_OUTAGE_ATTEMPTS, PoisonGuard, is_outage
from bot.matrix.gateway import MatrixError
from bot.matrix.schemas import (
    SchemaError,
    TextContent,
    member_content,
    message_fields,
    reaction_of,
    redaction_target,
)
from bot.services.render import LABEL_KEY
from bot.storage import Store
from commands.slash import COMMAND_FIELD
from policy import MarkingError
from policy.adatp4774 import import_label, label_metadata, to_json
from policy.labels import parse_marking

LABEL = to_json(label_metadata(parse_marking("DEU GEHEIM // REL TO NATO")))

# The shapes the review sent: each stalled every room before.
POISON: list[tuple[dict[str, Any], str]] = [
    ({LABEL_KEY: 1}, LABEL_KEY),
    ({LABEL_KEY: [1]}, LABEL_KEY),
    ({LABEL_KEY: True}, LABEL_KEY),
    ({LABEL_KEY: 1.5}, LABEL_KEY),
    ({"m.relates_to": "x"}, "m.relates_to"),
    ({"m.relates_to": {"rel_type": "m.replace", "event_id": 5}}, "m.relates_to.event_id"),
    ({"m.relates_to": {"rel_type": "m.replace"}}, "m.relates_to.event_id"),
    (
        {
            "m.relates_to": {"rel_type": "m.replace", "event_id": "$x"},
            "m.new_content": {"body": "[GEHEIM] x", LABEL_KEY: 1},
        },
        "m.new_content",
    ),
    (
        {"m.relates_to": {"rel_type": "m.replace", "event_id": "$x"}, "m.new_content": "x"},
        "m.new_content",
    ),
    ({"m.mentions": "x"}, "m.mentions"),
    ({"m.mentions": {"user_ids": "x"}}, "m.mentions.user_ids"),
    ({"m.mentions": {"user_ids": [1]}}, "m.mentions.user_ids"),
    ({"formatted_body": 5}, "formatted_body"),
    # A structured command (MSC4332): an object of a string syntax and object arguments.
    ({COMMAND_FIELD: "help"}, COMMAND_FIELD),
    ({COMMAND_FIELD: {"arguments": {}}}, f"{COMMAND_FIELD}.syntax"),
    ({COMMAND_FIELD: {"syntax": 5}}, f"{COMMAND_FIELD}.syntax"),
    ({COMMAND_FIELD: {"syntax": ""}}, f"{COMMAND_FIELD}.syntax"),
    ({COMMAND_FIELD: {"syntax": "help", "arguments": ["hi"]}}, f"{COMMAND_FIELD}.arguments"),
    ({COMMAND_FIELD: {"syntax": "help", "arguments": {"x": "hi" * 5000}}}, COMMAND_FIELD),
    (
        {COMMAND_FIELD: {"syntax": "help", "arguments": {str(n): 1 for n in range(33)}}},
        COMMAND_FIELD,
    ),
]


@pytest.mark.parametrize(("extra", "field"), POISON)
def test_each_poison_shape_is_a_named_problem(extra: dict[str, Any], field: str) -> None:
    fields = message_fields({"msgtype": "m.text", "body": "hi", **extra})
    assert fields.problem is not None and fields.problem.startswith(field)
    assert fields.label is None and fields.replaces is None and fields.mentions == ()
    assert "hi" not in fields.problem  # the words never appear in the reason


def test_a_malformed_edit_keeps_its_new_text_only_for_the_spillage_check() -> None:
    fields = message_fields(
        {
            "msgtype": "m.text",
            "body": "* [STRENG GEHEIM] x",
            "m.relates_to": {"rel_type": "m.replace", "event_id": "$x"},
            "m.new_content": {"body": "[STRENG GEHEIM] x", LABEL_KEY: 1},
        }
    )
    assert fields.problem is not None and fields.new_body == "[STRENG GEHEIM] x"
    assert fields.replaces is None  # never acted on as an edit


def test_well_formed_content_is_typed() -> None:
    plain = message_fields(
        {
            "msgtype": "m.text",
            "body": "[GEHEIM] x",
            LABEL_KEY: LABEL,
            "m.mentions": {"user_ids": ["@a:x"]},
            "m.relates_to": {"m.in_reply_to": {"event_id": "$r"}},
            "com.example.unknown": {"anything": [1, 2]},
        }
    )
    assert plain.problem is None and plain.label == LABEL and plain.mentions == ("@a:x",)
    edit = message_fields(
        {
            "msgtype": "m.text",
            "body": "* x",
            "m.relates_to": {"rel_type": "m.replace", "event_id": "$orig"},
            "m.new_content": {"msgtype": "m.text", "body": "[GEHEIM] x", LABEL_KEY: "<xml/>"},
        }
    )
    assert edit.problem is None and edit.replaces == "$orig"
    assert edit.new_body == "[GEHEIM] x" and edit.new_label == "<xml/>"
    assert message_fields("not an object").problem == "content must be an object, not str"


def test_the_label_field_is_read_under_its_published_name() -> None:
    assert TextContent.model_fields["label"].alias == LABEL_KEY
    assert TextContent.model_fields["command"].alias == COMMAND_FIELD


def test_a_structured_command_is_read_as_its_shape_and_nothing_more() -> None:
    """Its values are the command parser's to judge (a user id that is not one, an unknown
    syntax): here only the shape and size."""
    payload = {"syntax": "clearance grant {user} {marking}", "arguments": {"user": 5, "x": []}}
    fields = message_fields(
        {
            "msgtype": "m.text",
            "body": "anything",
            COMMAND_FIELD: {**payload, "com.example.extra": 1},
            "m.mentions": {"user_ids": ["@bot:x"]},
        }
    )
    assert fields.problem is None and fields.structured == payload
    assert fields.mentions == ("@bot:x",)
    bare = message_fields({"msgtype": "m.text", "body": "x", COMMAND_FIELD: {"syntax": "help"}})
    assert bare.structured == {"syntax": "help", "arguments": {}}
    assert message_fields({"msgtype": "m.text", "body": "!help"}).structured is None
    # an edit is never a command, structured or not
    edit = message_fields(
        {
            "msgtype": "m.text",
            "body": "* x",
            COMMAND_FIELD: payload,
            "m.relates_to": {"rel_type": "m.replace", "event_id": "$orig"},
            "m.new_content": {"msgtype": "m.text", "body": "x"},
        }
    )
    assert edit.replaces == "$orig" and edit.structured is None


def test_member_and_redaction_content() -> None:
    assert member_content({"membership": "join"}).membership == "join"
    assert member_content({"membership": "invite", "is_direct": True}).is_direct is True
    with pytest.raises(SchemaError, match="membership"):
        member_content({"membership": 1})
    with pytest.raises(SchemaError, match="is_direct"):
        member_content({"membership": "invite", "is_direct": "yes"})
    assert redaction_target({}, "$a") == "$a"
    assert redaction_target({"redacts": "$b"}, None) == "$b"  # room version 11
    with pytest.raises(SchemaError):
        redaction_target({"redacts": 7}, None)
    with pytest.raises(SchemaError):
        redaction_target({}, None)


def test_reaction_content() -> None:
    """A reaction is an m.annotation naming an event id, with a short key; anything else is
    a SchemaError naming the field, never its value."""
    ok = {"m.relates_to": {"rel_type": "m.annotation", "event_id": "$n", "key": "✅"}}
    assert reaction_of(ok) == ("$n", "✅")
    bad: list[tuple[Any, str]] = [
        ({}, "m.relates_to"),
        ({"m.relates_to": "x"}, "m.relates_to"),
        ({"m.relates_to": {**ok["m.relates_to"], "rel_type": "m.reference"}}, "rel_type"),
        ({"m.relates_to": {**ok["m.relates_to"], "event_id": "../secret"}}, "event_id"),
        ({"m.relates_to": {**ok["m.relates_to"], "event_id": 7}}, "event_id"),
        ({"m.relates_to": {**ok["m.relates_to"], "key": "✅" * 65}}, "key"),
        ({"m.relates_to": {**ok["m.relates_to"], "key": ""}}, "key"),
        ([], "content"),
    ]
    for content, field in bad:
        with pytest.raises(SchemaError) as raised:
            reaction_of(content)
        assert field in str(raised.value), (content, raised.value)
        assert "✅✅" not in str(raised.value) and "../secret" not in str(raised.value)


@settings(max_examples=300, deadline=None)
@given(
    content=st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=20),
        lambda inner: (
            st.lists(inner, max_size=3)
            | st.dictionaries(
                st.sampled_from(["m.relates_to", "rel_type", "event_id", "key"]), inner, max_size=4
            )
        ),
        max_leaves=12,
    )
)
def test_reaction_of_is_total(content: Any) -> None:
    """Whatever JSON a member sends as a reaction: the pair, or a SchemaError."""
    try:
        target, key = reaction_of(content)
    except SchemaError:
        return
    assert target.startswith("$") and 0 < len(key) <= 64


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=4)
        | st.dictionaries(
            st.sampled_from(
                [
                    "body",
                    "msgtype",
                    "rel_type",
                    "event_id",
                    "user_ids",
                    "m.new_content",
                    "m.relates_to",
                    "m.mentions",
                    LABEL_KEY,
                    "originatorConfidentialityLabel",
                    "ConfidentialityInformation",
                    "PolicyIdentifier",
                    "Classification",
                    "Category",
                    "x",
                ]
            ),
            inner,
            max_size=5,
        )
    ),
    max_leaves=25,
)


@settings(max_examples=400, deadline=None)
@given(content=json_values)
def test_message_fields_is_total(content: Any) -> None:
    """Whatever JSON a member sends, an answer: typed fields or a named problem."""
    fields = message_fields(content)
    assert fields.problem is not None or isinstance(content, dict)


@settings(max_examples=300, deadline=None)
@given(
    command=st.one_of(
        json_values,
        st.fixed_dictionaries(
            {"syntax": st.text(max_size=30)}, optional={"arguments": json_values}
        ),
    )
)
def test_the_structured_field_is_total(command: Any) -> None:
    """Any JSON in the structured field: a payload of the right shape, or a problem naming
    the field (never its value)."""
    fields = message_fields({"msgtype": "m.text", "body": "secret words", COMMAND_FIELD: command})
    if fields.problem is not None:
        assert fields.problem.startswith(COMMAND_FIELD) and "secret words" not in fields.problem
        assert fields.structured is None
    elif command is None:  # null is absent, as for every optional field
        assert fields.structured is None
    else:
        assert fields.structured is not None
        assert isinstance(fields.structured["syntax"], str) and fields.structured["syntax"]
        assert isinstance(fields.structured["arguments"], dict)


@settings(max_examples=400, deadline=None)
@given(raw=json_values)
def test_import_label_is_total(raw: Any) -> None:
    """A label field of any JSON value: a label, or a MarkingError that names it."""
    with contextlib.suppress(MarkingError):
        import_label(raw)


def test_a_label_nested_beyond_the_stack_is_refused_not_crashed() -> None:
    deep: Any = {}
    for _ in range(5000):
        deep = {"originatorConfidentialityLabel": deep}
    with pytest.raises(MarkingError):
        import_label(deep)
    assert message_fields({"msgtype": "m.text", "body": "x", LABEL_KEY: deep}).problem is None


# ---------------------------------------------------------------- the poison guard


class Recorder:
    def __init__(self) -> None:
        self.audits: list[tuple[str, str, Any, dict[str, Any]]] = []
        self.alerts: list[Any] = []
        self.failed = 0

    async def audit(self, actor: str, action: str, subject: Any, detail: dict[str, Any]) -> None:
        self.audits.append((actor, action, subject, detail))

    async def alert(self, document: Any, tx_id: str | None = None) -> None:
        self.alerts.append(document)

    def count(self) -> None:
        self.failed += 1


class Event:
    def __init__(self, event_id: str, sender: str = "@mallory:x") -> None:
        self.event_id, self.sender = event_id, sender


async def _raise(exc: BaseException) -> None:
    raise exc


async def test_a_failing_event_is_isolated_audited_marked_and_alerted_once_an_hour(
    store: Store,
) -> None:
    seen = Recorder()
    guard = PoisonGuard(store, seen.audit, seen.alert, seen.count)
    secret = "the convoy leaves at dawn"
    await guard.run("!r:x", Event("$1"), _raise(ValueError(secret)))
    await guard.run("!r:x", Event("$2"), _raise(KeyError(secret)))
    assert [a[1] for a in seen.audits] == ["event.failed", "event.failed"]
    assert seen.audits[0][3] == {"room_id": "!r:x", "event": "Event", "error": "ValueError"}
    assert secret not in repr(seen.audits) and secret not in repr(seen.alerts)
    assert store.is_handled("$1") and store.is_handled("$2")
    assert len(seen.alerts) == 1 and seen.failed == 2  # once per sender per hour
    await guard.run("!r:x", Event("$3", "@eve:x"), _raise(TypeError()))
    assert len(seen.alerts) == 2


async def test_an_outage_is_tried_again_a_bounded_number_of_times(store: Store) -> None:
    seen = Recorder()
    guard = PoisonGuard(store, seen.audit, seen.alert, seen.count)
    down = MatrixError("send", "M_UNKNOWN", "bad gateway", 502)
    for _ in range(MAX_OUTAGE_ATTEMPTS - 1):
        with pytest.raises(MatrixError):
            await guard.run("!r:x", Event("$o"), _raise(down))
    assert not store.is_handled("$o")
    await guard.run("!r:x", Event("$o"), _raise(down))  # then isolated like any other
    assert store.is_handled("$o") and seen.failed == 1


def test_what_counts_as_an_outage() -> None:
    assert is_outage(MatrixError("x", "M_LIMIT_EXCEEDED", "slow down", 429))
    assert is_outage(MatrixError("x", None, "down", 503))
    assert is_outage(ConnectionResetError())
    assert not is_outage(MatrixError("x", "M_FORBIDDEN", "no", 403))
    assert not is_outage(ValueError())
    assert not is_outage(AttributeError())


@pytest.mark.parametrize("target", ["..", ".", "x", "$", "$a b", "/_synapse/admin"])
def test_an_edit_must_name_an_event_id(target: str) -> None:
    """Attack review H2: `..` was taken as an event id; in the URL that asks the homeserver
    for the target's sender it named another resource, the answer was an error, and the
    edit, over-classified, was isolated unjudged."""
    fields = message_fields(
        {
            "msgtype": "m.text",
            "body": "* [STRENG GEHEIM] x",
            "m.new_content": {"msgtype": "m.text", "body": "[STRENG GEHEIM] x"},
            "m.relates_to": {"rel_type": "m.replace", "event_id": target},
        }
    )
    assert fields.problem is not None and fields.problem.startswith("m.relates_to.event_id")
    assert fields.new_body == "[STRENG GEHEIM] x"  # kept for the spillage check
    with pytest.raises(SchemaError):
        redaction_target({}, target)


async def test_an_event_about_to_be_skipped_is_judged_for_spillage_first(store: Store) -> None:
    seen = Recorder()
    guard = PoisonGuard(store, seen.audit, seen.alert, seen.count)
    judged: list[str] = []

    async def judge(room_id: str, event: Any) -> None:
        judged.append(event.event_id)
        raise RuntimeError("and this fails too")

    guard.judge = judge
    await guard.run("!r:x", Event("$1"), _raise(ValueError()))
    assert judged == ["$1"] and store.is_handled("$1")  # a failing judge stops nothing


def test_the_text_clients_show_for_a_formatted_body_is_read() -> None:
    from bot.matrix.schemas import html_text

    assert html_text("<b>[STRENG</b> GEHEIM] x &amp; y") == "[STRENG GEHEIM] x & y"
    assert html_text(None) is None and html_text("") is None
    fields = message_fields(
        {"msgtype": "m.text", "body": "a", "formatted_body": "<p>[GEHEIM]</p> b"}
    )
    assert fields.shown == "[GEHEIM] b"
