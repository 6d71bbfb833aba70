"""What may leave the bot in an exported audit event: value shapes, and the markings rule.

The audit log keeps, in clear and for good, whatever its writers put in `detail`: reasons
that name levels, caveats and audiences, errors that quote a command's input. The log is
accredited with the bot; a SIEM is not. So an export takes nothing by default: a detail
key passes only when the action's mapping lists it (bot/siem/ocsf.py), and then only a
value of the shape declared for it (a room key, a user id, a count, a reason code...), so
that even a listed key cannot carry free text if a writer starts putting text in it.
Values that do not fit are dropped, never truncated or cleaned: a half-value misleads.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum, StrEnum
from typing import Any

from policy import Catalogue, Level, current
from policy.decisions import CODE


class Markings(StrEnum):
    """How much of a marking (a label banner) an export may carry.

    LEVEL (the default) keeps the level's own word ("SECRET" from "NATO SECRET // REL TO
    AUT, CHE", "GEHEIM" from "DEU GEHEIM"): enough for a SOC to rate an event, without the
    caveats (compartment names can be classified themselves) or the audiences. FULL keeps
    the banner as stored, for a SIEM accredited as high as the bot. NONE drops every
    marking, and whatever would tell the level (ranks)."""

    LEVEL = "level"
    FULL = "full"
    NONE = "none"


DEFAULT_MARKINGS = Markings.LEVEL

# Matrix identifiers (the spec's grammar, narrowed to what homeservers hand out), and the
# bot's own short names. Anchored with fullmatch; ASCII only.
_SERVER = r"(?:[A-Za-z0-9.\-]{1,255}|\[[0-9A-Fa-f:.]{2,45}\])(?::[0-9]{1,5})?"
_OPAQUE = r"[A-Za-z0-9._~+/=\-]{1,255}"
USER_ID_RE = re.compile(rf"@[A-Za-z0-9._=\-/+]{{1,255}}:{_SERVER}")
ROOM_ID_RE = re.compile(rf"!{_OPAQUE}:{_SERVER}")
EVENT_ID_RE = re.compile(rf"\${_OPAQUE}(?::{_SERVER})?")
ROOM_KEY_RE = re.compile(r"[a-z0-9_-]{1,32}")  # bot/config.py's rule for a room key
FEED_BUCKET_RE = re.compile(r"[A-Za-z0-9_-]{1,64}|\(malformed\)|\*")  # ingest's buckets


@dataclass(frozen=True, slots=True)
class Pattern:
    """A string of this shape (ASCII, matched whole)."""

    name: str
    regex: re.Pattern[str]


@dataclass(frozen=True, slots=True)
class OneOf:
    """One of these fixed words (code-written vocabulary)."""

    words: frozenset[str]


@dataclass(frozen=True, slots=True)
class ListOf:
    """A list of values of one shape; items of another shape are left out."""

    item: Spec
    limit: int = 100


@dataclass(frozen=True, slots=True)
class MapOf:
    """An object whose keys and values each have one shape (ingest's per-feed counts)."""

    key: Pattern
    value: Spec
    limit: int = 100


class Scalar(Enum):
    INT = "int"
    NUMBER = "number"
    BOOL = "bool"


class Marking(Enum):
    """A value that tells a marking, exported under the Markings setting."""

    LABEL = "label"  # one banner: its level word under LEVEL, as stored under FULL
    CAVEATS = "caveats"  # a list of caveat words: only under FULL (they have no level word)
    RANK = "rank"  # a level's rank (0-4): under LEVEL and FULL, not NONE


Spec = Pattern | OneOf | ListOf | MapOf | Scalar | Marking

USER = Pattern("user id", USER_ID_RE)
ROOM_ID = Pattern("room id", ROOM_ID_RE)
EVENT = Pattern("event id", EVENT_ID_RE)
ROOM = Pattern("room key", ROOM_KEY_RE)
FEED = Pattern("feed key", FEED_BUCKET_RE)
REASON_CODE = Pattern("reason code", CODE)
SCHEME = Pattern("scheme code", re.compile(r"[A-Z]{2,4}"))
NATION = Pattern("nation trigraph", re.compile(r"[A-Z]{3}"))
DATE = Pattern("ISO date", re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}"))
TIME = Pattern(
    "ISO time",
    re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}(?:\.[0-9]{1,6})?"
               r"(?:Z|[+-][0-9]{2}:[0-9]{2})?"),
)  # fmt: skip
TOKEN = Pattern("opaque id", re.compile(r"[A-Za-z0-9._~+/=\-]{1,128}"))  # device, session, txn
KEY = Pattern("public key", re.compile(r"[A-Za-z0-9+/=_\-]{16,128}"))
IDENT = Pattern("type name", re.compile(r"[A-Za-z_][A-Za-z0-9_.]{0,127}"))
ERRCODE = Pattern("Matrix errcode", re.compile(r"[A-Z][A-Z0-9_]{0,63}|error"))
CRON = Pattern("cron", re.compile(r"[0-9A-Za-z*/,\- ]{1,100}"))
ADDRESS = Pattern("IP address", re.compile(r"[0-9A-Fa-f:.]{2,45}"))  # a feed request's source
HASH = Pattern("chain hash", re.compile(r"[0-9a-f]{64}"))
ROUTE = Pattern("route", re.compile(r"[a-z0-9_-]{1,32}->[a-z0-9_-]{1,32}"))
SCHEDULE = Pattern(
    "digest schedule", re.compile(r"cfg-[0-9]{1,9}|db-[0-9]{1,18}|now:[a-z0-9_-]{1,32}")
)
COMMAND = Pattern("command name", re.compile(r"[a-z]{1,32}(?: [a-z][a-z-]{0,31}){0,2}"))
NODE = Pattern("node name", re.compile(r"[A-Za-z0-9._:\-]{1,128}"))
TRIGGER = Pattern(
    "removal trigger", re.compile(rf"join event|invite event|sweep|revoked by {USER_ID_RE.pattern}")
)
ROLE = Pattern("role", re.compile(r"[a-z]{1,16}(?: or [a-z]{1,16}){0,3}"))

_CAVEAT = re.compile(r"[A-Za-z0-9 ._/\-]{1,64}")
_DROP = object()  # a value that does not pass


def clean(spec: Spec, value: Any, markings: Markings) -> Any:
    """The value as it may be exported, or `_DROP`. None (a detail's "not known") is
    dropped too: its absence says the same."""
    if value is None:
        return _DROP
    if isinstance(spec, Pattern):
        ok = isinstance(value, str) and value.isascii() and spec.regex.fullmatch(value)
        return value if ok else _DROP
    if isinstance(spec, OneOf):
        return value if isinstance(value, str) and value in spec.words else _DROP
    if isinstance(spec, ListOf):
        if not isinstance(value, list | tuple):
            return _DROP
        items = [clean(spec.item, v, markings) for v in value[: spec.limit]]
        return [v for v in items if v is not _DROP]
    if isinstance(spec, MapOf):
        if not isinstance(value, Mapping):
            return _DROP
        out: dict[str, Any] = {}
        for k, v in list(value.items())[: spec.limit]:
            if clean(spec.key, k, markings) is _DROP:
                continue
            kept = clean(spec.value, v, markings)
            if kept is not _DROP:
                out[k] = kept
        return out
    if isinstance(spec, Scalar):
        return _scalar(spec, value)
    return _marking(spec, value, markings)


def dropped(value: Any) -> bool:
    return value is _DROP


def _scalar(spec: Scalar, value: Any) -> Any:
    if spec is Scalar.BOOL:
        return value if isinstance(value, bool) else _DROP
    if isinstance(value, bool):  # bool is an int to Python, not to a SIEM
        return _DROP
    if spec is Scalar.INT:
        return value if isinstance(value, int) else _DROP
    if isinstance(value, int) or (isinstance(value, float) and math.isfinite(value)):
        return value
    return _DROP


def _marking(spec: Marking, value: Any, markings: Markings) -> Any:
    if markings is Markings.NONE:
        return _DROP
    if spec is Marking.RANK:
        return _scalar(Scalar.INT, value)
    if spec is Marking.CAVEATS:
        if markings is not Markings.FULL or not isinstance(value, list | tuple):
            return _DROP
        return [v for v in value if isinstance(v, str) and _CAVEAT.fullmatch(v)] or _DROP
    if not isinstance(value, str) or level_of(value) is None:
        return _DROP  # only a banner the catalogue reads: never free text in a marking key
    if markings is Markings.FULL:
        return value
    word = level_word(value)
    return word if word is not None else _DROP


def level_of(banner: str) -> Level | None:
    """The level a stored banner starts with (`NATO SECRET // REL TO …` → NATO SECRET), in
    the schemes in force; None for anything else ("unreadable marking", free text)."""
    head = banner.split("//", 1)[0].strip()
    return _levels().get(head)


def level_word(banner: str) -> str | None:
    """The level's own word, without its scheme: "SECRET" for NATO SECRET, "GEHEIM" for
    DEU GEHEIM, "COSMIC TOP SECRET" as it is."""
    level = level_of(banner)
    if level is None:
        return None
    prefix = level.scheme + " "
    return level.name[len(prefix) :] if level.name.startswith(prefix) else level.name


_cache: tuple[Catalogue, dict[str, Level]] | None = None


def _levels() -> dict[str, Level]:
    """Every level of the catalogue in force by banner, rebuilt when a site schemes file
    replaced the catalogue."""
    global _cache
    catalogue = current()
    if _cache is None or _cache[0] is not catalogue:
        index = {lv.banner: lv for s in catalogue.schemes.values() for lv in s.levels}
        _cache = (catalogue, index)
    return _cache[1]
