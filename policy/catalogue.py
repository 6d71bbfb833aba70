"""The scheme catalogue: classification schemes, levels, audiences, loaded from data.

Why a data file: adding a nation or an alias must be a data change reviewed by a security
officer, not a code change. The file is read once, at import, from inside the
package; everything after that is pure lookups on frozen values.
"""

from __future__ import annotations

import re
import tomllib
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
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


def fold_accents(key: str) -> str:
    """Drop combining marks so that `tres secret` finds `TRÈS SECRET`."""
    decomposed = unicodedata.normalize("NFD", key)
    stripped = "".join(c for c in decomposed if unicodedata.category(c) != "Mn")
    return unicodedata.normalize("NFC", stripped)


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

    def level_at_or_above(self, rank: int) -> Level | None:
        """Equivalence rule: same rank, else the next higher non-legacy level (protect at least
        as well); None when the scheme has nothing that high."""
        best: Level | None = None
        for level in self.levels:
            if not level.legacy and level.rank >= rank and (best is None or level.rank < best.rank):
                best = level
        return best


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


def _build(data: Mapping[str, Any]) -> Catalogue:
    audiences = data["audiences"]
    countries = frozenset(audiences["iso3166_alpha3"])
    alliance_members = {a: frozenset(audiences[a]) for a in ALLIANCES}
    schemes: dict[str, Scheme] = {}
    names: list[tuple[str, Level]] = []
    context: dict[str, dict[str, Level]] = {}
    spellings: list[str] = []
    for raw in data["schemes"]:
        code = raw["code"]
        levels: list[Level] = []
        for lv in raw["levels"]:
            level = Level(code, int(lv["rank"]), lv["name"], bool(lv.get("legacy", False)))
            levels.append(level)
            forms = [lv["name"], *lv.get("aliases", ()), *lv.get("abbreviations", ())]
            for form in forms:
                names.append((match_key(form), level))
                spellings.append(form)
                if code not in ALLIANCES and not form.startswith(code + " "):
                    names.append((match_key(f"{code} {form}"), level))
                    spellings.append(f"{code} {form}")
            for short in lv.get("context_names", ()):
                context.setdefault(code, {})[match_key(short)] = level
        levels.sort(key=lambda lvl: -lvl.rank)
        audience = alliance_members[code] if code in ALLIANCES else frozenset({code})
        schemes[code] = Scheme(code, tuple(levels), audience)
    exact = _index(names)
    folded = _index((fold_accents(k), lvl) for k, lvl in names)
    context_folded = {s: {fold_accents(k): v for k, v in m.items()} for s, m in context.items()}
    country_names = {match_key(n): code for n, code in data["country_names"].items()}
    country_names.update({fold_accents(k): v for k, v in list(country_names.items())})
    return Catalogue(
        schemes=MappingProxyType(schemes),
        alliance_members=MappingProxyType(alliance_members),
        countries=countries,
        country_names=MappingProxyType(country_names),
        default_caveats=tuple(data["default_caveats"]),
        exact=MappingProxyType(exact),
        folded=MappingProxyType(folded),
        context_exact=MappingProxyType({s: MappingProxyType(m) for s, m in context.items()}),
        context_folded=MappingProxyType(
            {s: MappingProxyType(m) for s, m in context_folded.items()}
        ),
        spellings=tuple(dict.fromkeys(spellings)),
    )


def _load() -> Catalogue:
    text = files("policy").joinpath("data/schemes.toml").read_text(encoding="utf-8")
    return _build(tomllib.loads(text))


CATALOGUE: Catalogue = _load()
