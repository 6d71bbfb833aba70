"""`[siem]`: defaults, paths from the config's folder, and every bad value refused at start
with its key (files must exist, be readable and load as PEM; a certificate needs its key)."""

from __future__ import annotations

import os
from datetime import timedelta
from pathlib import Path

import pytest

from bot.config import ConfigError, load_config, parse_config
from bot.devtools.testca import TestCA

MINIMAL = """
[homeserver]
url = "http://127.0.0.1:8008"
user_id = "@liaison:example.org"
password_env = "LIAISON_PASSWORD"
"""


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A folder with ca.pem, client.pem/.key (and a junk file), as a config would name them."""
    folder = tmp_path_factory.mktemp("siem-config")
    ca = TestCA.create(folder / "ca")
    ca.issue("client", folder)
    (folder / "ca.pem").write_bytes(ca.ca_path.read_bytes())
    (folder / "junk.pem").write_text("not a certificate\n")
    return folder


def errors_of(text: str, base: Path) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, base_dir=base)
    return info.value.errors


def test_defaults(pki: Path) -> None:
    config = parse_config(MINIMAL + '[siem]\ntarget = "siem.example.org:6514"\n', base_dir=pki)
    assert config.siem is not None
    s = config.siem
    assert (s.host, s.port, s.tls_server_name) == ("siem.example.org", 6514, "siem.example.org")
    assert (s.format, s.batch, s.start, s.markings) == ("ocsf", 200, "beginning", "level")
    assert s.retry_max == timedelta(seconds=60) and s.alert_after == timedelta(minutes=10)
    assert s.ca_file is None and s.cert_file is None and s.hostname is None
    assert parse_config(MINIMAL).siem is None  # optional


def test_a_full_section_with_paths_from_the_config_folder(pki: Path) -> None:
    path = pki / "bot.toml"
    path.write_text(
        MINIMAL
        + """[siem]
target = "[2001:db8::5]:6514"
server_name = "siem.example.org"
ca_file = "ca.pem"
cert_file = "client.pem"
key_file = "client.key"
format = "cef"
batch = 50
retry_max = "30s"
alert_after = "5m"
start = "now"
markings = "none"
hostname = "liaison-relay-1"
"""
    )
    config = load_config(path)
    assert config.siem is not None
    assert (config.siem.host, config.siem.port) == ("2001:db8::5", 6514)
    assert config.path(config.siem.ca_file or "") == pki / "ca.pem"
    assert config.siem.tls_server_name == "siem.example.org"
    assert config.siem.retry_max == timedelta(seconds=30)


@pytest.mark.parametrize(
    ("body", "error"),
    [
        ('target = "siem.example.org"', "siem.target: bad target 'siem.example.org'"),
        ('target = "siem.example.org:0"', "siem.target: bad target"),
        ('target = "siem.example.org:70000"', "siem.target: bad target"),
        ('target = ":6514"', "siem.target: bad target"),
        ('target = "siem example:6514"', "siem.target: bad target"),
        ("target = 6514", "siem.target: Input should be a valid string"),
        ('server_name = "bad name"', "siem.server_name: bad server name 'bad name'"),
        ('format = "leef"', "siem.format: Input should be 'ocsf' or 'cef'"),
        ("batch = 0", "siem.batch: Input should be greater than or equal to 1"),
        ("batch = 10001", "siem.batch: Input should be less than or equal to 10000"),
        ("batch = true", "siem.batch: Input should be a valid integer"),
        ('batch = "200"', "siem.batch: Input should be a valid integer"),
        ('retry_max = "0.1s"', "siem.retry_max: must be between 0.2s"),
        ('retry_max = "2h"', "siem.retry_max: must be between 0.2s"),
        ('retry_max = "soon"', "siem.retry_max: bad duration 'soon'"),
        ('alert_after = "0s"', "siem.alert_after: bad duration '0s': must be longer than zero"),
        ('start = "yesterday"', "siem.start: Input should be 'beginning' or 'now'"),
        ('markings = "some"', "siem.markings: Input should be 'level', 'full' or 'none'"),
        ('hostname = "has space"', "siem.hostname: bad hostname 'has space'"),
        ('hostname = "hôte"', "siem.hostname: bad hostname"),
        ('ca_file = "missing.pem"', "siem.ca_file: no such file: "),
        ('ca_file = "junk.pem"', "siem.ca_file: "),
        ('ca_file = "."', "siem.ca_file: "),
        ('ca_file = "  "', "siem.ca_file: empty"),
        ('cert_file = "client.pem"', "siem: key_file: required with cert_file"),
        ('key_file = "client.key"', "siem: cert_file: required with key_file"),
        (
            'cert_file = "ca.pem"\nkey_file = "client.key"',
            "siem: cert_file, key_file: do not load as a certificate and its private key",
        ),
        ('cert_file = "client.pem"\nkey_file = "gone.key"', "siem.key_file: no such file"),
        ("colour = 1", "siem.colour: unknown key 'colour'"),
    ],
)
def test_each_bad_value_is_refused_naming_its_key(pki: Path, body: str, error: str) -> None:
    target = "" if body.startswith("target") else 'target = "siem.example.org:6514"\n'
    errors = errors_of(MINIMAL + "[siem]\n" + target + body + "\n", pki)
    assert any(e.startswith(error) for e in errors), errors


def test_a_missing_target_is_named(pki: Path) -> None:
    assert errors_of(MINIMAL + '[siem]\nformat = "cef"\n', pki) == [
        "siem.target: required key is missing"
    ]


def test_the_folder_and_not_junk_is_reported_for_a_folder(pki: Path) -> None:
    [error] = errors_of(MINIMAL + '[siem]\ntarget = "s:1"\nca_file = "."\n', pki)
    assert "is a folder, not a file" in error


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads any file: no unreadable file to make")
def test_an_unreadable_file_is_refused(pki: Path, tmp_path: Path) -> None:
    locked = tmp_path / "locked.pem"
    locked.write_bytes((pki / "ca.pem").read_bytes())
    locked.chmod(0)
    [error] = errors_of(MINIMAL + f'[siem]\ntarget = "s:1"\nca_file = "{locked}"\n', pki)
    assert error.startswith("siem.ca_file: cannot read") and "ermission" in error


def test_an_encrypted_key_is_refused_rather_than_prompted_for(pki: Path, tmp_path: Path) -> None:
    from cryptography.hazmat.primitives import serialization

    private = serialization.load_pem_private_key((pki / "client.key").read_bytes(), password=None)
    locked = tmp_path / "locked.key"
    locked.write_bytes(
        private.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"secret"),
        )
    )
    [error] = errors_of(
        MINIMAL + f'[siem]\ntarget = "s:1"\ncert_file = "client.pem"\nkey_file = "{locked}"\n',
        pki,
    )
    assert "an encrypted key is refused" in error
