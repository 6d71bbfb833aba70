"""`liaison-bot audit export | siem-status | siem-rewind`: the SIEM's events without a SIEM,
the cursor as the operator sees it, and a rewind (audited, never forward); on SQLite and
PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from bot.cli import main
from bot.siem.wiring import formatter
from bot.storage import SiemPosition, Store, audit_key_from
from bot.storage.migrate import upgrade

DATA_KEY = "d" * 64


@pytest.fixture
def config(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("LIAISON_DATA_KEY", DATA_KEY)
    path = tmp_path / "bot.toml"
    path.write_text(
        f"""
[homeserver]
url = "http://127.0.0.1:8008"
user_id = "@liaison:example.org"
password_env = "LIAISON_PASSWORD"
[storage]
database_url = "{database_url}"
[siem]
target = "siem.example.org:6514"
format = "cef"
"""
    )
    upgrade(database_url)
    store = Store.from_url(database_url, audit_key_from(DATA_KEY))
    try:
        store.key_audit_log()
        for n in range(9):
            store.append_audit("@admin:example.org", "clearance.grant", f"@u{n}:x", {"n": n})
    finally:
        store.close()
    yield path


def cli(*args: str) -> Result:
    return CliRunner().invoke(main, list(args))


def stored(path: Path) -> Store:
    from bot.config import load_config

    return Store.from_url(load_config(path).database_url(), audit_key_from(DATA_KEY))


def test_export_writes_one_valid_event_a_line_for_the_range(config: Path) -> None:
    result = cli("audit", "export", "--config", str(config), "--from", "3", "--to", "6")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 4
    store = stored(config)
    try:
        installation = store.siem_installation()
        render = formatter("cef", "level")  # [siem] format
        assert lines == [render(r.entry, installation).body for r in store.audit_after(2, 4)]
    finally:
        store.close()
    assert all(line.isascii() and line.isprintable() for line in lines)


def test_export_in_ocsf_is_ndjson_and_defaults_to_the_whole_log(config: Path) -> None:
    result = cli("audit", "export", "--config", str(config), "--format", "ocsf")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert len(lines) == 11  # audit.keyed, register.keyed and the nine grants
    for line in lines:
        assert isinstance(json.loads(line), dict)


@pytest.mark.parametrize(
    ("args", "error"),
    [
        (["--from", "5", "--to", "2"], "--to: 2 is before --from 5"),
        (["--from", "0"], "Invalid value for '--from'"),
        (["--to", "x"], "Invalid value for '--to'"),
        (["--format", "leef"], "Invalid value for '--format'"),
    ],
)
def test_export_refuses_a_bad_range_or_format(config: Path, args: list[str], error: str) -> None:
    result = cli("audit", "export", "--config", str(config), *args)
    assert result.exit_code == 2 and error in result.output, result.output


def test_status_names_the_cursor_the_lag_and_the_last_error(config: Path) -> None:
    result = cli("audit", "siem-status", "--config", str(config))
    assert result.exit_code == 0, result.output
    status = json.loads(result.stdout)
    assert status["target"] == "siem.example.org:6514"
    assert status["started"] is False and status["lag_rows"] == 11
    store = stored(config)
    try:
        store.start_siem_cursor(from_now=False)
        [third] = store.audit_after(2, 1)
        store.advance_siem_cursor(SiemPosition(0, "0" * 64), SiemPosition(3, third.hash))
        from bot.storage import AuditNote

        store.record_siem_failure(
            "cannot connect to siem.example.org:6514: Connection refused",
            AuditNote("liaison-bot", "siem.unreachable", None, {}),
        )
    finally:
        store.close()
    status = json.loads(cli("audit", "siem-status", "--config", str(config)).stdout)
    assert (status["started"], status["last_id"], status["last_hash"]) == (True, 3, third.hash)
    assert status["lag_rows"] == 9  # rows 4-11 and the unreachable row
    assert status["failures"] == 1 and "Connection refused" in status["last_error"]
    assert status["confirmed_at"] and status["failing_since"]


def test_rewind_moves_the_cursor_back_and_is_audited(config: Path) -> None:
    store = stored(config)
    try:
        store.start_siem_cursor(from_now=False)
        rows = store.audit_after(0, 100)
        store.advance_siem_cursor(SiemPosition(0, "0" * 64), SiemPosition(8, rows[7].hash))
    finally:
        store.close()
    result = cli("audit", "siem-rewind", "--config", str(config), "--to", "4")
    assert result.exit_code == 0, result.output
    assert "resends from after row 4: 8 row(s)" in result.stdout  # 5-11, and the rewind
    store = stored(config)
    try:
        cursor = store.siem_cursor()
        assert cursor is not None and cursor.position == SiemPosition(4, rows[3].hash)
        last = store.recent_audit(1)[0]
        assert (last.action, last.detail) == ("siem.rewound", {"from": 8, "to": 4})
        assert last.actor.startswith("cli:")
        assert store.verify_audit().intact
    finally:
        store.close()


@pytest.mark.parametrize(
    ("to", "error"),
    [
        ("9", "--to 9: after the cursor (row 8)"),
        ("-1", "Invalid value for '--to'"),
    ],
)
def test_rewind_never_forward(config: Path, to: str, error: str) -> None:
    store = stored(config)
    try:
        store.start_siem_cursor(from_now=False)
        rows = store.audit_after(0, 100)
        store.advance_siem_cursor(SiemPosition(0, "0" * 64), SiemPosition(8, rows[7].hash))
    finally:
        store.close()
    result = cli("audit", "siem-rewind", "--config", str(config), "--to", to)
    assert result.exit_code == 2 and error in result.output, result.output


def test_rewind_needs_the_data_key_of_a_keyed_log(
    config: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("LIAISON_DATA_KEY")
    result = cli("audit", "siem-rewind", "--config", str(config), "--to", "0")
    assert result.exit_code == 2 and "keyed with the data key" in result.output
