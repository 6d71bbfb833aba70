"""The production path: a built wheel, `liaison-bot init`, the dependency split between the
base install (offline CLI, gate) and the `bot` extra, and the lock file.

The last tests build the wheel from this tree, install it into fresh virtual environments
outside the checkout and run the installed console script with a clean environment, the way
an administrator would: what the wheel lacks (a data file, a migration, a dependency) fails
there and nowhere else.
"""

from __future__ import annotations

import functools
import importlib.metadata
import os
import re
import shutil
import stat
import subprocess
import sys
import time
import tomllib
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path

import pytest
from click.testing import CliRunner

from bot import initconfig
from bot.cli import main

ROOT = Path(__file__).resolve().parent.parent
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
GOOD_KEY = "0123456789abcdef" * 4  # 64 characters, as `openssl rand -hex 32` gives
#: The example config's secrets (its *_env variables), good values, a distinct key each.
SECRETS = {
    "LIAISON_PASSWORD": "a password for the bot",
    "LIAISON_PICKLE_KEY": GOOD_KEY,
    "LIAISON_DATA_KEY": GOOD_KEY[::-1],
}
#: Only the running bot imports these; the base install must not bring them.
BOT_ONLY = {"nio", "aiohttp", "prometheus_client", "canonicaljson", "vodozemac"}
RESYNC = "re-sync with: cp config.example.toml bot/data/config.example.toml"


def _name(requirement: str) -> str:
    """A requirement's distribution name, normalised (PEP 503)."""
    match = re.match(r"[A-Za-z0-9][A-Za-z0-9._-]*", requirement)
    assert match is not None, requirement
    return re.sub(r"[-_.]+", "-", match.group(0)).lower()


def _extra(name: str) -> list[str]:
    extras: dict[str, list[str]] = PYPROJECT["project"]["optional-dependencies"]
    return extras[name]


# ---------------------------------------------------------------- the example config


def test_packaged_example_config_is_the_top_level_one_byte_for_byte() -> None:
    top = (ROOT / "config.example.toml").read_bytes()
    packaged = (ROOT / "bot" / "data" / "config.example.toml").read_bytes()
    assert packaged == top, (
        f"bot/data/config.example.toml drifted from config.example.toml: {RESYNC}"
    )
    assert initconfig.example_config() == top, RESYNC


def test_init_writes_the_example_with_mode_0640_creating_parent_folders(tmp_path: Path) -> None:
    target = tmp_path / "etc" / "liaison-bot" / "config.toml"
    result = CliRunner().invoke(main, ["init", "--config", str(target)])
    assert result.exit_code == 0, result.output
    assert target.read_bytes() == (ROOT / "config.example.toml").read_bytes()
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
    assert stat.S_IMODE(target.parent.stat().st_mode) == 0o750
    assert f"liaison-bot check-config --config {target}" in result.output
    assert [p.name for p in target.parent.iterdir()] == ["config.toml"]  # no temporary left


def test_init_refuses_an_existing_file_naming_it_and_changes_nothing(tmp_path: Path) -> None:
    target = tmp_path / "config.toml"
    target.write_text("# mine\n", encoding="utf-8")
    target.chmod(0o600)
    result = CliRunner().invoke(main, ["init", "--config", str(target)])
    assert result.exit_code == 2
    assert f"{target} already exists" in result.output
    assert "--force" in result.output
    assert target.read_text(encoding="utf-8") == "# mine\n"
    assert stat.S_IMODE(target.stat().st_mode) == 0o600
    assert sorted(p.name for p in tmp_path.iterdir()) == ["config.toml"]


def test_init_force_replaces_an_existing_file(tmp_path: Path) -> None:
    target = tmp_path / "config.toml"
    target.write_text("# mine\n", encoding="utf-8")
    result = CliRunner().invoke(main, ["init", "--config", str(target), "--force"])
    assert result.exit_code == 0, result.output
    assert target.read_bytes() == (ROOT / "config.example.toml").read_bytes()
    assert stat.S_IMODE(target.stat().st_mode) == 0o640


def test_init_refuses_a_folder_and_an_unwritable_place(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["init", "--config", str(tmp_path)])
    assert result.exit_code == 2
    assert f"'{tmp_path}' is a directory" in result.output  # click's own check of --config
    with pytest.raises(initconfig.InitError, match="is a folder"):
        initconfig.write_example_config(tmp_path)
    blocker = tmp_path / "file"
    blocker.write_text("", encoding="utf-8")
    result = CliRunner().invoke(main, ["init", "--config", str(blocker / "config.toml")])
    assert result.exit_code == 2
    assert f"cannot create the folder {blocker}" in result.output


def test_init_leaves_nothing_when_the_write_fails(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def broken_link(src: object, dst: object) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "link", broken_link)
    target = tmp_path / "config.toml"
    result = CliRunner().invoke(main, ["init", "--config", str(target)])
    assert result.exit_code == 2
    assert f"cannot write {target}: No space left on device" in result.output
    assert list(tmp_path.iterdir()) == []


def test_version_is_the_package_metadata() -> None:
    result = CliRunner().invoke(main, ["--version"])
    assert result.exit_code == 0
    assert result.output.strip().endswith(f"version {importlib.metadata.version('liaison-bot')}")
    assert importlib.metadata.version("liaison-bot") == PYPROJECT["project"]["version"]


# ---------------------------------------------------------------- the dependency split


def test_base_requirements_hold_nothing_only_the_running_bot_needs() -> None:
    base = {_name(r) for r in PYPROJECT["project"]["dependencies"]}
    bot = {_name(r) for r in _extra("bot")}
    assert {"matrix-nio", "aiohttp", "prometheus-client", "canonicaljson"} <= bot
    assert not base & {"matrix-nio", "aiohttp", "prometheus-client", "canonicaljson", "psycopg"}
    assert {_name(r) for r in _extra("gate")} == {"liaison-bot"}
    assert _extra("gate") == ["liaison-bot[postgres]"]
    for extra in ("test", "demo"):
        assert any(r.startswith("liaison-bot[") and "bot" in r for r in _extra(extra)), extra


def test_offline_cli_and_gate_import_only_base_requirements() -> None:
    """What `import bot.gate.config, bot.gate.rules, bot.cli` loads, in a fresh interpreter:
    none of the bot-only modules, and every third-party module it does load is a base
    requirement (or one of theirs)."""
    probe = (
        "import sys; before = set(sys.modules);"  # what site and .pth files loaded first
        "import bot.gate.config, bot.gate.rules, bot.cli;"
        "print(' '.join(sorted({m.split('.')[0] for m in set(sys.modules) - before})))"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    out = subprocess.run(
        [sys.executable, "-c", probe], capture_output=True, text=True, env=env, check=True
    ).stdout.split()
    assert not BOT_ONLY & set(out), BOT_ONLY & set(out)
    base = {_name(r) for r in PYPROJECT["project"]["dependencies"]}
    provided: set[str] = set()
    for requirement in base:
        provided |= _closure(requirement)
    for module in out:
        dist = _distribution_of(module)
        if dist is not None and dist != "liaison-bot":
            assert dist in provided, f"{module} (from {dist}) is not a base requirement's"


@functools.cache
def _packages_distributions() -> Mapping[str, list[str]]:
    return importlib.metadata.packages_distributions()


def _distribution_of(module: str) -> str | None:
    names = _packages_distributions().get(module)
    return _name(names[0]) if names else None


def _closure(dist: str) -> set[str]:
    """A distribution and everything it requires (without extras), as installed here."""
    seen: set[str] = set()
    todo = [dist]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        try:
            requires = importlib.metadata.requires(name) or []
        except importlib.metadata.PackageNotFoundError:
            continue
        todo += [_name(r) for r in requires if "extra ==" not in r]
    return seen


def test_run_without_the_bot_runtime_says_how_to_install_it(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # As on a gate-only install: one of the runtime's modules cannot be found.
    monkeypatch.setattr(initconfig, "BOT_RUNTIME_MODULES", ("nio", "liaison_no_such_module"))
    config = str(tmp_path / "config.toml")
    for args in (
        ["run", "--config", config],
        ["demo"],
        ["keys", "forget-login", "--config", config],
    ):
        result = CliRunner().invoke(main, args)
        assert result.exit_code == 2, result.output
        assert result.output == f"error: {initconfig.BOT_RUNTIME_MISSING}\n"
    monkeypatch.undo()
    assert initconfig.bot_runtime_missing() is None


# ---------------------------------------------------------------- the lock


def _locked() -> dict[str, list[str]]:
    """requirements.lock as {name: [hashes]}; every entry pinned with ==."""
    text = (ROOT / "requirements.lock").read_text(encoding="utf-8")
    entries: dict[str, list[str]] = {}
    for block in re.split(r"\n(?=\S)", text):
        head = block.split("\n", 1)[0]
        if head.startswith("#") or not head.strip():
            continue
        match = re.match(r"([A-Za-z0-9._-]+)==[^\s;\\]+", head)
        assert match is not None, f"requirements.lock: not an exact pin: {head!r}"
        entries[_name(match.group(1))] = re.findall(r"--hash=sha256:([0-9a-f]{64})", block)
    return entries


def test_locked_versions_satisfy_pyproject() -> None:
    """A range raised in pyproject.toml without `make lock` fails here, naming the package."""
    from packaging.requirements import Requirement

    text = (ROOT / "requirements.lock").read_text(encoding="utf-8")
    pins = {_name(n): v for n, v in re.findall(r"^([A-Za-z0-9._-]+)==([^\s;\\]+)", text, re.M)}
    declared = PYPROJECT["project"]["dependencies"] + _extra("bot") + _extra("postgres")
    for requirement in map(Requirement, declared):
        if requirement.name == "liaison-bot":
            continue
        pinned = pins[_name(requirement.name)]
        assert requirement.specifier.contains(pinned), (
            f"requirements.lock pins {requirement.name}=={pinned}, outside {requirement} "
            "(run make lock)"
        )


def test_lock_pins_and_hashes_everything_the_bot_installs() -> None:
    locked = _locked()
    assert all(locked.values()), [name for name, hashes in locked.items() if not hashes]
    wanted = {_name(r) for r in PYPROJECT["project"]["dependencies"]}
    wanted |= {_name(r) for r in _extra("bot") + _extra("postgres")} - {"liaison-bot"}
    assert wanted <= set(locked), (
        f"not in requirements.lock (run make lock): {wanted - set(locked)}"
    )
    assert "make lock" in (ROOT / "requirements.lock").read_text(encoding="utf-8")


# ---------------------------------------------------------------- a fresh wheel, no checkout


@dataclass(frozen=True)
class Built:
    wheel: Path
    root: Path


def _pip_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    return env


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Built]:
    """The wheel built once from a copy of what the wheel is made of (so setuptools' build/
    and egg-info folders stay out of the tree); skipped, saying so, without a package index
    (the build fetches setuptools, the installs fetch the dependencies)."""
    root = tmp_path_factory.mktemp("packaging")
    probe = subprocess.run(
        [sys.executable, "-m", "pip", "download", "--no-deps", "-d", str(root / "probe"), "click"],
        capture_output=True,
        text=True,
        env=_pip_env(),
        timeout=300,
    )
    if probe.returncode != 0:
        pytest.skip(f"no package index reachable, cannot install a wheel: {probe.stderr[-300:]}")
    src = root / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy2(ROOT / name, src / name)
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in ("bot", "commands", "policy", "migrations"):
        shutil.copytree(ROOT / package, src / package, ignore=ignore)
    build = subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "-w",
            str(root / "dist"),
            str(src),
        ],
        capture_output=True,
        text=True,
        env=_pip_env(),
        timeout=600,
    )
    assert build.returncode == 0, build.stderr
    (wheel,) = (root / "dist").glob("liaison_bot-*.whl")
    yield Built(wheel, root)


def _venv(built: Built, name: str, extras: str) -> Path:
    """A fresh virtual environment with the wheel and the given extras installed."""
    venv = built.root / name
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=120)
    result = subprocess.run(
        [str(venv / "bin" / "python"), "-m", "pip", "install", "-q", f"{built.wheel}[{extras}]"],
        capture_output=True,
        text=True,
        env=_pip_env(),
        timeout=900,
    )
    assert result.returncode == 0, result.stderr
    return venv


def _clean_run(
    venv: Path, cwd: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    """The installed console script, from outside the checkout, with no PYTHONPATH and no
    variable of this session: only what the wheel installed can answer."""
    clean = {"PATH": f"{venv / 'bin'}:/usr/bin:/bin", "HOME": str(cwd), "LANG": "C.UTF-8"}
    return subprocess.run(
        [str(venv / "bin" / "liaison-bot"), *args],
        cwd=cwd,
        env={**clean, **(env or {})},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def test_fresh_wheel_in_a_clean_venv_runs_init_check_config_db_upgrade_and_demo(
    built: Built,
) -> None:
    started = time.monotonic()
    venv = _venv(built, "venv-bot", "bot,demo")
    installed = time.monotonic()
    cwd = built.root / "admin"
    cwd.mkdir()

    version = _clean_run(venv, cwd, "--version")
    assert version.returncode == 0, version.stderr
    assert version.stdout.strip() == f"liaison-bot, version {PYPROJECT['project']['version']}"

    config = cwd / "etc" / "config.toml"
    init = _clean_run(venv, cwd, "init", "--config", str(config))
    assert init.returncode == 0, init.stderr
    assert config.read_bytes() == (ROOT / "config.example.toml").read_bytes()

    check = _clean_run(venv, cwd, "check-config", "--config", str(config), env=SECRETS)
    assert check.returncode == 0, check.stdout + check.stderr
    assert f"{config}: OK" in check.stdout
    assert check.stderr == ""

    # The migrations travel in the wheel: the example's SQLite database is created next to
    # the config, inside the temporary folder.
    upgrade = _clean_run(venv, cwd, "db", "upgrade", "--config", str(config), env=SECRETS)
    assert upgrade.returncode == 0, upgrade.stderr
    assert (config.parent / "data" / "liaison.db").is_file()

    # The demo keeps the digest's picture in a folder of its own: here, inside the test's.
    scratch = built.root / "tmp"
    scratch.mkdir()
    demo = _clean_run(
        venv, cwd, "demo", "--exit-after-scenario", env={"TMPDIR": str(scratch)}, timeout=300
    )
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "Scenario passed." in demo.stdout
    print(
        f"\nfresh wheel: install {installed - started:.0f}s, "
        f"commands and demo {time.monotonic() - installed:.0f}s"
    )


def test_gate_only_install_has_no_nio_and_its_cli_says_what_run_needs(built: Built) -> None:
    venv = _venv(built, "venv-gate", "gate")
    cwd = built.root / "synapse-admin"
    cwd.mkdir()
    python = str(venv / "bin" / "python")
    probe = (
        "import importlib.util, bot.gate.config, bot.gate.rules, psycopg;"
        "missing = [m for m in ('nio', 'aiohttp', 'prometheus_client', 'vodozemac')"
        " if importlib.util.find_spec(m) is None];"
        "print(' '.join(missing))"
    )
    result = subprocess.run(
        [python, "-c", probe],
        cwd=cwd,
        env={"PATH": "/usr/bin:/bin", "HOME": str(cwd)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["nio", "aiohttp", "prometheus_client", "vodozemac"]

    config = cwd / "config.toml"
    assert _clean_run(venv, cwd, "init", "--config", str(config)).returncode == 0
    check = _clean_run(venv, cwd, "check-config", "--config", str(config), env=SECRETS)
    assert check.returncode == 0, check.stderr  # the offline CLI works without the bot extra
    run = _clean_run(venv, cwd, "run", "--config", str(config), env=SECRETS)
    assert run.returncode == 2
    assert run.stderr == f"error: {initconfig.BOT_RUNTIME_MISSING}\n"
    # The keys live in nio's store: the same one line, not a traceback.
    keys = _clean_run(venv, cwd, "keys", "forget-login", "--config", str(config), env=SECRETS)
    assert keys.returncode == 2 and keys.stderr == run.stderr
    # The audit log's SIEM events render without the bot's runtime (a SOC's bulk import).
    assert (
        _clean_run(venv, cwd, "db", "upgrade", "--config", str(config), env=SECRETS).returncode == 0
    )
    export = _clean_run(venv, cwd, "audit", "export", "--config", str(config), env=SECRETS)
    assert export.returncode == 0, export.stderr


def test_init_makes_every_missing_folder_0750_whatever_the_umask(tmp_path: Path) -> None:
    """Under `umask 0` the folders above the last would be 0777: anyone could swap the
    config for their own. Each folder init makes is 0750; one already there is left."""
    target = tmp_path / "etc" / "liaison-bot" / "conf" / "config.toml"
    old = os.umask(0)
    try:
        result = CliRunner().invoke(main, ["init", "--config", str(target)])
    finally:
        os.umask(old)
    assert result.exit_code == 0, result.output
    for folder in (tmp_path / "etc", tmp_path / "etc" / "liaison-bot", target.parent):
        assert stat.S_IMODE(folder.stat().st_mode) == 0o750, folder
    assert stat.S_IMODE(target.stat().st_mode) == 0o640
