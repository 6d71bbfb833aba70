"""`keys export-recovery` / `keys import-recovery`: the bot's cross-signing keys move to a new
store in a 0600 file, and a bot on the new store vouches for its new device with them."""

from __future__ import annotations

import json
import os
import shutil
import stat
import urllib.parse
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner, Result

from bot.cli import main
from bot.config import load_config
from bot.devtools.devserver import DevServer, DevServerError
from bot.matrix.crosssign import check_identity
from bot.matrix.trust import KeysAPI
from tests.bot_harness import SECRETS, BotEnv
from tests.matrix_harness import MakeUser

# the CLI writes audit rows: the keyed log needs the data key, as the bot has it
ENV = {"LIAISON_TEST_PICKLE_KEY": SECRETS.pickle_key, "LIAISON_TEST_DATA_KEY": SECRETS.data_key}


def cli(*args: str, env: dict[str, str] | None = None) -> Result:
    return CliRunner(env=env if env is not None else ENV).invoke(main, list(args))


@pytest.fixture
def new_devices_deleted(
    bot_env: BotEnv, synapse: DevServer, make_user: MakeUser
) -> Iterator[Callable[[], set[str]]]:
    """The bot account's devices made during the test are deleted after it, passed or failed,
    with their keys and the signatures on them (the shared bot's account is left with the
    devices it had, not a second one signed by its identity); what it gives lists them."""
    admin = make_user("hsadmin", admin=True)
    path = f"/_synapse/admin/v2/users/{urllib.parse.quote(bot_env.bot_user.user_id)}/devices"

    def devices() -> set[str]:
        return {
            d["device_id"]
            for d in synapse.request("GET", path, token=admin.access_token)["devices"]
        }

    before = devices()
    yield lambda: devices() - before
    for device_id in devices() - before:
        synapse.request("DELETE", f"{path}/{device_id}", token=admin.access_token)
    assert devices() == before
    user_id = bot_env.bot_user.user_id
    keys = synapse.request(
        "POST", "/_matrix/client/v3/keys/query", {"device_keys": {user_id: []}},
        token=admin.access_token,
    )  # fmt: skip
    assert set(keys["device_keys"].get(user_id, {})) <= before, "a deleted device's keys remain"


async def test_export_then_import_on_a_new_store(
    bot_env: BotEnv,
    synapse: DevServer,
    tmp_path: Path,
    new_devices_deleted: Callable[[], set[str]],
) -> None:
    assert bot_env.store is not None and bot_env.bot is not None
    generated = bot_env.store.cross_signing()
    assert generated is not None
    _, master, _ = generated
    recovery = tmp_path / "keys.json"
    result = cli(
        "keys", "export-recovery", "--config", str(bot_env.config_path), "--out", str(recovery)
    )
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(os.stat(recovery).st_mode) == 0o600
    data = json.loads(recovery.read_text())
    assert data["master_public"] == master and data["user_id"] == bot_env.bot_user.user_id

    # A new store: another folder with the same config, an empty database and crypto store.
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    shutil.copy(bot_env.config_path, fresh / "config.toml")
    # Only `db upgrade` creates a database (issue 28): the new store is made first.
    assert cli("db", "upgrade", "--config", str(fresh / "config.toml")).exit_code == 0
    result = cli("keys", "import-recovery", "--config", str(fresh / "config.toml"), str(recovery))
    assert result.exit_code == 0, result.output
    other = BotEnv(
        synapse, fresh, bot_env.bot_user, bot_env.admin, bot_env.officer, fresh / "config.toml"
    )
    await other.start()
    try:
        assert other.bot is not None and other.bot.client is not None
        new_device = other.bot.client.device_id
        assert new_device != bot_env.bot.client.device_id
        api = KeysAPI(synapse.base_url, bot_env.admin.access_token)
        try:
            identity = check_identity(
                bot_env.bot_user.user_id, await api.query([bot_env.bot_user.user_id])
            )
        finally:
            await api.close()
        assert identity.master == master
        assert new_device in identity.signed_devices
        assert new_devices_deleted() == {new_device}  # the one the fixture deletes after
    finally:
        await other.stop()


def test_export_refuses_to_overwrite(bot_env: BotEnv, tmp_path: Path) -> None:
    target = tmp_path / "exists.json"
    target.write_text("keep me")
    result = cli(
        "keys", "export-recovery", "--config", str(bot_env.config_path), "--out", str(target)
    )
    assert result.exit_code == 2 and "refusing to overwrite" in result.output
    assert target.read_text() == "keep me"


def test_export_needs_the_pickle_key(bot_env: BotEnv, tmp_path: Path) -> None:
    result = cli(
        "keys",
        "export-recovery",
        "--config",
        str(bot_env.config_path),
        "--out",
        str(tmp_path / "k.json"),
        env={"LIAISON_TEST_PICKLE_KEY": ""},
    )
    assert result.exit_code == 2 and "LIAISON_TEST_PICKLE_KEY" in result.output
    wrong = cli(
        "keys",
        "export-recovery",
        "--config",
        str(bot_env.config_path),
        "--out",
        str(tmp_path / "k.json"),
        env=ENV | {"LIAISON_TEST_PICKLE_KEY": "wrong"},
    )
    assert wrong.exit_code == 1 and "cannot open the sealed keys" in wrong.output
    assert not (tmp_path / "k.json").exists()


def test_import_rejects_bad_files(bot_env: BotEnv, tmp_path: Path) -> None:
    exported = tmp_path / "keys.json"
    assert (
        cli(
            "keys", "export-recovery", "--config", str(bot_env.config_path), "--out", str(exported)
        ).exit_code
        == 0
    )
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    config = fresh / "config.toml"
    shutil.copy(bot_env.config_path, config)

    loose = tmp_path / "loose.json"
    shutil.copy(exported, loose)
    os.chmod(loose, 0o644)
    result = cli("keys", "import-recovery", "--config", str(config), str(loose))
    assert result.exit_code == 2 and "readable by others" in result.output

    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    os.chmod(garbage, 0o600)
    result = cli("keys", "import-recovery", "--config", str(config), str(garbage))
    assert result.exit_code == 2 and "not a recovery file" in result.output

    stranger = tmp_path / "stranger.json"
    data = json.loads(exported.read_text())
    data["user_id"] = "@someone-else:localhost"
    stranger.write_text(json.dumps(data))
    os.chmod(stranger, 0o600)
    result = cli("keys", "import-recovery", "--config", str(config), str(stranger))
    assert result.exit_code == 2 and "holds the keys of @someone-else:localhost" in result.output
    # Every refusal above came before anything was written: the fresh config's database
    # (a relative SQLite path, so fresh/bot.db) was never even created.
    assert load_config(config).database_url() == f"sqlite:///{fresh / 'bot.db'}"
    assert not (fresh / "bot.db").exists()

    # The bot's own database already holds these keys; different ones need --force.
    damaged = tmp_path / "damaged.json"
    data = json.loads(exported.read_text())
    data["master_public"] = "x" * 43
    damaged.write_text(json.dumps(data))
    os.chmod(damaged, 0o600)
    result = cli("keys", "import-recovery", "--config", str(bot_env.config_path), str(damaged))
    assert result.exit_code == 2 and "damaged" in result.output


# -- export-recovery writes its file and its audit row together, or neither -----------------
# (on a database of its own, no homeserver needed: the export reads only the database)

DATA_KEY = "recovery-test-data-key-" + "a" * 40
PICKLE_KEY = "recovery-test-pickle-key-" + "b" * 40
USER = "@liaison:example.org"


@pytest.fixture
def keyed(database_url: str, tmp_path: Path) -> Path:
    """A config over a database with a keyed audit log and sealed cross-signing keys."""
    from bot.matrix.trust import key_sealer
    from bot.storage import Store, audit_key_from
    from bot.storage.migrate import upgrade

    config = tmp_path / "config.toml"
    config.write_text(
        f"""
[homeserver]
url = "http://127.0.0.1:8008"
user_id = "{USER}"
password_env = "LIAISON_PASSWORD"
pickle_key_env = "LIAISON_PICKLE_KEY"
[storage]
database_url = "{database_url}"
data_key_env = "LIAISON_DATA_KEY"
"""
    )
    upgrade(database_url)
    store = Store.from_url(database_url, audit_key_from(DATA_KEY))
    try:
        store.key_audit_log()
        private = json.dumps(
            {"user_id": USER, "master": "m", "self_signing": "s", "user_signing": "u"}
        )
        store.save_cross_signing(
            USER, "master-public", key_sealer(PICKLE_KEY).seal_text(private, USER), "t"
        )
    finally:
        store.close()
    return config


def _exports(config: Path) -> list[str]:
    from bot.storage import AuditRow, Store

    store = Store.from_url(load_config(config).database_url())
    try:
        with store.session() as session:
            return [
                r.action for r in session.query(AuditRow).filter(AuditRow.action == "keys.exported")
            ]
    finally:
        store.close()


def _export(config: Path, out: Path, **env: str) -> Result:
    return CliRunner(env=env).invoke(
        main, ["keys", "export-recovery", "--config", str(config), "--out", str(out)]
    )


def test_export_writes_the_file_and_one_audit_row(keyed: Path, tmp_path: Path) -> None:
    out = tmp_path / "keys.json"
    result = _export(keyed, out, LIAISON_DATA_KEY=DATA_KEY, LIAISON_PICKLE_KEY=PICKLE_KEY)
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    assert json.loads(out.read_text())["master_public"] == "master-public"
    assert _exports(keyed) == ["keys.exported"]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_export_without_the_data_key_writes_nothing(keyed: Path, tmp_path: Path) -> None:
    out = tmp_path / "keys.json"
    result = _export(keyed, out, LIAISON_DATA_KEY="", LIAISON_PICKLE_KEY=PICKLE_KEY)
    assert result.exit_code == 2 and "LIAISON_DATA_KEY" in result.output
    assert "Nothing was written" in result.output
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert _exports(keyed) == []


def test_export_with_another_data_key_writes_nothing(keyed: Path, tmp_path: Path) -> None:
    """A data key that is not the log's: refused before anything is written, and the log's
    key marker is left as it was (it still verifies with the right key)."""
    out = tmp_path / "keys.json"
    result = _export(
        keyed, out, LIAISON_DATA_KEY="another-data-key-" + "c" * 40, LIAISON_PICKLE_KEY=PICKLE_KEY
    )
    assert result.exit_code == 1 and "not the key of this audit log" in result.output
    assert not out.exists()
    assert _exports(keyed) == []
    verify = CliRunner(env={"LIAISON_DATA_KEY": DATA_KEY}).invoke(
        main, ["audit", "verify", "--config", str(keyed)]
    )
    assert verify.exit_code == 0, verify.output


def test_an_export_that_cannot_be_placed_is_not_audited(
    keyed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The file cannot be put in place (here: linking it to its name fails): no file, no
    temporary file, and the audit row is rolled back with it."""

    def refuse(src: str, dst: str) -> None:
        raise PermissionError(13, "Permission denied", dst)

    monkeypatch.setattr(os, "link", refuse)
    out = tmp_path / "keys.json"
    result = _export(keyed, out, LIAISON_DATA_KEY=DATA_KEY, LIAISON_PICKLE_KEY=PICKLE_KEY)
    assert result.exit_code == 2 and "cannot write" in result.output
    assert "Nothing was written" in result.output
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    assert _exports(keyed) == []


# -- a stolen access token -------------------------------------------------------------------


async def test_recovery_from_a_stolen_access_token(own_bot_env: BotEnv, synapse: DevServer) -> None:
    """As docs/keys.md says: stop the bot, log every session of the account out with the
    stolen token (its device and keys go with it on the homeserver), forget the stored
    login, start: the bot logs in with its password as a new device, cross-signed with its
    own keys, and the stolen token is dead."""
    env = own_bot_env
    assert env.bot is not None and env.bot.client is not None
    stolen, old_device = str(env.bot.client.access_token), str(env.bot.client.device_id)
    await env.stop()
    synapse.request("POST", "/_matrix/client/v3/logout/all", {}, token=stolen)
    with pytest.raises(DevServerError, match="M_UNKNOWN_TOKEN"):
        synapse.request("GET", "/_matrix/client/v3/account/whoami", token=stolen)

    result = cli("keys", "forget-login", "--config", str(env.config_path))
    assert result.exit_code == 0, result.output
    assert f"forgot the login of device {old_device}" in result.output
    again = cli("keys", "forget-login", "--config", str(env.config_path))
    assert again.exit_code == 0 and "no stored login" in again.output

    await env.start()
    assert env.bot is not None and env.bot.client is not None and env.store is not None
    new_device = env.bot.client.device_id
    assert new_device != old_device
    api = KeysAPI(synapse.base_url, env.admin.access_token)
    try:
        identity = check_identity(env.bot_user.user_id, await api.query([env.bot_user.user_id]))
    finally:
        await api.close()
    assert new_device in identity.signed_devices
    assert [e.detail for e in env.store.recent_audit(50) if e.action == "bot.login.forgotten"] == [
        {"device": old_device}
    ]


def test_an_export_to_a_file_system_without_hard_links_is_written_and_audited(
    keyed: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """FAT and exFAT (the USB stick the example writes to) refuse link() with EPERM: the
    file is renamed into place instead, whole, 0600, audited once; an existing file is
    still never replaced."""
    import errno

    def no_links(src: str, dst: str) -> None:
        raise PermissionError(errno.EPERM, "Operation not permitted", dst)

    monkeypatch.setattr(os, "link", no_links)
    out = tmp_path / "keys.json"
    result = _export(keyed, out, LIAISON_DATA_KEY=DATA_KEY, LIAISON_PICKLE_KEY=PICKLE_KEY)
    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(os.stat(out).st_mode) == 0o600
    assert json.loads(out.read_text())["master_public"] == "master-public"
    assert _exports(keyed) == ["keys.exported"]
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]
    again = _export(keyed, out, LIAISON_DATA_KEY=DATA_KEY, LIAISON_PICKLE_KEY=PICKLE_KEY)
    assert again.exit_code == 2 and "exists" in again.output
    assert _exports(keyed) == ["keys.exported"]


def test_forget_login_is_refused_while_a_bot_runs(keyed: Path, database_url: str) -> None:
    """ "Stop the bot first", enforced: a single bot holds the store's run lock while it
    runs; forgetting its login under it would look done while it goes on with the old
    device. Refused, naming why, and the stored login is kept."""
    from bot.storage import Store
    from bot.storage.runlock import hold_run_lock

    store = Store.from_url(database_url)
    try:
        store.save_bot_session(USER, "OLDDEVICE", "sealed-token")
    finally:
        store.close()
    lock = hold_run_lock(load_config(keyed).database_url())
    try:
        result = CliRunner(env={"LIAISON_DATA_KEY": DATA_KEY}).invoke(
            main, ["keys", "forget-login", "--config", str(keyed)]
        )
    finally:
        lock.release()
    assert result.exit_code == 1, result.output
    assert "another liaison-bot is running" in result.output
    assert "stop it first. Nothing was changed." in result.output
    store = Store.from_url(database_url)
    try:
        assert store.bot_session() is not None
    finally:
        store.close()
    done = CliRunner(env={"LIAISON_DATA_KEY": DATA_KEY}).invoke(
        main, ["keys", "forget-login", "--config", str(keyed)]
    )
    assert done.exit_code == 0 and "forgot the login of device OLDDEVICE" in done.output
