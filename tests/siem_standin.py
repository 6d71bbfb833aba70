"""The formatting half of the SIEM export (`bot.siem`: `Markings`, `Rendered`, `render`,
`syslog_severity`), for the transport's tests: the real one where `bot.siem` has it, else
the minimal stand-in below, until that branch lands. Only the tests use the stand-in; the
bot imports `bot.siem` itself (bot/siem/wiring.py).

The stand-in keeps to the agreed interface: `render(entry, fmt, *, installation, markings)`
gives an ASCII body (a JSON object for "ocsf", a CEF line for "cef"), the OCSF severity id,
the entry's time and its id; `syslog_severity` maps an OCSF severity id to syslog's.
"""

from __future__ import annotations

import importlib
import json
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any

import pytest

from bot.siem.exporter import Render, Rendering
from bot.storage import AuditEntry

_FORMATTING = importlib.import_module("bot.siem")
REAL = hasattr(_FORMATTING, "render")


class StandInMarkings(StrEnum):
    LEVEL = "level"
    FULL = "full"
    NONE = "none"


@dataclass(frozen=True)
class StandInRendered:
    body: str
    severity_id: int
    time: datetime
    audit_id: int


# OCSF severity_id: 1 informational … 6 fatal; the stand-in rates a few actions higher.
_SEVERITY = {"spillage": 4, "siem.unreachable": 3, "siem.chain-broken": 4}


def _cef(value: str) -> str:
    return value.replace("\\", "\\\\").replace("=", "\\=").replace("|", "\\|")


def standin_render(
    entry: AuditEntry, fmt: str, *, installation: str, markings: Any
) -> StandInRendered:
    severity = _SEVERITY.get(entry.action, 1)
    if fmt == "ocsf":
        body = json.dumps(
            {
                "audit_id": entry.id,
                "time": entry.at.isoformat(),
                "actor": entry.actor,
                "action": entry.action,
                "subject": entry.subject,
                "detail": entry.detail,
                "installation": installation,
                "severity_id": severity,
            },
            ensure_ascii=True,
            sort_keys=True,
            separators=(",", ":"),
        )
    elif fmt == "cef":
        detail = json.dumps(entry.detail, ensure_ascii=True, sort_keys=True)
        body = (
            f"CEF:0|liaison-bot|liaison-bot|1|{_cef(entry.action)}|{_cef(entry.action)}|"
            f"{severity}|externalId={entry.id} suser={_cef(entry.actor)} "
            f"msg={_cef(detail)} deviceExternalId={installation}"
        )
    else:
        raise ValueError(f"unknown format {fmt!r}")
    return StandInRendered(body, severity, entry.at, entry.id)


def standin_syslog_severity(ocsf_severity_id: int) -> int:
    return {1: 6, 2: 5, 3: 4, 4: 3, 5: 2, 6: 0}.get(ocsf_severity_id, 5)


render: Callable[..., Any] = getattr(_FORMATTING, "render", standin_render)
syslog_severity: Callable[[int], int] = getattr(
    _FORMATTING, "syslog_severity", standin_syslog_severity
)
Markings: Any = getattr(_FORMATTING, "Markings", StandInMarkings)


def bound(fmt: str = "ocsf", markings: str = "level") -> Render:
    """`render` with the format and markings bound, as bot/siem/wiring.py binds it."""
    marked = Markings(markings)

    def call(entry: AuditEntry, installation: str) -> Rendering:
        rendered: Rendering = render(entry, fmt, installation=installation, markings=marked)
        return rendered

    return call


def install(monkeypatch: pytest.MonkeyPatch) -> None:
    """Give `bot.siem` the stand-in's names where it lacks them, for code under test that
    imports them (bot/siem/wiring.py, the CLI's `audit export`); nothing once it has them."""
    for name, value in (
        ("Markings", StandInMarkings),
        ("Rendered", StandInRendered),
        ("render", standin_render),
        ("syslog_severity", standin_syslog_severity),
    ):
        if not hasattr(_FORMATTING, name):
            monkeypatch.setattr(_FORMATTING, name, value, raising=False)
