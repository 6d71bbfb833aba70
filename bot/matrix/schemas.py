"""The content of every event the bot acts on, validated at the Matrix edge.

Why here: any member (even an unsigned device, even in clear) can send any JSON. Before this
module, services read raw content with `.get` and trusted its types: a label field of `1` or an
`m.relates_to` of `"x"` raised deep inside the relay, the exception left the sync handler and
the same batch was retried for ever, stalling every room. Now the content of each event type
is checked against a pydantic model once, here, and services only ever see the typed result
(`MessageFields`, plain strings) or nothing.

What is *not* done: a text message with malformed fields is not silently dropped. Its body is
still a string (nio checks that much), and it may carry a marking above the room: the inbox
gets it as `MessageFields.problem` (which field, what was wrong, never the value) so spillage is
still judged on the body and the sender is told what was wrong. Everything else that fails its
schema is dropped here, logged with the event id and the reason (never the content).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from html.parser import HTMLParser
from typing import Annotated, Any, TypeVar

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StrictBool,
    StrictStr,
    ValidationError,
    field_validator,
)

from bot.services.inbox import MessageFields
from policy.ids import EventId, UserId

MAX_MENTIONS = 200  # m.mentions user ids read; a longer list is malformed, not truncated
MAX_ID_CHARS = 255  # the spec's limit for user, room and event ids
# A structured command (MSC4332): its syntax, its arguments and their values, as JSON. A
# command's values are ids, markings and short texts: anything near an event's size is
# not a command, and is refused here before a parser walks it.
MAX_SYNTAX_CHARS = 500
MAX_ARGUMENTS = 32
MAX_COMMAND_CHARS = 8_000

Identifier = Annotated[StrictStr, Field(min_length=1, max_length=MAX_ID_CHARS)]
# An event id: `$` and no whitespace. Anything else (`..`, a path) is not an id, and sent
# to the homeserver in a URL it could name another resource.
EventIdField = Annotated[StrictStr, Field(pattern=r"^\$\S+$", max_length=MAX_ID_CHARS)]
# A label field: the XML form (a string) or the JSON form (an object). What is inside the
# object is checked by policy.adatp4774.import_label, which is total.
LabelField = StrictStr | dict[StrictStr, Any]


class _Content(BaseModel):
    """Unknown keys are allowed (clients add their own) and never read."""

    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)


class Relation(_Content):
    rel_type: StrictStr | None = None
    event_id: EventIdField | None = None


class Mentions(_Content):
    user_ids: Annotated[list[Identifier], Field(max_length=MAX_MENTIONS)] = []


class NewContent(_Content):
    body: StrictStr
    label: LabelField | None = Field(default=None, alias="io.github.liaison_bot.label")


class StructuredCommand(_Content):
    """`org.matrix.msc4332.command`: which command (its `syntax`) and the value of each
    argument by name. Only the shape and size are checked here; each value is judged by
    the command's declared type (`commands.slash.parse_structured`)."""

    syntax: Annotated[StrictStr, Field(min_length=1, max_length=MAX_SYNTAX_CHARS)]
    arguments: Annotated[dict[StrictStr, Any], Field(max_length=MAX_ARGUMENTS)] = {}

    @field_validator("arguments")
    @classmethod
    def _small(cls, arguments: dict[str, Any]) -> dict[str, Any]:
        try:
            size = len(json.dumps(arguments, ensure_ascii=False))
        except (TypeError, ValueError, RecursionError):
            raise ValueError("arguments must be plain JSON") from None
        if size > MAX_COMMAND_CHARS:
            raise ValueError(f"arguments longer than {MAX_COMMAND_CHARS} characters of JSON")
        return arguments

    def payload(self) -> dict[str, Any]:
        return {"syntax": self.syntax, "arguments": dict(self.arguments)}


class TextContent(_Content):
    """m.room.message with a text-like msgtype (m.text, m.notice, m.emote)."""

    msgtype: StrictStr
    body: StrictStr
    formatted_body: StrictStr | None = None
    relates_to: Relation | None = Field(default=None, alias="m.relates_to")
    new_content: NewContent | None = Field(default=None, alias="m.new_content")
    mentions: Mentions | None = Field(default=None, alias="m.mentions")
    label: LabelField | None = Field(default=None, alias="io.github.liaison_bot.label")
    command: StructuredCommand | None = Field(
        default=None,
        alias="org.matrix.msc4332.command",  # COMMAND_FIELD, spelt out for mypy
    )


class MemberContent(_Content):
    membership: StrictStr
    is_direct: StrictBool | None = None


class RedactionContent(_Content):
    redacts: EventIdField | None = None  # room version 11 moved `redacts` into the content


class Annotation(_Content):
    """`m.relates_to` of a reaction: an annotation of an event, with its key (an emoji)."""

    rel_type: StrictStr
    event_id: EventIdField
    key: Annotated[StrictStr, Field(min_length=1, max_length=64)]

    @field_validator("rel_type")
    @classmethod
    def _annotation(cls, value: str) -> str:
        if value != "m.annotation":
            raise ValueError("a reaction must be an m.annotation")
        return value


class ReactionContent(_Content):
    relates_to: Annotation = Field(alias="m.relates_to")


class _Text(HTMLParser):
    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.parts: list[str] = []

    def handle_data(self, data: str) -> None:
        self.parts.append(data)


def html_text(formatted: str | None) -> str | None:
    """The text a client shows for a formatted body (tags dropped, entities decoded): a
    marking in it is judged like one in the plain body, which clients do not show when a
    formatted body is there. None when there is none (or it does not read as HTML)."""
    if not formatted:
        return None
    parser = _Text()
    try:
        parser.feed(formatted[:200_000])
        parser.close()
    except Exception:  # html.parser is lenient; anything it still refuses shows as is
        return formatted
    return "".join(parser.parts)


class SchemaError(ValueError):
    """Content that does not fit its event type's schema; the message names the fields."""


def describe(exc: ValidationError) -> str:
    """Which fields were wrong and how, never their values (they may be classified)."""
    parts = []
    for error in exc.errors(include_url=False, include_input=False, include_context=False):
        where = ".".join(str(p) for p in error["loc"]) or "content"
        parts.append(f"{where}: {error['msg']}")
    return "; ".join(parts[:5]) + ("; …" if len(parts) > 5 else "")


M = TypeVar("M", bound=BaseModel)


def _validate(model: type[M], content: Any) -> M:
    if not isinstance(content, Mapping):
        raise SchemaError(f"content must be an object, not {type(content).__name__}")
    try:
        return model.model_validate(dict(content))
    except ValidationError as exc:
        raise SchemaError(describe(exc)) from None
    except RecursionError:
        raise SchemaError("content nested too deeply") from None


def message_fields(content: Any) -> MessageFields:
    """The typed fields of a text message's content. Total: malformed content gives
    `MessageFields(problem=…)`, with nothing else read from it."""
    try:
        parsed = _validate(TextContent, content)
    except SchemaError as exc:
        # Nothing of it is acted on; an edit's new text is kept (if it is text) only so
        # that spillage in it is still removed.
        new = content.get("m.new_content") if isinstance(content, Mapping) else None
        new_body = new.get("body") if isinstance(new, Mapping) else None
        return MessageFields(
            problem=str(exc), new_body=new_body if isinstance(new_body, str) else None
        )
    relation = parsed.relates_to
    if relation is not None and relation.rel_type == "m.replace":
        if relation.event_id is None:
            return MessageFields(problem="m.relates_to.event_id: an edit must name its event")
        new = parsed.new_content
        return MessageFields(
            replaces=EventId(relation.event_id),
            new_body=new.body if new is not None else None,
            new_label=new.label if new is not None else None,
        )
    mentions = parsed.mentions.user_ids if parsed.mentions is not None else []
    return MessageFields(
        label=parsed.label,
        mentions=tuple(UserId(u) for u in mentions),
        shown=html_text(parsed.formatted_body),
        structured=parsed.command.payload() if parsed.command is not None else None,
    )


def member_content(content: Any) -> MemberContent:
    """SchemaError when the content is not a member event's."""
    return _validate(MemberContent, content)


def reaction_of(content: Any) -> tuple[EventId, str]:
    """(the event reacted to, the key) of an m.reaction; SchemaError when it is not an
    annotation with an event id and a short key."""
    relation = _validate(ReactionContent, content).relates_to
    return EventId(relation.event_id), relation.key


def redaction_target(content: Any, redacts: Any) -> EventId:
    """The event a redaction removes (top-level `redacts` before room version 11, in the
    content since); SchemaError when neither is a usable event id."""
    inner = _validate(RedactionContent, content).redacts
    target = redacts if isinstance(redacts, str) and redacts else inner
    if (
        not isinstance(target, str)
        or not 1 < len(target) <= MAX_ID_CHARS
        or not target.startswith("$")
        or any(c.isspace() for c in target)
    ):
        raise SchemaError("redacts: an event id is required")
    return EventId(target)


__all__ = [
    "LabelField",
    "MemberContent",
    "SchemaError",
    "StructuredCommand",
    "describe",
    "member_content",
    "message_fields",
    "reaction_of",
    "redaction_target",
]
