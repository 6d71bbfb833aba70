"""Tagged messages: `[MARKING] [PRECEDENCE] text #topic …`.

A message is tagged when it starts with `[`; the first bracket is its marking, read with the
room's scheme as context. An optional second bracket gives the precedence (FLASH, IMMEDIATE,
PRIORITY, ROUTINE; default ROUTINE), and `[EXERCISE]`, before or after the precedence, marks
exercise traffic. Hashtags in the text are its topics.
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable
from dataclasses import dataclass
from enum import IntEnum

from policy.catalogue import Level
from policy.labels import Label, MarkingError, level_candidates, parse_marking

MAX_TEXT_BYTES = 40_000
_TOPIC = re.compile(r"(?<![\w&])#([\w][\w\-]{0,63})", re.UNICODE)


class Precedence(IntEnum):
    """Message precedence, most urgent first when sorted by value."""

    FLASH = 0
    IMMEDIATE = 1
    PRIORITY = 2
    ROUTINE = 3


@dataclass(frozen=True, slots=True)
class TaggedMessage:
    label: Label
    precedence: Precedence
    exercise: bool
    text: str
    topics: tuple[str, ...]


def is_tagged(body: str) -> bool:
    return isinstance(body, str) and body.lstrip().startswith("[")


def parse_tagged(
    body: str,
    context: str | None = None,
    *,
    extra_caveats: Iterable[str] = (),
    label: Label | None = None,
) -> TaggedMessage | None:
    """None for an untagged message; MarkingError naming the problem for a malformed one.

    `label` is a machine-readable label the message carries (ADatP-4774, already read):
    the message is then tagged with it whether or not the text starts with a marking; a
    marking that is there as well must say the same, else the message is refused."""
    if label is not None:
        return _with_label(body, context, label, extra_caveats)
    if not is_tagged(body):
        return None
    _check_text(body)
    marking, rest = _bracket(body.lstrip(), body)
    return _after_marking(parse_marking(marking, context, extra_caveats=extra_caveats), rest, body)


def _with_label(
    body: str, context: str | None, label: Label, extra_caveats: Iterable[str]
) -> TaggedMessage:
    if not isinstance(body, str):
        raise MarkingError("a tagged message must be text")
    _check_text(body)
    # A marking in the text is compared with the label wherever it stands among the
    # leading brackets: first, or after the precedence and EXERCISE brackets. Looking only
    # at the first bracket let `[PRIORITY] [COSMIC TOP SECRET] …` through under a NATO
    # UNCLASSIFIED label.
    head, rest = "", body.lstrip()
    for _ in range(3):  # at most a precedence and EXERCISE before the marking
        if not rest.startswith("["):
            break
        first, after = _bracket(rest, body)
        word = first.strip().upper()
        if word in Precedence.__members__ or word == "EXERCISE":
            head, rest = head + rest[: len(rest) - len(after)], after.lstrip()
            continue
        if not head or levels_named(f"[{first}]", context):
            marked = parse_marking(first, context, extra_caveats=extra_caveats)
            if marked != label:
                raise MarkingError(
                    f"the marking {marked.banner!r} and the message's machine-readable "
                    f"label {label.banner!r} disagree"
                )
            rest = after
        break
    return _after_marking(label, f"{head} {rest}", body)


def _check_text(body: str) -> None:
    size = len(body.encode("utf-8", "surrogatepass"))  # a lone surrogate: refused below
    if size > MAX_TEXT_BYTES:
        raise MarkingError(
            f"message too long: {size} bytes of text, at most {MAX_TEXT_BYTES} "
            "(the encrypted event must stay under the homeserver's 65 536-byte limit)"
        )
    try:
        body.encode("utf-8")
    except UnicodeEncodeError as exc:  # JSON's "\ud800" reaches us as a lone surrogate
        raise MarkingError(
            f"invalid text: lone surrogate U+{ord(body[exc.start]):04X} at {exc.start} "
            "(not valid Unicode; the sending client is broken)"
        ) from None


def _after_marking(label: Label, rest: str, body: str) -> TaggedMessage:
    """Precedence and EXERCISE brackets, then the text and its topics."""
    precedence: Precedence | None = None
    exercise = False
    while rest.lstrip().startswith("[") and (precedence is None or not exercise):
        candidate, after = _bracket(rest.lstrip(), body)
        word = candidate.strip().upper()
        if word == "EXERCISE" and not exercise:
            exercise, rest = True, after
        elif word in Precedence.__members__ and precedence is None:
            precedence, rest = Precedence[word], after
        else:
            close = difflib.get_close_matches(word, [*Precedence.__members__, "EXERCISE"], n=1)
            if close:
                raise MarkingError(
                    f"unknown precedence {candidate!r} — did you mean {close[0]!r}? "
                    "(FLASH, IMMEDIATE, PRIORITY, ROUTINE, or EXERCISE)"
                )
            break  # a bracket that is text, e.g. "[UPDATE]"
    text = rest.strip()
    if not text:
        raise MarkingError(f"tagged message {label.banner!r} has no text after its marking")
    topics = tuple(dict.fromkeys(m.group(1).casefold() for m in _TOPIC.finditer(text)))
    if precedence is None:
        precedence = Precedence.ROUTINE
    return TaggedMessage(label, precedence, exercise, text, topics)


def levels_named(body: str, context: str | None = None) -> tuple[Level, ...]:
    """The levels a tagged message's marking may mean, read from its level segment alone
    (what follows may be malformed): one when it names one, each candidate when it is
    ambiguous, none when no level can be read. The marking is the first bracket that is
    not a precedence or EXERCISE (`[FLASH] [STRENG GEHEIM] …` is spillage in a GEHEIM
    room, however it is otherwise refused). Total: never raises."""
    if not is_tagged(body):
        return ()
    rest = body.lstrip()
    try:
        for _ in range(3):  # a precedence or EXERCISE put first hides nothing
            marking, after = _bracket(rest, body)
            if marking.strip().upper() not in (*Precedence.__members__, "EXERCISE"):
                return level_candidates(marking, context)
            rest = after.lstrip()
            if not rest.startswith("["):
                return ()
    except MarkingError:
        return ()
    return ()


def _bracket(text: str, whole: str) -> tuple[str, str]:
    """(inside of the leading bracket, the text after it)."""
    end = text.find("]")
    if end < 0:
        raise MarkingError(f"unclosed '[' in {whole[:80]!r}: a tag is [MARKING] text")
    inside = text[1:end]
    if "[" in inside:
        raise MarkingError(f"nested '[' in the tag {text[: end + 1][:80]!r}")
    return inside, text[end + 1 :]
