"""Release approval in `[[routes]]` (four eyes): the settings, their defaults, every error
naming its key, and `Config.release_policy`, the pure answer the service asks per route."""

from __future__ import annotations

import tomllib
from datetime import timedelta
from pathlib import Path

import pytest

from bot.config import (
    MAX_APPROVAL_TIMEOUT,
    ConfigError,
    ReleasePolicy,
    approval_level,
    load_config,
    parse_config,
)

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE = ROOT / "config.example.toml"

BASE = """
[homeserver]
url = "http://127.0.0.1:8008"
user_id = "@liaison:example.org"
password_env = "LIAISON_PASSWORD"

[bot]
officers = ["@officer:example.org", "@second:example.org"]

[[rooms]]
key = "deu"
name = "DEU"
label = "DEU GEHEIM"

[[rooms]]
key = "nato-s"
name = "NATO"
label = "NATO SECRET"

[[rooms]]
key = "eu-s"
name = "EU"
label = "EU SECRET"
"""


def route(body: str = "", source: str = "deu", to: str = '["nato-s", "eu-s"]') -> str:
    return f'\n[[routes]]\nfrom = "{source}"\nto = {to}\n{body}\n'


def errors_of(text: str) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text)
    return info.value.errors


def test_a_route_without_approval_has_no_policy() -> None:
    config = parse_config(BASE + route())
    assert config.routes[0].approval == "none"
    assert config.release_policy("deu", "nato-s") is None
    assert config.release_policy("nato-s", "deu") is None  # no such route at all


def test_second_officer_defaults_to_every_item_the_officers_and_four_hours() -> None:
    config = parse_config(BASE + route('approval = "second-officer"'))
    policy = config.release_policy("deu", "nato-s")
    assert policy == ReleasePolicy(
        None, frozenset({"@officer:example.org", "@second:example.org"}), timedelta(hours=4)
    )
    assert policy.holds(0) and policy.holds(4)
    assert config.release_policy("deu", "eu-s") == policy
    assert config.release_policy("deu", "fra-s") is None


def test_every_setting_is_read() -> None:
    config = parse_config(
        BASE
        + route(
            'approval = "second-officer"\napproval_from = "geheim"\n'
            'approvers = ["@chief:example.org", "@chief:example.org", "@deputy:example.org"]\n'
            'approval_timeout = "90m"'
        )
    )
    policy = config.release_policy("deu", "eu-s")
    assert policy is not None
    assert policy.from_rank == 3 and policy.holds(3) and policy.holds(4)
    assert not policy.holds(2)
    assert policy.approvers == {"@chief:example.org", "@deputy:example.org"}
    assert policy.timeout == timedelta(minutes=90)


def test_approval_from_accepts_the_level_with_or_without_its_trigraph() -> None:
    for written in ("GEHEIM", "DEU GEHEIM", "Geheim"):
        level = approval_level(written, "DEU")
        assert not isinstance(level, str) and level.rank == 3, written
    streng = approval_level("STRENG GEHEIM", "DEU")
    assert not isinstance(streng, str) and streng.rank == 4


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        (
            'approval = "second-officer"\napproval_from = "GEHIM"',
            'routes[0].approval_from: "GEHIM" is not a level of DEU (room deu): '
            "did you mean GEHEIM?",
        ),
        (
            # Another scheme's level is not the source room's, however high.
            'approval = "second-officer"\napproval_from = "NATO SECRET"',
            'routes[0].approval_from: "NATO SECRET" is not a level of DEU (room deu) (levels: ',
        ),
        (
            'approval = "second-officer"\napproval_from = "  "',
            "routes[0].approval_from: empty",
        ),
        (
            'approval_from = "GEHEIM"',
            'routes[0].approval_from: only with approval = "second-officer"',
        ),
        (
            'approvers = ["@a:example.org"]',
            'routes[0].approvers: only with approval = "second-officer"',
        ),
        (
            'approval = "none"\napproval_timeout = "1h"',
            'routes[0].approval_timeout: only with approval = "second-officer"',
        ),
        (
            'approval = "second-officer"\napprovers = []',
            "routes[0].approvers: empty: nobody could release",
        ),
        (
            'approval = "second-officer"\napprovers = ["bob"]',
            "routes[0].approvers[0]: bad Matrix user id 'bob'",
        ),
        (
            'approval = "second-officer"\napproval_timeout = "8d"',
            "routes[0].approval_timeout: must be above 0 and at most 7d",
        ),
        (
            'approval = "second-officer"\napproval_timeout = "0s"',
            "routes[0].approval_timeout: bad duration",
        ),
        (
            'approval = "second-officer"\napproval_timeout = "soon"',
            "routes[0].approval_timeout: bad duration",
        ),
        ('approval = "two-man"', "routes[0].approval: Input should be 'none' or 'second-officer'"),
        ('approval = "second-officer"\napprove = []', "routes[0].approve: unknown key 'approve'"),
    ],
)
def test_every_error_names_its_key(body: str, expected: str) -> None:
    errors = errors_of(BASE + route(body))
    assert any(e.startswith(expected) for e in errors), errors


def test_an_error_names_the_route_it_is_in() -> None:
    text = BASE + route() + route('approval = "second-officer"\napproval_from = "GEHIM"')
    assert errors_of(text) == [
        'routes[1].approval_from: "GEHIM" is not a level of DEU (room deu): did you mean GEHEIM?'
    ]


def test_the_level_is_one_of_the_source_room_s_scheme() -> None:
    """From the NATO room, NATO's levels are meant; DEU's GEHEIM is not one of them."""
    config = parse_config(
        BASE
        + route('approval = "second-officer"\napproval_from = "NATO SECRET"', "nato-s", '["eu-s"]')
    )
    policy = config.release_policy("nato-s", "eu-s")
    assert policy is not None and policy.from_rank == 3
    errors = errors_of(
        BASE + route('approval = "second-officer"\napproval_from = "GEHEIM"', "nato-s", '["eu-s"]')
    )
    assert errors == [
        'routes[0].approval_from: "GEHEIM" is not a level of NATO (room nato-s) (levels: '
        "COSMIC TOP SECRET, NATO SECRET, NATO CONFIDENTIAL, NATO RESTRICTED, NATO UNCLASSIFIED)"
    ]


def test_nobody_to_approve_is_an_error() -> None:
    no_officers = BASE.replace(
        'officers = ["@officer:example.org", "@second:example.org"]', "officers = []"
    )
    errors = errors_of(no_officers + route('approval = "second-officer"'))
    assert errors == [
        "routes[0].approvers: nobody could release this route's items: name the approvers "
        "here, or the officers in [bot] officers"
    ]
    # Named approvers need no officers.
    config = parse_config(
        no_officers + route('approval = "second-officer"\napprovers = ["@a:example.org"]')
    )
    assert config.release_policy("deu", "nato-s") is not None


def test_a_pair_in_two_routes_gets_the_strictest_settings() -> None:
    config = parse_config(
        BASE
        + route('approval = "second-officer"\napproval_from = "GEHEIM"\napproval_timeout = "2h"')
        + route(
            'approval = "second-officer"\napproval_from = "VS-VERTRAULICH"\n'
            'approvers = ["@officer:example.org", "@chief:example.org"]',
            to='["nato-s"]',
        )
        + route(to='["eu-s"]')  # no approval: the other route's still applies
    )
    nato = config.release_policy("deu", "nato-s")
    assert nato == ReleasePolicy(2, frozenset({"@officer:example.org"}), timedelta(hours=2))
    eu = config.release_policy("deu", "eu-s")
    assert eu is not None and eu.from_rank == 3 and len(eu.approvers) == 2
    # Every item (no approval_from) is stricter than any level.
    every = parse_config(
        BASE
        + route('approval = "second-officer"\napproval_from = "GEHEIM"')
        + route('approval = "second-officer"', to='["nato-s"]')
    )
    policy = every.release_policy("deu", "nato-s")
    assert policy is not None and policy.from_rank is None


def test_a_pair_in_two_routes_with_no_approver_in_common_is_an_error() -> None:
    errors = errors_of(
        BASE
        + route('approval = "second-officer"\napprovers = ["@a:example.org"]')
        + route('approval = "second-officer"\napprovers = ["@b:example.org"]', to='["eu-s"]')
    )
    assert errors == [
        "routes[1].approvers: deu->eu-s is also in routes[0] with approval; the stricter of "
        "the two applies, so only approvers both name may release, and they name none in common"
    ]


def test_the_timeout_limit_is_seven_days() -> None:
    config = parse_config(BASE + route('approval = "second-officer"\napproval_timeout = "7d"'))
    assert config.routes[0].approval_timeout == MAX_APPROVAL_TIMEOUT == timedelta(days=7)


def test_the_example_config_loads_and_shows_the_settings_in_both_copies() -> None:
    example = EXAMPLE.read_text(encoding="utf-8")
    assert example == (ROOT / "bot" / "data" / "config.example.toml").read_text(encoding="utf-8")
    config = load_config(EXAMPLE)
    assert config.release_policy("deu", "nato-s") is None  # commented out: today's behaviour
    # Uncommented, the block is a valid release approval of the example's route.
    block = example.split("# Release approval", 1)[1].split("\n\n", 1)[0]
    settings = "\n".join(
        line.lstrip("# ").split("  #", 1)[0].split(" #", 1)[0]
        for line in block.splitlines()[1:]
        if line.startswith("# ") and "=" in line
    )
    assert tomllib.loads(settings)["approval"] == "second-officer"
    text = example.replace('to = ["nato-s", "eu-s"]\n', f'to = ["nato-s", "eu-s"]\n{settings}\n')
    enabled = parse_config(text, base_dir=ROOT)
    policy = enabled.release_policy("deu", "nato-s")
    assert policy == ReleasePolicy(3, frozenset({"@officer2:example.org"}), timedelta(hours=4)), (
        settings
    )
