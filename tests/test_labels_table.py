"""Every level name, alias and abbreviation , and the marking grammar."""

from __future__ import annotations

import pytest

from policy import (
    CATALOGUE,
    MarkingError,
    convert,
    parse_marking,
    releasable_set,
    render,
    why_no_equivalent,
)

# (marking, context, canonical level banner)
NAMES = [
    # NATO
    ("COSMIC TOP SECRET", None, "COSMIC TOP SECRET"),
    ("CTS", None, "COSMIC TOP SECRET"),
    ("NATO SECRET", None, "NATO SECRET"),
    ("NS", None, "NATO SECRET"),
    ("NATO CONFIDENTIAL", None, "NATO CONFIDENTIAL"),
    ("NC", None, "NATO CONFIDENTIAL"),
    ("NATO RESTRICTED", None, "NATO RESTRICTED"),
    ("NR", None, "NATO RESTRICTED"),
    ("NATO UNCLASSIFIED", None, "NATO UNCLASSIFIED"),
    ("NU", None, "NATO UNCLASSIFIED"),
    # EU, canonical without accent, aliases and abbreviations
    ("TRES SECRET UE/EU TOP SECRET", None, "TRES SECRET UE/EU TOP SECRET"),
    ("TRÈS SECRET UE/EU TOP SECRET", None, "TRES SECRET UE/EU TOP SECRET"),
    ("très secret ue/eu top secret", None, "TRES SECRET UE/EU TOP SECRET"),
    ("EU TOP SECRET", None, "TRES SECRET UE/EU TOP SECRET"),
    ("TRES SECRET UE", None, "TRES SECRET UE/EU TOP SECRET"),
    ("TS-UE/EU-TS", None, "TRES SECRET UE/EU TOP SECRET"),
    ("TS-UE", None, "TRES SECRET UE/EU TOP SECRET"),
    ("EU-TS", None, "TRES SECRET UE/EU TOP SECRET"),
    ("SECRET UE/EU SECRET", None, "SECRET UE/EU SECRET"),
    ("EU SECRET", None, "SECRET UE/EU SECRET"),
    ("SECRET UE", None, "SECRET UE/EU SECRET"),
    ("S-UE/EU-S", None, "SECRET UE/EU SECRET"),
    ("S-UE", None, "SECRET UE/EU SECRET"),
    ("EU-S", None, "SECRET UE/EU SECRET"),
    ("CONFIDENTIEL UE/EU CONFIDENTIAL", None, "CONFIDENTIEL UE/EU CONFIDENTIAL"),
    ("EU CONFIDENTIAL", None, "CONFIDENTIEL UE/EU CONFIDENTIAL"),
    ("CONFIDENTIEL UE", None, "CONFIDENTIEL UE/EU CONFIDENTIAL"),
    ("C-UE/EU-C", None, "CONFIDENTIEL UE/EU CONFIDENTIAL"),
    ("C-UE", None, "CONFIDENTIEL UE/EU CONFIDENTIAL"),
    ("EU-C", None, "CONFIDENTIEL UE/EU CONFIDENTIAL"),
    ("RESTREINT UE/EU RESTRICTED", None, "RESTREINT UE/EU RESTRICTED"),
    ("EU RESTRICTED", None, "RESTREINT UE/EU RESTRICTED"),
    ("RESTREINT UE", None, "RESTREINT UE/EU RESTRICTED"),
    ("R-UE/EU-R", None, "RESTREINT UE/EU RESTRICTED"),
    ("R-UE", None, "RESTREINT UE/EU RESTRICTED"),
    ("EU-R", None, "RESTREINT UE/EU RESTRICTED"),
    # context-only short names win in their scheme's room
    ("TOP SECRET", "NATO", "COSMIC TOP SECRET"),
    ("SECRET", "NATO", "NATO SECRET"),
    ("CONFIDENTIAL", "NATO", "NATO CONFIDENTIAL"),
    ("RESTRICTED", "NATO", "NATO RESTRICTED"),
    ("UNCLASSIFIED", "NATO", "NATO UNCLASSIFIED"),
    ("TOP SECRET", "EU", "TRES SECRET UE/EU TOP SECRET"),
    ("SECRET", "EU", "SECRET UE/EU SECRET"),
    ("CONFIDENTIAL", "EU", "CONFIDENTIEL UE/EU CONFIDENTIAL"),
    ("RESTRICTED", "EU", "RESTREINT UE/EU RESTRICTED"),
    # Belgium
    ("BEL TRÈS SECRET", None, "BEL TRÈS SECRET"),
    ("ZEER GEHEIM", None, "BEL TRÈS SECRET"),
    ("BEL SECRET", None, "BEL SECRET"),
    ("BEL GEHEIM", None, "BEL SECRET"),
    ("CONFIDENTIEL", None, "BEL CONFIDENTIEL"),
    ("VERTROUWELIJK", None, "BEL CONFIDENTIEL"),
    # Bulgaria
    ("СТРОГО СЕКРЕТНО", None, "BGR СТРОГО СЕКРЕТНО"),
    ("СЕКРЕТНО", None, "BGR СЕКРЕТНО"),
    ("ПОВЕРИТЕЛНО", None, "BGR ПОВЕРИТЕЛНО"),
    ("ЗА СЛУЖЕБНО ПОЛЗВАНЕ", None, "BGR ЗА СЛУЖЕБНО ПОЛЗВАНЕ"),
    ("секретно", None, "BGR СЕКРЕТНО"),
    # Czechia, with and without diacritics
    ("PŘÍSNĚ TAJNÉ", None, "CZE PŘÍSNĚ TAJNÉ"),
    ("PRISNE TAJNE", None, "CZE PŘÍSNĚ TAJNÉ"),
    ("TAJNÉ", None, "CZE TAJNÉ"),
    ("DŮVĚRNÉ", None, "CZE DŮVĚRNÉ"),
    ("DUVERNE", None, "CZE DŮVĚRNÉ"),
    ("VYHRAZENÉ", None, "CZE VYHRAZENÉ"),
    # Denmark
    ("YDERST HEMMELIGT", None, "DNK YDERST HEMMELIGT"),
    ("HEMMELIGT", None, "DNK HEMMELIGT"),
    ("FORTROLIGT", None, "DNK FORTROLIGT"),
    ("TIL TJENESTEBRUG", None, "DNK TIL TJENESTEBRUG"),
    # Germany
    ("STRENG GEHEIM", None, "DEU STRENG GEHEIM"),
    ("DEU GEHEIM", None, "DEU GEHEIM"),
    ("GEHEIM", "DEU", "DEU GEHEIM"),
    ("VS-VERTRAULICH", None, "DEU VS-VERTRAULICH"),
    ("VS — VERTRAULICH", None, "DEU VS-VERTRAULICH"),
    ("VS – vertraulich", None, "DEU VS-VERTRAULICH"),
    ("VS-NUR FÜR DEN DIENSTGEBRAUCH", None, "DEU VS-NUR FÜR DEN DIENSTGEBRAUCH"),
    ("VS-NUR FUER DEN DIENSTGEBRAUCH", None, "DEU VS-NUR FÜR DEN DIENSTGEBRAUCH"),
    ("VS-NfD", None, "DEU VS-NUR FÜR DEN DIENSTGEBRAUCH"),
    ("vs - nfd", None, "DEU VS-NUR FÜR DEN DIENSTGEBRAUCH"),
    # Estonia
    ("TÄIESTI SALAJANE", None, "EST TÄIESTI SALAJANE"),
    ("SALAJANE", None, "EST SALAJANE"),
    ("KONFIDENTSIAALNE", None, "EST KONFIDENTSIAALNE"),
    ("PIIRATUD", None, "EST PIIRATUD"),
    # Ireland: bare English names are Irish outside NATO/EU rooms, when unambiguous
    ("IRL TOP SECRET", None, "IRL TOP SECRET"),
    ("TOP SECRET", None, "IRL TOP SECRET"),
    ("IRL SECRET", None, "IRL SECRET"),
    ("SECRET", "IRL", "IRL SECRET"),
    ("CONFIDENTIAL", None, "IRL CONFIDENTIAL"),
    ("RESTRICTED", None, "IRL RESTRICTED"),
    # Greece, names and abbreviations
    ("ΆΚΡΩΣ ΑΠΌΡΡΗΤΟ", None, "GRC ΆΚΡΩΣ ΑΠΌΡΡΗΤΟ"),
    ("ΑΑΠ", None, "GRC ΆΚΡΩΣ ΑΠΌΡΡΗΤΟ"),
    ("ΑΠΌΡΡΗΤΟ", None, "GRC ΑΠΌΡΡΗΤΟ"),
    ("ΑΠ", None, "GRC ΑΠΌΡΡΗΤΟ"),
    ("ΕΜΠΙΣΤΕΥΤΙΚΌ", None, "GRC ΕΜΠΙΣΤΕΥΤΙΚΌ"),
    ("ΕΜ", None, "GRC ΕΜΠΙΣΤΕΥΤΙΚΌ"),
    ("ΠΕΡΙΟΡΙΣΜΈΝΗΣ ΧΡΉΣΗΣ", None, "GRC ΠΕΡΙΟΡΙΣΜΈΝΗΣ ΧΡΉΣΗΣ"),
    ("ΠΧ", None, "GRC ΠΕΡΙΟΡΙΣΜΈΝΗΣ ΧΡΉΣΗΣ"),
    ("απόρρητο", None, "GRC ΑΠΌΡΡΗΤΟ"),
    # Spain
    ("SECRETO", None, "ESP SECRETO"),
    ("RESERVADO", None, "ESP RESERVADO"),
    ("CONFIDENCIAL", None, "ESP CONFIDENCIAL"),
    ("DIFUSIÓN LIMITADA", None, "ESP DIFUSIÓN LIMITADA"),
    ("DIFUSION LIMITADA", None, "ESP DIFUSIÓN LIMITADA"),
    # France, with the pre-2021 names as aliases and the legacy level
    ("FRA TRÈS SECRET", None, "FRA TRÈS SECRET"),
    ("TRÈS SECRET DÉFENSE", None, "FRA TRÈS SECRET"),
    ("FRA SECRET", None, "FRA SECRET"),
    ("SECRET DÉFENSE", None, "FRA SECRET"),
    ("SECRET DEFENSE", None, "FRA SECRET"),
    ("SECRET", "FRA", "FRA SECRET"),
    ("CONFIDENTIEL DÉFENSE", None, "FRA CONFIDENTIEL DÉFENSE"),
    ("DIFFUSION RESTREINTE", None, "FRA DIFFUSION RESTREINTE"),
    # Croatia
    ("VRLO TAJNO", None, "HRV VRLO TAJNO"),
    ("TAJNO", None, "HRV TAJNO"),
    ("POVJERLJIVO", None, "HRV POVJERLJIVO"),
    ("OGRANIČENO", None, "HRV OGRANIČENO"),
    ("OGRANICENO", None, "HRV OGRANIČENO"),
    # Italy
    ("SEGRETISSIMO", None, "ITA SEGRETISSIMO"),
    ("SEGRETO", None, "ITA SEGRETO"),
    ("RISERVATISSIMO", None, "ITA RISERVATISSIMO"),
    ("RISERVATO", None, "ITA RISERVATO"),
    # Luxembourg: its names carry LUX themselves
    ("LUX TOP SECRET", None, "LUX TOP SECRET"),
    ("LUX SECRET", None, "LUX SECRET"),
    ("LUX CONFIDENTIAL", None, "LUX CONFIDENTIAL"),
    ("LUX RESTRICTED", None, "LUX RESTRICTED"),
    # Netherlands
    ("STG. ZEER GEHEIM", None, "NLD STG. ZEER GEHEIM"),
    ("STG. GEHEIM", None, "NLD STG. GEHEIM"),
    ("STG. CONFIDENTIEEL", None, "NLD STG. CONFIDENTIEEL"),
    ("DEP. VERTROUWELIJK", None, "NLD DEP. VERTROUWELIJK"),
    # Poland
    ("ŚCIŚLE TAJNE", None, "POL ŚCIŚLE TAJNE"),
    ("TAJNE", None, "POL TAJNE"),
    ("POUFNE", None, "POL POUFNE"),
    ("ZASTRZEŻONE", None, "POL ZASTRZEŻONE"),
]


@pytest.mark.parametrize(("marking", "context", "banner"), NAMES)
def test_level_names_aliases_and_abbreviations(
    marking: str, context: str | None, banner: str
) -> None:
    assert parse_marking(marking, context).level.banner == banner


def test_every_level_of_every_scheme_is_in_the_table() -> None:
    covered = {banner for _, _, banner in NAMES}
    every = {lv.banner for s in CATALOGUE.schemes.values() for lv in s.levels}
    assert every <= covered


def test_context_short_name_wins_over_other_schemes() -> None:
    # SECRET alone is Belgian, French or Irish; in a NATO room it is NATO SECRET.
    assert parse_marking("[SECRET]".strip("[]"), "NATO").scheme == "NATO"
    assert parse_marking("TOP SECRET", "NATO").scheme == "NATO"
    assert parse_marking("TOP SECRET", "DEU").scheme == "IRL"


def test_luxembourg_never_matches_bare_english_names() -> None:
    for name in ("TOP SECRET", "CONFIDENTIAL", "RESTRICTED"):
        assert parse_marking(name).scheme != "LUX"


def test_exact_match_beats_accent_folded_match() -> None:
    # "TAJNE" is exactly Polish; accent-folded it would also be Czech "TAJNÉ".
    assert parse_marking("TAJNE").scheme == "POL"
    assert parse_marking("TAJNÉ").scheme == "CZE"


def test_canonical_rendering_sorts_caveats_and_rel_to() -> None:
    label = parse_marking("nato secret // crypto // rel to ukr, eu, Germany // atomal")
    assert render(label) == "NATO SECRET // ATOMAL // CRYPTO // REL TO DEU, EU, UKR"


def test_separator_with_spaces_and_double_slash() -> None:
    a = parse_marking("DEU GEHEIM / REL TO NATO")
    b = parse_marking("DEU GEHEIM//REL TO NATO")
    c = parse_marking("DEU GEHEIM // RELEASABLE TO NATO")
    assert a == b == c
    assert render(a) == "DEU GEHEIM // REL TO NATO"


def test_rel_to_english_names_and_aliases() -> None:
    label = parse_marking("NATO SECRET // REL TO Czechia, Czech Republic, Türkiye, Turkey, usa")
    assert label.rel_to == {"CZE", "TUR", "USA"}


def test_rel_to_partner_trigraph_extends_releasable_set() -> None:
    label = parse_marking("NATO SECRET // REL TO UKR")
    assert "UKR" in releasable_set(label)
    assert releasable_set(label) >= CATALOGUE.alliance_members["NATO"]


def test_releasable_set_of_a_national_label_is_the_nation() -> None:
    assert releasable_set(parse_marking("DEU GEHEIM")) == {"DEU"}
    assert releasable_set(parse_marking("EU SECRET")) == CATALOGUE.alliance_members["EU"]


def test_alliance_membership_counts() -> None:
    assert len(CATALOGUE.alliance_members["NATO"]) == 32
    assert len(CATALOGUE.alliance_members["EU"]) == 27


def test_configured_caveat_is_accepted_only_when_configured() -> None:
    assert parse_marking("NATO SECRET // SIGINT", extra_caveats=["SIGINT"]).caveats == {"SIGINT"}
    with pytest.raises(MarkingError, match="unknown caveat 'SIGINT'"):
        parse_marking("NATO SECRET // SIGINT")


@pytest.mark.parametrize(
    ("marking", "scheme", "expected"),
    [
        ("NATO SECRET", "ESP", "ESP RESERVADO"),
        ("COSMIC TOP SECRET", "DEU", "DEU STRENG GEHEIM"),
        ("NATO RESTRICTED", "DEU", "DEU VS-NUR FÜR DEN DIENSTGEBRAUCH"),
        ("DEU GEHEIM", "NATO", "NATO SECRET"),
        ("DEU GEHEIM", "EU", "SECRET UE/EU SECRET"),
        # a legacy level still converts out of its scheme, at its own rank
        ("FRA CONFIDENTIEL DÉFENSE", "NATO", "NATO CONFIDENTIAL"),
        ("EU SECRET", "FRA", "FRA SECRET"),
    ],
)
def test_convert(marking: str, scheme: str, expected: str) -> None:
    level = convert(parse_marking(marking), scheme)
    assert level is not None
    assert level.banner == expected


@pytest.mark.parametrize(
    ("marking", "scheme", "reason"),
    [
        # no rank 0 in the EU or Germany: refused, never rounded up to RESTRICTED
        ("NATO UNCLASSIFIED", "EU", "EU has no level equivalent to NATO UNCLASSIFIED"),
        ("NATO UNCLASSIFIED", "DEU", "DEU has no level equivalent to NATO UNCLASSIFIED"),
        # Belgium has no rank 1: refused, not rounded up to CONFIDENTIEL
        ("NATO RESTRICTED", "BEL", "BEL has no level equivalent to NATO RESTRICTED"),
        # France's rank 2 is legacy: never produced by conversion, and not rounded to SECRET
        ("NATO CONFIDENTIAL", "FRA", "FRA CONFIDENTIEL DÉFENSE is a legacy level"),
    ],
)
def test_convert_refuses_a_rank_the_scheme_lacks(marking: str, scheme: str, reason: str) -> None:
    label = parse_marking(marking)
    assert convert(label, scheme) is None
    assert reason in why_no_equivalent(label, scheme)


def test_convert_within_a_scheme_is_the_level_itself() -> None:
    legacy = parse_marking("FRA CONFIDENTIEL DÉFENSE")
    assert convert(legacy, "FRA") == legacy.level


def test_convert_to_unknown_scheme_has_no_equivalent() -> None:
    assert convert(parse_marking("NATO SECRET"), "XYZ") is None
