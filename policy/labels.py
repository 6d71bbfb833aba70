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

from policy import catalogue as _catalogue
from policy.catalogue import ALLIANCES, Catalogue, Level, current, fold_accents, match_key

MAX_MARKING_LENGTH = 256
# Checked before NFC, which sorts runs of combining marks in quadratic time: composition
# shrinks text at most fourfold (Greek omega with three marks is one character).
_MAX_RAW_LENGTH = 4 * MAX_MARKING_LENGTH

_SEPARATOR = re.compile(r"//|(?<=\s)/(?=\s)")
_REL_TO = re.compile(r"^(?:rel|releasable) to(?: |$)")
_ALLOWED_CONTROLS = {"\t"}


class MarkingError(ValueError):
    """A marking that cannot be read; the message names the offending text."""

    def __init__(
        self,
        message: str,
        text: str = "",
        position: int | None = None,
        suggestions: tuple[Level, ...] = (),
    ) -> None:
        super().__init__(message)
        self.message = message
        self.text = text
        self.position = position
        self.suggestions = suggestions  # the levels a did-you-mean names, if any

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


def record_mismatch(label: Label, banner: str, scheme: str, rank: int) -> str | None:
    """None when `label`, read again in the schemes in force from `banner` as stored, is
    what was stored with it: the same banner, scheme and rank. Otherwise why not, naming
    both (a site schemes file that redefines a scheme moves its levels' ranks; a label on
    record is never silently raised or lowered by that, so the caller refuses the row)."""
    if (label.banner, label.scheme, label.rank) == (banner, scheme, rank):
        return None
    overrides = current().overrides
    cause = (
        f" ({', '.join(c for c in overrides if c in (scheme, label.scheme))} is redefined by "
        "the site schemes file)"
        if scheme in overrides or label.scheme in overrides
        else ""
    )
    return (
        f"on record as {banner} ({scheme}, rank {rank}), but the schemes in force read it as "
        f"{label.banner} ({label.scheme}, rank {label.rank}){cause}"
    )


@functools.lru_cache(maxsize=4096)
def releasable_set(label: Label) -> frozenset[str]:
    """Nations the label may reach: its scheme's own audience and everything in REL TO.

    Cached: labels are frozen, and a relay asks this once per target room (the cache is
    dropped when another catalogue is installed)."""
    catalogue = current()
    scheme = catalogue.schemes.get(label.scheme)
    own = scheme.audience if scheme is not None else frozenset({label.scheme})
    return own | catalogue.expand(label.rel_to)


def install_catalogue(catalogue: Catalogue) -> Catalogue:
    """Make `catalogue` the process's (see policy.catalogue) and drop what was cached under
    the previous one; returns the previous one."""
    previous = _catalogue.install(catalogue)
    releasable_set.cache_clear()
    stored_label.cache_clear()
    return previous


@functools.lru_cache(maxsize=4096)
def stored_label(banner: str, caveats: tuple[str, ...] = ()) -> Label:
    """A stored item's label, read once per distinct banner: a cell's items share a few
    dozen banners, and reading one takes ~30 µs, half of opening 100 000 items for a search
    or a digest. Labels are frozen, so sharing one is safe; a MarkingError is not cached,
    and nothing read under one catalogue outlives its replacement (install_catalogue)."""
    return parse_marking(banner, extra_caveats=caveats)


def convert(label: Label | Level, scheme: str) -> Level | None:
    """The level that shows `label` in `scheme`: the level of the same rank (the label's own
    level within its own scheme); None when the scheme has none or is unknown. It never
    rounds: material at a level a nation lacks has no equivalent there, and
    `why_no_equivalent` says why.

    Returns a Level, not a Label, on purpose: a converted label would carry the target
    scheme's audience, and decisions must use the originator's label.
    """
    level = label.level if isinstance(label, Label) else label
    target = current().scheme(scheme)
    if target is None:
        return None
    if target.code == level.scheme:
        return level
    return target.level_at(level.rank)


def why_no_equivalent(label: Label | Level, scheme: str) -> str:
    """The printable reason `convert(label, scheme)` is None: `USA has no level equivalent to
    NATO RESTRICTED`, with the scheme data's note when it gives one."""
    level = label.level if isinstance(label, Label) else label
    catalogue = current()
    target = catalogue.scheme(scheme)
    if target is None:
        known = ", ".join(sorted(catalogue.schemes))
        code = scheme.strip().upper()
        return f"no equivalent of {level.banner} in {code}: no scheme for {code} (known: {known})"
    head = f"{target.code} has no level equivalent to {level.banner}"
    note = target.absent_note(level.rank)
    if note:
        return f"{head}: {note}"
    legacy = [lv.banner for lv in target.levels if lv.rank == level.rank]
    if legacy:
        return f"{head}: {legacy[0]} is a legacy level, read but never produced"
    if level.rank == 0 and target.code not in ALLIANCES:
        return f"{head}: it has no unclassified level"
    if target.levels and level.rank > target.levels[0].rank:
        return f"{head}: its highest level is {target.levels[0].banner}"
    return f"{head}: it has no level of rank {level.rank}"


def equivalent(label: Label | Level, scheme: str) -> Level | str:
    """`convert`, or the reason there is nothing (one call for callers that print it)."""
    level = convert(label, scheme)
    return level if level is not None else why_no_equivalent(label, scheme)


def known_caveats(extra: Iterable[str] = ()) -> tuple[str, ...]:
    """Default caveats (ATOMAL, BOHEMIA, CRYPTO) plus configured ones, upper case, sorted."""
    words = {c.strip().upper() for c in (*current().default_caveats, *extra) if c.strip()}
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
    if context is not None and current().scheme(context) is None:
        raise MarkingError(
            f"unknown scheme {context!r} (known: {', '.join(sorted(current().schemes))})"
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
    catalogue = current()
    if folded:
        key = fold_accents(key)
        ctx_names, names = catalogue.context_folded, catalogue.folded
    else:
        ctx_names, names = catalogue.context_exact, catalogue.exact
    if ctx is not None and ctx in ctx_names and key in ctx_names[ctx]:
        return (ctx_names[ctx][key],)
    return names.get(key, ())


def _resolve(segment: str, ctx: str | None) -> tuple[Level | None, tuple[Level, ...]]:
    """(level, candidates): a level when the segment names exactly one, else the candidates."""
    key = match_key(segment)
    found = _candidates(key, ctx, False)
    if not found:
        found = _candidates(key, ctx, True)
    elif ctx is not None and all(lv.scheme != ctx for lv in found):
        # Another nation's exact form, and maybe the room's own level typed without its
        # accents (TAJNE in a Czech room: Polish TAJNE, or Czech TAJNÉ): neither wins.
        own = tuple(lv for lv in _candidates(key, ctx, True) if lv.scheme == ctx)
        if own:
            return None, tuple(dict.fromkeys((*found, *own)))
    if len(found) == 1:
        return found[0], found
    if found:
        narrowed = tuple(lv for lv in found if lv.scheme == ctx)
        # The room's reading wins only if no other reading is higher: SECRET in a Romanian
        # room may be ROU SECRET (CONFIDENTIAL-level) or another nation's SECRET, and
        # reading it low would relay and keep it too low. Then the trigraph must be written.
        if len(narrowed) == 1 and all(lv.rank <= narrowed[0].rank for lv in found):
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
    hint, suggested = _level_hint(segment, ctx)
    raise MarkingError(f"unknown marking {segment!r}{where}{hint}", text, 0, suggested)


def _level_hint(segment: str, ctx: str | None) -> tuple[str, tuple[Level, ...]]:
    """Did-you-mean for an unknown level, never across a nation: with a trigraph, only that
    scheme's levels (or "no scheme for CHE"); without one, the room's scheme first, else any
    scheme's, each suggestion written with its nation."""
    catalogue = current()
    head = _nation_written(segment, catalogue)
    if head is not None:
        if head not in catalogue.schemes:
            known = ", ".join(sorted(catalogue.schemes))
            return f": no scheme for {head}; known: {known}", ()
        found = _close(segment, catalogue.scheme_spellings.get(head, ()), head, catalogue)
        if found:
            return _did_you_mean(found)
        levels = ", ".join(lv.banner for lv in catalogue.schemes[head].levels)
        if not levels:
            return (
                f": {head} has no levels on record ({catalogue.schemes[head].absent_note(3)})",
                (),
            )
        return f" ({head} levels: {levels})", ()
    if ctx is not None:
        found = _close(segment, catalogue.bare_spellings.get(ctx, ()), ctx, catalogue)
        if found:
            return _did_you_mean(found)
    return _did_you_mean(_close(segment, catalogue.spellings, None, catalogue))


# A nation written before the level: a trigraph or short name (UK) and a separator, or a
# scheme's own code run into the level (DEUGEHEIM).
_NATION_HEAD = re.compile(r"\s*([^\W\d_]{2,3})[\s\-_/.:]+\S")
_CODE_RUN_IN = re.compile(r"\s*([A-Za-z]{3})[^\W\d_]")


def _nation_written(segment: str, catalogue: Catalogue) -> str | None:
    """The nation an unknown level names before its level, if any: a scheme's code, a
    country's trigraph (which may have no scheme) or a short name such as UK."""
    match = _NATION_HEAD.match(segment)
    if match is not None:
        word = match.group(1)
        code = word.upper()
        if code in catalogue.schemes or code in catalogue.countries:
            return code
        return catalogue.country_names.get(match_key(word))
    match = _CODE_RUN_IN.match(segment)
    if match is not None and match.group(1).upper() in catalogue.schemes:
        return match.group(1).upper()
    return None


def _close(
    segment: str, pool: Iterable[str], scheme: str | None, catalogue: Catalogue
) -> list[tuple[str, Level]]:
    """Spellings close to `segment` and the level each names (in `scheme`, if given), as a
    form that names the level on its own or in a room of `scheme`."""
    forms = {o.upper(): o for o in pool}
    out: list[tuple[str, Level]] = []
    for close in difflib.get_close_matches(segment.upper(), list(forms), n=3, cutoff=0.6):
        form = forms[close]
        key = match_key(form)
        levels = list(catalogue.exact.get(key, ()))
        if scheme is not None:
            ctx_level = catalogue.context_exact.get(scheme, {}).get(key)
            levels = [lv for lv in levels if lv.scheme == scheme] or (
                [ctx_level] if ctx_level is not None else []
            )
        for level in levels:
            shown = form if scheme is not None else _named(form, level)
            if all(lv != level for _, lv in out):
                out.append((shown, level))
    return out


def _named(form: str, level: Level) -> str:
    """`form` written so that it names its nation: an alliance's own form if it reads alone,
    else the trigraph form (`DEU GEHEIM`) or the banner."""
    if level.scheme in ALLIANCES and _resolve(form, None)[0] == level:
        return form
    return _prefixed(form, level)


def _did_you_mean(found: list[tuple[str, Level]]) -> tuple[str, tuple[Level, ...]]:
    if not found:
        return "", ()
    forms = []
    for form, level in found[:3]:
        named = form.upper() == level.banner.upper() or level.banner in form
        forms.append(repr(form) if named else f"{form!r} ({level.banner})")
    return f" — did you mean {' or '.join(forms)}?", tuple(lv for _, lv in found[:3])


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
    catalogue = current()
    if upper in ("NATO", "EU") or upper in catalogue.countries:
        return upper
    code = catalogue.country_names.get(key) or catalogue.country_names.get(fold_accents(key))
    if code is not None:
        return code
    where = f" at {pos} in {text!r}" if pos is not None and text else ""
    options = ["NATO", "EU", *sorted(catalogue.countries)]
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


@dataclass(frozen=True, slots=True)
class SchemeRow:
    """One line of a scheme's table: a level (or a rank it lacks) and its equivalents."""

    rank: int
    level: Level | None  # None: the scheme has no level of this rank
    aliases: tuple[str, ...]  # other accepted forms of the level
    nato: Level | str  # the NATO level of the same rank, or why there is none
    eu: Level | str  # the EU level of the same rank, or why there is none
    missing: str = ""  # for a rank the scheme lacks: why (its absent note, or the rule)


def scheme_rows(code: str) -> tuple[SchemeRow, ...]:
    """A scheme's levels, highest first, each with its NATO and EU equivalents (same rank), and
    the ranks 1-4 it has no level for (and any other rank its data notes), with the reason.
    Empty for an unknown scheme."""
    catalogue = current()
    scheme = catalogue.scheme(code)
    if scheme is None:
        return ()
    rows: list[SchemeRow] = []
    nato = catalogue.schemes["NATO"]
    for level in scheme.levels:
        rows.append(
            SchemeRow(
                level.rank,
                level,
                scheme.aliases_of(level),
                equivalent(level, "NATO"),
                equivalent(level, "EU"),
            )
        )
    have = {lv.rank for lv in scheme.levels if not lv.legacy}
    noted = {rank for rank, _ in scheme.absent}
    for rank in sorted(({1, 2, 3, 4} | noted) - have, reverse=True):
        reference = nato.level_at(rank)
        if reference is None:
            continue
        why = why_no_equivalent(reference, scheme.code)
        rows.append(SchemeRow(rank, None, (), reference, equivalent(reference, "EU"), missing=why))
    rows.sort(key=lambda row: (-row.rank, row.level is None))
    return tuple(rows)
