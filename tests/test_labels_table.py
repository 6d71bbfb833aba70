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
from policy.labels import level_candidates
from tests.schemes_nato_table import ROWS as NATO_ROWS

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
    # Czechia, with and without diacritics (TAJNÉ and PRISNE TAJNE are Slovak too)
    ("PŘÍSNĚ TAJNÉ", None, "CZE PŘÍSNĚ TAJNÉ"),
    ("CZE PRISNE TAJNE", None, "CZE PŘÍSNĚ TAJNÉ"),
    ("CZE TAJNÉ", None, "CZE TAJNÉ"),
    ("TAJNÉ", "CZE", "CZE TAJNÉ"),
    ("DŮVĚRNÉ", None, "CZE DŮVĚRNÉ"),
    ("DUVERNE", None, "CZE DŮVĚRNÉ"),
    ("VYHRAZENÉ", None, "CZE VYHRAZENÉ"),
    # Denmark
    ("YDERST HEMMELIGT", None, "DNK YDERST HEMMELIGT"),
    ("HEMMELIGT", None, "DNK HEMMELIGT"),
    ("FORTROLIGT", None, "DNK FORTROLIGT"),
    ("TIL TJENESTEBRUG", None, "DNK TIL TJENESTEBRUG"),
    # Germany
    ("DEU STRENG GEHEIM", None, "DEU STRENG GEHEIM"),
    ("STRENG GEHEIM", "DEU", "DEU STRENG GEHEIM"),
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
    # Ireland: Malta lists the same English names, so a bare one needs an IRL room
    ("IRL TOP SECRET", None, "IRL TOP SECRET"),
    ("TOP SECRET", "IRL", "IRL TOP SECRET"),
    ("IRL SECRET", None, "IRL SECRET"),
    ("SECRET", "IRL", "IRL SECRET"),
    ("IRL CONFIDENTIAL", None, "IRL CONFIDENTIAL"),
    ("CONFIDENTIAL", "IRL", "IRL CONFIDENTIAL"),
    ("RESTRICTED", "IRL", "IRL RESTRICTED"),
    # Greece, names and abbreviations (Cyprus has the same: GRC or a GRC room)
    ("ΆΚΡΩΣ ΑΠΌΡΡΗΤΟ", "GRC", "GRC ΆΚΡΩΣ ΑΠΌΡΡΗΤΟ"),
    ("ΑΑΠ", "GRC", "GRC ΆΚΡΩΣ ΑΠΌΡΡΗΤΟ"),
    ("ΑΠΌΡΡΗΤΟ", "GRC", "GRC ΑΠΌΡΡΗΤΟ"),
    ("ΑΠ", "GRC", "GRC ΑΠΌΡΡΗΤΟ"),
    ("ΕΜΠΙΣΤΕΥΤΙΚΌ", "GRC", "GRC ΕΜΠΙΣΤΕΥΤΙΚΌ"),
    ("ΕΜ", "GRC", "GRC ΕΜΠΙΣΤΕΥΤΙΚΌ"),
    ("ΠΕΡΙΟΡΙΣΜΈΝΗΣ ΧΡΉΣΗΣ", "GRC", "GRC ΠΕΡΙΟΡΙΣΜΈΝΗΣ ΧΡΉΣΗΣ"),
    ("ΠΧ", "GRC", "GRC ΠΕΡΙΟΡΙΣΜΈΝΗΣ ΧΡΉΣΗΣ"),
    ("απόρρητο", "GRC", "GRC ΑΠΌΡΡΗΤΟ"),
    ("GRC ΑΠΌΡΡΗΤΟ", None, "GRC ΑΠΌΡΡΗΤΟ"),
    ("GRC ΑΚΡΩΣ ΑΠΟΡΡΗΤΟ", None, "GRC ΆΚΡΩΣ ΑΠΌΡΡΗΤΟ"),
    # Spain
    ("ESP SECRETO", None, "ESP SECRETO"),
    ("SECRETO", "ESP", "ESP SECRETO"),
    ("ESP RESERVADO", None, "ESP RESERVADO"),
    ("ESP CONFIDENCIAL", None, "ESP CONFIDENCIAL"),
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
    # Croatia
    ("VRLO TAJNO", None, "HRV VRLO TAJNO"),
    ("HRV TAJNO", None, "HRV TAJNO"),
    ("TAJNO", "HRV", "HRV TAJNO"),
    ("POVJERLJIVO", "HRV", "HRV POVJERLJIVO"),  # also Montenegrin
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
    # Austria
    ("AUT STRENG GEHEIM", None, "AUT STRENG GEHEIM"),
    ("AUT GEHEIM", None, "AUT GEHEIM"),
    ("VERTRAULICH", None, "AUT VERTRAULICH"),
    ("EINGESCHRÄNKT", None, "AUT EINGESCHRÄNKT"),
    ("EINGESCHRAENKT", None, "AUT EINGESCHRÄNKT"),
    ("EINGESCHRANKT", None, "AUT EINGESCHRÄNKT"),
    # Cyprus: Greece's names, so the trigraph or a CYP room
    ("CYP ΆΚΡΩΣ ΑΠΌΡΡΗΤΟ", None, "CYP ΆΚΡΩΣ ΑΠΌΡΡΗΤΟ"),
    ("ΑΠΌΡΡΗΤΟ", "CYP", "CYP ΑΠΌΡΡΗΤΟ"),
    ("CYP ΕΜ", None, "CYP ΕΜΠΙΣΤΕΥΤΙΚΌ"),
    ("CYP ΠΕΡΙΟΡΙΣΜΕΝΗΣ ΧΡΗΣΗΣ", None, "CYP ΠΕΡΙΟΡΙΣΜΈΝΗΣ ΧΡΉΣΗΣ"),
    # Finland, Finnish and Swedish
    ("ERITTÄIN SALAINEN", None, "FIN ERITTÄIN SALAINEN"),
    ("YTTERST HEMLIG", None, "FIN ERITTÄIN SALAINEN"),
    ("SALAINEN", None, "FIN SALAINEN"),
    ("FIN HEMLIG", None, "FIN SALAINEN"),
    ("LUOTTAMUKSELLINEN", None, "FIN LUOTTAMUKSELLINEN"),
    ("KONFIDENTIELL", "FIN", "FIN LUOTTAMUKSELLINEN"),
    ("KAYTTO RAJOITETTU", None, "FIN KÄYTTÖ RAJOITETTU"),
    ("BEGRÄNSAD TILLGÅNG", None, "FIN KÄYTTÖ RAJOITETTU"),
    # Hungary: the markings end in '!'
    ("SZIGORÚAN TITKOS!", None, "HUN SZIGORÚAN TITKOS!"),
    ("TITKOS", None, "HUN TITKOS!"),
    ("BIZALMAS!", None, "HUN BIZALMAS!"),
    ("KORLATOZOTT TERJESZTESU", None, "HUN KORLÁTOZOTT TERJESZTÉSŰ!"),
    # Lithuania
    ("VISIŠKAI SLAPTAI", None, "LTU VISIŠKAI SLAPTAI"),
    ("SLAPTAI", None, "LTU SLAPTAI"),
    ("KONFIDENCIALIAI", None, "LTU KONFIDENCIALIAI"),
    ("RIBOTO NAUDOJIMO", None, "LTU RIBOTO NAUDOJIMO"),
    # Latvia
    ("SEVISKI SLEPENI", None, "LVA SEVIŠĶI SLEPENI"),
    ("SLEPENI", None, "LVA SLEPENI"),
    ("KONFIDENCIĀLI", None, "LVA KONFIDENCIĀLI"),
    ("DIENESTA VAJADZĪBĀM", None, "LVA DIENESTA VAJADZĪBĀM"),
    # Malta, Maltese and English
    ("L-OGĦLA SEGRETEZZA", None, "MLT L-OGĦLA SEGRETEZZA"),
    ("L-OGHLA SEGRETEZZA", None, "MLT L-OGĦLA SEGRETEZZA"),
    ("MLT TOP SECRET", None, "MLT L-OGĦLA SEGRETEZZA"),
    ("SIGRIET", None, "MLT SIGRIET"),
    ("KUNFIDENZJALI", None, "MLT KUNFIDENZJALI"),
    ("RISTRETT", None, "MLT RISTRETT"),
    ("RESTRICTED", "MLT", "MLT RISTRETT"),
    # Portugal: SECRETO and RESERVADO one rank below Spain's
    ("MUITO SECRETO", None, "PRT MUITO SECRETO"),
    ("PRT SECRETO", None, "PRT SECRETO"),
    ("PRT CONFIDENCIAL", None, "PRT CONFIDENCIAL"),
    ("PRT RESERVADO", None, "PRT RESERVADO"),
    # Romania: SECRET is its CONFIDENTIAL level
    ("STRICT SECRET DE IMPORTANTA DEOSEBITA", None, "ROU STRICT SECRET DE IMPORTANȚĂ DEOSEBITĂ"),
    ("STRICT SECRET", None, "ROU STRICT SECRET"),
    ("ROU SECRET", None, "ROU SECRET"),
    ("SECRET DE SERVICIU", None, "ROU SECRET DE SERVICIU"),
    # Slovakia
    ("PRÍSNE TAJNÉ", None, "SVK PRÍSNE TAJNÉ"),
    ("SVK TAJNE", None, "SVK TAJNÉ"),
    ("DÔVERNÉ", None, "SVK DÔVERNÉ"),
    ("VYHRADENE", None, "SVK VYHRADENÉ"),
    # Slovenia
    ("STROGO TAJNO", "SVN", "SVN STROGO TAJNO"),  # also Montenegrin
    ("SVN TAJNO", None, "SVN TAJNO"),
    ("ZAUPNO", None, "SVN ZAUPNO"),
    ("INTERNO", "SVN", "SVN INTERNO"),  # also Montenegrin
    # Türkiye: ÖZEL, the old CONFIDENTIAL-level word, is read, never produced (legacy)
    ("TUR ÖZEL", None, "TUR ÖZEL"),
    ("TUR OZEL", None, "TUR ÖZEL"),
    # Sweden, the 2019 scheme
    ("KVALIFICERAT HEMLIG", None, "SWE KVALIFICERAT HEMLIG"),
    ("HEMLIG", "SWE", "SWE HEMLIG"),
    ("SWE KONFIDENTIELL", None, "SWE KONFIDENTIELL"),
    ("BEGRANSAT HEMLIG", None, "SWE BEGRÄNSAT HEMLIG"),
]


@pytest.mark.parametrize(("marking", "context", "banner"), NAMES)
def test_level_names_aliases_and_abbreviations(
    marking: str, context: str | None, banner: str
) -> None:
    assert parse_marking(marking, context).level.banner == banner


def test_every_level_of_every_scheme_is_in_the_table() -> None:
    # The NATO members outside the EU are walked by tests/test_schemes_table.py from their
    # source table; their legacy levels are here.
    covered = {banner for _, _, banner in NAMES} | {row.marking for row in NATO_ROWS}
    every = {lv.banner for s in CATALOGUE.schemes.values() for lv in s.levels}
    assert every <= covered


def test_context_short_name_wins_over_other_schemes() -> None:
    # SECRET alone is Belgian, French, Irish, Maltese or Romanian; in a NATO room it is NATO SECRET.
    assert parse_marking("[SECRET]".strip("[]"), "NATO").scheme == "NATO"
    assert parse_marking("TOP SECRET", "NATO").scheme == "NATO"
    assert parse_marking("TOP SECRET", "IRL").scheme == "IRL"
    # Irish or Maltese: a DEU room does not decide between them
    with pytest.raises(MarkingError, match="ambiguous"):
        parse_marking("TOP SECRET", "DEU")


def test_luxembourg_never_matches_bare_english_names() -> None:
    for name in ("TOP SECRET", "CONFIDENTIAL", "RESTRICTED"):
        schemes = {lv.scheme for lv in level_candidates(name)}
        assert "LUX" not in schemes and schemes >= {"IRL", "MLT"}, schemes


def test_exact_match_beats_accent_folded_match() -> None:
    # "TAJNE" is exactly Polish; accent-folded it would also be Czech or Slovak "TAJNÉ".
    assert parse_marking("TAJNE").scheme == "POL"
    assert {lv.scheme for lv in level_candidates("TAJNÉ")} == {"CZE", "SVK"}


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
        # Romania's SECRET is CONFIDENTIAL-level; Portugal's SECRETO is SECRET-level
        ("EU CONFIDENTIAL", "ROU", "ROU SECRET"),
        ("ESP SECRETO", "PRT", "PRT MUITO SECRETO"),
        ("PRT SECRETO", "ESP", "ESP RESERVADO"),
        ("FIN HEMLIG", "SWE", "SWE HEMLIG"),
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
