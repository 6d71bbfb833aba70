"""The policy and config CLI: JSON out, exit 0 allowed / 1 denied / 2 bad input."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import click
import pytest
from click.testing import CliRunner, Result

from bot.cli import main

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.toml"


def cli(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def test_console_script_parses_the_documented_example() -> None:
    script = Path(sys.executable).parent / "liaison-bot"
    out = subprocess.run(
        [str(script), "label", "parse", "nato secret//rel to eu"],
        capture_output=True,
        text=True,
        check=True,
    )
    payload = json.loads(out.stdout)
    assert payload["banner"] == "NATO SECRET // REL TO EU"
    assert (
        payload["scheme"] == "NATO" and payload["level"] == "NATO SECRET" and payload["rank"] == 3
    )
    assert payload["rel_to"] == ["EU"]
    assert "AUT" in payload["releasable_to"] and "USA" in payload["releasable_to"]


def test_label_parse_with_scheme_context() -> None:
    result = cli("label", "parse", "SECRET", "--scheme", "nato")
    assert result.exit_code == 0
    assert json.loads(result.stdout)["level"] == "NATO SECRET"


def test_label_parse_maps_english_names_and_sorts() -> None:
    result = cli("label", "parse", "DEU GEHEIM // REL TO Türkiye, fra, NATO // atomal")
    payload = json.loads(result.stdout)
    assert payload["rel_to"] == ["FRA", "NATO", "TUR"]
    assert payload["caveats"] == ["ATOMAL"]
    assert payload["banner"] == "DEU GEHEIM // ATOMAL // REL TO FRA, NATO, TUR"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["label", "parse", "SECRTE"], "unknown marking 'SECRTE' — did you mean '"),
        (["label", "parse", "SECRET"], "ambiguous marking 'SECRET'"),
        (["label", "parse", "NATO SECRET", "--scheme", "XYZ"], "--scheme: unknown scheme 'XYZ'"),
        (["label", "convert", "NATO SECRET", "--to", "ZZZ"], "--to: unknown scheme 'ZZZ'"),
        (["label", "convert", "NATO SECRTE", "--to", "DEU"], "unknown marking 'NATO SECRTE'"),
    ],
)
def test_bad_label_input_exits_2_naming_it(args: list[str], message: str) -> None:
    result = cli(*args)
    assert result.exit_code == 2
    assert message in result.stderr
    assert result.stdout == ""


def test_label_convert() -> None:
    result = cli("label", "convert", "NATO SECRET", "--to", "ESP")
    assert (result.exit_code, result.stdout.strip()) == (0, "ESP RESERVADO")


def test_may_join_allowed() -> None:
    result = cli(
        "policy",
        "may-join",
        "--nationality",
        "DEU",
        "--grant",
        "NATO SECRET",
        "--room-label",
        "NATO SECRET",
    )
    assert result.exit_code == 0
    assert json.loads(result.stdout)["allowed"] is True


def test_may_join_denied_joins_every_reason() -> None:
    result = cli(
        "policy",
        "may-join",
        "--nationality",
        "DEU",
        "--grant",
        "NATO CONFIDENTIAL",
        "--expires",
        "2020-01-01",
        "--room-label",
        "NATO SECRET // ATOMAL",
    )
    assert result.exit_code == 1
    payload = json.loads(result.stdout)
    assert payload["allowed"] is False
    assert payload["reason"].split("; ") == [
        "clearance of the user expired on 2020-01-01",
        "grant NATO CONFIDENTIAL is below the room's NATO SECRET",
        "not briefed for caveat ATOMAL",
    ]


def test_may_join_revoked_and_audience() -> None:
    result = cli(
        "policy",
        "may-join",
        "--nationality",
        "FRA",
        "--grant",
        "NATO SECRET",
        "--revoked",
        "--room-label",
        "NATO SECRET",
        "--audience",
        "DEU,ITA",
    )
    assert result.exit_code == 1
    reason = json.loads(result.stdout)["reason"]
    assert (
        "revoked" in reason and "nationality FRA is not in the room's audience (DEU, ITA)" in reason
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (
            ["--nationality", "XX", "--grant", "NATO SECRET"],
            "--nationality: 'XX' is not an ISO 3166-1 alpha-3 code",
        ),
        (
            ["--nationality", "DEU", "--grant", "NATO SECRTE"],
            "--grant: unknown marking 'NATO SECRTE'",
        ),
        (["--nationality", "DEU", "--grant", "NATO SECRET // ATOMAL"], "a grant is a level only"),
        (
            ["--nationality", "DEU", "--grant", "NATO SECRET", "--grant", "NC"],
            "two grants in scheme NATO",
        ),
        (["--nationality", "DEU", "--caveat", "FOO"], "--caveat: unknown caveat 'FOO'"),
        (
            ["--nationality", "DEU", "--expires", "2026-13-01"],
            "--expires: '2026-13-01' is not a date",
        ),
        (["--nationality", "DEU", "--audience", "DEU,,FRA"], "--audience: empty entry"),
        (["--nationality", "DEU", "--audience", "FRA"], "outside the releasable set"),
    ],
)
def test_may_join_bad_input_exits_2(args: list[str], message: str) -> None:
    result = cli("policy", "may-join", "--room-label", "DEU GEHEIM", *args)
    assert result.exit_code == 2, result.stdout
    assert message in result.stderr


def test_may_join_missing_option_is_usage_error() -> None:
    result = cli("policy", "may-join", "--nationality", "DEU")
    assert result.exit_code == 2
    assert "--room-label" in result.stderr


def test_may_release_uses_source_scheme_as_context() -> None:
    result = cli(
        "policy",
        "may-release",
        "--label",
        "GEHEIM // REL TO NATO",
        "--from-label",
        "DEU GEHEIM",
        "--to-label",
        "NATO SECRET",
    )
    assert result.exit_code == 0
    assert json.loads(result.stdout) == {
        "allowed": True,
        "reason": "DEU GEHEIM (NATO SECRET) is within NATO SECRET; releasable to the room's audience (NATO)",
        "spillage": False,
    }


def test_may_release_refusal_and_spillage() -> None:
    refused = cli(
        "policy",
        "may-release",
        "--label",
        "GEHEIM // REL TO NATO",
        "--from-label",
        "DEU GEHEIM",
        "--to-label",
        "EU SECRET",
    )
    assert refused.exit_code == 1
    payload = json.loads(refused.stdout)
    assert payload["spillage"] is False and "not releasable to" in payload["reason"]
    spilled = cli(
        "policy",
        "may-release",
        "--label",
        "STRENG GEHEIM",
        "--from-label",
        "DEU GEHEIM",
        "--to-label",
        "NATO SECRET",
    )
    assert spilled.exit_code == 1
    assert json.loads(spilled.stdout)["spillage"] is True


def test_may_release_narrowed_target_audience() -> None:
    result = cli(
        "policy",
        "may-release",
        "--label",
        "GEHEIM // REL TO FRA",
        "--from-label",
        "DEU GEHEIM",
        "--to-label",
        "NATO SECRET",
        "--to-audience",
        "DEU,FRA",
    )
    assert result.exit_code == 0


def test_check_config_accepts_the_example_and_refuses_its_missing_secrets() -> None:
    """Missing secrets are refused as `run` refuses them (exit 2, every one named);
    `--without-secrets` checks the file alone."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("LIAISON_")}
    runner = CliRunner(
        env={**env, "LIAISON_PASSWORD": "", "LIAISON_PICKLE_KEY": "", "LIAISON_DATA_KEY": ""}
    )
    result = runner.invoke(main, ["check-config", "--config", str(EXAMPLE)])
    assert result.exit_code == 2, result.stderr
    assert (
        "error: homeserver.password_env: environment variable LIAISON_PASSWORD is not set"
        in result.stderr
    )
    assert "OK" not in result.stdout
    result = runner.invoke(main, ["check-config", "--config", str(EXAMPLE), "--without-secrets"])
    assert result.exit_code == 0, result.stderr
    assert "OK" in result.stdout and "secrets not checked" in result.stdout


def test_check_config_lists_every_error_and_exits_2(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        EXAMPLE.read_text()
        .replace('label = "NATO SECRET"', 'label = "SECRTE"')
        .replace('to = ["nato-s", "eu-s"]', 'to = ["nato-x"]')
    )
    result = cli("check-config", "--config", str(bad))
    assert result.exit_code == 2
    assert "error: rooms[1].label: unknown marking 'SECRTE' — did you mean '" in result.stderr
    assert "error: routes[0].to[0]: no room with key 'nato-x'" in result.stderr


def test_check_config_refuses_the_database_crypto_store_on_sqlite(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text(
        EXAMPLE.read_text().replace('crypto_store = "data/crypto"', 'crypto_store = "database"')
    )
    result = cli("check-config", "--config", str(bad))
    assert result.exit_code == 2
    assert "error: storage.crypto_store: " in result.stderr
    assert "needs PostgreSQL" in result.stderr


def test_check_config_missing_file_exits_2(tmp_path: Path) -> None:
    result = cli("check-config", "--config", str(tmp_path / "missing.toml"))
    assert result.exit_code == 2
    assert "no such file" in result.stderr


def test_db_upgrade_creates_the_schema_next_to_the_config(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(EXAMPLE.read_text())
    result = cli("db", "upgrade", "--config", str(config))
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "data" / "liaison.db").exists()
    assert "is at revision" in result.stdout


def test_db_upgrade_with_bad_config_changes_nothing(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(EXAMPLE.read_text().replace('label = "NATO SECRET"', 'label = "SECRTE"'))
    result = cli("db", "upgrade", "--config", str(config))
    assert result.exit_code == 2
    assert not (tmp_path / "data").exists()


def _leaf_commands(group: click.Group, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    out: list[tuple[str, ...]] = []
    for name, command in group.commands.items():
        if isinstance(command, click.Group):
            out.extend(_leaf_commands(command, (*prefix, name)))
        else:
            out.append((*prefix, name))
    return out


def test_every_command_has_help_with_an_example() -> None:
    leaves = _leaf_commands(main)
    assert len(leaves) >= 17
    for args in leaves:
        result = cli(*args, "--help")
        assert result.exit_code == 0, args
        assert "Example" in result.stdout, args


def test_rooms_and_routes_offline(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(EXAMPLE.read_text())
    # Only `db upgrade` creates the database: a read refuses a missing one (test_cli_ops).
    assert cli("db", "upgrade", "--config", str(config)).exit_code == 0
    rooms = cli("rooms", "--config", str(config))
    assert rooms.exit_code == 0, rooms.stderr
    assert "nato-s — NATO SECRET — NATO SECRET liaison" in rooms.stdout
    assert "not created yet" in rooms.stdout
    routes = cli("routes", "--config", str(config))
    assert routes.exit_code == 0 and "deu → nato-s, eu-s" in routes.stdout


def test_db_upgrade_shows_each_revision_as_progress(tmp_path: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(EXAMPLE.read_text())
    script = Path(sys.executable).parent / "liaison-bot"
    out = subprocess.run(
        [str(script), "db", "upgrade", "--config", str(config)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0
    assert "Running upgrade  -> 0001" in out.stderr and "-> 0005" in out.stderr


def test_a_keyed_audit_log_needs_the_data_key_for_cli_writes(tmp_path: Path) -> None:
    """Issue 14, finding 9: once the bot has keyed the log, a CLI write without the data key
    is refused with one line naming what to set, and changes nothing."""
    from bot.config import load_config
    from bot.storage import Store, audit_key_from
    from bot.storage.migrate import upgrade

    config = tmp_path / "config.toml"
    config.write_text(EXAMPLE.read_text())
    url = load_config(config).database_url()
    upgrade(url)
    keyed = Store.from_url(url, audit_key_from("the-data-key-of-at-least-32-characters"))
    keyed.key_audit_log()
    grant = ["clearance", "grant", "--config", str(config), "@lo:example.org", "NATO SECRET"]
    result = CliRunner(env={"LIAISON_DATA_KEY": ""}).invoke(main, [*grant, "--nationality", "DEU"])
    assert result.exit_code == 2, result.output
    assert "error: the audit log is keyed with the data key" in result.output
    assert keyed.clearance("@lo:example.org") is None
    with_key = CliRunner(env={"LIAISON_DATA_KEY": "the-data-key-of-at-least-32-characters"})
    assert with_key.invoke(main, [*grant, "--nationality", "DEU"]).exit_code == 0
    assert keyed.verify_audit().intact
    keyed.close()
