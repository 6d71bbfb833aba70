"""Imports flow one way: bot/ -> commands/ -> policy/ (DESIGN §2)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FORBIDDEN = {
    "policy": {
        "bot",
        "commands",
        "migrations",
        "nio",
        "sqlalchemy",
        "alembic",
        "aiohttp",
        "apscheduler",
        "pydantic",
        "click",
        "socket",
        "requests",
        "subprocess",
    },
    "commands": {"bot", "migrations", "nio", "sqlalchemy", "alembic", "aiohttp"},
}


def imported_roots(path: Path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    roots: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            roots |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            roots.add(node.module.split(".")[0])
    return roots


@pytest.mark.parametrize("package", sorted(FORBIDDEN))
def test_package_does_not_import_outer_layers(package: str) -> None:
    for path in (ROOT / package).rglob("*.py"):
        bad = imported_roots(path) & FORBIDDEN[package]
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_policy_scheme_data_ships_inside_the_package() -> None:
    assert (ROOT / "policy" / "data" / "schemes.toml").is_file()


def imported_modules(path: Path) -> set[str]:
    """Every absolute module an import statement names (anywhere in the file)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module)
    return names


@pytest.mark.parametrize("folder", ["bot", "bench"])
def test_nothing_shipped_or_benchmarked_imports_the_tests(folder: str) -> None:
    for path in (ROOT / folder).rglob("*.py"):
        bad = {m for m in imported_modules(path) if m == "tests" or m.startswith("tests.")}
        assert not bad, f"{path.relative_to(ROOT)} imports {sorted(bad)}"


def test_the_running_bot_does_not_import_its_tooling() -> None:
    """bot/devtools/ (throwaway Synapse, test client, demo, bench scenario) stays out of the
    bot; only the CLI reaches it, for `liaison-bot demo`."""
    for path in (ROOT / "bot").rglob("*.py"):
        relative = path.relative_to(ROOT)
        if relative.parts[:2] == ("bot", "devtools"):
            continue
        bad = {m for m in imported_modules(path) if m.startswith("bot.devtools")}
        if relative == Path("bot/cli.py"):
            bad -= {"bot.devtools.demo"}
        assert not bad, f"{relative} imports {sorted(bad)}"
