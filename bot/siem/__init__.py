"""Audit rows rendered for a SIEM (issue 27): OCSF 1.5.0 JSON, or a CEF line.

`render` is what the transport calls, once per audit row, in the order of the chain. It
does no I/O. What may leave, and in what form, is decided in `bot.siem.ocsf` (per action)
and `bot.siem.specs` (value shapes, markings); `bot.siem.cef` only re-encodes the OCSF
event, so both formats carry the same fields.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Literal

from bot.siem import cef, ocsf
from bot.siem.ocsf import syslog_severity
from bot.siem.specs import DEFAULT_MARKINGS, Markings
from bot.storage.records import AuditEntry

Format = Literal["ocsf", "cef"]


@dataclass(frozen=True, slots=True)
class Rendered:
    """One audit row as a SIEM receives it. `body`: ASCII only; `severity_id`: OCSF's
    (0-6), for the transport's own priority (`syslog_severity`); `time`: the row's (UTC);
    `audit_id`: the row's id, for the transport's acknowledged position in the chain."""

    body: str
    severity_id: int
    time: datetime
    audit_id: int


def render(entry: AuditEntry, fmt: Format, *, installation: str, markings: Markings) -> Rendered:
    """The row as an OCSF event (compact JSON) or a CEF line. ValueError for an unknown
    format or an installation id that would make `metadata.uid` ambiguous."""
    event = ocsf.event(entry, installation=installation, markings=markings)
    if fmt == "ocsf":
        body = ocsf.dumps(event)
    elif fmt == "cef":
        body = cef.line(event)
    else:
        raise ValueError(f"unknown SIEM format {fmt!r}: ocsf or cef")
    if not body.isascii():  # both encoders escape; this guards the promise itself
        raise AssertionError("a rendered SIEM body is not ASCII")
    at = entry.at if entry.at.tzinfo is not None else entry.at.replace(tzinfo=UTC)
    return Rendered(body, event["severity_id"], at.astimezone(UTC), entry.id)


def formatter(fmt: Format, markings: str) -> Callable[[AuditEntry, str], Rendered]:
    """`render` with the format and markings bound: (entry, installation) -> event. Here,
    not beside the transport, so `audit export` renders without loading the bot's runtime
    (aiohttp, metrics), which a gate-only install lacks."""
    marked = Markings(markings)

    def bound(entry: AuditEntry, installation: str) -> Rendered:
        return render(entry, fmt, installation=installation, markings=marked)

    return bound


__all__ = [
    "DEFAULT_MARKINGS",
    "Format",
    "Markings",
    "Rendered",
    "formatter",
    "render",
    "syslog_severity",
]
