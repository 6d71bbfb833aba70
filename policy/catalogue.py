"""The scheme catalogue: classification schemes, levels, audiences, loaded from data.

Why a data file: adding a nation or an alias must be a data change reviewed by a security
officer, not a code change. The file is read once, at import, from inside the
package; everything after that is pure lookups on frozen values.

A site may add or override national schemes without editing the package: `with_site` builds
a catalogue from the packaged data plus a parsed site file (reading the file is the bot's
job), and `install` makes it the process's catalogue. Why a module global rather than a
catalogue threaded through every call: the catalogue is fixed for the life of a process and
installed once at start, before anything parses a marking (the bot's config loading, the
CLI's `--schemes` option and the gate's config parsing all do it first), so every reader sees
one value; threading it would touch every rule and every caller for no gain. Readers call
`current()` at use (never keep the object), so a swap in tests is seen everywhere.
"""

from __future__ import annotations

import re
import tomllib
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field, replace
from importlib.resources import files
from types import MappingProxyType
from typing import Any

# Hyphen-minus, hyphen, non-breaking hyphen, figure dash, en dash, em dash, minus sign.
_DASHES = re.compile(r"\s*[-\u2010\u2011\u2012\u2013\u2014\u2212]\s*")
_SPACES = re.compile(r"\s+")

ALLIANCES = ("NATO", "EU")


def match_key(text: str) -> str:
    """Fold text the way markings are compared: case, white space and dashes.

    Accents are kept: exact (accent-sensitive) matches are tried before folded ones.
    """
    text = unicodedata.normalize("NFC", text).casefold()
    text = _DASHES.sub("-", text)
    return _SPACES.sub(" ", text).strip()


# Letters that carry no combining mark to drop but that people type as plain ASCII:
# Turkish dotless i (GIZLI for GİZLİ; the dotted capital İ decomposes by itself), Polish ł,
# Danish and Norwegian ø and æ, Croatian đ, Maltese ħ, œ.
_PLAIN = str.maketrans(
    {
        "ı": "i",
        "ł": "l",
        "Ł": "L",
        "ø": "o",
        "Ø": "O",
        "đ": "d",
        "Đ": "D",
        "ħ": "h",
        "Ħ": "H",
        "æ": "ae",
        "Æ": "AE",
        "œ": "oe",
        "Œ": "OE",
    }
)
# German umlauts as typed on a keyboard without them: EINGESCHRAENKT for EINGESCHRÄNKT.
_DIGRAPHS = str.maketrans({"ä": "ae", "ö": "oe", "ü": "ue", "Ä": "AE", "Ö": "OE", "Ü": "UE"})


def fold_accents(key: str) -> str:
    """Drop combining marks so that `tres secret` finds `TRÈS SECRET`, and map the letters
    typed as plain ASCII (`gizli` finds `GİZLİ`, Greek without tonos finds it with)."""
    decomposed = unicodedata.normalize("NFD", key.translate(_PLAIN))
    stripped = "".join(c for c in decomposed if unicodedata.category(c) != "Mn")
    return unicodedata.normalize("NFC", stripped)


def typed_forms(key: str) -> tuple[str, ...]:
    """The folded keys a level name is indexed under: accent-folded, and with German umlauts
    as digraphs (`eingeschraenkt`); one entry when they agree."""
    folded = fold_accents(key)
    digraphs = fold_accents(unicodedata.normalize("NFC", key).translate(_DIGRAPHS))
    return (folded,) if digraphs == folded else (folded, digraphs)


@dataclass(frozen=True, slots=True, order=True)
class Level:
    """One level of one scheme; compared by scheme and rank, shown by its banner."""

    scheme: str
    rank: int
    name: str
    legacy: bool = False

    @property
    def banner(self) -> str:
        """Canonical name, with the nation's trigraph unless the name already starts with it."""
        if self.scheme in ALLIANCES or self.name.startswith(self.scheme + " "):
            return self.name
        return f"{self.scheme} {self.name}"

    def __str__(self) -> str:
        return self.banner


@dataclass(frozen=True, slots=True)
class Scheme:
    """A classification authority: NATO, EU or a nation (ISO 3166-1 alpha-3)."""

    code: str
    levels: tuple[Level, ...]  # highest rank first
    audience: frozenset[str]  # the nations its own material is releasable to
    name: str = ""  # English name: "Austria"; the code when the data gives none
    sources: tuple[str, ...] = ()  # where the levels come from
    absent: tuple[tuple[int, str], ...] = ()  # (rank, why the scheme has no level there)
    aliases: tuple[tuple[str, ...], ...] = ()  # per level (same order): other accepted forms

    def level_at(self, rank: int) -> Level | None:
        """Equivalence rule: the non-legacy level of the same rank; None when the scheme has
        none (it never rounds up or down)."""
        for level in self.levels:
            if level.rank == rank and not level.legacy:
                return level
        return None

    def absent_note(self, rank: int) -> str | None:
        """What the data says about a rank the scheme has no level for, if anything."""
        return next((note for r, note in self.absent if r == rank), None)

    def aliases_of(self, level: Level) -> tuple[str, ...]:
        for lv, forms in zip(self.levels, self.aliases, strict=False):
            if lv == level:
                return forms
        return ()


class CatalogueError(ValueError):
    """Scheme data that cannot be used; the message names the file, the scheme and the key:
    `schemes.toml: schemes[2] (CHE).levels[1].rank: must be 0-4`."""


@dataclass(frozen=True, slots=True)
class Catalogue:
    """Everything the label grammar and the decisions look up, indexed for matching."""

    schemes: Mapping[str, Scheme]
    alliance_members: Mapping[str, frozenset[str]]
    countries: frozenset[str]
    country_names: Mapping[str, str]  # match_key(name) -> trigraph
    default_caveats: tuple[str, ...]
    # match_key(name) -> levels it may name, exact and accent-folded
    exact: Mapping[str, tuple[Level, ...]] = field(repr=False)
    folded: Mapping[str, tuple[Level, ...]] = field(repr=False)
    # scheme -> match_key(short name) -> level, for context-only names
    context_exact: Mapping[str, Mapping[str, Level]] = field(repr=False)
    context_folded: Mapping[str, Mapping[str, Level]] = field(repr=False)
    spellings: tuple[str, ...] = field(repr=False)  # every accepted level spelling, for hints
    # scheme -> the spellings that name it on their own (with the trigraph), for hints
    scheme_spellings: Mapping[str, tuple[str, ...]] = field(repr=False, default_factory=dict)
    # scheme -> spellings without the trigraph, and context names: read in a room of it
    bare_spellings: Mapping[str, tuple[str, ...]] = field(repr=False, default_factory=dict)
    overrides: tuple[str, ...] = ()  # packaged schemes a site file replaced
    additions: tuple[str, ...] = ()  # schemes a site file added

    def scheme(self, code: str) -> Scheme | None:
        return self.schemes.get(code.strip().upper())

    def audience_of(self, token: str) -> frozenset[str]:
        """Nations meant by an audience token: `NATO`, `EU` or a trigraph."""
        members = self.alliance_members.get(token)
        if members is not None:
            return members
        return frozenset({token})

    def expand(self, tokens: Iterable[str]) -> frozenset[str]:
        out: set[str] = set()
        for token in tokens:
            out |= self.audience_of(token)
        return frozenset(out)

    def fold_audience(self, nations: Iterable[str]) -> frozenset[str]:
        """Replace a complete alliance by its name: {all 32 NATO members} -> {NATO}."""
        rest = set(nations)
        tokens: set[str] = set()
        for alliance in ALLIANCES:
            members = self.alliance_members[alliance]
            if members <= set(nations):
                tokens.add(alliance)
                rest -= members
        return frozenset(tokens | rest)


def _index(entries: Iterable[tuple[str, Level]]) -> dict[str, tuple[Level, ...]]:
    index: dict[str, list[Level]] = {}
    for key, level in entries:
        bucket = index.setdefault(key, [])
        if level not in bucket:
            bucket.append(level)
    return {k: tuple(v) for k, v in index.items()}


_SCHEME_KEYS = {"code", "name", "sources", "absent", "levels"}
_LEVEL_KEYS = {"rank", "name", "aliases", "abbreviations", "context_names", "legacy"}
_TOP_KEYS = {"default_caveats", "audiences", "country_names", "schemes"}
_SITE_KEYS = {"schemes"}


def _is_rank(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and 0 <= value <= 4


def _texts(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) and v.strip() for v in value)


# What a marking refuses (labels._check_characters), and line breaks: a name, note or source
# holding one could hide or reorder what `label schemes` shows (bidi overrides), and a level
# name holding one could never be typed.
_HIDDEN = {"Cc", "Cf", "Co", "Cs", "Cn", "Zl", "Zp"}


def _check_text(text: str, at: str) -> None:
    for i, ch in enumerate(text):
        if unicodedata.category(ch) in _HIDDEN:
            raise CatalogueError(
                f"{at}: contains the invisible or control character U+{ord(ch):04X} at {i}"
            )


_FORM_KEYS = ("aliases", "abbreviations", "context_names")
# How the grammar (policy.labels) splits a marking: `//`, and `/` with white space around it;
# after the level, `REL TO` (or `RELEASABLE TO`) starts the audience list, split on commas. A
# level form holding one could never be parsed, or reads as a release it does not carry.
_SLASH_BY_SPACE = re.compile(r"\s/|/\s")
_PUNCTUATION = (",", "[", "]")
_RELEASE = re.compile(r"(?<!\w)(?:rel|releasable) to(?!\w)")
_LEADING_CODE = re.compile(r"[^\s\-]+")


@dataclass(frozen=True, slots=True)
class _Reserved:
    """The alliances' forms, which no national form may take, and the codes a national form
    may not start with."""

    forms: Mapping[str, tuple[str, str, str]]  # key -> (scheme, kind, banner)
    context: Mapping[str, tuple[str, str, int]]  # key -> (scheme, banner, rank)
    codes: frozenset[str]  # ISO 3166-1 alpha-3 codes, NATO and EU


def _keys(form: str) -> tuple[str, ...]:
    key = match_key(form)
    return (key, *typed_forms(key))


def _reserved(schemes: Iterable[Any], countries: frozenset[str]) -> _Reserved:
    """From validated [[schemes]] tables: the NATO and EU forms, first one wins."""
    forms: dict[str, tuple[str, str, str]] = {}
    context: dict[str, tuple[str, str, int]] = {}
    for raw in schemes:
        if raw["code"] not in ALLIANCES:
            continue
        for lv in raw["levels"]:
            named = [(lv["name"], "name")]
            named += [(a, "alias") for a in lv.get("aliases", ())]
            named += [(a, "abbreviation") for a in lv.get("abbreviations", ())]
            for form, kind in named:
                for key in _keys(form):
                    forms.setdefault(key, (raw["code"], kind, lv["name"]))
            for form in lv.get("context_names", ()):
                for key in _keys(form):
                    context.setdefault(key, (raw["code"], lv["name"], lv["rank"]))
    return _Reserved(forms, context, countries | set(ALLIANCES))


def _a(scheme: str) -> str:
    return f"an {scheme}" if scheme == "EU" else f"a {scheme}"


def _check_form(form: str, at: str, code: str, rank: int, kind: str, reserved: _Reserved) -> None:
    """One level form (name, alias, abbreviation, context name) of scheme `code`: parseable
    as a level, and, for a nation, no alliance's form and no other nation's trigraph."""
    shown = repr(form)
    if "//" in form:
        raise CatalogueError(
            f"{at}: {shown} contains '//', which a marking's grammar reads as a separator"
        )
    if _SLASH_BY_SPACE.search(form):
        raise CatalogueError(
            f"{at}: {shown} contains '/' next to a space, which a marking's grammar reads as "
            "a separator (' / ')"
        )
    for mark in _PUNCTUATION:
        if mark in form:
            raise CatalogueError(
                f"{at}: {shown} contains {mark!r}, which a level's name cannot hold (markings "
                "use it around audiences)"
            )
    key = match_key(form)
    if _RELEASE.search(key):
        raise CatalogueError(
            f"{at}: {shown} contains 'REL TO', which starts a marking's release list"
        )
    if code in ALLIANCES:
        return
    for k in _keys(form):
        if k in reserved.forms:
            scheme, what, banner = reserved.forms[k]
            raise CatalogueError(f"{at}: {shown} is {_a(scheme)} level's {what} ({banner})")
    head = _LEADING_CODE.match(key)
    lead = head.group(0).upper() if head else ""
    if lead != code and lead in reserved.codes:
        what = "is" if lead == key.upper() else "starts with"
        raise CatalogueError(f"{at}: {shown} {what} another scheme's code, {lead}")
    for k in _keys(form):
        for other, (scheme, what, banner) in reserved.forms.items():
            if k.startswith(other + " "):
                raise CatalogueError(
                    f"{at}: {shown} starts with {_a(scheme)} level's {what} ({banner})"
                )
    # An English word that is also an alliance's short name (SECRET) is a genuine national
    # name (USA, IRL; Romanian SECRET is rank 2), but an alias, abbreviation or context name
    # taking it must mean the alliance's rank: a site cannot make SECRET mean RESTRICTED.
    if kind != "name":
        for k in _keys(form):
            if k in reserved.context and reserved.context[k][2] != rank:
                scheme, banner, other_rank = reserved.context[k]
                raise CatalogueError(
                    f"{at}: {shown} is {_a(scheme)} level's context name ({banner}, rank "
                    f"{other_rank}) but this level is rank {rank}"
                )


def _check_forms(raw: Mapping[str, Any], where: str, reserved: _Reserved) -> None:
    """The level forms of a structurally valid [[schemes]] table (see `_check_form`)."""
    code = raw["code"]
    where = f"{where} ({code})"
    for j, lv in enumerate(raw["levels"]):
        at = f"{where}.levels[{j}]"
        _check_form(lv["name"], f"{at}.name", code, lv["rank"], "name", reserved)
        for key in _FORM_KEYS:
            for k, form in enumerate(lv.get(key, ())):
                _check_form(form, f"{at}.{key}[{k}]", code, lv["rank"], key, reserved)


def _check_scheme(raw: Any, where: str, countries: frozenset[str]) -> str:
    """Validate one [[schemes]] table; returns its code. Raises CatalogueError naming the key."""
    if not isinstance(raw, Mapping):
        raise CatalogueError(f"{where}: expected a table")
    code = raw.get("code")
    if not isinstance(code, str) or not (
        code in ALLIANCES or (re.fullmatch(r"[A-Z]{3}", code) and code in countries)
    ):
        raise CatalogueError(f"{where}.code: expected NATO, EU or an ISO 3166-1 alpha-3 code")
    where = f"{where} ({code})"
    unknown = sorted(set(raw) - _SCHEME_KEYS)
    if unknown:
        raise CatalogueError(f"{where}.{unknown[0]}: unknown key (known: {sorted(_SCHEME_KEYS)})")
    if "name" in raw and (not isinstance(raw["name"], str) or not raw["name"].strip()):
        raise CatalogueError(f"{where}.name: expected the scheme's name as text")
    if "name" in raw:
        _check_text(raw["name"], f"{where}.name")
    if "sources" in raw and not _texts(raw["sources"]):
        raise CatalogueError(f"{where}.sources: expected a list of texts")
    for k, source in enumerate(raw.get("sources", ())):
        _check_text(source, f"{where}.sources[{k}]")
    levels = raw.get("levels")
    if not isinstance(levels, list):
        raise CatalogueError(f"{where}.levels: expected a list of levels")
    ranks: set[int] = set()
    for j, lv in enumerate(levels):
        at = f"{where}.levels[{j}]"
        if not isinstance(lv, Mapping):
            raise CatalogueError(f"{at}: expected a table")
        unknown = sorted(set(lv) - _LEVEL_KEYS)
        if unknown:
            raise CatalogueError(f"{at}.{unknown[0]}: unknown key (known: {sorted(_LEVEL_KEYS)})")
        if not _is_rank(lv.get("rank")):
            raise CatalogueError(f"{at}.rank: must be 0-4")
        if not isinstance(lv.get("name"), str) or not lv["name"].strip():
            raise CatalogueError(f"{at}.name: expected the level's official name as text")
        _check_text(lv["name"], f"{at}.name")
        for key in _FORM_KEYS:
            if key in lv and not _texts(lv[key]):
                raise CatalogueError(f"{at}.{key}: expected a list of texts")
            for k, form in enumerate(lv.get(key, ())):
                _check_text(form, f"{at}.{key}[{k}]")
        if "legacy" in lv and not isinstance(lv["legacy"], bool):
            raise CatalogueError(f"{at}.legacy: expected true or false")
        if not lv.get("legacy", False):
            if lv["rank"] in ranks:
                raise CatalogueError(f"{at}.rank: two current levels of rank {lv['rank']}")
            ranks.add(lv["rank"])
    absent = raw.get("absent", [])
    if not isinstance(absent, list):
        raise CatalogueError(f"{where}.absent: expected a list of {{ rank, note }}")
    for j, entry in enumerate(absent):
        at = f"{where}.absent[{j}]"
        if not isinstance(entry, Mapping) or set(entry) - {"rank", "note"}:
            raise CatalogueError(f'{at}: expected {{ rank = 0-4, note = "..." }}')
        if not _is_rank(entry.get("rank")):
            raise CatalogueError(f"{at}.rank: must be 0-4")
        if entry["rank"] in ranks:
            raise CatalogueError(f"{at}.rank: the scheme has a level of rank {entry['rank']}")
        if not isinstance(entry.get("note"), str) or not entry["note"].strip():
            raise CatalogueError(f"{at}.note: expected the reason as text")
        _check_text(entry["note"], f"{at}.note")
    # A nation whose levels no source gave is kept (its name, sources and why), so that its
    # officers are told why rather than offered another nation's marking; but only when
    # every classified rank says why it is missing.
    if not levels and {e["rank"] for e in absent} < {1, 2, 3, 4}:
        raise CatalogueError(
            f"{where}.levels: expected a list of levels (an empty one needs absent notes "
            "for ranks 1-4)"
        )
    return code


def validate(data: Mapping[str, Any], source: str = "schemes.toml") -> None:
    """Check the scheme data before it is used; CatalogueError names `source` and the key."""
    if not isinstance(data, Mapping):
        raise CatalogueError(f"{source}: expected a table")
    unknown = sorted(set(data) - _TOP_KEYS)
    if unknown:
        raise CatalogueError(f"{source}: {unknown[0]}: unknown key (known: {sorted(_TOP_KEYS)})")
    audiences = data.get("audiences")
    if not isinstance(audiences, Mapping) or not _texts(audiences.get("iso3166_alpha3")):
        raise CatalogueError(f"{source}: audiences.iso3166_alpha3: expected a list of codes")
    countries = frozenset(audiences["iso3166_alpha3"])
    for alliance in ALLIANCES:
        members = audiences.get(alliance)
        if not isinstance(members, list) or not _texts(members) or not set(members) <= countries:
            raise CatalogueError(f"{source}: audiences.{alliance}: expected a list of codes")
    if not _texts(data.get("default_caveats", [])):
        raise CatalogueError(f"{source}: default_caveats: expected a list of words")
    names = data.get("country_names", {})
    if not isinstance(names, Mapping) or any(v not in countries for v in names.values()):
        raise CatalogueError(f"{source}: country_names: expected names mapped to ISO codes")
    schemes = data.get("schemes")
    if not isinstance(schemes, list):
        raise CatalogueError(f"{source}: schemes: expected a list of [[schemes]] tables")
    seen: set[str] = set()
    for i, raw in enumerate(schemes):
        code = _check_scheme(raw, f"{source}: schemes[{i}]", countries)
        if code in seen:
            raise CatalogueError(f"{source}: schemes[{i}] ({code}).code: given twice")
        seen.add(code)
    for alliance in ALLIANCES:
        if alliance not in seen:
            raise CatalogueError(f"{source}: schemes: the {alliance} scheme is missing")
    reserved = _reserved(schemes, countries)
    for i, raw in enumerate(schemes):
        _check_forms(raw, f"{source}: schemes[{i}]", reserved)


def _build(data: Mapping[str, Any], source: str = "schemes.toml") -> Catalogue:
    validate(data, source)
    audiences = data["audiences"]
    countries = frozenset(audiences["iso3166_alpha3"])
    alliance_members = {a: frozenset(audiences[a]) for a in ALLIANCES}
    english = {code: name for name, code in data.get("country_names", {}).items()}
    schemes: dict[str, Scheme] = {}
    names: list[tuple[str, Level]] = []
    context: dict[str, dict[str, Level]] = {}
    spellings: list[str] = []
    own: dict[str, list[str]] = {}
    bare: dict[str, list[str]] = {}
    for raw in data["schemes"]:
        code = raw["code"]
        levels: list[tuple[Level, tuple[str, ...]]] = []
        own_forms = own.setdefault(code, [])
        bare_forms = bare.setdefault(code, [])
        for lv in raw["levels"]:
            level = Level(code, int(lv["rank"]), lv["name"], bool(lv.get("legacy", False)))
            extra = (*lv.get("aliases", ()), *lv.get("abbreviations", ()))
            levels.append((level, tuple(extra)))
            for form in (lv["name"], *extra):
                names.append((match_key(form), level))
                spellings.append(form)
                bare_forms.append(form)
                if code in ALLIANCES or form.startswith(code + " "):
                    own_forms.append(form)
                else:
                    names.append((match_key(f"{code} {form}"), level))
                    spellings.append(f"{code} {form}")
                    own_forms.append(f"{code} {form}")
            for short in lv.get("context_names", ()):
                context.setdefault(code, {})[match_key(short)] = level
                bare_forms.append(short)
        levels.sort(key=lambda pair: -pair[0].rank)
        audience = alliance_members[code] if code in ALLIANCES else frozenset({code})
        schemes[code] = Scheme(
            code,
            tuple(lv for lv, _ in levels),
            audience,
            name=raw.get("name") or english.get(code) or code,
            sources=tuple(raw.get("sources", ())),
            absent=tuple((int(a["rank"]), a["note"]) for a in raw.get("absent", ())),
            aliases=tuple(forms for _, forms in levels),
        )
    exact = _index(names)
    folded = _index((f, lvl) for k, lvl in names for f in typed_forms(k))
    context_folded = {
        s: {f: v for k, v in m.items() for f in typed_forms(k)} for s, m in context.items()
    }
    country_names = {match_key(n): code for n, code in data.get("country_names", {}).items()}
    country_names.update({fold_accents(k): v for k, v in list(country_names.items())})
    return Catalogue(
        schemes=MappingProxyType(schemes),
        alliance_members=MappingProxyType(alliance_members),
        countries=countries,
        country_names=MappingProxyType(country_names),
        default_caveats=tuple(data.get("default_caveats", ())),
        exact=MappingProxyType(exact),
        folded=MappingProxyType(folded),
        context_exact=MappingProxyType({s: MappingProxyType(m) for s, m in context.items()}),
        context_folded=MappingProxyType(
            {s: MappingProxyType(m) for s, m in context_folded.items()}
        ),
        spellings=tuple(dict.fromkeys(spellings)),
        scheme_spellings=MappingProxyType({c: tuple(dict.fromkeys(v)) for c, v in own.items()}),
        bare_spellings=MappingProxyType({c: tuple(dict.fromkeys(v)) for c, v in bare.items()}),
    )


def build(data: Mapping[str, Any], source: str = "schemes.toml") -> Catalogue:
    """A catalogue from parsed scheme data, validated: CatalogueError names the key."""
    return _build(data, source)


def packaged_data() -> dict[str, Any]:
    """The packaged scheme data, parsed (a fresh copy each call)."""
    text = files("policy").joinpath("data/schemes.toml").read_text(encoding="utf-8")
    return tomllib.loads(text)


def with_site(site: Mapping[str, Any], source: str = "site schemes file") -> Catalogue:
    """The packaged catalogue plus a site's schemes (`schemes = [...]`, each a [[schemes]]
    table as in the packaged file): a new code is added, an existing national code is
    replaced whole. NATO and EU cannot be overridden. CatalogueError names `source` and key."""
    if not isinstance(site, Mapping):
        raise CatalogueError(f"{source}: expected a table")
    unknown = sorted(set(site) - _SITE_KEYS)
    if unknown:
        raise CatalogueError(f"{source}: {unknown[0]}: unknown key (a site file holds schemes)")
    extra = site.get("schemes", [])
    if not isinstance(extra, list):
        raise CatalogueError(f"{source}: schemes: expected a list of [[schemes]] tables")
    data = packaged_data()
    countries = frozenset(data["audiences"]["iso3166_alpha3"])
    packaged = {raw["code"]: i for i, raw in enumerate(data["schemes"])}
    reserved = _reserved(data["schemes"], countries)  # NATO and EU: never a site's
    overrides: list[str] = []
    additions: list[str] = []
    seen: set[str] = set()
    for i, raw in enumerate(extra):
        code = raw.get("code") if isinstance(raw, Mapping) else None
        if code in ALLIANCES:
            raise CatalogueError(
                f"{source}: schemes[{i}] ({code}).code: the alliance schemes NATO and EU "
                "cannot be overridden by a site file"
            )
        code = _check_scheme(raw, f"{source}: schemes[{i}]", countries)
        _check_forms(raw, f"{source}: schemes[{i}]", reserved)
        if code in seen:
            raise CatalogueError(f"{source}: schemes[{i}] ({code}).code: given twice")
        seen.add(code)
        if code in packaged:
            data["schemes"][packaged[code]] = dict(raw)
            overrides.append(code)
        else:
            data["schemes"].append(dict(raw))
            additions.append(code)
    catalogue = _build(data, "schemes.toml + " + source)
    return replace(catalogue, overrides=tuple(overrides), additions=tuple(additions))


def _load() -> Catalogue:
    return _build(packaged_data(), "policy/data/schemes.toml")


PACKAGED: Catalogue = _load()
CATALOGUE: Catalogue = PACKAGED
"""The process's catalogue: the packaged one unless `install` replaced it at start."""


def current() -> Catalogue:
    """The catalogue in force: read it at use, never keep it."""
    return CATALOGUE


def install(catalogue: Catalogue) -> Catalogue:
    """Make `catalogue` the process's catalogue (once, at start; tests swap and restore);
    returns the one it replaces. Use `policy.install_catalogue`, which also drops caches."""
    global CATALOGUE
    previous, CATALOGUE = CATALOGUE, catalogue
    return previous
