"""The site schemes file: built purely by `policy.with_site`, read by the bot's config
(`[bot] schemes_file`), the offline CLI (`--schemes FILE`) and the gate's config; errors
name the file, the scheme and the key. Also `label schemes` and `!label schemes`."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner, Result

from bot.cli import main
from bot.config import ConfigError, load_config
from bot.gate import rules
from bot.gate.config import GateConfigError, RegisterSpec, module_entry, parse_gate_config
from bot.gate.rules import Gate, Register, RoomLabel
from bot.schemes import SchemesFileError, read_schemes_file
from bot.storage import Origin, RoomRecord, Store, audit_key_from
from bot.storage.migrate import upgrade
from bot.storage.store import register_public_key
from commands.context import Role
from policy import (
    CatalogueError,
    MarkingError,
    convert,
    current,
    install_catalogue,
    parse_marking,
    why_no_equivalent,
    with_site,
)
from policy.catalogue import build, packaged_data
from policy.ids import RoomId, RoomKey, UserId
from tests.test_commands import run

ROOT = Path(__file__).resolve().parent.parent
SITE = ROOT / "tests" / "data" / "site_schemes.toml"
EXAMPLE = ROOT / "config.example.toml"
CHE_INTERN = {"rank": 1, "name": "INTERN"}


@pytest.fixture(autouse=True)
def packaged_catalogue() -> Iterator[None]:
    """Each test starts and ends with the packaged catalogue (and no room parsed under
    another one left in the gate's cache)."""
    previous = current()
    rules._policy_room.cache_clear()
    yield
    install_catalogue(previous)
    rules._policy_room.cache_clear()


def che(**changes: Any) -> dict[str, Any]:
    scheme: dict[str, Any] = {
        "code": "CHE",
        "name": "Switzerland",
        "levels": [{"rank": 3, "name": "GEHEIM"}, dict(CHE_INTERN)],
    }
    scheme.update(changes)
    return scheme


# ---------------------------------------------------------------- pure: with_site, build


def test_a_site_file_adds_a_partner_and_overrides_a_nation() -> None:
    catalogue = with_site({"schemes": [che()]})
    assert catalogue.additions == ("CHE",) and catalogue.overrides == ()
    assert "CHE" not in current().schemes, "building installs nothing"
    install_catalogue(catalogue)
    assert parse_marking("CHE GEHEIM").banner == "CHE GEHEIM"
    assert convert(parse_marking("NATO SECRET"), "CHE") == parse_marking("CHE GEHEIM").level
    reason = why_no_equivalent(parse_marking("NATO CONFIDENTIAL"), "CHE")
    assert reason.startswith("CHE has no level equivalent to NATO CONFIDENTIAL")


def test_an_override_replaces_the_scheme_whole_and_its_absent_note_is_the_reason() -> None:
    catalogue = read_schemes_file(SITE)
    assert catalogue.overrides == ("BEL",) and catalogue.additions == ("CHE",)
    install_catalogue(catalogue)
    bel = current().schemes["BEL"]
    assert bel.name == "Belgium" and bel.sources and bel.absent_note(1)
    assert why_no_equivalent(parse_marking("NATO RESTRICTED"), "BEL") == (
        "BEL has no level equivalent to NATO RESTRICTED: Belgian law has no RESTRICTED level; "
        "such material is not classified"
    )


def test_the_alliances_cannot_be_overridden() -> None:
    nato = {"code": "NATO", "levels": [{"rank": 3, "name": "NATO SECRET"}]}
    with pytest.raises(CatalogueError, match=r"schemes\[0\] \(NATO\)\.code: the alliance"):
        with_site({"schemes": [nato]}, "site.toml")


@pytest.mark.parametrize(
    ("scheme", "message"),
    [
        (
            che(levels=[{"rank": 3, "name": "GEHEIM"}, {"rank": 7, "name": "X"}]),
            "site.toml: schemes[0] (CHE).levels[1].rank: must be 0-4",
        ),
        (che(levels=[{"rank": 3}]), "site.toml: schemes[0] (CHE).levels[0].name: expected"),
        (che(colour="red"), "site.toml: schemes[0] (CHE).colour: unknown key"),
        (che(code="XYZ"), "site.toml: schemes[0].code: expected NATO, EU or an ISO 3166-1"),
        (che(sources="a law"), "site.toml: schemes[0] (CHE).sources: expected a list"),
        (
            che(absent=[{"rank": 3, "note": "x"}]),
            "site.toml: schemes[0] (CHE).absent[0].rank: the scheme has a level of rank 3",
        ),
        (che(absent=[{"rank": 4}]), "site.toml: schemes[0] (CHE).absent[0].note: expected"),
        (
            che(levels=[{"rank": 3, "name": "A"}, {"rank": 3, "name": "B"}]),
            "site.toml: schemes[0] (CHE).levels[1].rank: two current levels of rank 3",
        ),
        (
            che(levels=[]),
            "site.toml: schemes[0] (CHE).levels: expected a list of levels (an empty one needs absent notes for ranks 1-4)",
        ),
    ],
)
def test_a_bad_site_scheme_is_refused_naming_the_key(scheme: dict[str, Any], message: str) -> None:
    with pytest.raises(CatalogueError) as caught:
        with_site({"schemes": [scheme]}, "site.toml")
    assert str(caught.value).startswith(message), str(caught.value)


def test_the_packaged_file_is_validated_the_same_way() -> None:
    data = packaged_data()
    data["schemes"][2]["levels"][1]["rank"] = 5
    code = data["schemes"][2]["code"]
    with pytest.raises(CatalogueError, match=rf"^schemes.toml: schemes\[2\] \({code}\)\.levels"):
        build(data)
    data = packaged_data()
    del data["schemes"][0]
    with pytest.raises(CatalogueError, match="the NATO scheme is missing"):
        build(data)
    assert build(packaged_data()).schemes.keys() == current().schemes.keys()


def test_typed_forms_find_turkish_and_austrian_levels() -> None:
    install_catalogue(
        with_site(
            {
                "schemes": [
                    {"code": "TUR", "levels": [{"rank": 3, "name": "GİZLİ"}]},
                    {"code": "AUT", "levels": [{"rank": 1, "name": "EINGESCHRÄNKT"}]},
                ]
            }
        )
    )
    for typed in ("GIZLI", "gizli", "gızlı", "TUR GIZLI", "GİZLİ"):
        assert parse_marking(typed).banner == "TUR GİZLİ", typed
    for typed in ("EINGESCHRANKT", "EINGESCHRAENKT", "aut eingeschränkt"):
        assert parse_marking(typed).banner == "AUT EINGESCHRÄNKT", typed


# ---------------------------------------------------------------- the bot's config


def _config(tmp_path: Path, line: str, label: str = "DEU GEHEIM") -> Path:
    text = EXAMPLE.read_text(encoding="utf-8").replace("[bot]\n", f"[bot]\n{line}\n", 1)
    text = text.replace('label = "DEU GEHEIM"', f'label = "{label}"', 1)
    path = tmp_path / "config.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_config_schemes_file_is_read_before_the_rooms(tmp_path: Path) -> None:
    (tmp_path / "site.toml").write_text(SITE.read_text(encoding="utf-8"), encoding="utf-8")
    config = load_config(_config(tmp_path, 'schemes_file = "site.toml"', "CHE GEHEIM"))
    assert config.schemes_path() == (tmp_path / "site.toml").resolve()
    assert config.rooms[0].parsed_label.banner == "CHE GEHEIM"
    assert "CHE" in current().schemes


def test_config_schemes_file_errors_name_the_key(tmp_path: Path) -> None:
    (tmp_path / "site.toml").write_text(
        '[[schemes]]\ncode = "CHE"\nlevels = [{ rank = 9, name = "GEHEIM" }]\n', encoding="utf-8"
    )
    with pytest.raises(ConfigError) as caught:
        load_config(_config(tmp_path, 'schemes_file = "site.toml"'))
    assert any(
        e.startswith("bot.schemes_file: ")
        and e.endswith("site.toml: schemes[0] (CHE).levels[0].rank: must be 0-4")
        for e in caught.value.errors
    ), caught.value.errors
    with pytest.raises(ConfigError) as missing:
        load_config(_config(tmp_path, 'schemes_file = "nowhere.toml"'))
    assert any("bot.schemes_file: " in e and "no such file" in e for e in missing.value.errors)


# ---------------------------------------------------------------- the offline CLI


def cli(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def test_cli_schemes_option_reads_the_site_file() -> None:
    refused = cli("label", "parse", "CHE GEHEIM")
    assert refused.exit_code == 2 and "no scheme for CHE; known: " in refused.stderr
    result = cli("label", "parse", "CHE GEHEIM", "--schemes", str(SITE))
    assert result.exit_code == 0, result.stderr
    assert json.loads(result.stdout)["banner"] == "CHE GEHEIM"
    release = cli(
        "policy",
        "may-release",
        "--schemes",
        str(SITE),
        "--label",
        "NATO RESTRICTED",
        "--from-label",
        "NATO SECRET",
        "--to-label",
        "BEL CONFIDENTIEL",
    )
    assert release.exit_code == 1
    assert "Belgian law has no RESTRICTED level" in json.loads(release.stdout)["reason"]


def test_cli_schemes_option_names_the_bad_key(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text('[[schemes]]\ncode = "EU"\nlevels = []\n', encoding="utf-8")
    result = cli("label", "parse", "NATO SECRET", "--schemes", str(bad))
    assert result.exit_code == 2
    assert "--schemes: " in result.stderr
    assert "schemes[0] (EU).code: the alliance schemes NATO and EU cannot be overridden" in (
        result.stderr
    )


def test_cli_convert_refuses_instead_of_rounding() -> None:
    result = cli("label", "convert", "NATO RESTRICTED", "--to", "BEL")
    assert result.exit_code == 1
    assert "BEL has no level equivalent to NATO RESTRICTED" in result.stderr
    assert cli("label", "convert", "NATO UNCLASSIFIED", "--to", "DEU").exit_code == 1
    assert cli("label", "convert", "NATO SECRET", "--to", "ESP").stdout == "ESP RESERVADO\n"


def test_cli_label_schemes_lists_every_scheme_with_equivalents_and_sources() -> None:
    result = cli("label", "schemes", "--schemes", str(SITE))
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert out.startswith("NATO — ")
    for code in current().schemes:
        assert f"\n{code} — " in out or out.startswith(f"{code} — ")
    che = out.split("\nCHE — ")[1].split("\n\n")[0]
    assert che.startswith("Switzerland (site file)")
    assert "rank 3: CHE GEHEIM\n    also: SECRET, SEGRETO\n    NATO: NATO SECRET\n" in che
    assert "    EU: SECRET UE/EU SECRET\n" in che
    assert "rank 4: no CHE level — CHE has no level equivalent to COSMIC TOP SECRET: Swiss" in che
    assert "sources: Informationsschutzverordnung" in che
    deu = cli("label", "schemes", "deu")
    assert deu.stdout.startswith("DEU — Germany\n")
    assert "also: VS-NUR FUER DEN DIENSTGEBRAUCH, VS-NfD" in deu.stdout
    nato = cli("label", "schemes", "NATO").stdout
    assert "rank 0: NATO UNCLASSIFIED" in nato
    assert "EU: none: EU has no level equivalent to NATO UNCLASSIFIED" in nato
    assert cli("label", "schemes", "XYZ").exit_code == 2


# ---------------------------------------------------------------- chat: !label schemes


async def test_chat_label_schemes_answers_for_one_nation() -> None:
    install_catalogue(read_schemes_file(SITE))
    outcome = await run("!label schemes bel", set())
    assert outcome is not None and outcome.ok
    plain = outcome.reply.document.plain
    assert "BEL — Belgium" in plain
    assert "BEL SECRET (also: GEHEIM), rank 3 — NATO: NATO SECRET; EU: SECRET UE/EU SECRET" in plain
    assert "rank 1: no BEL level — BEL has no level equivalent to NATO RESTRICTED: Belgian" in plain
    assert "Sources: Loi du 11 décembre 1998" in plain
    listing = await run("!label schemes", set())
    assert listing is not None and "BEL, BGR, CAN, CHE, CYP" in listing.reply.document.plain
    unknown = await run("!label schemes XYZ", set())
    assert unknown is not None and not unknown.ok
    assert "no scheme for 'XYZ'; known: " in unknown.reply.document.plain
    helped = await run("!help label schemes", set())
    assert helped is not None and "!label schemes [CODE]" in helped.reply.document.plain


async def test_chat_label_schemes_is_escaped_in_html() -> None:
    install_catalogue(with_site({"schemes": [che(name="<b>Swiss</b>")]}))
    outcome = await run("!label schemes CHE", {Role.ADMIN})
    assert outcome is not None
    assert "<b>Swiss</b>" not in outcome.reply.document.html
    assert "&lt;b&gt;Swiss&lt;/b&gt;" in outcome.reply.document.html


async def test_chat_label_check_shows_a_missing_equivalent_with_its_reason() -> None:
    outcome = await run('!label check "FRA CONFIDENTIEL DÉFENSE"', set())
    assert outcome is not None
    assert "NATO: NATO CONFIDENTIAL" in outcome.reply.document.plain
    outcome = await run('!label check "NATO UNCLASSIFIED"', set())
    assert outcome is not None
    assert "EU: none: EU has no level equivalent to NATO UNCLASSIFIED" in (
        outcome.reply.document.plain
    )


# ---------------------------------------------------------------- the gate


DATA_KEY = "site-schemes-data-key-0123456789abcdef"
BOT = UserId("@liaison:hs")


def test_gate_config_reads_the_same_file_and_names_its_key(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'register.db'}"
    with pytest.raises(GateConfigError, match="schemes_file: give an absolute path"):
        parse_gate_config({"bot_user_id": BOT, "database": url, "schemes_file": "site.toml"})
    bad = tmp_path / "bad.toml"
    bad.write_text('[[schemes]]\ncode = "CHE"\nlevels = [{ rank = "3" }]\n', encoding="utf-8")
    with pytest.raises(GateConfigError) as caught:
        parse_gate_config({"bot_user_id": BOT, "database": url, "schemes_file": str(bad)})
    assert str(caught.value) == (
        f"modules[].config.schemes_file: {bad}: schemes[0] (CHE).levels[0].rank: must be 0-4"
    )
    config = parse_gate_config({"bot_user_id": BOT, "database": url, "schemes_file": str(SITE)})
    assert config.schemes_file == str(SITE) and "CHE" in current().schemes
    entry = module_entry([{"bot_user_id": BOT, "database": url}], str(SITE))
    assert entry["config"]["schemes_file"] == str(SITE)


def test_gate_rules_read_a_site_scheme_room(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'register.db'}"
    parse_gate_config({"bot_user_id": BOT, "database": url, "schemes_file": str(SITE)})
    upgrade(url)
    store = Store.from_url(url, audit_key_from(DATA_KEY))
    store.key_audit_log()
    try:
        store.save_room(
            RoomRecord(
                key=RoomKey("che"),
                name="che",
                label="CHE GEHEIM",
                scheme="CHE",
                rank=3,
                audience=("CHE",),
                room_id=RoomId("!che:hs"),
                origin=Origin.CONFIG,
            )
        )
        store.grant("t", "@swiss:hs", "CHE", "CHE GEHEIM", 3, nationality="CHE")
        store.grant("t", "@low:hs", "CHE", "CHE INTERN", 1, nationality="CHE")
    finally:
        store.close()
    spec = RegisterSpec(bot_user_id=BOT, database=url, register_key=register_public_key(DATA_KEY))
    register = Register(spec, ttl=2.0)
    gate = Gate(lambda: {BOT: register}, today=lambda: date(2026, 12, 3))
    label = RoomLabel(True, BOT)
    try:
        allowed = gate.may_enter("@swiss:hs", "!che:hs", label)
        assert allowed, allowed.reason
        low = gate.may_enter("@low:hs", "!che:hs", label)
        assert not low and "grant CHE INTERN is below the room's CHE GEHEIM" in low.reason
    finally:
        register.close()


def test_read_schemes_file_errors_name_the_file() -> None:
    with pytest.raises(SchemesFileError, match=r"nowhere\.toml: no such file"):
        read_schemes_file("/nowhere.toml")
    with pytest.raises(MarkingError):
        parse_marking("CHE GEHEIM")  # the fixture put the packaged catalogue back


def test_an_override_is_said_in_a_log_line(caplog: pytest.LogCaptureFixture) -> None:
    from bot.schemes import use_schemes_file

    with caplog.at_level("INFO", logger="bot.schemes"):
        use_schemes_file(SITE)
    assert f"site schemes file {SITE} replaces the packaged BEL scheme" in caplog.text
    assert f"site schemes file {SITE} adds CHE" in caplog.text


# ---------------------------------------------------------------- forms a site cannot take


def _che_alias(rank: int = 1, **level: Any) -> dict[str, Any]:
    return che(levels=[{"rank": 3, "name": "GEHEIM"}, {"rank": rank, "name": "INTERN", **level}])


@pytest.mark.parametrize(
    ("level", "message"),
    [
        (
            {"aliases": ["INTERNE", "NATO SECRET"]},
            "site.toml: schemes[0] (CHE).levels[1].aliases[1]: 'NATO SECRET' is a NATO level's "
            "name (NATO SECRET)",
        ),
        (
            {"aliases": ["nato  secrét"]},
            "site.toml: schemes[0] (CHE).levels[1].aliases[0]: 'nato  secrét' is a NATO level's "
            "name (NATO SECRET)",
        ),
        (
            {"name": "COSMIC TOP SECRET"},
            "site.toml: schemes[0] (CHE).levels[1].name: 'COSMIC TOP SECRET' is a NATO level's "
            "name (COSMIC TOP SECRET)",
        ),
        (
            {"abbreviations": ["NS"]},
            "site.toml: schemes[0] (CHE).levels[1].abbreviations[0]: 'NS' is a NATO level's "
            "abbreviation (NATO SECRET)",
        ),
        (
            {"abbreviations": ["CTS"]},
            "site.toml: schemes[0] (CHE).levels[1].abbreviations[0]: 'CTS' is a NATO level's "
            "abbreviation (COSMIC TOP SECRET)",
        ),
        (
            {"aliases": ["TRÈS SECRET UE"]},
            "site.toml: schemes[0] (CHE).levels[1].aliases[0]: 'TRÈS SECRET UE' is an EU level's "
            "alias (TRES SECRET UE/EU TOP SECRET)",
        ),
        (
            {"context_names": ["EU-R"]},
            "site.toml: schemes[0] (CHE).levels[1].context_names[0]: 'EU-R' is an EU level's "
            "abbreviation (RESTREINT UE/EU RESTRICTED)",
        ),
        (
            {"aliases": ["DEU GEHEIM"]},
            "site.toml: schemes[0] (CHE).levels[1].aliases[0]: 'DEU GEHEIM' starts with "
            "another scheme's code, DEU",
        ),
        (
            {"aliases": ["usa secret"]},
            "site.toml: schemes[0] (CHE).levels[1].aliases[0]: 'usa secret' starts with "
            "another scheme's code, USA",
        ),
        (
            {"aliases": ["PER INTERN"]},
            "site.toml: schemes[0] (CHE).levels[1].aliases[0]: 'PER INTERN' starts with "
            "another scheme's code, PER",
        ),
        (
            {"aliases": ["DEU-GEHEIM"]},
            "site.toml: schemes[0] (CHE).levels[1].aliases[0]: 'DEU-GEHEIM' starts with "
            "another scheme's code, DEU",
        ),
        (
            {"abbreviations": ["NATO"]},
            "site.toml: schemes[0] (CHE).levels[1].abbreviations[0]: 'NATO' is another "
            "scheme's code, NATO",
        ),
        (
            {"aliases": ["NATO INTERN"]},
            "site.toml: schemes[0] (CHE).levels[1].aliases[0]: 'NATO INTERN' starts with "
            "another scheme's code, NATO",
        ),
        (
            {"aliases": ["COSMIC TOP SECRET ATOMAL"]},
            "site.toml: schemes[0] (CHE).levels[1].aliases[0]: 'COSMIC TOP SECRET ATOMAL' "
            "starts with a NATO level's name (COSMIC TOP SECRET)",
        ),
        (
            {"aliases": ["INTERN // REL TO NATO"]},
            "site.toml: schemes[0] (CHE).levels[1].aliases[0]: 'INTERN // REL TO NATO' contains "
            "'//', which a marking's grammar reads as a separator",
        ),
        (
            {"name": "INTERN / EXTERN"},
            "site.toml: schemes[0] (CHE).levels[1].name: 'INTERN / EXTERN' contains '/' next to a "
            "space",
        ),
        (
            {"aliases": ["INTERN, CHE"]},
            "site.toml: schemes[0] (CHE).levels[1].aliases[0]: 'INTERN, CHE' contains ','",
        ),
        (
            {"abbreviations": ["[I]"]},
            "site.toml: schemes[0] (CHE).levels[1].abbreviations[0]: '[I]' contains '['",
        ),
        (
            {"aliases": ["INTERN REL TO NATO"]},
            "site.toml: schemes[0] (CHE).levels[1].aliases[0]: 'INTERN REL TO NATO' contains "
            "'REL TO'",
        ),
        (
            {"aliases": ["INTERN RELEASABLE  TO CHE"]},
            "site.toml: schemes[0] (CHE).levels[1].aliases[0]: 'INTERN RELEASABLE  TO CHE' "
            "contains 'REL TO'",
        ),
        (
            {"context_names": ["SECRET"]},
            "site.toml: schemes[0] (CHE).levels[1].context_names[0]: 'SECRET' is a NATO level's "
            "context name (NATO SECRET, rank 3) but this level is rank 1",
        ),
        (
            {"aliases": ["TOP SECRET"]},
            "site.toml: schemes[0] (CHE).levels[1].aliases[0]: 'TOP SECRET' is a NATO level's "
            "context name (COSMIC TOP SECRET, rank 4) but this level is rank 1",
        ),
    ],
)
def test_a_site_form_cannot_take_an_alliance_or_another_nations_name(
    level: dict[str, Any], message: str
) -> None:
    with pytest.raises(CatalogueError) as caught:
        with_site({"schemes": [_che_alias(**level)]}, "site.toml")
    assert str(caught.value).startswith(message), str(caught.value)


def test_national_forms_that_are_genuine_stay_accepted() -> None:
    """Own trigraph, an English word at the alliance's rank (Malta), an official name at
    another rank (Romanian SECRET is rank 2), slashes and dots inside a word."""
    catalogue = with_site(
        {
            "schemes": [
                _che_alias(
                    aliases=["CHE INTERN", "RESTRICTED", "INTERN/EXTERN", "INT."],
                    context_names=["INTERNAL"],
                ),
                {"code": "LIE", "levels": [{"rank": 2, "name": "SECRET"}]},
            ]
        },
        "site.toml",
    )
    install_catalogue(catalogue)
    assert parse_marking("INTERN/EXTERN").banner == "CHE INTERN"
    assert parse_marking("RESTRICTED", "CHE").banner == "CHE INTERN"
    assert parse_marking("LIE SECRET").banner == "LIE SECRET"
    with pytest.raises(MarkingError, match="ambiguous"):  # other nations' SECRET is higher
        parse_marking("SECRET", "LIE")
    assert parse_marking("SECRET", "NATO").banner == "NATO SECRET"


def test_the_reviewed_spoofing_file_is_refused_and_nato_secret_stays_nato(tmp_path: Path) -> None:
    site = tmp_path / "site_che.toml"
    site.write_text(
        '[[schemes]]\ncode = "CHE"\nname = "Switzerland"\nlevels = [\n'
        '    { rank = 1, name = "INTERN", aliases = ["NATO SECRET", "DEU GEHEIM", '
        '"COSMIC TOP SECRET"], abbreviations = ["NS", "CTS"] },\n'
        '    { rank = 3, name = "GEHEIM" },\n]\n',
        encoding="utf-8",
    )
    result = cli("label", "parse", "NATO SECRET", "--scheme", "CHE", "--schemes", str(site))
    assert result.exit_code == 2
    assert (
        f"--schemes: {site}: schemes[0] (CHE).levels[0].aliases[0]: 'NATO SECRET' is a NATO "
        "level's name" in result.stderr
    )
    with pytest.raises(SchemesFileError):
        read_schemes_file(site)
    assert parse_marking("NATO SECRET", "DEU").banner == "NATO SECRET"


def test_the_packaged_file_is_held_to_the_same_form_rules() -> None:
    data = packaged_data()
    deu = next(i for i, s in enumerate(data["schemes"]) if s["code"] == "DEU")
    data["schemes"][deu]["levels"][0].setdefault("aliases", []).append("NATO SECRET")
    with pytest.raises(CatalogueError, match=rf"^schemes.toml: schemes\[{deu}\] \(DEU\)\.levels"):
        build(data)
    data = packaged_data()
    data["schemes"][deu]["sources"][0] += "\u202e"
    with pytest.raises(CatalogueError, match=rf"schemes\[{deu}\] \(DEU\)\.sources\[0\]: "):
        build(data)


# ---------------------------------------------------------------- hostile files


@pytest.mark.parametrize(
    ("scheme", "message"),
    [
        (
            che(name="Switzerland\u202e"),
            "site.toml: schemes[0] (CHE).name: contains the invisible or control character U+202E "
            "at 11",
        ),
        (
            che(sources=["a law", "\u2066law\u2069"]),
            "site.toml: schemes[0] (CHE).sources[1]: contains the invisible or control character "
            "U+2066 at 0",
        ),
        (
            _che_alias(aliases=["INT\u200bERN"]),
            "site.toml: schemes[0] (CHE).levels[1].aliases[0]: contains the invisible or control "
            "character U+200B at 3",
        ),
        (
            _che_alias(name="INTERN\n"),
            "site.toml: schemes[0] (CHE).levels[1].name: contains the invisible or control "
            "character U+000A at 6",
        ),
        (
            _che_alias(abbreviations=["I\x1b[31m"]),
            "site.toml: schemes[0] (CHE).levels[1].abbreviations[0]: contains the invisible or "
            "control character U+001B at 1",
        ),
        (
            _che_alias(context_names=["\u202dI"]),
            "site.toml: schemes[0] (CHE).levels[1].context_names[0]: contains the invisible or "
            "control character U+202D at 0",
        ),
        (
            che(absent=[{"rank": 4, "note": "none\u202e"}]),
            "site.toml: schemes[0] (CHE).absent[0].note: contains the invisible or control "
            "character U+202E at 4",
        ),
    ],
)
def test_control_and_bidi_characters_are_refused_in_every_text(
    scheme: dict[str, Any], message: str
) -> None:
    with pytest.raises(CatalogueError) as caught:
        with_site({"schemes": [scheme]}, "site.toml")
    assert str(caught.value).startswith(message), str(caught.value)


@pytest.mark.parametrize(
    "text",
    [
        "schemes = " + "[" * 20000 + "]" * 20000 + "\n",
        "x = " + "{a=" * 5000 + "1" + "}" * 5000 + "\n",
    ],
)
def test_a_deeply_nested_file_is_an_error_naming_the_file(tmp_path: Path, text: str) -> None:
    deep = tmp_path / "deep.toml"
    deep.write_text(text, encoding="utf-8")
    with pytest.raises(SchemesFileError, match=rf"^{deep}: nested too deeply to read"):
        read_schemes_file(deep)
    result = cli("label", "parse", "NATO SECRET", "--schemes", str(deep))
    assert result.exit_code == 2 and "Traceback" not in result.output
    assert f"--schemes: {deep}: nested too deeply" in result.stderr
    with pytest.raises(ConfigError) as caught:
        load_config(_config(tmp_path, 'schemes_file = "deep.toml"'))
    assert f"bot.schemes_file: {deep}: nested too deeply to read" in caught.value.errors[0]


def test_a_file_over_one_mebibyte_is_refused_before_parsing(tmp_path: Path) -> None:
    big = tmp_path / "big.toml"
    big.write_text("# " + "x" * (1 << 20) + "\n", encoding="utf-8")
    with pytest.raises(SchemesFileError, match=rf"^{big}: larger than 1 MiB"):
        read_schemes_file(big)
    fits = tmp_path / "fits.toml"
    fits.write_text("# " + "x" * ((1 << 20) - 100) + "\n", encoding="utf-8")
    assert read_schemes_file(fits).additions == ()


# ---------------------------------------------------------------- the config's path


def test_config_schemes_path_is_stripped_like_the_file_it_loads(tmp_path: Path) -> None:
    (tmp_path / "site.toml").write_text(SITE.read_text(encoding="utf-8"), encoding="utf-8")
    config = load_config(_config(tmp_path, 'schemes_file = " site.toml "', "CHE GEHEIM"))
    assert config.schemes_path() == (tmp_path / "site.toml").resolve()


@pytest.mark.parametrize("value", ['""', '"   "'])
def test_config_schemes_file_cannot_be_empty(tmp_path: Path, value: str) -> None:
    with pytest.raises(ConfigError) as caught:
        load_config(_config(tmp_path, f"schemes_file = {value}"))
    assert any(e.startswith("bot.schemes_file: empty") for e in caught.value.errors), (
        caught.value.errors
    )
