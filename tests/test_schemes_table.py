"""Every national level against its NATO and EU equivalents, table-driven.

The tables are `tests/schemes_eu_table.py` (EU member states) and
`tests/schemes_nato_table.py` (NATO-only members) when present, else a small local table of
nations the packaged data already has. Rows are read by field name: EU rows are
`(nation, marking, eu, nato, source)`, NATO rows `(nation, marking, nato, eu, source)`.
"""

from __future__ import annotations

import importlib
from collections.abc import Iterable
from typing import Any, NamedTuple

import pytest

from policy import Level, MarkingError, convert, current, parse_marking, why_no_equivalent


class Row(NamedTuple):
    nation: str
    marking: str
    eu: str | None
    nato: str | None
    source: str


LOCAL_ROWS = [
    Row("DEU", "DEU STRENG GEHEIM", "TRES SECRET UE/EU TOP SECRET", "COSMIC TOP SECRET", "VSA"),
    Row("DEU", "DEU GEHEIM", "SECRET UE/EU SECRET", "NATO SECRET", "VSA"),
    Row("DEU", "DEU VS-VERTRAULICH", "CONFIDENTIEL UE/EU CONFIDENTIAL", "NATO CONFIDENTIAL", "VSA"),
    Row(
        "DEU",
        "DEU VS-NUR FÜR DEN DIENSTGEBRAUCH",
        "RESTREINT UE/EU RESTRICTED",
        "NATO RESTRICTED",
        "VSA",
    ),
    Row("FRA", "FRA TRÈS SECRET", "TRES SECRET UE/EU TOP SECRET", "COSMIC TOP SECRET", "IGI 1300"),
    Row("FRA", "FRA SECRET", "SECRET UE/EU SECRET", "NATO SECRET", "IGI 1300"),
    Row("FRA", "FRA DIFFUSION RESTREINTE", "RESTREINT UE/EU RESTRICTED", "NATO RESTRICTED", "IGI"),
    Row("BEL", "BEL TRÈS SECRET", "TRES SECRET UE/EU TOP SECRET", "COSMIC TOP SECRET", "1998"),
    Row("BEL", "BEL SECRET", "SECRET UE/EU SECRET", "NATO SECRET", "loi 1998"),
    Row("BEL", "BEL CONFIDENTIEL", "CONFIDENTIEL UE/EU CONFIDENTIAL", "NATO CONFIDENTIAL", "1998"),
]
# (nation, the alliance level it has no equivalent for)
LOCAL_ABSENT = [
    ("BEL", "NATO RESTRICTED"),
    ("BEL", "RESTREINT UE/EU RESTRICTED"),
    ("FRA", "NATO CONFIDENTIAL"),
    ("DEU", "NATO UNCLASSIFIED"),
]
# (nation, as typed, the official marking)
LOCAL_TYPED = [
    ("DEU", "VS-NUR FUER DEN DIENSTGEBRAUCH", "DEU VS-NUR FÜR DEN DIENSTGEBRAUCH"),
    ("DEU", "deu vs-nur fur den dienstgebrauch", "DEU VS-NUR FÜR DEN DIENSTGEBRAUCH"),
    ("FRA", "FRA TRES SECRET", "FRA TRÈS SECRET"),
    ("GRC", "ΑΠΟΡΡΗΤΟ", "GRC ΑΠΌΡΡΗΤΟ"),
    ("GRC", "απόρρητο", "GRC ΑΠΌΡΡΗΤΟ"),
    ("POL", "SCISLE TAJNE", "POL ŚCIŚLE TAJNE"),
    ("CZE", "prisne tajne", "CZE PŘÍSNĚ TAJNÉ"),
]


def _table(module: str, name: str) -> list[Any]:
    try:
        loaded = importlib.import_module(module)
    except ModuleNotFoundError as exc:
        if exc.name != module:
            raise
        return []
    return list(getattr(loaded, name, ()))


def _tables(name: str, local: Iterable[Any]) -> list[Any]:
    found = _table("tests.schemes_eu_table", name) + _table("tests.schemes_nato_table", name)
    return found or list(local)


ROWS = _tables("ROWS", LOCAL_ROWS)
ABSENT = _tables("ABSENT", LOCAL_ABSENT)
TYPED = _tables("TYPED", LOCAL_TYPED)


def _fields(entry: Any) -> dict[str, Any]:
    """An entry's fields by name (a NamedTuple or dataclass), else by position."""
    if hasattr(entry, "_asdict"):
        return dict(entry._asdict())
    names = getattr(entry, "__dataclass_fields__", None)
    if names is not None:
        return {n: getattr(entry, n) for n in names}
    return {str(i): v for i, v in enumerate(entry)}


def _nation_of(entry: Any) -> str:
    fields = _fields(entry)
    nation = fields.get("nation", next(iter(fields.values())))
    assert isinstance(nation, str) and len(nation) == 3, f"no nation in {entry!r}"
    return nation


def _level(marking: str, nation: str | None = None) -> Level:
    try:
        return parse_marking(marking).level
    except MarkingError:
        if nation is None:
            raise
        return parse_marking(marking, nation).level  # a bare name read in the nation's room


def _alliance_level(entry: Any) -> Level:
    """The NATO or EU level an ABSENT entry names: by field name (`nato`, `eu`, `level`,
    `marking`), a `rank` (NATO's level of it), or the first field that reads as one."""
    fields = _fields(entry)
    for key in ("nato", "eu", "level", "marking", "alliance"):
        value = fields.get(key)
        if isinstance(value, str):
            return _level(value)
    rank = fields.get("rank")
    if isinstance(rank, int):
        level = current().schemes["NATO"].level_at(rank)
        assert level is not None
        return level
    for value in list(fields.values())[1:]:
        if isinstance(value, int) and not isinstance(value, bool):
            found = current().schemes["NATO"].level_at(value)
            assert found is not None
            return found
        if isinstance(value, str):
            try:
                level = parse_marking(value).level
            except MarkingError:
                continue
            if level.scheme in ("NATO", "EU"):
                return level
    raise AssertionError(f"no NATO or EU level in ABSENT entry {entry!r}")


def _typed_pair(entry: Any) -> tuple[str | None, str, str]:
    """(nation or None, typed form, official marking) of a TYPED entry."""
    fields = _fields(entry)
    if "typed" in fields:
        official = next(
            fields[k] for k in ("official", "marking", "expected", "banner") if k in fields
        )
        return fields.get("nation"), fields["typed"], official
    values = [v for v in fields.values() if isinstance(v, str)]
    if values and values[0] in current().schemes and len(values) >= 3:
        return values[0], values[1], values[2]
    return None, values[0], values[1]


def _id(entry: Any) -> str:
    return " ".join(str(v) for v in list(_fields(entry).values())[:3])


@pytest.mark.parametrize("row", ROWS, ids=_id)
def test_a_level_parses_prints_and_converts_both_ways(row: Any) -> None:
    label = parse_marking(row.marking, row.nation)
    assert label.scheme == row.nation
    assert row.marking in (label.banner, label.level.name), "prints as given"
    for scheme, expected in (("NATO", row.nato), ("EU", row.eu)):
        converted = convert(label, scheme)
        if expected is None:
            # None for a member state: no equivalent; for another nation: not applicable
            if row.nation in current().alliance_members[scheme]:
                assert converted is None, f"{row.marking} must have no {scheme} level"
                assert label.level.banner in why_no_equivalent(label.level, scheme)
            continue
        alliance = _level(expected, scheme)
        assert converted == alliance, f"{row.marking} in {scheme}"
        if not label.level.legacy:
            assert convert(alliance, row.nation) == label.level, "and back"


@pytest.mark.parametrize("entry", ABSENT, ids=_id)
def test_a_level_a_nation_lacks_is_refused_with_a_reason_naming_both(entry: Any) -> None:
    nation = _nation_of(entry)
    level = _alliance_level(entry)
    assert convert(level, nation) is None, f"{level.banner} must have no {nation} level"
    reason = why_no_equivalent(level, nation)
    assert nation in reason and level.banner in reason


@pytest.mark.parametrize("entry", TYPED, ids=_id)
def test_a_typed_form_reads_as_the_official_level(entry: Any) -> None:
    nation, typed, official = _typed_pair(entry)
    level = _level(typed, nation)
    assert level == _level(official, nation)
    assert official in (level.banner, level.name), "the official form is what is printed"
    assert parse_marking(typed, nation).banner == level.banner


def test_the_local_table_covers_a_nation_without_restricted() -> None:
    # Belgium has no RESTRICTED: nothing rounds NATO RESTRICTED up to CONFIDENTIEL.
    assert convert(parse_marking("NATO RESTRICTED"), "BEL") is None
    assert all(lv.rank != 1 for lv in current().schemes["BEL"].levels)


def test_turkish_and_other_plain_typed_letters_fold() -> None:
    from policy.catalogue import fold_accents, match_key, typed_forms

    assert fold_accents(match_key("GİZLİ")) == "gizli"
    assert fold_accents(match_key("GIZLI")) == "gizli"
    assert fold_accents(match_key("gızlı")) == "gizli"
    assert fold_accents(match_key("ZASTRZEŻONE")) == "zastrzezone"
    assert fold_accents("łø") == "lo"
    assert typed_forms(match_key("EINGESCHRÄNKT")) == ("eingeschrankt", "eingeschraenkt")
