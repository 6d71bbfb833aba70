"""The command registry: each command declared once; parsing, permissions, usage and help
all come from that declaration (maubot's decorators, Draupnir's `describeCommand`).

A handler receives parsed arguments and a small context and returns a reply document, or
raises CommandError with a message for the user. It never touches nio or the database.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Awaitable, Callable, Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date
from html.parser import HTMLParser
from typing import Any, Literal
from urllib.parse import unquote

from commands.context import CommandError, Invocation, Reply, Role
from commands.document import Code, Document, doc, para
from commands.services import Services
from policy.ids import RoomKey, UserId

MAX_COMMAND_LENGTH = 4000
# \Z, not $: `$` also matches before a final newline, and a quoted "@a:b\n" is one token.
# The localpart: printable ASCII but ':' (the spec's historical user ids; new ones are a
# subset): no control character (an ESC would reach an operator's terminal through
# `clearance list`), no space, nothing outside ASCII.
USER_ID = re.compile(r"^@[\x21-\x39\x3b-\x7e]+:[A-Za-z0-9.\-\[\]:]+\Z")
ROOM_KEY = re.compile(r"^[a-z0-9][a-z0-9_-]{0,31}\Z")
_OPEN_QUOTES = {'"': '"', "'": "'", "“": "”", "”": "”", "„": "“", "‘": "’", "’": "’", "«": "»"}


Kind = Literal["text", "user", "room_key", "room_keys", "int", "date", "rest", "words", "flag"]
# A vocabulary of the moment (commands.slash.Vocabulary) whose values a structured (MSC4332)
# client offers for an argument; typed `!` parsing does not look at it.
Choices = Literal["room_keys", "schemes", "precedences"]


@dataclass(frozen=True, slots=True)
class Arg:
    name: str
    kind: Kind = "text"
    help: str = ""
    optional: bool = False
    metavar: str | None = None
    # Offered from this vocabulary by structured clients; a `room_key` is offered from the
    # room keys without saying so, unless `fresh`.
    choices: Choices | None = None
    # Names something that does not exist yet (the key of a room being created): never
    # offered from the vocabulary of existing values.
    fresh: bool = False

    @property
    def shown(self) -> str:
        word = self.metavar or self.name.upper()
        if self.kind == "user":
            word = "@USER"
        if self.kind in ("rest", "words"):
            word += "…"
        return f"[{word}]" if self.optional else word


@dataclass(frozen=True, slots=True)
class Option:
    name: str  # without the dashes
    kind: Kind = "text"
    help: str = ""
    repeat: bool = False
    metavar: str | None = None
    choices: Choices | None = None  # as Arg.choices

    @property
    def shown(self) -> str:
        if self.kind == "flag":
            return f"[--{self.name}]"
        tail = "…" if self.repeat else ""
        return f"[--{self.name} {self.metavar or self.name.upper()}]{tail}"


@dataclass(frozen=True)
class Context:
    invocation: Invocation
    roles: frozenset[Role]
    services: Services
    prefix: str = "!"

    @property
    def sender(self) -> UserId:
        return self.invocation.sender


Handler = Callable[[Context, Mapping[str, Any]], Awaitable[Reply]]


@dataclass(frozen=True)
class Command:
    name: str  # one or two words: "rooms", "clearance grant"
    summary: str
    handler: Handler
    roles: frozenset[Role] = frozenset({Role.ANYONE})
    args: tuple[Arg, ...] = ()
    options: tuple[Option, ...] = ()
    example: str = ""
    details: str = ""

    def usage(self, prefix: str = "!") -> str:
        parts = [f"{prefix}{self.name}", *(a.shown for a in self.args)]
        parts.extend(o.shown for o in self.options)
        return " ".join(parts)

    def allowed(self, roles: frozenset[Role]) -> bool:
        return Role.ANYONE in self.roles or bool(self.roles & roles)


@dataclass
class Registry:
    commands: dict[str, Command] = field(default_factory=dict)

    def add(self, command: Command) -> Command:
        if command.name in self.commands:
            raise ValueError(f"command {command.name!r} declared twice")
        self.commands[command.name] = command
        return command

    def command(
        self,
        name: str,
        summary: str,
        *,
        roles: Iterable[Role] = (Role.ANYONE,),
        args: Sequence[Arg] = (),
        options: Sequence[Option] = (),
        example: str = "",
        details: str = "",
    ) -> Callable[[Handler], Handler]:
        """Decorator: declare a command next to its handler."""

        def register(handler: Handler) -> Handler:
            self.add(
                Command(
                    name,
                    summary,
                    handler,
                    frozenset(roles),
                    tuple(args),
                    tuple(options),
                    example,
                    details,
                )
            )
            return handler

        return register

    def visible_to(self, roles: frozenset[Role]) -> list[Command]:
        return [c for c in sorted(self.commands.values(), key=lambda c: c.name) if c.allowed(roles)]

    def resolve(self, words: Sequence[str]) -> tuple[Command | None, int]:
        """The longest declared name that the first words spell, and how many words it used."""
        for size in (2, 1):
            if len(words) >= size:
                name = " ".join(w.casefold() for w in words[:size])
                if name in self.commands:
                    return self.commands[name], size
        return None, 0

    def suggest(self, words: Sequence[str]) -> list[str]:
        names = list(self.commands)
        typed = " ".join(w.casefold() for w in words[:2])
        first = words[0].casefold() if words else ""
        close = difflib.get_close_matches(typed, names, n=3, cutoff=0.6)
        close += difflib.get_close_matches(first, names, n=3, cutoff=0.6)
        groups = [n for n in names if n.split()[0] == first]  # "clearance" -> its subcommands
        return list(dict.fromkeys(close + groups))[:5]


# ---------------------------------------------------------------- tokenising


@dataclass(frozen=True, slots=True)
class Token:
    text: str
    start: int  # offset in the command line, for the raw rest of the line


def tokenize(line: str) -> list[Token]:
    """Split like a shell: white space separates, straight and curly quotes group. A quote
    opens only at the start of a word, so apostrophes inside words stay literal."""
    return list(iter_tokens(line))


def iter_tokens(line: str) -> Iterator[Token]:
    """Lazily, so that a command whose last parameter is the raw rest of the line never
    tokenises (and never rejects the quotes in) that rest."""
    i, n = 0, len(line)
    while i < n:
        if line[i].isspace():
            i += 1
            continue
        start = i
        if line[i] in _OPEN_QUOTES:
            closer = _OPEN_QUOTES[line[i]]
            end = _find_closer(line, i + 1, closer, line[i])
            if end < 0:
                raise CommandError(f"unbalanced quote {line[i]!r} at {i} in {line!r}")
            text = line[i + 1 : end]
            i = end + 1
            if i < n and not line[i].isspace():
                raise CommandError(f"text right after a closing quote at {i} in {line!r}")
            yield Token(text, start)
            continue
        while i < n and not line[i].isspace():
            i += 1
        yield Token(line[start:i], start)


def _find_closer(line: str, start: int, closer: str, opener: str) -> int:
    for j in range(start, len(line)):
        if line[j] == closer or (opener in "“”„" and line[j] in "”“") or line[j] == opener:
            return j
    return -1


class _Pills(HTMLParser):
    """Collects (text, user id) of matrix.to user links in formatted_body."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.pills: list[tuple[str, str]] = []
        self._href: str | None = None
        self._text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "a":
            href = dict(attrs).get("href") or ""
            match = re.match(r"^https://matrix\.to/#/(@[^/?]+)", href)
            self._href = unquote(match.group(1)) if match else None
            self._text = []

    def handle_data(self, data: str) -> None:
        if self._href is not None:
            self._text.append(data)

    def handle_endtag(self, tag: str) -> None:
        if tag == "a" and self._href is not None:
            self.pills.append(("".join(self._text).strip(), self._href))
            self._href = None


def mention_pills(formatted_body: str | None) -> list[tuple[str, str]]:
    if not formatted_body:
        return []
    parser = _Pills()
    try:
        parser.feed(formatted_body[: MAX_COMMAND_LENGTH * 4])
        parser.close()
    except Exception:  # malformed HTML: no pills rather than a crash
        return []
    return [(text, uid) for text, uid in parser.pills if USER_ID.match(uid)]


def resolve_pills(body: str, formatted_body: str | None) -> str:
    """Replace each pill's display text in the body by its user id: the body holds a display
    name (possibly with spaces) where the client showed a pill."""
    for text, user_id in mention_pills(formatted_body):
        if text and text != user_id and text in body:
            body = body.replace(text, user_id, 1)
    return body


# ---------------------------------------------------------------- parsing


@dataclass(frozen=True)
class Parsed:
    command: Command
    values: dict[str, Any]


def strip_prefix(body: str, prefixes: Sequence[str]) -> tuple[str, str] | None:
    """(prefix, rest) when the body is a command, else None."""
    text = body.lstrip()
    for prefix in sorted(prefixes, key=len, reverse=True):
        if text.startswith(prefix) and len(text) > len(prefix) and not text[len(prefix)].isspace():
            return prefix, text[len(prefix) :]
    return None


def parse_command(registry: Registry, line: str, prefix: str = "!") -> Parsed:
    """Parse the text after the prefix into a command and its values.

    Raises CommandError naming the bad parameter, with the usage, or with `did you mean`
    for an unknown command.
    """
    if len(line) > MAX_COMMAND_LENGTH:
        raise CommandError(
            f"command too long ({len(line)} characters, at most {MAX_COMMAND_LENGTH})"
        )
    stream = iter_tokens(line)
    head = [t for _, t in zip(range(2), stream, strict=False)]
    if not head:
        raise CommandError(f"empty command: try {prefix}help")
    command, used = registry.resolve([t.text for t in head])
    if command is None:
        hints = registry.suggest([t.text for t in head])
        hint = f" — did you mean {', '.join(prefix + h for h in hints)}?" if hints else ""
        raise CommandError(f"unknown command {head[0].text!r}{hint} ({prefix}help lists them)")
    usage = command.usage(prefix)
    values: dict[str, Any] = {}
    for o in command.options:
        values[o.name] = False if o.kind == "flag" else ([] if o.repeat else None)
    rest_arg = next((a for a in command.args if a.kind == "rest"), None)
    rest_index = command.args.index(rest_arg) if rest_arg is not None else -1
    pending = head[used:]
    positional: list[Token] = []

    def next_token() -> Token | None:
        if pending:
            return pending.pop(0)
        return next(stream, None)

    while (token := next_token()) is not None:
        if rest_arg is not None and len(positional) == rest_index:
            values[rest_arg.name] = line[token.start :].strip()
            break
        if token.text.startswith("--") and len(token.text) > 2:
            name, eq, inline = token.text[2:].partition("=")
            option = next((o for o in command.options if o.name == name), None)
            if option is None:
                known = [o.name for o in command.options]
                close = difflib.get_close_matches(name, known, n=1)
                hint = f" — did you mean --{close[0]}?" if close else ""
                raise CommandError(f"unknown option --{name}{hint}", usage)
            if option.kind == "flag":
                if eq:
                    raise CommandError(f"--{name} takes no value", usage)
                values[name] = True
                continue
            if eq:
                raw = inline
            else:
                value_token = next_token()
                if value_token is None:
                    raise CommandError(f"--{name} needs a value", usage)
                raw = value_token.text
            value = _convert(option.kind, raw, f"--{name}", usage)
            if option.repeat:
                values[name].append(value)
            elif values[name] is not None:
                raise CommandError(f"--{name} given twice", usage)
            else:
                values[name] = value
            continue
        positional.append(token)
    plain_args = [a for a in command.args if a.kind not in ("rest", "words")]
    words_arg = next((a for a in command.args if a.kind == "words"), None)
    if len(positional) > len(plain_args):
        if words_arg is None:
            extra = positional[len(plain_args)].text
            raise CommandError(f"unexpected argument {extra!r}", usage)
        # "words": every further word, with the options parsed wherever they stand
        values[words_arg.name] = [t.text for t in positional[len(plain_args) :]]
    for arg, token in zip(plain_args, positional, strict=False):
        values[arg.name] = _convert(arg.kind, token.text, arg.name.upper(), usage)
    for arg in command.args:
        if arg.name not in values:
            if not arg.optional:
                raise CommandError(f"missing {arg.shown}", usage)
            values[arg.name] = [] if arg.kind == "words" else None
    return Parsed(command, values)


def _convert(kind: Kind, raw: str, name: str, usage: str) -> Any:
    if kind == "user":
        if not USER_ID.match(raw):
            raise CommandError(f"{name}: expected a user like @name:server, got {raw!r}", usage)
        return UserId(raw)
    if kind == "room_key":
        if not ROOM_KEY.match(raw):
            raise CommandError(f"{name}: {raw!r} is not a room key (see !rooms)", usage)
        return RoomKey(raw)
    if kind == "room_keys":
        keys = [k.strip() for k in raw.split(",")]
        bad = [k for k in keys if not ROOM_KEY.match(k)]
        if bad:
            raise CommandError(f"{name}: {bad[0]!r} is not a room key (see !rooms)", usage)
        return [RoomKey(k) for k in keys]
    if kind == "int":
        # isascii: str.isdigit accepts '²', which int() refuses
        if not (raw.isascii() and raw.isdigit()) or not 0 < int(raw) <= 10_000:
            raise CommandError(f"{name}: expected a whole number 1-10000, got {raw!r}", usage)
        return int(raw)
    if kind == "date":
        try:
            return date.fromisoformat(raw)
        except ValueError:
            raise CommandError(f"{name}: {raw!r} is not a date YYYY-MM-DD", usage) from None
    return raw


def usage_document(command: Command, prefix: str = "!") -> Document:
    blocks = [para(Code(command.usage(prefix))), para(command.summary)]
    for arg in command.args:
        if arg.help:
            blocks.append(para(Code(arg.shown), " — ", arg.help))
    for option in command.options:
        if option.help:
            blocks.append(para(Code(option.shown), " — ", option.help))
    if command.details:
        blocks.append(para(command.details))
    if command.example:
        blocks.append(para("Example: ", Code(prefix + command.example)))
    return doc(*blocks)
