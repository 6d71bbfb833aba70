"""The README's configuration reference and the pydantic models must agree."""

from __future__ import annotations

import re
from pathlib import Path

from bot.config import reference_keys

README = Path(__file__).resolve().parent.parent / "README.md"
MAKEFILE = README.parent / "Makefile"


def documented() -> dict[str, str]:
    text = README.read_text(encoding="utf-8")
    section = text.split("### Configuration reference", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `([^`]+)` \| ([^|]+?) \|", section, flags=re.MULTILINE)
    return {key: default.strip() for key, default in rows}


def test_readme_configuration_reference_matches_the_models() -> None:
    models, docs = reference_keys(), documented()
    assert sorted(set(models) - set(docs)) == [], "keys missing from README"
    assert sorted(set(docs) - set(models)) == [], "README documents keys the models lack"
    assert {k: v for k, v in docs.items() if models[k] != v} == {}, "defaults differ"


def test_readme_shows_both_setup_commands() -> None:
    """The "Two commands" block opens the README with exactly `make demo` and `make test`,
    and the Makefile has both targets (the words appear elsewhere in the README too, so
    looking for them anywhere would prove nothing)."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## Two commands\n", 1)[1].split("\n## ", 1)[0]
    block = section.split("```sh\n", 1)[1].split("```", 1)[0]
    commands = [line.split("#", 1)[0].strip() for line in block.splitlines()]
    assert commands == ["make demo", "make test"]
    targets = re.findall(r"^([a-z]+):", MAKEFILE.read_text(encoding="utf-8"), flags=re.MULTILINE)
    assert {"demo", "test"} <= set(targets)


def test_readme_scheme_table_lists_every_scheme_with_its_levels_and_sources() -> None:
    """The README's table of schemes is in step with the data: a row per scheme, each current
    level's official name in its rank's column, and its sources named."""
    from policy import CATALOGUE

    text = README.read_text(encoding="utf-8")
    section = text.split("### Schemes and equivalence", 1)[1].split("\n### ", 1)[0]
    rows = {
        cells[0].split(" ", 1)[0]: cells
        for line in section.splitlines()
        if line.startswith("| ") and not line.startswith("| nation")
        for cells in [[c.strip() for c in line.strip("|").split(" | ")]]
    }
    assert set(rows) == set(CATALOGUE.schemes), "schemes missing from or extra in README"
    for code, scheme in CATALOGUE.schemes.items():
        cells = rows[code]
        assert len(cells) == 6, (code, cells)
        for column, rank in zip(cells[1:5], (4, 3, 2, 1), strict=True):
            current = [lv.name for lv in scheme.levels if lv.rank == rank and not lv.legacy]
            expected = current[0] if current else "none"
            assert column.startswith(expected), (code, rank, column)
        for source in scheme.sources:
            assert source in cells[5], (code, source)


def test_readme_siem_class_table_names_every_mapped_action() -> None:
    """The README's OCSF class table lists each action under the class it is exported as."""
    from bot.siem import ocsf

    readme = README.read_text(encoding="utf-8")
    section = readme.split("## Audit to a SIEM", 1)[1].split("\n## ", 1)[0]
    rows = {
        line.split("|")[1].strip().split(" ", 1)[0]: line.split("|")[2]
        for line in section.splitlines()
        if line.startswith("| 2") or line.startswith("| 3") or line.startswith("| 6")
    }
    wrong = [
        action
        for action, mapping in ocsf.ACTIONS.items()
        if f"`{action}`" not in rows.get(str(mapping.class_uid), "")
    ]
    assert wrong == [], f"README class table out of step for {wrong}"


def test_readme_rate_limit_exemption_is_the_call_the_test_makes() -> None:
    """ "The bot's account" tells the administrator to call the admin API that
    tests/test_ratelimit_override.py proves on a real Synapse, with the same body, and states
    the defaults that test measures; a change to one without the other fails here."""
    import json

    from tests.test_ratelimit_override import DEFAULT_BURST, DEFAULT_PER_SECOND, OVERRIDE

    text = README.read_text(encoding="utf-8")
    section = text.split("### The bot's account\n", 1)[1].split("\n### ", 1)[0]
    assert "--no-admin" in section and "register_new_matrix_user" in section
    bodies = re.findall(r"-d '(\{[^']*\})'", section)
    assert [json.loads(body) for body in bodies] == [OVERRIDE]
    assert re.search(
        r"POST .*\n.*\n\s+http\S*/_synapse/admin/v1/users/@[^/]+/override_ratelimit", section
    )
    assert f"burst of {DEFAULT_BURST} messages" in section
    assert f"**{DEFAULT_PER_SECOND} a second**" in section
    assert "tests/test_ratelimit_override.py" in section


def test_readme_links_the_guide_for_people_joining() -> None:
    """The onboarding guide exists and the README sends administrators and people to it."""
    joining = README.parent / "docs" / "joining.md"
    assert joining.is_file()
    text = README.read_text(encoding="utf-8")
    assert text.count("](docs/joining.md)") >= 2, "linked from the top and from Device trust"
    guide = joining.read_text(encoding="utf-8")
    for must in ("Unable to decrypt", "confirm-identity", "!help", "spillage"):
        assert must in guide, must
