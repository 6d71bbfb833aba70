"""The offline CLI an administrator can trust in scripts (issue 28): only `db upgrade`
creates or migrates the database; every other command refuses a missing or other-revision
one by name, and a read opens it read-only; `audit verify` tells "cannot verify" (exit 2)
from "broken" (exit 1); past expiries are refused; the register goes out and comes back in
as a file; the listings speak JSON. On SQLite and PostgreSQL."""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from sqlalchemy import create_engine, delete, func, inspect, select, text, update

from bot.cli import main
from bot.storage import AuditHeadRow, AuditRow, ClearanceRow, Store, audit_key_from
from bot.storage.migrate import current_revision, upgrade
from bot.storage.models import SCHEMA_HEAD
from bot.storage.offline import open_existing

EXAMPLE = Path(__file__).resolve().parent.parent / "config.example.toml"
DATA_KEY = "k" * 40
LO = "@lo-deu:example.org"
TODAY = datetime.now(UTC).date()


def write_config(path: Path, database_url: str) -> Path:
    text_ = EXAMPLE.read_text().replace(
        'database_url = "sqlite:///data/liaison.db"', f'database_url = "{database_url}"'
    )
    assert database_url in text_
    path.write_text(text_)
    return path


@pytest.fixture
def config(database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A migrated database whose audit log the bot has keyed, and a config naming it."""
    monkeypatch.setenv("LIAISON_DATA_KEY", DATA_KEY)
    upgrade(database_url)
    store = Store.from_url(database_url, audit_key_from(DATA_KEY))
    try:
        store.key_audit_log()
    finally:
        store.close()
    yield write_config(tmp_path / "config.toml", database_url)


def cli(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner(env=env).invoke(main, list(args))


def keyed(database_url: str) -> Store:
    return Store.from_url(database_url, audit_key_from(DATA_KEY))


def audit_rows(database_url: str) -> list[tuple[str, str | None, dict[str, object]]]:
    store = keyed(database_url)
    try:
        with store.session() as session:
            rows = session.scalars(select(AuditRow).order_by(AuditRow.id))
            return [(r.action, r.subject, dict(r.detail)) for r in rows]
    finally:
        store.close()


# ---------------------------------------------------------------- the database as it is

READS = [
    ["audit", "verify"],
    ["audit", "export"],
    ["audit", "siem-status"],
    ["clearance", "list"],
    ["clearance", "show", LO],
    ["clearance", "export"],
    ["rooms"],
    ["routes"],
]
WRITES = [
    ["clearance", "grant", LO, "NATO SECRET", "--nationality", "DEU"],
    ["clearance", "revoke", LO],
    ["audit", "siem-rewind", "--to", "0"],
]


def _with_config(args: list[str], config: Path) -> list[str]:
    """The command's words, then --config (after the group's subcommand, if any)."""
    if args[0] in ("audit", "clearance"):
        return [*args[:2], "--config", str(config), *args[2:]]
    return [*args, "--config", str(config)]


@pytest.mark.parametrize("args", [*READS, *WRITES, ["clearance", "import", "FILE"]])
def test_a_wrong_path_is_refused_and_no_file_is_created(args: list[str], tmp_path: Path) -> None:
    """The new administrator's first mistake: a config naming a database that is not
    there. Every command but `db upgrade` says so, naming the path, and creates nothing
    (it used to create a fresh database and answer "register is empty", exit 0)."""
    missing = tmp_path / "nowhere" / "liaison.db"
    config = write_config(tmp_path / "config.toml", f"sqlite:///{missing}")
    register = tmp_path / "register.json"
    register.write_text('{"clearances": []}')
    argv = [str(register) if a == "FILE" else a for a in _with_config(args, config)]
    result = cli(*argv, env={"LIAISON_DATA_KEY": DATA_KEY})
    assert result.exit_code == 2, result.output
    assert f"there is no database at {missing}" in result.stderr
    assert f"run `liaison-bot db upgrade --config {config}`" in result.stderr
    assert not (tmp_path / "nowhere").exists()


def test_an_empty_database_is_refused_and_nothing_is_made_in_it(
    database_url: str, tmp_path: Path
) -> None:
    """SQLite: no file; PostgreSQL: a database (schema) without our tables. Refused, and
    neither a file nor a table appears."""
    config = write_config(tmp_path / "config.toml", database_url)
    for args in (["clearance", "list"], WRITES[0]):
        result = cli(*_with_config(args, config))
        assert result.exit_code == 2, result.output
        assert "db upgrade" in result.stderr
    if database_url.startswith("sqlite"):
        assert not (tmp_path / "liaison.db").exists()
    else:
        assert "holds no liaison-bot schema" in result.stderr
        engine = create_engine(database_url)
        try:
            assert inspect(engine).get_table_names() == []
        finally:
            engine.dispose()


@pytest.mark.parametrize("args", [["clearance", "list"], WRITES[0]])
def test_a_live_older_database_is_not_migrated(
    args: list[str], database_url: str, tmp_path: Path
) -> None:
    """A database one revision behind (an upgraded CLI next to a running older bot): the
    command refuses, naming both revisions and the command that migrates; the revision is
    unchanged."""
    upgrade(database_url, "0014")
    config = write_config(tmp_path / "config.toml", database_url)
    result = cli(*_with_config(args, config), env={"LIAISON_DATA_KEY": DATA_KEY})
    assert result.exit_code == 2, result.output
    assert f"is at revision 0014, this liaison-bot needs {SCHEMA_HEAD}" in result.stderr
    assert f"run `liaison-bot db upgrade --config {config}`" in result.stderr
    assert current_revision(database_url) == "0014"


def test_a_database_from_a_newer_version_is_refused(database_url: str, tmp_path: Path) -> None:
    upgrade(database_url)
    engine = create_engine(database_url)
    try:
        with engine.begin() as conn:
            conn.execute(text("UPDATE alembic_version SET version_num = '0099'"))
    finally:
        engine.dispose()
    config = write_config(tmp_path / "config.toml", database_url)
    result = cli("clearance", "list", "--config", str(config))
    assert result.exit_code == 2, result.output
    assert "is at revision 0099, written by a newer liaison-bot" in result.stderr
    assert "db upgrade" not in result.stderr  # it would not help
    assert current_revision(database_url) == "0099"


def test_a_server_that_cannot_be_reached_is_one_line(tmp_path: Path) -> None:
    url = "postgresql+psycopg://liaison@127.0.0.1:1/nowhere"
    config = write_config(tmp_path / "config.toml", url)
    result = cli("clearance", "list", "--config", str(config))
    assert result.exit_code == 2
    assert result.stderr.startswith(f"error: cannot read database {url}: OperationalError")
    assert "Traceback" not in result.output


def _forge(database_url: str) -> None:
    """A register row changed outside the bot (its signature no longer verifies)."""
    store = keyed(database_url)
    try:
        store.grant(LO, LO, "NATO", "NATO SECRET", 3, nationality="DEU")
        with store.session() as session:
            session.execute(update(ClearanceRow).values(nationality="FRA"))
    finally:
        store.close()


def test_a_read_never_writes(config: Path, database_url: str) -> None:
    """A read on a register with a forged row: the bot would audit the refusal; a read
    cannot write, so it warns instead, and the database is as it was (SQLite: the file's
    bytes and mtime; both: the audit log)."""
    _forge(database_url)
    before = audit_rows(database_url)
    path = Path(database_url.removeprefix("sqlite:///")) if "sqlite" in database_url else None
    if path is not None:
        assert not Path(f"{path}-wal").exists()  # checkpointed at the last close
        content, mtime = path.read_bytes(), path.stat().st_mtime_ns
    for args in (["clearance", "list"], ["clearance", "show", LO], ["clearance", "export"]):
        result = cli(*_with_config(args, config))
        # Not a clean answer: a script must not read "the register is empty" from it.
        assert result.exit_code == 1, result.output
        assert result.stderr.count(f"warning: the clearance row of {LO} does not verify") == 1
        assert "NATO SECRET" not in result.stdout
        assert "is empty" not in result.stdout
    listed = cli(*_with_config(["clearance", "list"], config))
    assert "No clearance on record verifies (see the warnings)." in listed.stdout
    exported = cli(*_with_config(["clearance", "export"], config))
    assert exported.stdout == "" and "nothing exported" in exported.stderr
    assert cli("audit", "verify", "--config", str(config)).exit_code == 0
    assert cli("rooms", "--config", str(config)).exit_code == 0
    assert audit_rows(database_url) == before
    if path is not None:
        assert path.read_bytes() == content and path.stat().st_mtime_ns == mtime
        wal = Path(f"{path}-wal")
        assert not wal.exists() or wal.stat().st_size == 0


def test_a_read_only_sqlite_path_with_uri_characters(tmp_path: Path) -> None:
    """SQLite's read-only open is a `file:` URI: a '#', '?' or '%' in the path must stay
    part of the path (a bare '#' would end it there, drop `mode=ro` and create a file)."""
    from sqlalchemy.engine import URL

    folder = tmp_path / "a b#c?d%e"
    folder.mkdir()
    url = URL.create("sqlite", database=str(folder / "liaison #1.db")).render_as_string()
    upgrade(url)
    before = sorted(p.name for p in tmp_path.rglob("*"))
    config = write_config(tmp_path / "config.toml", url)
    result = cli("clearance", "list", "--config", str(config))
    assert result.exit_code == 0, result.output
    after = sorted(p.name for p in tmp_path.rglob("*") if p.name != "config.toml")
    assert [n for n in after if n not in before] in ([], ["liaison #1.db-shm", "liaison #1.db-wal"])


def test_a_read_session_is_read_only_on_the_server(config: Path, database_url: str) -> None:
    """Read-only is the database's doing, not only our code's: a write in a reading
    command's session fails."""
    store = open_existing(database_url, audit_key_from(DATA_KEY), read_only=True)
    try:
        with pytest.raises(Exception, match=r"read-?only"), store.session() as session:
            session.execute(update(AuditHeadRow).values(last_id=AuditHeadRow.last_id))
    finally:
        store.close()


def test_db_upgrade_still_creates_and_migrates(database_url: str, tmp_path: Path) -> None:
    upgrade(database_url, "0014")
    config = write_config(tmp_path / "config.toml", database_url)
    result = cli("db", "upgrade", "--config", str(config))
    assert result.exit_code == 0, result.output
    assert current_revision(database_url) == SCHEMA_HEAD
    assert cli("clearance", "list", "--config", str(config)).exit_code == 0


# ---------------------------------------------------------------- audit verify


def verify(config: Path, key: str | None, *extra: str) -> Result:
    return cli("audit", "verify", "--config", str(config), *extra, env={"LIAISON_DATA_KEY": key})  # type: ignore[dict-item]  # None unsets it


def test_verify_without_the_key_cannot_verify(config: Path) -> None:
    result = verify(config, None)
    assert result.exit_code == 2, result.output
    assert result.stderr.startswith(
        "error: cannot verify: the data key is not set (storage.data_key_env LIAISON_DATA_KEY)"
    )
    assert "BROKEN" not in result.output


def test_verify_with_a_wrong_key_cannot_verify(config: Path) -> None:
    result = verify(config, "w" * 40)
    assert result.exit_code == 2, result.output
    assert "error: cannot verify: the data key given does not open this log" in result.stderr
    assert "cannot tell the two apart" in result.stderr


def test_verify_names_a_tampered_row_exit_1(config: Path, database_url: str) -> None:
    assert cli("clearance", "grant", "--config", str(config), LO, "NS", "--nationality", "DEU")
    store = keyed(database_url)
    try:
        with store.session() as session:
            newest = session.scalar(select(func.max(AuditRow.id)))
            session.execute(
                update(AuditRow).where(AuditRow.id == newest).values(subject="@eve:example.org")
            )
    finally:
        store.close()
    result = verify(config, DATA_KEY)
    assert result.exit_code == 1, result.output
    assert f"audit log BROKEN: row {newest}: contents were modified" in result.stdout


def test_a_changed_marker_is_tampering_under_the_right_key(config: Path, database_url: str) -> None:
    """The marker fails but rows verify under the key: the key is right, the marker was
    changed: broken (1), not "cannot verify"."""
    store = keyed(database_url)
    try:
        with store.session() as session:
            session.execute(update(AuditHeadRow).values(key_seal="0" * 64))
    finally:
        store.close()
    result = verify(config, DATA_KEY)
    assert result.exit_code == 1, result.output
    assert "the key marker was changed" in result.stdout
    # The same log under a wrong key: no verdict, but never "intact".
    assert verify(config, "w" * 40).exit_code == 2


def test_an_attacker_who_rewrites_everything_never_gets_exit_0(
    config: Path, database_url: str
) -> None:
    """With write access but not the key: rewrite the marker, move it, and re-hash every
    row (unkeyed, as one could). Whatever they do, the answer is not 0, and where it cannot
    tell a wrong key from this, it says so."""
    import hashlib

    store = keyed(database_url)
    try:
        with store.session() as session:
            prev = "0" * 64
            for row in session.scalars(select(AuditRow).order_by(AuditRow.id)):
                row.prev_hash = prev
                row.hash = prev = hashlib.sha256(f"{prev}{row.id}".encode()).hexdigest()
            session.execute(
                update(AuditHeadRow).values(hash=prev, key_seal="1" * 64, keyed_from=10**6)
            )
    finally:
        store.close()
    result = verify(config, DATA_KEY)
    assert result.exit_code == 2, result.output
    assert "cannot tell the two apart" in result.stderr


def test_deleting_the_newest_rows_and_moving_the_head_is_broken(
    config: Path, database_url: str
) -> None:
    """The newest rows (the record of what someone did last) deleted and the head pointed
    at the row before them: every remaining row still verifies, but the head's seal covers
    the newest row, so moving it needs the key: BROKEN (1), never intact."""
    for user in (LO, "@other:example.org"):
        assert cli("clearance", "grant", "--config", str(config), user, "NS",
                   "--nationality", "DEU").exit_code == 0  # fmt: skip
    assert verify(config, DATA_KEY).exit_code == 0
    store = keyed(database_url)
    try:
        with store.session() as session:
            newest = session.scalar(select(func.max(AuditRow.id)))
            session.execute(delete(AuditRow).where(AuditRow.id == newest))
            kept = session.scalars(select(AuditRow).order_by(AuditRow.id.desc())).first()
            assert kept is not None
            session.execute(update(AuditHeadRow).values(last_id=kept.id, hash=kept.hash))
    finally:
        store.close()
    result = verify(config, DATA_KEY)
    assert result.exit_code == 1, result.output
    assert "the key marker was changed or the head moved" in result.stdout
    assert "newest rows may have been deleted" in result.stdout
    assert verify(config, "w" * 40).exit_code == 2  # another key: no verdict, never intact


def strip_marker_and_rehash(database_url: str) -> None:
    """What someone with write access but not the key can do: delete the key marker and
    the bot's session row, then re-hash every row without the key (here after changing one)."""
    from bot.storage import BotSessionRow
    from bot.storage.store import audit_hash

    store = keyed(database_url)
    try:
        with store.session() as session:
            session.execute(delete(BotSessionRow))
            prev = "0" * 64
            for row in session.scalars(select(AuditRow).order_by(AuditRow.id)):
                row.subject = "@eve:example.org" if row.subject == LO else row.subject
                row.prev_hash = prev
                row.hash = prev = audit_hash(row)
            session.execute(update(AuditHeadRow).values(hash=prev, keyed_from=None, key_seal=None))
    finally:
        store.close()


def test_a_log_stripped_of_its_marker_and_rehashed_is_never_intact(
    config: Path, database_url: str
) -> None:
    """The marker and the bot's session row deleted, the log re-hashed without the key: no
    row is wrong by itself, but an unkeyed log is not evidence; with or without the key the
    answer is "cannot verify" (2), saying what to suspect, never "intact" (0)."""
    from bot.storage import BotSessionRow

    store = keyed(database_url)
    try:
        with store.session() as session:
            session.add(
                BotSessionRow(id=1, user_id="@bot:example.org", device_id="D", access_token="x")
            )
    finally:
        store.close()
    assert cli("clearance", "grant", "--config", str(config), LO, "NS", "--nationality", "DEU")
    assert verify(config, DATA_KEY).exit_code == 0
    strip_marker_and_rehash(database_url)
    for key in (DATA_KEY, None):
        result = verify(config, key)
        assert result.exit_code == 2, result.output
        assert "carry no key marker" in result.stderr
        assert "if the bot has run here, treat the log as tampered with" in result.stderr
    payload = json.loads(verify(config, DATA_KEY, "--json").stdout)
    assert (payload["status"], payload["reason"]) == ("cannot_verify", "unkeyed")


def test_an_emptied_log_beside_a_register_is_broken(config: Path, database_url: str) -> None:
    """Every audit row and the head deleted: "empty log" would read as intact, but the
    register rows beside it were audited when written."""
    assert cli("clearance", "grant", "--config", str(config), LO, "NS", "--nationality", "DEU")
    store = keyed(database_url)
    try:
        with store.session() as session:
            session.execute(delete(AuditRow))
            session.execute(delete(AuditHeadRow))
    finally:
        store.close()
    for key in (DATA_KEY, None):
        result = verify(config, key)
        assert result.exit_code == 1, result.output
        assert "audit log BROKEN: the log is empty, but the database holds clearances" in (
            result.stdout
        )


def test_a_log_only_keyless_commands_wrote_cannot_be_vouched_for(
    database_url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Before the bot's first start, a CLI without the data key may write an unkeyed log:
    it cannot be vouched for (2); once the bot has keyed it, it verifies (0)."""
    monkeypatch.delenv("LIAISON_DATA_KEY", raising=False)
    upgrade(database_url)
    config = write_config(tmp_path / "config.toml", database_url)
    assert verify(config, None).exit_code == 0  # empty, nothing beside it: nothing to vouch for
    grant = CliRunner(env={"LIAISON_DATA_KEY": None}).invoke(
        main, ["clearance", "grant", "--config", str(config), LO, "NS", "--nationality", "DEU"]
    )
    assert grant.exit_code == 0, grant.output
    result = verify(config, None)
    assert result.exit_code == 2, result.output
    assert "either the bot has never run on this database" in result.stderr
    store = keyed(database_url)
    try:
        store.key_audit_log()
    finally:
        store.close()
    assert verify(config, DATA_KEY).exit_code == 0


def test_verify_json(config: Path) -> None:
    intact = verify(config, DATA_KEY, "--json")
    assert intact.exit_code == 0
    assert json.loads(intact.stdout) == {
        "status": "intact",
        "intact": True,
        "entries": 2,  # the bot keyed the log and signed the register
        "reason": None,
        "message": "2 entries intact",
    }
    no_key = verify(config, None, "--json")
    assert no_key.exit_code == 2
    payload = json.loads(no_key.stdout)
    assert (payload["status"], payload["reason"], payload["intact"]) == (
        "cannot_verify",
        "no_key",
        False,
    )


# ---------------------------------------------------------------- dates


def test_a_past_expiry_is_refused_naming_it_and_today(config: Path) -> None:
    result = cli(
        "clearance", "grant", "--config", str(config), LO, "NATO SECRET",
        "--nationality", "DEU", "--expires", "2020-01-01",
    )  # fmt: skip
    assert result.exit_code == 2, result.output
    assert (
        f"--expires: expires 2020-01-01 is in the past (today is {TODAY.isoformat()}, UTC)"
        in result.stderr
    )
    assert cli("clearance", "show", "--config", str(config), LO).exit_code == 1
    today = cli(
        "clearance", "grant", "--config", str(config), LO, "NATO SECRET",
        "--nationality", "DEU", "--expires", TODAY.isoformat(),
    )  # fmt: skip
    assert today.exit_code == 0, today.output


def test_the_register_refuses_a_past_expiry_for_chat_too(store: Store) -> None:
    """The rule lives in the register service, which `!clearance grant` shares."""
    from datetime import timedelta

    from bot.services.register import ClearanceRegister, RegisterError

    register = ClearanceRegister(store)
    yesterday = TODAY - timedelta(days=1)
    with pytest.raises(RegisterError, match=f"expires {yesterday.isoformat()} is in the past"):
        register.grant("@admin:x", LO, "NATO SECRET", nationality="DEU", expires=yesterday)
    assert store.clearance(LO) is None


# ---------------------------------------------------------------- import / export

GOOD_CSV = """user_id,nationality,levels,caveats,expires,revoked
@a:example.org,DEU,DEU GEHEIM;NATO SECRET,ATOMAL,2030-06-30,no
@b:example.org,fra,NATO CONFIDENTIAL,,,no
@c:example.org,NOR,,,,yes
"""


def import_(config: Path, path: Path, *extra: str) -> Result:
    return cli("clearance", "import", "--config", str(config), str(path), *extra)


def test_import_with_bad_rows_changes_nothing_and_names_each(
    config: Path, database_url: str, tmp_path: Path
) -> None:
    before = audit_rows(database_url)
    bad = tmp_path / "register.csv"
    bad.write_text(
        GOOD_CSV
        + "not-a-user,DEU,NATO SECRET,,,no\n"
        + "@d:example.org,XX,NATO SECRTE,FOO,2030-02-30,maybe\n"
        + "@a:example.org,DEU,NATO SECRET;NATO CONFIDENTIAL,,2020-01-01,no\n"
    )
    result = import_(config, bad)
    assert result.exit_code == 2, result.output
    errors = result.stderr
    assert "line 5: user_id: 'not-a-user' is not a Matrix user id" in errors
    assert "line 6: nationality: 'XX' is not an ISO 3166-1 alpha-3 code" in errors
    assert "line 6: levels: unknown marking 'NATO SECRTE'" in errors
    assert "line 6: caveats: unknown caveat 'FOO'" in errors
    assert "line 6: expires: '2030-02-30' is not a date" in errors
    assert "line 6: revoked: 'maybe' is not yes/no" in errors
    assert "line 7: user_id: @a:example.org is also on line 2: one row per person" in errors
    assert "line 7: levels: two levels in scheme NATO" in errors
    assert "nothing was changed" in errors
    assert audit_rows(database_url) == before
    assert json.loads(cli("clearance", "list", "--config", str(config), "--json").stdout) == {
        "clearances": []
    }


def test_import_refuses_a_past_expiry_and_a_bad_row_in_one_run(
    config: Path, database_url: str, tmp_path: Path
) -> None:
    """Rows checked against the register (a past expiry) are named in the same run as
    rows bad in themselves."""
    before = audit_rows(database_url)
    path = tmp_path / "register.json"
    path.write_text(
        json.dumps(
            {
                "clearances": [
                    {"user_id": "@a:example.org", "nationality": "DEU", "levels": ["NS"]},
                    {
                        "user_id": "@b:example.org",
                        "nationality": "DEU",
                        "levels": ["NATO SECRET"],
                        "expires": "2020-01-01",
                    },
                    {"user_id": "@c:example.org", "levels": ["NATO SECRET"], "colour": "red"},
                ]
            }
        )
    )
    result = import_(config, path)
    assert result.exit_code == 2, result.output
    assert (
        f"clearances[1]: expires 2020-01-01 is in the past (today is {TODAY.isoformat()}, UTC)"
        in result.stderr
    )
    assert "clearances[2]: colour: unknown field" in result.stderr
    assert "clearances[2]: nationality: missing" in result.stderr
    assert audit_rows(database_url) == before


def test_import_applies_once_with_one_audit_row_per_change_and_round_trips(
    config: Path, database_url: str, tmp_path: Path
) -> None:
    # Someone on record before the import: changed by it, and another left as they are.
    assert cli("clearance", "grant", "--config", str(config), "@c:example.org", "NC",
               "--nationality", "NOR").exit_code == 0  # fmt: skip
    assert cli("clearance", "grant", "--config", str(config), "@keep:example.org", "NS",
               "--nationality", "ITA").exit_code == 0  # fmt: skip
    before = len(audit_rows(database_url))
    path = tmp_path / "register.csv"
    path.write_text(GOOD_CSV)

    dry = import_(config, path, "--dry-run")
    assert dry.exit_code == 0, dry.output
    assert "dry run, nothing changed: added 2, changed 0, revoked 1, unchanged 0" in dry.stdout
    assert len(audit_rows(database_url)) == before

    applied = import_(config, path)
    assert applied.exit_code == 0, applied.output
    assert "@a:example.org: added" in applied.stdout
    assert "@c:example.org: revoked" in applied.stdout
    assert applied.stdout.strip().endswith("added 2, changed 0, revoked 1, unchanged 0")
    # The rows `clearance grant` and `revoke` write: one per grant given, one per revocation.
    rows = audit_rows(database_url)[before:]
    assert [(action, subject, detail.get("level")) for action, subject, detail in rows] == [
        ("clearance.grant", "@a:example.org", "DEU GEHEIM"),
        ("clearance.grant", "@a:example.org", "NATO SECRET"),
        ("clearance.grant", "@b:example.org", "NATO CONFIDENTIAL"),
        ("clearance.revoke", "@c:example.org", None),
    ]
    assert rows[0][2] == {
        "scheme": "DEU",
        "level": "DEU GEHEIM",
        "previous": None,
        "nationality": "DEU",
        "expires": "2030-06-30",
        "caveats": ["ATOMAL"],
    }
    assert rows[3][2] == {"scope": "all"}
    listed = json.loads(cli("clearance", "list", "--config", str(config), "--json").stdout)
    a = next(r for r in listed["clearances"] if r["user_id"] == "@a:example.org")
    assert [g["level"] for g in a["grants"]] == ["DEU GEHEIM", "NATO SECRET"]
    assert (a["caveats"], a["expires"], a["revoked"]) == (["ATOMAL"], "2030-06-30", False)

    # Round trip, in both formats: export then import changes nothing, writes no audit row.
    for fmt in ("csv", "json"):
        out = tmp_path / f"export.{fmt}"
        exported = cli("clearance", "export", "--config", str(config), "--out", str(out))
        assert exported.exit_code == 0, exported.output
        assert os.stat(out).st_mode & 0o777 == 0o600
        again = len(audit_rows(database_url))
        result = import_(config, out)
        assert result.exit_code == 0, result.output
        assert result.stdout.strip() == "added 0, changed 0, revoked 0, unchanged 4"
        assert len(audit_rows(database_url)) == again

    # A change by file: levels, caveats and expiry set to the file's (removed, not only
    # added), audited as a grant of the level kept and a revocation of the one dropped.
    path.write_text(GOOD_CSV.replace("DEU GEHEIM;NATO SECRET,ATOMAL,2030-06-30", "DEU GEHEIM,,"))
    before = len(audit_rows(database_url))
    changed = import_(config, path)
    assert changed.exit_code == 0, changed.output
    assert "@a:example.org: changed (levels, caveats, expires)" in changed.stdout
    assert changed.stdout.strip().endswith("added 0, changed 1, revoked 0, unchanged 2")
    shown = json.loads(
        cli("clearance", "show", "--config", str(config), "@a:example.org", "--json").stdout
    )["clearance"]
    assert [g["level"] for g in shown["grants"]] == ["DEU GEHEIM"]
    assert (shown["caveats"], shown["expires"]) == ([], None)
    assert audit_rows(database_url)[before:] == [
        (
            "clearance.grant",
            "@a:example.org",
            {
                "scheme": "DEU",
                "level": "DEU GEHEIM",
                "previous": "DEU GEHEIM",
                "nationality": "DEU",
                "expires": None,
                "caveats": [],
            },
        ),
        ("clearance.revoke", "@a:example.org", {"scope": "NATO", "level": "NATO SECRET"}),
    ]

    # A revoked record named active again is restored.
    path.write_text(GOOD_CSV.replace("@c:example.org,NOR,,,,yes", "@c:example.org,NOR,NC,,,no"))
    restored = import_(config, path)
    assert "@c:example.org: changed (levels, revoked)" in restored.stdout
    assert audit_rows(database_url)[-1][2]["restored"] is True


def test_import_revoke_missing(config: Path, database_url: str, tmp_path: Path) -> None:
    for user in ("@a:example.org", "@gone:example.org", "@gone2:example.org"):
        assert cli("clearance", "grant", "--config", str(config), user, "NS",
                   "--nationality", "DEU").exit_code == 0  # fmt: skip
    path = tmp_path / "register.json"
    path.write_text(
        json.dumps([{"user_id": "@a:example.org", "nationality": "DEU", "levels": ["NS"]}])
    )
    kept = import_(config, path)
    assert kept.stdout.strip() == "added 0, changed 0, revoked 0, unchanged 1"
    before = len(audit_rows(database_url))
    result = import_(config, path, "--revoke-missing")
    assert result.exit_code == 0, result.output
    assert "@gone:example.org: revoked (not in the file)" in result.stdout
    assert result.stdout.strip().endswith(
        "added 0, changed 0, revoked 2, unchanged 1; 2 revoked as missing from the file"
    )
    rows = audit_rows(database_url)[before:]
    assert rows == [
        ("clearance.revoke", "@gone2:example.org", {"scope": "all"}),
        ("clearance.revoke", "@gone:example.org", {"scope": "all"}),
    ]


def test_import_revoke_missing_refuses_an_empty_file(config: Path, tmp_path: Path) -> None:
    """An empty file (a failed export, say) with --revoke-missing would revoke everyone."""
    assert cli("clearance", "grant", "--config", str(config), LO, "NS",
               "--nationality", "DEU").exit_code == 0  # fmt: skip
    path = tmp_path / "register.csv"
    path.write_text("user_id,nationality,levels,caveats,expires,revoked\n")
    result = import_(config, path, "--revoke-missing")
    assert result.exit_code == 2 and "names nobody" in result.stderr
    assert cli("clearance", "show", "--config", str(config), LO).exit_code == 0
    assert "status: active" in cli("clearance", "show", "--config", str(config), LO).stdout


def test_import_without_the_data_key_changes_nothing(
    config: Path, database_url: str, tmp_path: Path
) -> None:
    """The log is keyed: the import cannot audit, so it writes nothing at all (one
    transaction), and says what to set."""
    before = audit_rows(database_url)
    path = tmp_path / "register.csv"
    path.write_text(GOOD_CSV)
    result = cli(
        "clearance", "import", "--config", str(config), str(path), env={"LIAISON_DATA_KEY": ""}
    )
    assert result.exit_code == 2, result.output
    assert "the audit log is keyed with the data key" in result.stderr
    assert audit_rows(database_url) == before
    listed = json.loads(cli("clearance", "list", "--config", str(config), "--json").stdout)
    assert listed == {"clearances": []}


def test_export_to_stdout_reads_back_from_stdin(config: Path) -> None:
    assert cli("clearance", "grant", "--config", str(config), LO, "NS",
               "--nationality", "DEU", "--caveat", "ATOMAL").exit_code == 0  # fmt: skip
    exported = cli("clearance", "export", "--config", str(config))
    assert exported.exit_code == 0, exported.output
    document = json.loads(exported.stdout)
    assert document == {
        "format": "liaison-bot clearances v1",
        "clearances": [
            {
                "user_id": LO,
                "nationality": "DEU",
                "levels": ["NATO SECRET"],
                "caveats": ["ATOMAL"],
                "expires": None,
                "revoked": False,
            }
        ],
    }
    again = CliRunner().invoke(
        main, ["clearance", "import", "--config", str(config), "-"], input=exported.stdout
    )
    assert again.exit_code == 0, again.output
    assert again.stdout.strip() == "added 0, changed 0, revoked 0, unchanged 1"


def test_import_format_needs_a_known_extension(config: Path, tmp_path: Path) -> None:
    path = tmp_path / "register.txt"
    path.write_text(GOOD_CSV)
    result = import_(config, path)
    assert result.exit_code == 2 and "give --format" in result.stderr
    assert import_(config, path, "--format", "csv", "--dry-run").exit_code == 0


# ---------------------------------------------------------------- --json


def test_listings_speak_json(config: Path) -> None:
    assert cli("clearance", "grant", "--config", str(config), LO, "NS",
               "--nationality", "DEU").exit_code == 0  # fmt: skip
    listed = json.loads(cli("clearance", "list", "--config", str(config), "--json").stdout)
    (record,) = listed["clearances"]
    assert record == {
        "user_id": LO,
        "nationality": "DEU",
        "grants": [{"scheme": "NATO", "level": "NATO SECRET", "rank": 3}],
        "caveats": [],
        "expires": None,
        "revoked": False,
        "revoked_at": None,
        "identity_key": None,
        "identity_pending": None,
    }
    missing = cli("clearance", "show", "--config", str(config), "@x:example.org", "--json")
    assert missing.exit_code == 1
    assert json.loads(missing.stdout) == {"user_id": "@x:example.org", "clearance": None}
    rooms = json.loads(cli("rooms", "--config", str(config), "--json").stdout)
    assert rooms["rooms"][0] == {
        "key": "deu",
        "name": "DEU national cell",
        "label": "DEU GEHEIM",
        "rank": 3,
        "room_id": None,
        "created": False,
    }
    routes = json.loads(cli("routes", "--config", str(config), "--json").stdout)
    assert {"source": "deu", "targets": ["nato-s", "eu-s"], "origin": "config"} in routes["routes"]
    status = json.loads(cli("audit", "siem-status", "--config", str(config), "--json").stdout)
    assert status["started"] is False and status["lag_rows"] == 3  # keyed, signed, granted


def test_a_csv_export_runs_no_formula_in_a_spreadsheet_and_reads_back(
    config: Path, tmp_path: Path
) -> None:
    """A user id a spreadsheet would run (Matrix ids allow most characters before the
    server; a federated server picks its own) is written as text, with a leading
    apostrophe, and reads back as it was; a plain id is left as it is."""
    formula = "@SUM(1+1)*cmd|'/Ccalc'!A0:evil.example"
    for user in (formula, LO):
        granted = cli("clearance", "grant", "--config", str(config), user, "NS",
                      "--nationality", "DEU")  # fmt: skip
        assert granted.exit_code == 0, granted.output
    out = tmp_path / "register.csv"
    assert cli("clearance", "export", "--config", str(config), "--out", str(out)).exit_code == 0
    lines = out.read_text().splitlines()
    assert lines[1:] == [
        f"'{formula},DEU,NATO SECRET,,,no",
        f"{LO},DEU,NATO SECRET,,,no",
    ]
    assert not any(line.startswith(("=", "+", "-", "@S")) for line in lines)
    again = import_(config, out)
    assert again.exit_code == 0, again.output
    assert again.stdout.strip() == "added 0, changed 0, revoked 0, unchanged 2"


def test_an_export_that_cannot_be_written_whole_leaves_no_file(
    config: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The disk fills half-way: no half register is left behind to be imported later
    (with --revoke-missing, half a register revokes the other half)."""
    import errno
    import io

    assert cli("clearance", "grant", "--config", str(config), LO, "NS",
               "--nationality", "DEU").exit_code == 0  # fmt: skip
    real_fdopen = os.fdopen

    class Full(io.TextIOWrapper):
        def write(self, text: str) -> int:
            super().write(text[:10])
            super().flush()
            raise OSError(errno.ENOSPC, "No space left on device")

    def fdopen(fd: int, *args: object, **kwargs: object) -> object:
        handle = real_fdopen(fd, "wb")
        return Full(handle, encoding="utf-8", newline="")

    out = tmp_path / "register.csv"
    monkeypatch.setattr(os, "fdopen", fdopen)
    result = cli("clearance", "export", "--config", str(config), "--out", str(out))
    assert result.exit_code == 2, result.output
    assert f"--out: cannot write {out}: No space left on device" in result.stderr
    assert not out.exists()


def test_import_refuses_an_id_that_differs_only_in_case(config: Path, tmp_path: Path) -> None:
    """`@LO-DEU:…` for `@lo-deu:…` on record: a revocation that would revoke nobody (the
    person meant stays cleared) is refused naming both ids, and nothing changes."""
    assert cli("clearance", "grant", "--config", str(config), LO, "NS",
               "--nationality", "DEU").exit_code == 0  # fmt: skip
    shouted = "@LO-DEU:example.org"
    path = tmp_path / "register.csv"
    path.write_text(f"user_id,nationality,levels,caveats,expires,revoked\n{shouted},DEU,,,,yes\n")
    result = import_(config, path)
    assert result.exit_code == 2, result.output
    assert f"line 2: user {shouted} differs from {LO} only in letter case" in result.stderr
    assert "status: active" in cli("clearance", "show", "--config", str(config), LO).stdout
    assert cli("clearance", "show", "--config", str(config), shouted).exit_code != 0
    twice = tmp_path / "twice.csv"
    twice.write_text(
        "user_id,nationality,levels,caveats,expires,revoked\n"
        "@new:example.org,DEU,NATO SECRET,,,no\n"
        "@NEW:example.org,DEU,NATO SECRET,,,no\n"
    )
    result = import_(config, twice)
    assert result.exit_code == 2, result.output
    assert "line 3: user @NEW:example.org differs from @new:example.org" in result.stderr
