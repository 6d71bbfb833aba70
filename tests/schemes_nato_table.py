"""NATO members outside the EU: national levels and their NATO/EU equivalents, typed from the
public sources cited in policy/data/schemes.toml (not derived from it), for a test to drive.

`nato` is None only where the source says there is no equivalent; `eu` is given only where an
EU agreement with that nation states it. Levels no public source gave are in ABSENT, not ROWS.
"""

from __future__ import annotations

from typing import NamedTuple


class Row(NamedTuple):
    nation: str  # trigraph
    marking: str  # official national form as printed, with trigraph
    nato: str | None  # NATO equivalent per the source; None if the source says none
    eu: str | None  # EU equivalent if an EU agreement with that nation gives it, else None
    source: str  # short citation


CTS, NS, NC, NR = "COSMIC TOP SECRET", "NATO SECRET", "NATO CONFIDENTIAL", "NATO RESTRICTED"
EU_TS, EU_S, EU_C = (
    "TRES SECRET UE/EU TOP SECRET",
    "SECRET UE/EU SECRET",
    "CONFIDENTIEL UE/EU CONFIDENTIAL",
)

_US = "EO 13526 §1.2; EU-US agreement OJ L 115 3.5.2007 Art. 3; DoD IPS Handbook ch. 10"
_UK = "UK Government Security Classifications 2014"
_CA = "Justice Canada security guidelines Annex A; PSPC Industrial Security Manual ch. 9"
_NO = "Sikkerhetsloven 2018 §5-3"
_TR = "Yönetmelik RG 31821 (26.04.2022)"
_AL = "Albanian Law 8457/1999 on classified information"
_ME = "Montenegrin Zakon o tajnosti podataka (Sl. list CG 14/2008)"
_MK = "Macedonian DSCI (dbki.gov.mk), Law on Classified Information 275/2019"

ROWS: tuple[Row, ...] = (
    Row("USA", "USA TOP SECRET", CTS, EU_TS, _US),
    Row("USA", "USA SECRET", NS, EU_S, _US),
    Row("USA", "USA CONFIDENTIAL", NC, EU_C, _US),
    Row("GBR", "GBR TOP SECRET", CTS, None, _UK),
    Row("GBR", "GBR SECRET", NS, None, _UK),
    Row("GBR", "GBR OFFICIAL-SENSITIVE", NR, None, _UK + "; kapo.ee levels of state secrets"),
    Row("CAN", "CAN TOP SECRET", CTS, None, _CA),
    Row("CAN", "CAN SECRET", NS, None, _CA),
    Row("CAN", "CAN CONFIDENTIAL", NC, None, _CA),
    Row("NOR", "NOR STRENGT HEMMELIG", CTS, None, _NO),
    Row("NOR", "NOR HEMMELIG", NS, None, _NO),
    Row("NOR", "NOR KONFIDENSIELT", NC, None, _NO),
    Row("NOR", "NOR BEGRENSET", NR, None, _NO),
    Row("TUR", "TUR ÇOK GİZLİ", CTS, None, _TR),
    Row("TUR", "TUR GİZLİ", NS, None, _TR),
    Row("TUR", "TUR HİZMETE ÖZEL", NR, None, _TR),
    Row("ALB", "ALB TEPËR SEKRET", CTS, None, _AL),
    Row("ALB", "ALB SEKRET", NS, None, _AL),
    Row("ALB", "ALB KONFIDENCIAL", NC, None, _AL),
    Row("ALB", "ALB I KUFIZUAR", NR, None, _AL),
    Row("MNE", "MNE STROGO TAJNO", CTS, None, _ME),
    Row("MNE", "MNE TAJNO", NS, None, _ME),
    Row("MNE", "MNE POVJERLJIVO", NC, None, _ME),
    Row("MNE", "MNE INTERNO", NR, None, _ME),
    Row("MKD", "MKD ДРЖАВНА ТАЈНА", CTS, None, _MK),
    Row("MKD", "MKD СТРОГО ДОВЕРЛИВО", NS, None, _MK),
    Row("MKD", "MKD ЗА ОГРАНИЧЕНА УПОТРЕБА", NR, None, _MK),
)

# (nation, NATO level it has no national level for, source)
ABSENT: tuple[tuple[str, str, str], ...] = (
    ("USA", NR, "EU-US agreement OJ L 115 3.5.2007 Art. 3: RESTREINT UE 'No US equivalent'"),
    ("GBR", NC, "UK Government Security Classifications 2014: no CONFIDENTIAL"),
    ("CAN", NR, "Justice Canada: classified levels are Confidential, Secret, Top Secret only"),
    ("TUR", NC, "Yönetmelik RG 31821 (2022): three levels; ÖZEL only on old documents"),
    ("MKD", NC, "no public source found"),
    ("ISL", CTS, "no public source found"),
    ("ISL", NS, "no public source found"),
    ("ISL", NC, "no public source found"),
    ("ISL", NR, "no public source found"),
)

# (typed form, official marking): ASCII and dotless-ı spellings people type
TYPED: tuple[tuple[str, str], ...] = (
    ("TUR GIZLI", "TUR GİZLİ"),
    ("TUR COK GIZLI", "TUR ÇOK GİZLİ"),
    ("TUR HIZMETE OZEL", "TUR HİZMETE ÖZEL"),
    ("tur gızlı", "TUR GİZLİ"),
    ("tur çok gızlı", "TUR ÇOK GİZLİ"),
    ("tur hızmete özel", "TUR HİZMETE ÖZEL"),
    ("ALB TEPER SEKRET", "ALB TEPËR SEKRET"),
    ("MKD DRZAVNA TAJNA", "MKD ДРЖАВНА ТАЈНА"),
    ("MKD STROGO DOVERLIVO", "MKD СТРОГО ДОВЕРЛИВО"),
    ("MKD ZA OGRANICENA UPOTREBA", "MKD ЗА ОГРАНИЧЕНА УПОТРЕБА"),
    ("MKD PER PERDORIM TE KUFIZUAR", "MKD ЗА ОГРАНИЧЕНА УПОТРЕБА"),
    ("GBR OFFICIAL SENSITIVE", "GBR OFFICIAL-SENSITIVE"),
    ("UK OFFICIAL SENSITIVE", "GBR OFFICIAL-SENSITIVE"),
    ("UK SECRET", "GBR SECRET"),
)
