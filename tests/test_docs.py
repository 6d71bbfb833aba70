"""The README's configuration reference and the pydantic models must agree."""

from __future__ import annotations

import re
from pathlib import Path

from bot.config import reference_keys

README = Path(__file__).resolve().parent.parent / "README.md"


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
    text = README.read_text(encoding="utf-8")
    assert "make demo" in text and "make test" in text
