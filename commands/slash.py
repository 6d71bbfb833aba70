"""Structured slash commands (MSC4332, unstable prefix), generated from the registry.

A client that supports MSC4332 reads the bot's `org.matrix.msc4332.commands` state event
(state key: the bot's user id) and offers each command as a `/` command with typed
arguments; when the user sends one, the message carries `org.matrix.msc4332.command`
(`{"syntax": …, "arguments": {name: value}}`) beside the filled-in `body`. This module turns
the one declaration of each command (`commands.registry.Command`) into that event's content
(`describe`) and the structured values of a message back into a `Parsed` command
(`parse_structured`), validating each value by its declared type without any string parsing
of `body`. Pure: no Matrix, no database.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from commands.context import Role
from commands.registry import Command, Parsed, Registry

COMMANDS_EVENT = "org.matrix.msc4332.commands"
COMMAND_FIELD = "org.matrix.msc4332.command"


@dataclass(frozen=True, slots=True)
class Vocabulary:
    """The values of the moment that enum arguments offer: the room keys (configured and
    task-force rooms), the scheme codes in force and the precedences. Sorted tuples, so the
    same vocabulary gives the same event content (republished only when it changes)."""

    room_keys: tuple[str, ...] = ()
    schemes: tuple[str, ...] = ()
    precedences: tuple[str, ...] = ()


def syntax_of(command: Command) -> str:
    """The command's MSC4332 `syntax`: its name and a `{placeholder}` per argument and
    option, in the declared order (a variadic one last, its key ending in `...`)."""
    raise NotImplementedError


def describe(
    registry: Registry, roles: frozenset[Role], vocabulary: Vocabulary, sigil: str = "!"
) -> dict[str, Any]:
    """The content of the commands state event for someone holding `roles`: every command
    they may use, each with its syntax, typed arguments and description."""
    raise NotImplementedError


def parse_structured(
    registry: Registry, payload: Mapping[str, Any], vocabulary: Vocabulary
) -> Parsed:
    """A command from a message's `org.matrix.msc4332.command` payload. Raises CommandError
    naming the argument and what was expected (with did-you-mean) for an unknown syntax, a
    missing required argument, a value of the wrong type or an unknown enum value."""
    raise NotImplementedError
