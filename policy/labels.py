"""Labels: the marking grammar (parse, render) and equivalence between schemes.

Grammar::

    marking    = level { separator qualifier }
    separator  = "//" | " / "
    level      = [ trigraph " " ] level-name | abbreviation
    qualifier  = ( "REL TO" | "RELEASABLE TO" ) audience { "," audience } | caveat

The parser is small and says where it failed: every error carries the input, the offending
text and its position, and where it helps the nearest valid form.
"""

from __future__ import annotations

import difflib
import functools
import re
import unicodedata
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from policy.catalogue import CATALOGUE, Level, fold_accents, match_key

MAX_MARKING_LENGTH = 256
# Checked before NFC, which sorts runs of combining marks in quadratic time: composition
# shrinks text at most fourfold (Greek omega with three marks is one character).
_MAX_RAW_LENGTH = 4 * MAX_MARKING_LENGTH

_SEPARATOR = re.compile(r"//|(?<=\s)/(?=\s)")
_REL_TO = re.compile(r"^(?:rel|releasable) to(?: |$)")
_ALLOWED_CONTROLS = {"\t"}


class MarkingError(ValueError):
    """A marking that cannot be read; the message names the offending text."""

    def __init__(self, message: str, text: str = "", position: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.text = text
        self.position = position

    def __str__(self) -> str:
        return self.message


@dataclass(frozen=True, slots=True)
class Label:
    """A confidentiality label as the originator marked it (never overwritten)."""

    level: Level
    caveats: frozenset[str] = frozenset()
    rel_to: frozenset[str] = frozenset()  # REL TO tokens as written: trigraphs, NATO, EU

    @property
    def scheme(self) -> str:
        return self.level.scheme

    @property
    def rank(self) -> int:
        return self.level.rank

    @property
    def banner(self) -> str:
        return render(self)

    def __str__(self) -> str:
        return render(self)


def render(label: Label) -> str:
    """Canonical banner: `LEVEL [// CAVEAT …] [// REL TO A, B, …]`, caveats and REL TO sorted."""
    parts = [label.level.banner, *sorted(label.caveats)]
    if label.rel_to:
        parts.append("REL TO " + ", ".join(sorted(label.rel_to)))
    return " // ".join(parts)


@functools.lru_cache(maxsize=4096)
def releasable_set(label: Label) -> frozenset[str]:
    """Nations the label may reach: its scheme's own audience and everything in REL TO.

    Cached: labels are frozen, and a relay asks this once per target room."""
    scheme = CATALOGUE.schemes.get(label.scheme)
    own = scheme.audience if scheme is not None else frozenset({label.scheme})
    return own | CATALOGUE.expand(label.rel_to)


def convert(label: Label | Level, scheme: str) -> Level | None:
    """The level that shows `label` in `scheme`: same rank, else the next higher non-legacy
    level; None when there is none (or the scheme is unknown).

    Returns a Level, not a Label, on purpose: a converted label would carry the target
    scheme's audience, and decisions must use the originator's label.
    """
    target = CATALOGUE.scheme(scheme)
    if target is None:
        return None
    return target.level_at_or_above(label.rank)


def known_caveats(extra: Iterable[str] = ()) -> tuple[str, ...]:
    """Default caveats (ATOMAL, BOHEMIA, CRYPTO) plus configured ones, upper case, sorted."""
    words = {c.strip().upper() for c in (*CATALOGUE.default_caveats, *extra) if c.strip()}
    return tuple(sorted(words))


def parse_marking(
    text: str, context: str | None = None, *, extra_caveats: Iterable[str] = ()
) -> Label:
    """Read a marking. `context` is the room's scheme: it gives meaning to short names
    (`SECRET` in a NATO room) and narrows ambiguous ones (`GEHEIM` in a DEU room).

    Raises MarkingError naming the offending text; never any other exception.
    """
    if not isinstance(text, str):
        raise MarkingError(f"a marking must be text, not {type(text).__name__}")
    _check_length(text.strip(), _MAX_RAW_LENGTH)
    text = unicodedata.normalize("NFC", text).strip()
    _check_characters(text)
    if context is not None and CATALOGUE.scheme(context) is None:
        raise MarkingError(
            f"unknown scheme {context!r} (known: {', '.join(sorted(CATALOGUE.schemes))})"
        )
    ctx = context.strip().upper() if context is not None else None
    segments = list(_segments(text))
    level_text = segments[0][1]
    if not level_text:
        raise MarkingError(f"missing level before '//' in {text!r}", text, 0)
    level = _match_level(level_text, ctx, text)
    caveat_words = {
        match_key(c): c
        for c in known_caveats(extra_caveats)
        if len(c) <= _MAX_RAW_LENGTH  # a longer one can never match: not worth folding
    }
    caveats: set[str] = set()
    rel_to: set[str] = set()
    for pos, segment in segments[1:]:
        if not segment:
            raise MarkingError(f"empty qualifier at {pos} in {text!r}", text, pos)
        key = match_key(segment)
        rel = _REL_TO.match(key)
        if rel:
            rel_to |= _parse_rel_to(segment, pos, text)
        elif key in caveat_words:
            caveats.add(caveat_words[key])
        else:
            raise _bad_qualifier(segment, pos, text, ctx, caveat_words)
    return Label(level, frozenset(caveats), frozenset(rel_to))


def level_candidates(text: str, context: str | None = None) -> tuple[Level, ...]:
    """What the level segment of a marking may mean, whatever follows it: one level, the
    candidates of an ambiguous one, or none. Total: never raises."""
    if not isinstance(text, str) or len(text) > _MAX_RAW_LENGTH:
        return ()
    normal = unicodedata.normalize("NFC", text).strip()
    first = next(_segments(normal))[1]
    if not first:
        return ()
    level, candidates = _resolve(first, context.strip().upper() if context else None)
    return (level,) if level is not None else candidates


def parse_audience(tokens: Iterable[str]) -> frozenset[str]:
    """Audience tokens (trigraph, NATO, EU, English name) to canonical tokens."""
    tokens = tuple(tokens)
    for token in tokens:
        _check_length(token.strip(), what="audience")  # before match_key's NFC
    return frozenset(_audience_token(t, None, "") for t in tokens)


def _check_length(text: str, limit: int = MAX_MARKING_LENGTH, what: str = "marking") -> None:
    if len(text) > limit:
        raise MarkingError(
            f"{what} too long ({len(text)} characters, at most {MAX_MARKING_LENGTH}): "
            f"{text[:40]!r}…",
            text,
        )


def _check_characters(text: str) -> None:
    if not text:
        raise MarkingError("empty marking: expected a level such as 'NATO SECRET'", text, 0)
    _check_length(text)
    for i, ch in enumerate(text):
        if unicodedata.category(ch) in ("Cc", "Cf", "Co", "Cs", "Cn") and ch not in (
            _ALLOWED_CONTROLS
        ):
            raise MarkingError(
                f"invisible or control character U+{ord(ch):04X} at {i} in {text!r}", text, i
            )


def _segments(text: str) -> Iterator[tuple[int, str]]:
    """Split on separators, yielding (position of the stripped segment, segment)."""
    start = 0
    for sep in _SEPARATOR.finditer(text):
        yield _strip_at(text, start, sep.start())
        start = sep.end()
    yield _strip_at(text, start, len(text))


def _strip_at(text: str, start: int, end: int) -> tuple[int, str]:
    raw = text[start:end]
    lead = len(raw) - len(raw.lstrip())
    return start + lead, raw.strip()


def _candidates(key: str, ctx: str | None, folded: bool) -> tuple[Level, ...]:
    if folded:
        key = fold_accents(key)
        ctx_names, names = CATALOGUE.context_folded, CATALOGUE.folded
    else:
        ctx_names, names = CATALOGUE.context_exact, CATALOGUE.exact
    if ctx is not None and ctx in ctx_names and key in ctx_names[ctx]:
        return (ctx_names[ctx][key],)
    return names.get(key, ())


def _resolve(segment: str, ctx: str | None) -> tuple[Level | None, tuple[Level, ...]]:
    """(level, candidates): a level when the segment names exactly one, else the candidates."""
    key = match_key(segment)
    for folded in (False, True):
        found = _candidates(key, ctx, folded)
        if len(found) == 1:
            return found[0], found
        if found:
            narrowed = tuple(lv for lv in found if lv.scheme == ctx)
            if len(narrowed) == 1:
                return narrowed[0], found
            return None, found
    return None, ()


def _match_level(segment: str, ctx: str | None, text: str) -> Level:
    level, candidates = _resolve(segment, ctx)
    if level is not None:
        return level
    where = "" if segment == text else f" in {text!r}"
    if candidates:
        forms = sorted(_prefixed(segment, lv) for lv in candidates)
        room = f" in a {ctx} room" if ctx else " without a room context"
        raise MarkingError(
            f"ambiguous marking {segment!r}{where}{room}: it may be {', '.join(forms)} — "
            f"write the trigraph, e.g. {forms[0]!r}",
            text,
            0,
        )
    hint = _nearest(segment, CATALOGUE.spellings)
    raise MarkingError(f"unknown marking {segment!r}{where}{hint}", text, 0)


def _prefixed(segment: str, level: Level) -> str:
    """How to write `segment` unambiguously for `level`: with its trigraph if that works."""
    form = f"{level.scheme} {segment.upper()}"
    return form if _resolve(form, None)[0] == level else level.banner


def _parse_rel_to(segment: str, pos: int, text: str) -> set[str]:
    keyword = re.match(r"(?i)\s*(?:rel|releasable)\s+to\b", segment)
    offset = keyword.end() if keyword else len(segment)
    rest = segment[offset:]
    if not rest.strip():
        raise MarkingError(
            f"'REL TO' with no audience at {pos} in {text!r}: name nations, NATO or EU",
            text,
            pos,
        )
    out: set[str] = set()
    cursor = pos + offset
    for raw in rest.split(","):
        token_pos, token = _strip_at(text, cursor, cursor + len(raw))
        cursor += len(raw) + 1
        if not token:
            raise MarkingError(
                f"empty audience in 'REL TO' at {token_pos} in {text!r}", text, token_pos
            )
        out.add(_audience_token(token, token_pos, text))
    return out


def _audience_token(token: str, pos: int | None, text: str) -> str:
    key = match_key(token)
    upper = key.upper()
    if upper in ("NATO", "EU") or upper in CATALOGUE.countries:
        return upper
    code = CATALOGUE.country_names.get(key) or CATALOGUE.country_names.get(fold_accents(key))
    if code is not None:
        return code
    where = f" at {pos} in {text!r}" if pos is not None and text else ""
    options = ["NATO", "EU", *sorted(CATALOGUE.countries)]
    hint = _nearest(token.upper(), options)
    raise MarkingError(
        f"unknown audience {token!r}{where}: expected an ISO 3166 trigraph, NATO, EU or a "
        f"member state's name{hint}",
        text,
        pos,
    )


def _bad_qualifier(
    segment: str, pos: int, text: str, ctx: str | None, caveats: dict[str, str]
) -> MarkingError:
    level, candidates = _resolve(segment, ctx)
    if level is not None or candidates:
        return MarkingError(
            f"second level {segment!r} at {pos} in {text!r}: a marking has exactly one level",
            text,
            pos,
        )
    known = ", ".join(sorted(caveats.values()))
    hint = _nearest(segment.upper(), [*caveats.values(), "REL TO"])
    return MarkingError(
        f"unknown caveat {segment!r} at {pos} in {text!r} (known: {known}){hint}", text, pos
    )


def _nearest(word: str, options: Iterable[str]) -> str:
    pool = {o.upper(): o for o in options}
    close = difflib.get_close_matches(word.upper(), list(pool), n=1, cutoff=0.6)
    return f" — did you mean {pool[close[0]]!r}?" if close else ""
