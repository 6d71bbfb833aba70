"""Imports flow one way: bot/ -> commands/ -> policy/. And every `type: ignore` says what
it silences and why."""

from __future__ import annotations

import ast
import io
import re
import subprocess
import sys
import tokenize
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


def import_cycle(package: str, root: Path = ROOT) -> list[str] | None:
    """One cycle among the package's modules (every import counts, TYPE_CHECKING ones and
    those inside functions too), or None."""
    modules = {
        ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__"): path
        for path in (root / package).rglob("*.py")
    }
    graph = {
        name: {m for m in imported_modules(path) if m in modules and m != name}
        for name, path in modules.items()
    }
    state: dict[str, int] = {}  # 1 on the current path, 2 done

    def visit(name: str, path: list[str]) -> list[str] | None:
        state[name] = 1
        for target in sorted(graph[name]):
            if state.get(target) == 1:
                return [*path[path.index(target) :], target]
            if target not in state and (found := visit(target, [*path, target])):
                return found
        state[name] = 2
        return None

    for name in sorted(graph):
        if name not in state and (found := visit(name, [name])):
            return found
    return None


def test_commands_has_no_import_cycle() -> None:
    """The registry and the service ports share their plain types through
    commands/context.py instead of importing each other."""
    assert import_cycle("commands") is None, " -> ".join(import_cycle("commands") or [])


def test_bot_has_no_import_cycle() -> None:
    """Services get ports in their constructors instead of importing the bot back."""
    assert import_cycle("bot") is None, " -> ".join(import_cycle("bot") or [])


def runtime_modules() -> list[Path]:
    """What ships and runs: bot/ without its tooling (devtools drives a test client)."""
    return [
        path
        for path in (ROOT / "bot").rglob("*.py")
        if path.relative_to(ROOT).parts[:2] != ("bot", "devtools")
    ]


@pytest.mark.parametrize(
    "library",
    [
        ("nio",),
        # nio's database layer, for the crypto store in PostgreSQL (bot/matrix/dbstore.py):
        # the rest of the bot reads and writes its database through SQLAlchemy only.
        ("peewee", "playhouse"),
    ],
)
def test_only_the_matrix_edge_imports_nio(library: tuple[str, ...]) -> None:
    importers = sorted(
        str(path.relative_to(ROOT))
        for path in runtime_modules()
        if any(m.split(".")[0] in library for m in imported_modules(path))
    )
    assert importers, "the check found no importer at all: it would pass for any tree"
    outside = [p for p in importers if not p.startswith("bot/matrix/")]
    assert not outside, f"{library[0]} imported outside bot/matrix/: {outside}"


def test_no_service_or_edge_module_imports_the_composition_root() -> None:
    for path in runtime_modules():
        relative = path.relative_to(ROOT)
        if relative in (Path("bot/app.py"), Path("bot/run.py"), Path("bot/cli.py")):
            continue  # the root itself, its process runner, and the CLI that runs it
        bad = {m for m in imported_modules(path) if m == "bot.app"}
        assert not bad, f"{relative} imports the composition root"


def test_the_composition_root_stays_small() -> None:
    lines = (ROOT / "bot" / "app.py").read_text(encoding="utf-8").count("\n")
    assert lines < 300, f"bot/app.py has {lines} lines: move the logic to a service"


def test_the_cycle_finder_finds_a_cycle(tmp_path: Path) -> None:
    (tmp_path / "pkg").mkdir()
    (tmp_path / "pkg" / "__init__.py").write_text("")
    (tmp_path / "pkg" / "a.py").write_text("from pkg.b import x\n")
    (tmp_path / "pkg" / "b.py").write_text(
        "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a import y\n"
    )
    (tmp_path / "pkg" / "c.py").write_text("import pkg.a\n")
    assert import_cycle("pkg", tmp_path) == ["pkg.a", "pkg.b", "pkg.a"]
    (tmp_path / "pkg" / "b.py").write_text("x = 1\n")
    assert import_cycle("pkg", tmp_path) is None


def test_one_place_audits_a_denied_command() -> None:
    """Handlers and services raise PermissionDenied; only the dispatcher writes the entry.
    (Where the action is written, as the audit scan finds writes: the SIEM mapping names
    the action too, without writing it.)"""
    from tests.audit_scan import scan

    places = {where.split(":")[0] for where in scan().actions["command.denied"]}
    assert places == {"commands/dispatch.py"}


def test_no_test_hooks_in_runtime_modules() -> None:
    """Fault injection lives in the tests (tests/crashpoints), never in what ships."""
    for path in (ROOT / "bot").rglob("*.py"):
        if path.relative_to(ROOT).parts[:2] == ("bot", "devtools"):
            continue
        text = path.read_text(encoding="utf-8")
        assert "LIAISON_TEST_" not in text, path.relative_to(ROOT)
        if path.relative_to(ROOT) == Path("bot/ha.py"):
            # The self-fence: a node that lost its lease ends at once, with no clean-up step
            # that would write or send (README "High availability"); no fault injection.
            assert text.count("os._exit") == 1
            continue
        assert "os._exit" not in text, path.relative_to(ROOT)


# An ignore comment names the error codes it silences in brackets (only those, and mypy's
# warn_unused_ignores still sees it), then two spaces, a hash and why, on the same line.
_IGNORE = re.compile(r"type:\s*ignore")
_EXPLAINED = re.compile(r"# type: ignore\[[a-z][a-z-]*(, ?[a-z][a-z-]*)*\]  # \S")


def unexplained_ignores(source: str) -> list[tuple[int, str]]:
    """(line, comment) of each `type: ignore` comment without error codes and a reason.
    Comments only (tokenize), so a string that mentions one is not one."""
    found = []
    for token in tokenize.generate_tokens(io.StringIO(source).readline):
        if token.type != tokenize.COMMENT or not _IGNORE.search(token.string):
            continue
        start = _IGNORE.search(token.string)
        assert start is not None
        if not _EXPLAINED.match(token.string[token.string.rfind("#", 0, start.start()) :]):
            found.append((token.start[0], token.string))
    return found


def test_unexplained_ignores_are_found() -> None:
    assert unexplained_ignores("x = f()  # type: ignore[arg-type]  # f is untyped\n") == []
    assert unexplained_ignores("x = f()  # noqa: E501  # type: ignore[misc]  # why\n") == []
    assert unexplained_ignores('x = "# type: ignore"\n') == []  # a string, not a comment
    bad = [
        "x = f()  # type: ignore\n",  # every error silenced
        "x = f()  # type: ignore[arg-type]\n",  # no reason
        "x = f()  # type:ignore[arg-type]  # reason\n",  # not the one spelling
        "x = f()  # type: ignore[arg-type] # reason\n",  # the reason needs two spaces before
        "x = f()  # type: ignore  # reason\n",  # no code
    ]
    for source in bad:
        assert unexplained_ignores(source) == [(1, source[source.index("#") :].rstrip())]


def test_every_type_ignore_has_an_error_code_and_a_reason() -> None:
    """Issue 31: a fake passed for a port was silenced with a bare ignore, so a drifted
    port went unnoticed. An ignore names the error it expects and why it is right."""
    checked = 0
    bad = []
    for folder in ("bot", "commands", "policy", "tests"):
        for path in sorted((ROOT / folder).rglob("*.py")):
            checked += 1
            for line, comment in unexplained_ignores(path.read_text(encoding="utf-8")):
                bad.append(f"{path.relative_to(ROOT)}:{line}: {comment}")
    assert checked > 100, "the check read almost nothing: it would pass for any tree"
    assert not bad, "type: ignore without [code] and `  # reason`:\n" + "\n".join(bad)


def test_only_the_gate_module_imports_synapse() -> None:
    importers = sorted(
        str(path.relative_to(ROOT))
        for path in runtime_modules()
        if any(m == "synapse" or m.startswith("synapse.") for m in imported_modules(path))
    )
    # the CLI only probes for it, to tell a demo user which extra to install
    assert importers == ["bot/cli.py", "bot/gate/module.py"], importers


def test_the_gate_loads_no_matrix_client_into_synapse() -> None:
    """Synapse imports bot.gate.module into its own process: neither nio nor the bot's
    Matrix edge may come with it (only what the rules and the register reader need)."""
    probe = (
        "import sys, bot.gate.module; "
        "bad = sorted(m for m in sys.modules if m.split('.')[0] in ('nio', 'aiohttp') "
        "or m.startswith(('bot.matrix', 'bot.app', 'bot.services.membership'))); "
        "print(','.join(bad))"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=ROOT, check=True
    )
    assert result.stdout.strip() == "", result.stdout


def loaded_by(module: str, root: Path = ROOT) -> set[str]:
    """Every module importing `module` loads, in a fresh interpreter (transitively)."""
    probe = f"import sys, {module}; print('\\n'.join(sorted(sys.modules)))"
    result = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, cwd=root, check=True
    )
    return set(result.stdout.split())


def service_modules(root: Path = ROOT) -> list[str]:
    return sorted(
        ".".join(path.relative_to(root).with_suffix("").parts).removesuffix(".__init__")
        for path in (root / "bot" / "services").rglob("*.py")
    )


def services_reaching_the_edge(root: Path = ROOT) -> list[str]:
    """Services that import the Matrix edge (or nio), directly or through what they
    import; all of them loaded in one interpreter, then each file's own imports named."""
    modules = service_modules(root)
    assert len(modules) > 5, "found almost no services: the check would pass for any tree"
    loaded = loaded_by(", ".join(modules), root)
    bad = sorted(m for m in loaded if m.startswith(("bot.matrix", "nio.")) or m == "nio")
    direct = [
        f"{path.relative_to(root)} imports {m}"
        for path in sorted((root / "bot" / "services").rglob("*.py"))
        for m in sorted(imported_modules(path))
        if m.startswith("bot.matrix") or m.split(".")[0] == "nio"
    ]
    return direct + ([f"loaded: {', '.join(bad)}"] if bad else [])


def test_no_service_reaches_into_the_matrix_edge() -> None:
    """Issue 26: services take ports (`bot/services/ports.py`) and catch the port error
    (HomeserverError), so the edge can be rewired (a standby's takeover) without them."""
    assert services_reaching_the_edge() == []


def edge_imports_of_services(root: Path = ROOT) -> list[str]:
    """The Matrix edge drives services (events.py hands them what it received) and
    implements their ports, but takes no measure or register read from inside one: those
    live in `bot/wire.py` and `bot/storage/register_reads.py`."""
    forbidden = ("bot.services.render", "bot.services.register")
    paths = sorted((root / "bot" / "matrix").rglob("*.py"))
    assert len(paths) > 5, "found almost no edge modules: the check would pass for any tree"
    return [
        f"{path.relative_to(root)} imports {m}"
        for path in paths
        for m in sorted(imported_modules(path))
        if m.startswith(forbidden)
    ]


def test_the_matrix_edge_takes_no_measure_or_register_read_from_a_service() -> None:
    assert edge_imports_of_services() == []


def gate_loads(root: Path = ROOT) -> list[str]:
    """What `bot.gate.module` brings into Synapse's process of the bot's services or nio."""
    loaded = loaded_by("bot.gate.module", root)
    assert "bot.gate.rules" in loaded, "the probe loaded no gate: it would pass for any tree"
    return sorted(
        m
        for m in loaded
        if (m.startswith("bot.services.") or m == "bot.services") or m.split(".")[0] == "nio"
    )


def test_the_gate_loads_no_service_and_no_nio() -> None:
    """Synapse imports the gate into its own process: the register reads it shares with the
    bot live below the services (`bot/storage/register_reads.py`)."""
    assert gate_loads() == []
