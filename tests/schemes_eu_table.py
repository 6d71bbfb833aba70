"""Every EU member state's classification levels, typed from Council Decision 2013/488/EU,
Appendix B ("Equivalence of security classifications") as amended, not derived from
policy/data/schemes.toml: a test drives the catalogue with it.

ROWS: one row per (nation, level) Appendix B gives. ABSENT: the EU levels a nation has no
level for (Appendix B's column holds only a footnote). TYPED: what people type (no diacritics,
Greek without tonos, German AE/UE, lower case) and the official marking it must parse as.

Sources, by how each row was checked (see SOURCES_NOTE):
- APP_B_TEXT: read in the consolidated table as published (annex to the Member States'
  Agreement, OJ C 247 I, 25.6.2021, p. 1, the same table as Appendix B after Decision (EU)
  2021/1075), Belgium to Cyprus (the excerpt read ends inside Cyprus's row: its
  CONFIDENTIAL and RESTRICTED cells follow Greece's, as Appendix B gives them);
- APP_B_NATIONAL: Appendix B, and the state's own law or NSA publication, read;
- APP_B: Appendix B as amended; its text for this row was not retrievable here, the row
  follows the table as the author knows it (no national source read).
"""

from __future__ import annotations

from typing import NamedTuple


class Row(NamedTuple):
    nation: str  # ISO 3166-1 alpha-3
    marking: str  # the official national form as printed, with trigraph
    eu: str | None  # the EU level it is equivalent to per Appendix B; None if none
    nato: str | None  # the NATO level of the same rank if the nation is in NATO, else None
    source: str  # short citation


_APP_B = "Council Decision 2013/488/EU, App. B, as amended by (EU) 2021/1075"
APP_B_TEXT = _APP_B + "; table read in OJ C 247 I, 25.6.2021, p. 1"
APP_B = _APP_B + " (row not read here)"
APP_B_FRA = _APP_B + ", notes (3a)-(3c) and recital 3; table read in OJ C 247 I, 25.6.2021, p. 1"
APP_B_SWE = _APP_B + " and (EU) 2019/2247 (Protective Security Act 2018:585; row not read here)"
APP_B_NATIONAL = _APP_B + " (row not read here); national law read"
LUX_NATIONAL = _APP_B + " (row not read here); sre.gouvernement.lu, Loi du 15 juin 2004"

SOURCES_NOTE: dict[str, str] = {
    "AUT": "InfoSiG (BGBl. I Nr. 23/2002) § 2(2); InfoSiV § 3",
    "PRT": "Gabinete Nacional de Segurança, leaflet 'Informação classificada' (2019)",
    "ROU": "Law 182/2002 (state secrets); Government Decision 781/2002 (secret de serviciu)",
    "LUX": "sre.gouvernement.lu: LUX TOP SECRET, LUX SECRET, LUX CONFIDENTIAL, LUX RESTRICTED",
}

_TS = "TRES SECRET UE/EU TOP SECRET"
_S = "SECRET UE/EU SECRET"
_C = "CONFIDENTIEL UE/EU CONFIDENTIAL"
_R = "RESTREINT UE/EU RESTRICTED"
_CTS = "COSMIC TOP SECRET"
_NS = "NATO SECRET"
_NC = "NATO CONFIDENTIAL"
_NR = "NATO RESTRICTED"

ROWS: tuple[Row, ...] = (
    Row("AUT", "AUT STRENG GEHEIM", _TS, None, APP_B_NATIONAL),
    Row("AUT", "AUT GEHEIM", _S, None, APP_B_NATIONAL),
    Row("AUT", "AUT VERTRAULICH", _C, None, APP_B_NATIONAL),
    Row("AUT", "AUT EINGESCHRÄNKT", _R, None, APP_B_NATIONAL),
    Row("BEL", "BEL TRÈS SECRET", _TS, _CTS, APP_B_TEXT),
    Row("BEL", "BEL SECRET", _S, _NS, APP_B_TEXT),
    Row("BEL", "BEL CONFIDENTIEL", _C, _NC, APP_B_TEXT),
    Row("BGR", "BGR СТРОГО СЕКРЕТНО", _TS, _CTS, APP_B_TEXT),
    Row("BGR", "BGR СЕКРЕТНО", _S, _NS, APP_B_TEXT),
    Row("BGR", "BGR ПОВЕРИТЕЛНО", _C, _NC, APP_B_TEXT),
    Row("BGR", "BGR ЗА СЛУЖЕБНО ПОЛЗВАНЕ", _R, _NR, APP_B_TEXT),
    Row("CYP", "CYP ΆΚΡΩΣ ΑΠΌΡΡΗΤΟ", _TS, None, APP_B_TEXT),
    Row("CYP", "CYP ΑΠΌΡΡΗΤΟ", _S, None, APP_B_TEXT),
    Row("CYP", "CYP ΕΜΠΙΣΤΕΥΤΙΚΌ", _C, None, APP_B_TEXT),
    Row("CYP", "CYP ΠΕΡΙΟΡΙΣΜΈΝΗΣ ΧΡΉΣΗΣ", _R, None, APP_B_TEXT),
    Row("CZE", "CZE PŘÍSNĚ TAJNÉ", _TS, _CTS, APP_B_TEXT),
    Row("CZE", "CZE TAJNÉ", _S, _NS, APP_B_TEXT),
    Row("CZE", "CZE DŮVĚRNÉ", _C, _NC, APP_B_TEXT),
    Row("CZE", "CZE VYHRAZENÉ", _R, _NR, APP_B_TEXT),
    Row("DEU", "DEU STRENG GEHEIM", _TS, _CTS, APP_B_TEXT),
    Row("DEU", "DEU GEHEIM", _S, _NS, APP_B_TEXT),
    Row("DEU", "DEU VS-VERTRAULICH", _C, _NC, APP_B_TEXT),
    Row("DEU", "DEU VS-NUR FÜR DEN DIENSTGEBRAUCH", _R, _NR, APP_B_TEXT),
    Row("DNK", "DNK YDERST HEMMELIGT", _TS, _CTS, APP_B_TEXT),
    Row("DNK", "DNK HEMMELIGT", _S, _NS, APP_B_TEXT),
    Row("DNK", "DNK FORTROLIGT", _C, _NC, APP_B_TEXT),
    Row("DNK", "DNK TIL TJENESTEBRUG", _R, _NR, APP_B_TEXT),
    Row("ESP", "ESP SECRETO", _TS, _CTS, APP_B_TEXT),
    Row("ESP", "ESP RESERVADO", _S, _NS, APP_B_TEXT),
    Row("ESP", "ESP CONFIDENCIAL", _C, _NC, APP_B_TEXT),
    Row("ESP", "ESP DIFUSIÓN LIMITADA", _R, _NR, APP_B_TEXT),
    Row("EST", "EST TÄIESTI SALAJANE", _TS, _CTS, APP_B_TEXT),
    Row("EST", "EST SALAJANE", _S, _NS, APP_B_TEXT),
    Row("EST", "EST KONFIDENTSIAALNE", _C, _NC, APP_B_TEXT),
    Row("EST", "EST PIIRATUD", _R, _NR, APP_B_TEXT),
    Row("FIN", "FIN ERITTÄIN SALAINEN", _TS, _CTS, APP_B),
    Row("FIN", "FIN SALAINEN", _S, _NS, APP_B),
    Row("FIN", "FIN LUOTTAMUKSELLINEN", _C, _NC, APP_B),
    Row("FIN", "FIN KÄYTTÖ RAJOITETTU", _R, _NR, APP_B),
    Row("FRA", "FRA TRÈS SECRET", _TS, _CTS, APP_B_FRA),
    Row("FRA", "FRA SECRET", _S, _NS, APP_B_FRA),
    Row("FRA", "FRA CONFIDENTIEL DÉFENSE", _C, _NC, APP_B_FRA),
    Row("GRC", "GRC ΆΚΡΩΣ ΑΠΌΡΡΗΤΟ", _TS, _CTS, APP_B_TEXT),
    Row("GRC", "GRC ΑΠΌΡΡΗΤΟ", _S, _NS, APP_B_TEXT),
    Row("GRC", "GRC ΕΜΠΙΣΤΕΥΤΙΚΌ", _C, _NC, APP_B_TEXT),
    Row("GRC", "GRC ΠΕΡΙΟΡΙΣΜΈΝΗΣ ΧΡΉΣΗΣ", _R, _NR, APP_B_TEXT),
    Row("HRV", "HRV VRLO TAJNO", _TS, _CTS, APP_B_TEXT),
    Row("HRV", "HRV TAJNO", _S, _NS, APP_B_TEXT),
    Row("HRV", "HRV POVJERLJIVO", _C, _NC, APP_B_TEXT),
    Row("HRV", "HRV OGRANIČENO", _R, _NR, APP_B_TEXT),
    Row("HUN", "HUN SZIGORÚAN TITKOS!", _TS, _CTS, APP_B),
    Row("HUN", "HUN TITKOS!", _S, _NS, APP_B),
    Row("HUN", "HUN BIZALMAS!", _C, _NC, APP_B),
    Row("HUN", "HUN KORLÁTOZOTT TERJESZTÉSŰ!", _R, _NR, APP_B),
    Row("IRL", "IRL TOP SECRET", _TS, None, APP_B_TEXT),
    Row("IRL", "IRL SECRET", _S, None, APP_B_TEXT),
    Row("IRL", "IRL CONFIDENTIAL", _C, None, APP_B_TEXT),
    Row("IRL", "IRL RESTRICTED", _R, None, APP_B_TEXT),
    Row("ITA", "ITA SEGRETISSIMO", _TS, _CTS, APP_B_TEXT),
    Row("ITA", "ITA SEGRETO", _S, _NS, APP_B_TEXT),
    Row("ITA", "ITA RISERVATISSIMO", _C, _NC, APP_B_TEXT),
    Row("ITA", "ITA RISERVATO", _R, _NR, APP_B_TEXT),
    Row("LTU", "LTU VISIŠKAI SLAPTAI", _TS, _CTS, APP_B),
    Row("LTU", "LTU SLAPTAI", _S, _NS, APP_B),
    Row("LTU", "LTU KONFIDENCIALIAI", _C, _NC, APP_B),
    Row("LTU", "LTU RIBOTO NAUDOJIMO", _R, _NR, APP_B),
    Row("LUX", "LUX TOP SECRET", _TS, _CTS, LUX_NATIONAL),
    Row("LUX", "LUX SECRET", _S, _NS, LUX_NATIONAL),
    Row("LUX", "LUX CONFIDENTIAL", _C, _NC, LUX_NATIONAL),
    Row("LUX", "LUX RESTRICTED", _R, _NR, LUX_NATIONAL),
    Row("LVA", "LVA SEVIŠĶI SLEPENI", _TS, _CTS, APP_B),
    Row("LVA", "LVA SLEPENI", _S, _NS, APP_B),
    Row("LVA", "LVA KONFIDENCIĀLI", _C, _NC, APP_B),
    Row("LVA", "LVA DIENESTA VAJADZĪBĀM", _R, _NR, APP_B),
    Row("MLT", "MLT L-OGĦLA SEGRETEZZA", _TS, None, APP_B),
    Row("MLT", "MLT SIGRIET", _S, None, APP_B),
    Row("MLT", "MLT KUNFIDENZJALI", _C, None, APP_B),
    Row("MLT", "MLT RISTRETT", _R, None, APP_B),
    Row("NLD", "NLD STG. ZEER GEHEIM", _TS, _CTS, APP_B),
    Row("NLD", "NLD STG. GEHEIM", _S, _NS, APP_B),
    Row("NLD", "NLD STG. CONFIDENTIEEL", _C, _NC, APP_B),
    Row("NLD", "NLD DEP. VERTROUWELIJK", _R, _NR, APP_B),
    Row("POL", "POL ŚCIŚLE TAJNE", _TS, _CTS, APP_B),
    Row("POL", "POL TAJNE", _S, _NS, APP_B),
    Row("POL", "POL POUFNE", _C, _NC, APP_B),
    Row("POL", "POL ZASTRZEŻONE", _R, _NR, APP_B),
    Row("PRT", "PRT MUITO SECRETO", _TS, _CTS, APP_B_NATIONAL),
    Row("PRT", "PRT SECRETO", _S, _NS, APP_B_NATIONAL),
    Row("PRT", "PRT CONFIDENCIAL", _C, _NC, APP_B_NATIONAL),
    Row("PRT", "PRT RESERVADO", _R, _NR, APP_B_NATIONAL),
    Row("ROU", "ROU STRICT SECRET DE IMPORTANȚĂ DEOSEBITĂ", _TS, _CTS, APP_B_NATIONAL),
    Row("ROU", "ROU STRICT SECRET", _S, _NS, APP_B_NATIONAL),
    Row("ROU", "ROU SECRET", _C, _NC, APP_B_NATIONAL),
    Row("ROU", "ROU SECRET DE SERVICIU", _R, _NR, APP_B_NATIONAL),
    Row("SVK", "SVK PRÍSNE TAJNÉ", _TS, _CTS, APP_B),
    Row("SVK", "SVK TAJNÉ", _S, _NS, APP_B),
    Row("SVK", "SVK DÔVERNÉ", _C, _NC, APP_B),
    Row("SVK", "SVK VYHRADENÉ", _R, _NR, APP_B),
    Row("SVN", "SVN STROGO TAJNO", _TS, _CTS, APP_B),
    Row("SVN", "SVN TAJNO", _S, _NS, APP_B),
    Row("SVN", "SVN ZAUPNO", _C, _NC, APP_B),
    Row("SVN", "SVN INTERNO", _R, _NR, APP_B),
    Row("SWE", "SWE KVALIFICERAT HEMLIG", _TS, _CTS, APP_B_SWE),
    Row("SWE", "SWE HEMLIG", _S, _NS, APP_B_SWE),
    Row("SWE", "SWE KONFIDENTIELL", _C, _NC, APP_B_SWE),
    Row("SWE", "SWE BEGRÄNSAT HEMLIG", _R, _NR, APP_B_SWE),
)

# (nation, EU level it has no national level for, source)
ABSENT: tuple[tuple[str, str, str], ...] = (
    ("BEL", _R, APP_B_TEXT + ", note (1)"),
    ("FRA", _R, APP_B_FRA + ", note (3c)"),
)

# (what people type, the official marking it must parse as)
TYPED: tuple[tuple[str, str], ...] = (
    ("AUT EINGESCHRANKT", "AUT EINGESCHRÄNKT"),
    ("AUT EINGESCHRAENKT", "AUT EINGESCHRÄNKT"),
    ("aut streng geheim", "AUT STRENG GEHEIM"),
    ("BEL TRES SECRET", "BEL TRÈS SECRET"),
    ("BEL ZEER GEHEIM", "BEL TRÈS SECRET"),
    ("BEL VERTROUWELIJK", "BEL CONFIDENTIEL"),
    ("BGR секретно", "BGR СЕКРЕТНО"),
    ("bgr за служебно ползване", "BGR ЗА СЛУЖЕБНО ПОЛЗВАНЕ"),
    ("CYP ΑΚΡΩΣ ΑΠΟΡΡΗΤΟ", "CYP ΆΚΡΩΣ ΑΠΌΡΡΗΤΟ"),
    ("CYP ΑΠΟΡΡΗΤΟ", "CYP ΑΠΌΡΡΗΤΟ"),
    ("CYP ΕΜΠΙΣΤΕΥΤΙΚΟ", "CYP ΕΜΠΙΣΤΕΥΤΙΚΌ"),
    ("CYP ΠΕΡΙΟΡΙΣΜΕΝΗΣ ΧΡΗΣΗΣ", "CYP ΠΕΡΙΟΡΙΣΜΈΝΗΣ ΧΡΉΣΗΣ"),
    ("CYP ΑΑΠ", "CYP ΆΚΡΩΣ ΑΠΌΡΡΗΤΟ"),
    ("CZE PRISNE TAJNE", "CZE PŘÍSNĚ TAJNÉ"),
    ("CZE DUVERNE", "CZE DŮVĚRNÉ"),
    ("CZE VYHRAZENE", "CZE VYHRAZENÉ"),
    ("DEU VS-NUR FUER DEN DIENSTGEBRAUCH", "DEU VS-NUR FÜR DEN DIENSTGEBRAUCH"),
    ("DEU VS-NUR FUR DEN DIENSTGEBRAUCH", "DEU VS-NUR FÜR DEN DIENSTGEBRAUCH"),
    ("DEU VS - VERTRAULICH", "DEU VS-VERTRAULICH"),
    ("DEU VS-NfD", "DEU VS-NUR FÜR DEN DIENSTGEBRAUCH"),
    ("dnk til tjenestebrug", "DNK TIL TJENESTEBRUG"),
    ("ESP DIFUSION LIMITADA", "ESP DIFUSIÓN LIMITADA"),
    ("EST TAIESTI SALAJANE", "EST TÄIESTI SALAJANE"),
    ("FIN ERITTAIN SALAINEN", "FIN ERITTÄIN SALAINEN"),
    ("FIN KAYTTO RAJOITETTU", "FIN KÄYTTÖ RAJOITETTU"),
    ("FIN YTTERST HEMLIG", "FIN ERITTÄIN SALAINEN"),
    ("FIN HEMLIG", "FIN SALAINEN"),
    ("FIN KONFIDENTIELL", "FIN LUOTTAMUKSELLINEN"),
    ("FIN BEGRANSAD TILLGANG", "FIN KÄYTTÖ RAJOITETTU"),
    ("FRA TRES SECRET", "FRA TRÈS SECRET"),
    ("FRA TRES SECRET DEFENSE", "FRA TRÈS SECRET"),
    ("FRA SECRET DÉFENSE", "FRA SECRET"),
    ("FRA CONFIDENTIEL DEFENSE", "FRA CONFIDENTIEL DÉFENSE"),
    ("GRC ΑΚΡΩΣ ΑΠΟΡΡΗΤΟ", "GRC ΆΚΡΩΣ ΑΠΌΡΡΗΤΟ"),
    ("GRC ΑΠΟΡΡΗΤΟ", "GRC ΑΠΌΡΡΗΤΟ"),
    ("GRC ΕΜΠΙΣΤΕΥΤΙΚΟ", "GRC ΕΜΠΙΣΤΕΥΤΙΚΌ"),
    ("GRC ΠΕΡΙΟΡΙΣΜΕΝΗΣ ΧΡΗΣΗΣ", "GRC ΠΕΡΙΟΡΙΣΜΈΝΗΣ ΧΡΉΣΗΣ"),
    ("GRC απόρρητο", "GRC ΑΠΌΡΡΗΤΟ"),
    ("HRV OGRANICENO", "HRV OGRANIČENO"),
    ("HUN SZIGORUAN TITKOS", "HUN SZIGORÚAN TITKOS!"),
    ("HUN Titkos!", "HUN TITKOS!"),
    ("HUN BIZALMAS", "HUN BIZALMAS!"),
    ("HUN KORLATOZOTT TERJESZTESU", "HUN KORLÁTOZOTT TERJESZTÉSŰ!"),
    ("irl restricted", "IRL RESTRICTED"),
    ("ita riservatissimo", "ITA RISERVATISSIMO"),
    ("LTU VISISKAI SLAPTAI", "LTU VISIŠKAI SLAPTAI"),
    ("lux confidential", "LUX CONFIDENTIAL"),
    ("LVA SEVISKI SLEPENI", "LVA SEVIŠĶI SLEPENI"),
    ("LVA KONFIDENCIALI", "LVA KONFIDENCIĀLI"),
    ("LVA DIENESTA VAJADZIBAM", "LVA DIENESTA VAJADZĪBĀM"),
    ("MLT L-OGHLA SEGRETEZZA", "MLT L-OGĦLA SEGRETEZZA"),
    ("MLT TOP SECRET", "MLT L-OGĦLA SEGRETEZZA"),
    ("MLT SECRET", "MLT SIGRIET"),
    ("MLT CONFIDENTIAL", "MLT KUNFIDENZJALI"),
    ("MLT RESTRICTED", "MLT RISTRETT"),
    ("nld stg. zeer geheim", "NLD STG. ZEER GEHEIM"),
    ("POL SCISLE TAJNE", "POL ŚCIŚLE TAJNE"),
    ("POL ZASTRZEZONE", "POL ZASTRZEŻONE"),
    ("prt muito secreto", "PRT MUITO SECRETO"),
    ("ROU STRICT SECRET DE IMPORTANTA DEOSEBITA", "ROU STRICT SECRET DE IMPORTANȚĂ DEOSEBITĂ"),
    ("ROU STRICT SECRET DE IMPORTANŢĂ DEOSEBITĂ", "ROU STRICT SECRET DE IMPORTANȚĂ DEOSEBITĂ"),
    ("SVK PRISNE TAJNE", "SVK PRÍSNE TAJNÉ"),
    ("SVK TAJNE", "SVK TAJNÉ"),
    ("SVK DOVERNE", "SVK DÔVERNÉ"),
    ("SVK VYHRADENE", "SVK VYHRADENÉ"),
    ("svn strogo tajno", "SVN STROGO TAJNO"),
    ("SWE BEGRANSAT HEMLIG", "SWE BEGRÄNSAT HEMLIG"),
)
