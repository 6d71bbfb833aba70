"""tests/mutants.py's own checks, without running pytest: a mutant whose snippet is missing
or ambiguous stops the script with an error naming it, and the table fits the tree."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest

from tests.mutants import (
    MUTANTS,
    ROOT,
    Mutant,
    MutantError,
    Outcome,
    Run,
    check_table,
    copy_sources,
    line_of,
    mutate,
)

GUARD = Mutant(
    "demo",
    "a demonstration",
    "bot/demo.py",
    "if allowed:",
    "if True:",
    ("tests/test_demo.py::test_x",),
)


def test_a_snippet_found_once_is_replaced() -> None:
    assert mutate("x = 1\nif allowed:\n    go()\n", GUARD) == "x = 1\nif True:\n    go()\n"


def test_a_missing_snippet_is_an_error_naming_the_mutant() -> None:
    with pytest.raises(MutantError, match=r"mutant 'demo'.*is not found in bot/demo\.py"):
        mutate("if permitted:\n    go()\n", GUARD)


def test_a_snippet_found_twice_is_an_error_not_a_guess() -> None:
    with pytest.raises(MutantError, match=r"mutant 'demo'.*is found 2 times.*exactly once"):
        mutate("if allowed:\n    go()\nif allowed:\n    stop()\n", GUARD)


def test_every_mutant_of_the_table_applies_to_the_tree_exactly_once() -> None:
    check_table(ROOT, MUTANTS)
    assert len({m.name for m in MUTANTS}) == len(MUTANTS)
    for m in MUTANTS:
        assert all(t.startswith("tests/test_") and "::" in t for t in m.tests), m.name


def test_a_table_naming_a_missing_file_or_changing_nothing_is_refused(tmp_path: Path) -> None:
    (tmp_path / "bot").mkdir()
    (tmp_path / "bot/demo.py").write_text("if allowed:\n    go()\n", encoding="utf-8")
    check_table(tmp_path, [GUARD])
    with pytest.raises(MutantError, match=r"no file bot/gone\.py"):
        check_table(tmp_path, [replace(GUARD, path="bot/gone.py")])
    with pytest.raises(MutantError, match="changes nothing"):
        check_table(tmp_path, [replace(GUARD, replacement="if allowed:")])
    with pytest.raises(MutantError, match="is not found"):
        (tmp_path / "bot/demo.py").write_text("if permitted:\n    go()\n", encoding="utf-8")
        check_table(tmp_path, [GUARD])


def test_line_of_names_where_the_snippet_starts() -> None:
    assert line_of("a\nb\nif allowed:\n", "if allowed:") == 3


def test_the_copy_holds_the_sources_and_no_caches(tmp_path: Path) -> None:
    copy = tmp_path / "src"
    copy_sources(ROOT, copy)
    for m in MUTANTS:
        assert (copy / m.path).read_text(encoding="utf-8") == (ROOT / m.path).read_text(
            encoding="utf-8"
        )
    assert (copy / "pyproject.toml").is_file() and not (copy / ".venv").exists()
    assert not list(copy.rglob("__pycache__"))


def test_the_first_failure_is_read_from_pytests_summary() -> None:
    out = "..F\nFAILED tests/test_a.py::test_b[x] - AssertionError: no\n1 failed\n"
    assert Run(1, out, 1.0).first_failure() == "tests/test_a.py::test_b[x]"
    assert Run(0, "3 passed\n", 1.0).first_failure() is None


@pytest.mark.parametrize(
    ("status", "verdict"),
    [
        (1, "killed"),
        (0, "SURVIVED"),
        (2, "ERROR (pytest exit 2)"),  # usage error or interrupted: no test judged it
        (4, "ERROR (pytest exit 4)"),  # a node id that no longer exists
        (5, "ERROR (pytest exit 5)"),  # nothing collected
        (None, "ERROR (timed out)"),
    ],
)
def test_only_failing_tests_kill_a_mutant(status: int | None, verdict: str) -> None:
    assert Outcome(GUARD, 1, Run(status, "", 1.0)).verdict == verdict
