"""Which homeservers a managed room admits: the config, the rule and the server ACL."""

from __future__ import annotations

from datetime import date

import pytest

from bot.config import Config, ConfigError, parse_config
from bot.services.rooms import Desired, server_acl
from policy import Clearance, make_room, may_join, parse_marking, server_of

BASE = """
[homeserver]
url = "http://127.0.0.1:8008"
user_id = "@liaison:deu.example"
password_env = "LIAISON_PASSWORD"

[[rooms]]
key = "nato-s"
name = "NATO SECRET liaison"
label = "NATO SECRET"
"""


def _config(extra: str = "") -> Config:
    return parse_config(BASE + extra)


def test_a_room_admits_the_bots_own_server_by_default() -> None:
    config = _config()
    room = config.rooms[0].policy_room(config.home_server)
    assert config.home_server == "deu.example"
    assert room.servers == frozenset({"deu.example"})


def test_servers_are_read_and_must_keep_the_bot() -> None:
    config = _config('servers = ["nato.example:8448", "deu.example", "[::1]:8448"]\n')
    assert config.rooms[0].servers == ["[::1]:8448", "deu.example", "nato.example:8448"]
    with pytest.raises(ConfigError) as info:
        _config('servers = ["nato.example"]\n')
    assert any(
        "rooms[0].servers: must include the bot's own homeserver 'deu.example'" in e
        for e in info.value.errors
    )
    with pytest.raises(ConfigError) as info:
        _config('servers = ["bad server/"]\n')
    assert any("bad server name 'bad server/'" in e for e in info.value.errors)
    with pytest.raises(ConfigError) as info:
        _config("servers = []\n")
    assert any("at least one homeserver" in e for e in info.value.errors)


def test_the_rule_names_a_server_the_room_does_not_admit() -> None:
    room = make_room(parse_marking("NATO SECRET"), None, ["deu.example", "nato.example"])
    level = parse_marking("NATO SECRET").level
    near = Clearance("@a:nato.example", "POL", {"NATO": level})
    far = Clearance("@b:third.example", "POL", {"NATO": level})
    today = date(2026, 12, 3)
    assert may_join(near, room, today)
    refused = may_join(far, room, today)
    assert not refused
    assert (
        "homeserver third.example is not allowed in the room (allowed: deu.example, nato.example)"
        in refused.reason
    )
    assert server_of("@x:127.0.0.1:8448") == "127.0.0.1:8448"


def test_server_acl_names_hosts_and_denies_ip_literals_unless_configured() -> None:
    assert server_acl(["deu.example", "nato.example:8448"]) == {
        "allow": ["deu.example", "nato.example", "nato.example:8448"],
        "deny": [],
        "allow_ip_literals": False,
    }
    assert server_acl(["127.0.0.1:8448", "127.0.0.1:9448"])["allow_ip_literals"] is True
    assert server_acl(["[::1]:8448"])["allow"] == ["[::1]", "[::1]:8448"]
    room = make_room(parse_marking("NATO SECRET"), None, ["deu.example"])
    assert Desired.of("x", room).events[("m.room.server_acl", "")]["allow"] == ["deu.example"]
    assert ("m.room.server_acl", "") not in Desired.of(
        "x", make_room(parse_marking("NATO SECRET"))
    ).events
