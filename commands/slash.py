"""Structured slash commands (MSC4332, unstable prefix), generated from the registry.

A client that supports MSC4332 reads the bot's `org.matrix.msc4332.commands` state event
(state key: the bot's user id) and offers each command as a `/` command with typed
arguments; when the user sends one, the message carries `org.matrix.msc4332.command`
(`{"syntax": …, "arguments": {name: value}}`) beside the filled-in `body`. This module turns
the one declaration of each command (`commands.registry.Command`) into that event's content
(`describe`) and the structured values of a message back into a `Parsed` command
(`parse_structured`), validating each value by its declared type without any string parsing
of `body`. Pure: no Matrix, no database.

How a declaration is published (the MSC has no options, no comma lists, one variadic):

- positional arguments keep their declared order; options follow as `--name {name}` (a flag
  too: `--exercise {exercise}`, a boolean); a raw-rest-of-line argument comes after the
  options (a typed body with the rest anywhere else would swallow them), and the one variadic
  argument comes last, its placeholder `{name...}`;
- a `words` argument and a `repeat` option are lists: the last one declared is published as
  the variadic (a JSON array); should a command declare more than one, the others are
  published as strings and split (a `words` one on white space, a `repeat` one on commas);
- a `room_key` is an enum of the room keys of the moment (unless `fresh`: the key of a room
  being created), an argument with `choices` an enum of that vocabulary; an enum whose
  vocabulary is empty is published as a string (MSC4332 wants enum values) and then checked
  only for its shape;
- `room_keys` (a comma list) is a string, each key checked against the room keys.

The structured values come out in the very shape `parse_command` gives for the same command
(options defaulting to False, [] or None; UserId, RoomKey, int, date), so a handler cannot
tell a slash command from a typed one.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import date
from typing import Any, Literal

from commands.context import CommandError, Role
from commands.registry import (
    MAX_COMMAND_LENGTH,
    ROOM_KEY,
    USER_ID,
    Arg,
    Choices,
    Command,
    Kind,
    Option,
    Parsed,
    Registry,
)
from policy.ids import RoomKey, UserId

COMMANDS_EVENT = "org.matrix.msc4332.commands"
COMMAND_FIELD = "org.matrix.msc4332.command"

# The argument types MSC4332 lists; a published argument never has another.
TYPES = frozenset(
    {
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
)
_DATE = re.compile(r"^[0-9]{4}-[0-9]{2}-[0-9]{2}\Z")
_SCALAR_TYPE: dict[Kind, str] = {"user": "user_id", "int": "integer", "flag": "boolean"}
_EXPECTED: dict[Kind, str] = {
    "user": "a user id like @name:server",
    "room_key": "a room key (see !rooms)",
    "room_keys": "room keys, comma separated (see !rooms)",
    "int": "a whole number 1-10000",
    "date": "a date YYYY-MM-DD",
    "flag": "true or false",
    "text": "text",
    "rest": "text",
    "words": "words",
}
_VOCABULARY_NAME: dict[Choices, str] = {
    "room_keys": "room keys",
    "schemes": "scheme codes",
    "precedences": "precedences",
}


@dataclass(frozen=True, slots=True)
class Vocabulary:
    """The values of the moment that enum arguments offer: the room keys (configured and
    task-force rooms), the scheme codes in force and the precedences. Sorted tuples, so the
    same vocabulary gives the same event content (republished only when it changes)."""

    room_keys: tuple[str, ...] = ()
    schemes: tuple[str, ...] = ()
    precedences: tuple[str, ...] = ()

    def values(self, choices: Choices) -> tuple[str, ...]:
        return {
            "room_keys": self.room_keys,
            "schemes": self.schemes,
            "precedences": self.precedences,
        }[choices]


@dataclass(frozen=True, slots=True)
class _Slot:
    """One declared argument or option as MSC4332 sees it."""

    name: str
    kind: Kind
    help: str
    optional: bool
    option: bool  # written `--name {name}`; absent gives the option's default
    many: bool  # the value is a list (a `words` argument, a `repeat` option)
    variadic: bool  # published as the variadic: a JSON array, last in the syntax
    choices: Choices | None  # the vocabulary an enum offers

    @property
    def placeholder(self) -> str:
        inner = "{" + self.name + ("..." if self.variadic else "") + "}"
        return f"--{self.name} {inner}" if self.option else inner

    @property
    def separator(self) -> Literal["space", "comma"]:
        """How a list published as a string (not the variadic) is split."""
        return "space" if self.kind == "words" else "comma"

    @property
    def default(self) -> Any:
        if self.kind == "flag":
            return False
        return [] if self.many else None


def _choices(item: Arg | Option) -> Choices | None:
    if item.choices is not None:
        return item.choices
    fresh = isinstance(item, Arg) and item.fresh
    return "room_keys" if item.kind == "room_key" and not fresh else None


def _slots(command: Command) -> list[_Slot]:
    """The command's arguments in syntax order (see the module's docstring)."""
    listy = [a.name for a in command.args if a.kind == "words"]
    listy += [o.name for o in command.options if o.repeat]
    variadic = listy[-1] if listy else None
    plain: list[_Slot] = []
    options: list[_Slot] = []
    rests: list[_Slot] = []
    last: list[_Slot] = []
    for arg in command.args:
        many = arg.kind == "words"
        slot = _Slot(
            arg.name,
            arg.kind,
            arg.help,
            arg.optional,
            False,
            many,
            many and arg.name == variadic,
            _choices(arg),
        )
        (last if slot.variadic else rests if arg.kind == "rest" else plain).append(slot)
    for opt in command.options:
        slot = _Slot(
            opt.name,
            opt.kind,
            opt.help,
            True,
            True,
            opt.repeat,
            opt.repeat and opt.name == variadic,
            _choices(opt),
        )
        (last if slot.variadic else options).append(slot)
    return plain + options + rests + last


def syntax_of(command: Command) -> str:
    """The command's MSC4332 `syntax`: its name and a `{placeholder}` per argument and
    option, in the declared order (a variadic one last, its key ending in `...`)."""
    return " ".join([command.name, *(s.placeholder for s in _slots(command))])


def _text(body: str) -> dict[str, Any]:
    return {"m.text": [{"body": body}]}


def _describe_slot(slot: _Slot) -> str:
    text = slot.help or (
        f"turn --{slot.name} on" if slot.kind == "flag" else f"{slot.name}: {_EXPECTED[slot.kind]}"
    )
    if slot.kind == "date" and "YYYY-MM-DD" not in text:
        text += ", YYYY-MM-DD"
    if slot.many and not slot.variadic:
        text += " (separated by spaces)" if slot.separator == "space" else " (comma separated)"
    if slot.optional and slot.kind != "flag":
        text += " (optional)"
    return text


def _argument(slot: _Slot, vocabulary: Vocabulary) -> dict[str, Any]:
    entry: dict[str, Any] = {"type": "string", "description": _text(_describe_slot(slot))}
    if slot.many and not slot.variadic:
        return entry  # a list published as one string, split when parsed
    values = _vocabulary(slot, vocabulary)
    if values:
        entry["type"] = "enum"
        entry["enum"] = list(values)
    else:
        entry["type"] = _SCALAR_TYPE.get(slot.kind, "string")
    if slot.variadic:
        entry["variadic"] = True
    return entry


def _vocabulary(slot: _Slot, vocabulary: Vocabulary) -> tuple[str, ...]:
    if slot.choices is None:
        return ()
    return tuple(dict.fromkeys(v for v in vocabulary.values(slot.choices) if v))


def describe(
    registry: Registry, roles: frozenset[Role], vocabulary: Vocabulary, sigil: str = "!"
) -> dict[str, Any]:
    """The content of the commands state event for someone holding `roles`: every command
    they may use, each with its syntax, typed arguments and description."""
    return {
        "sigil": sigil,
        "commands": [
            {
                "syntax": syntax_of(command),
                "arguments": [_argument(s, vocabulary) for s in _slots(command)],
                "description": _text(command.summary),
            }
            for command in registry.visible_to(roles)
        ],
    }


# ---------------------------------------------------------------- parsing


def _json_kind(value: Any) -> str:
    """What a JSON value is, in words (never its text: it may be long or hostile)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list | tuple):
        return "an array"
    if isinstance(value, Mapping):
        return "an object"
    return type(value).__name__


def _short(text: str, limit: int = 60) -> str:
    return repr(text if len(text) <= limit else text[:limit] + "…")


def _hint(word: str, candidates: Sequence[str]) -> str:
    """` — did you mean X?` for the closest candidates, else nothing."""
    folded = {c.casefold(): c for c in candidates}
    same = folded.get(word.casefold())
    close = [same] if same is not None and same != word else []
    close += difflib.get_close_matches(word, list(candidates), n=3, cutoff=0.6)
    close = list(dict.fromkeys(close))[:3]
    return f" — did you mean {' or '.join(repr(c) for c in close)}?" if close else ""


def _find(registry: Registry, syntax: str) -> Command:
    commands = sorted(registry.commands.values(), key=lambda c: c.name)
    by_syntax = {syntax_of(c): c for c in commands}
    if syntax in by_syntax:
        return by_syntax[syntax]
    if len(syntax) > MAX_COMMAND_LENGTH:
        raise CommandError(
            f"command syntax too long ({len(syntax)} characters, at most {MAX_COMMAND_LENGTH})"
        )
    known, _ = registry.resolve(syntax.split()[:2])
    if known is not None:
        hint = f" — did you mean {syntax_of(known)!r}? (the published commands changed since)"
    else:
        names = difflib.get_close_matches(
            syntax.split(" {")[0].casefold(), [c.name for c in commands], n=2, cutoff=0.6
        )
        close = [syntax_of(registry.commands[n]) for n in names]
        close += difflib.get_close_matches(syntax, list(by_syntax), n=2, cutoff=0.6)
        close = list(dict.fromkeys(close))[:3]
        hint = f" — did you mean {' or '.join(repr(c) for c in close)}?" if close else ""
    raise CommandError(f"unknown command syntax {_short(syntax)}{hint} (!help lists them)")


def _size(value: Any) -> int:
    """Characters a value adds to the command (an array's items one apart). Not recursive:
    anything nested is refused by its type anyway, and a deeply nested array must not
    exhaust the stack before that."""
    if isinstance(value, str):
        return len(value)
    if isinstance(value, list | tuple):
        return sum((len(v) if isinstance(v, str) else 1) + 1 for v in value)
    return 1


def parse_structured(
    registry: Registry, payload: Mapping[str, Any], vocabulary: Vocabulary
) -> Parsed:
    """A command from a message's `org.matrix.msc4332.command` payload. Raises CommandError
    naming the argument and what was expected (with did-you-mean) for an unknown syntax, a
    missing required argument, a value of the wrong type or an unknown enum value."""
    if not isinstance(payload, Mapping):
        raise CommandError(
            f"{COMMAND_FIELD}: expected an object with syntax and arguments, "
            f"got {_json_kind(payload)}"
        )
    syntax = payload.get("syntax")
    if not isinstance(syntax, str):
        raise CommandError(f"{COMMAND_FIELD}: syntax: expected a string, got {_json_kind(syntax)}")
    command = _find(registry, syntax)
    usage = command.usage("!")
    arguments = payload.get("arguments")
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, Mapping):
        raise CommandError(
            f"{COMMAND_FIELD}: arguments: expected an object of name: value, "
            f"got {_json_kind(arguments)}",
            usage,
        )
    slots = _slots(command)
    given = _given(slots, arguments, usage)
    total = len(syntax) + sum(_size(v) + 1 for v in given.values())
    if total > MAX_COMMAND_LENGTH:
        longest = max(given, key=lambda n: _size(given[n]))
        raise CommandError(
            f"command too long ({total} characters, at most {MAX_COMMAND_LENGTH}); "
            f"the longest argument is {longest!r}",
            usage,
        )
    values: dict[str, Any] = {}
    for slot in slots:
        raw = given.get(slot.name)
        if isinstance(raw, str) and slot.kind == "rest":
            raw = raw.strip()  # as typed: the rest of the line, stripped
        if raw is None or raw == "" or (slot.variadic and raw == []):
            if not slot.optional:
                raise CommandError(
                    f"missing argument {slot.name!r}: expected {_expected(slot, vocabulary)}",
                    usage,
                )
            values[slot.name] = slot.default
        else:
            values[slot.name] = _value(slot, raw, vocabulary, usage)
    # The declared order, as parse_command fills it.
    order = [o.name for o in command.options] + [a.name for a in command.args]
    return Parsed(command, {name: values[name] for name in order})


def _given(slots: Sequence[_Slot], arguments: Mapping[Any, Any], usage: str) -> dict[str, Any]:
    """The arguments by slot name (a variadic one may be keyed `name...`); unknown names
    refused with the closest known one."""
    by_key = {s.name: s for s in slots}
    by_key.update({s.name + "...": s for s in slots if s.variadic})
    given: dict[str, Any] = {}
    for key, value in arguments.items():
        slot = by_key.get(key) if isinstance(key, str) else None
        if slot is None:
            shown = _short(key) if isinstance(key, str) else _json_kind(key)
            known = ", ".join(s.name for s in slots) or "none"
            hint = _hint(key, [s.name for s in slots]) if isinstance(key, str) else ""
            raise CommandError(f"unknown argument {shown}{hint} (arguments: {known})", usage)
        if slot.name in given:
            raise CommandError(f"argument {slot.name!r} given twice", usage)
        given[slot.name] = value
    return given


def _expected(slot: _Slot, vocabulary: Vocabulary) -> str:
    values = _vocabulary(slot, vocabulary)
    if slot.kind in ("room_key", "text", "rest") and values:
        what = f"one of the {_VOCABULARY_NAME[slot.choices or 'room_keys']}"
    else:
        what = _EXPECTED[slot.kind]
    if slot.variadic:
        return f"an array of {what if slot.kind == 'words' else 'strings: ' + what}"
    if slot.many:
        sep = "separated by spaces" if slot.separator == "space" else "comma separated"
        return f"a string: {what}, {sep}"
    if slot.kind == "int":
        return f"a JSON number: {what}"
    if slot.kind == "flag":
        return "a JSON boolean (true or false)"
    return f"a string: {what}"


def _value(slot: _Slot, raw: Any, vocabulary: Vocabulary, usage: str) -> Any:
    name = slot.name

    def wrong() -> CommandError:
        expected = _expected(slot, vocabulary)
        return CommandError(f"argument {name!r}: expected {expected}, got {_json_kind(raw)}", usage)

    if slot.variadic:
        if not isinstance(raw, list | tuple) or not all(isinstance(v, str) and v for v in raw):
            raise wrong()
        items: list[str] = list(raw)
    elif slot.many:
        if not isinstance(raw, str):
            raise wrong()
        items = raw.split() if slot.separator == "space" else _commas(raw)
        if not items:
            raise wrong()
    else:
        return _scalar(slot, raw, vocabulary, usage, wrong)
    if slot.kind == "words":
        return items
    return [_scalar(slot, item, vocabulary, usage, wrong) for item in items]


def _commas(raw: str) -> list[str]:
    return [part.strip() for part in raw.split(",") if part.strip()]


def _scalar(
    slot: _Slot,
    raw: Any,
    vocabulary: Vocabulary,
    usage: str,
    wrong: Callable[[], CommandError],
) -> Any:
    name = slot.name
    if slot.kind == "flag":
        if not isinstance(raw, bool):
            raise wrong()
        return raw
    if slot.kind == "int":
        # bool is an int in Python, and 3.0 is not a whole number in JSON's sense here
        if isinstance(raw, bool) or not isinstance(raw, int):
            raise wrong()
        if not 0 < raw <= 10_000:
            raise CommandError(
                f"argument {name!r}: expected a whole number 1-10000, got {raw}", usage
            )
        return raw
    if not isinstance(raw, str):
        raise wrong()
    if slot.kind == "user":
        if not USER_ID.match(raw):
            raise CommandError(
                f"argument {name!r}: expected a user id like @name:server, got {_short(raw)}",
                usage,
            )
        return UserId(raw)
    if slot.kind == "room_key":
        return _room_key(name, raw, _vocabulary(slot, vocabulary), usage)
    if slot.kind == "room_keys":
        keys = _commas(raw)
        if not keys:
            raise wrong()
        known = tuple(k for k in vocabulary.room_keys if k)
        return [_room_key(name, key, known, usage) for key in keys]
    if slot.kind == "date":
        try:
            if not _DATE.match(raw):
                raise ValueError(raw)
            return date.fromisoformat(raw)
        except ValueError:
            raise CommandError(
                f"argument {name!r}: {_short(raw)} is not a date YYYY-MM-DD", usage
            ) from None
    values = _vocabulary(slot, vocabulary)
    if values and raw not in values:
        what = _VOCABULARY_NAME[slot.choices or "room_keys"]
        raise CommandError(
            f"argument {name!r}: {_short(raw)} is not one of the {what} "
            f"({_listing(values)}){_hint(raw, values)}",
            usage,
        )
    return raw


def _room_key(name: str, raw: str, known: tuple[str, ...], usage: str) -> RoomKey:
    """A room key of the right shape, and one of `known` when there are any (none known:
    the argument was published as a plain string)."""
    if not ROOM_KEY.match(raw) or (known and raw not in known):
        listing = f" (room keys: {_listing(known)})" if known else " (see !rooms)"
        raise CommandError(
            f"argument {name!r}: {_short(raw)} is not a room key{_hint(raw, known)}{listing}",
            usage,
        )
    return RoomKey(raw)


def _listing(values: Sequence[str], most: int = 12) -> str:
    shown = ", ".join(values[:most])
    return shown + (f" and {len(values) - most} more" if len(values) > most else "")
