"""RFC 5424 syslog messages in RFC 5425's octet-counted frames: what the SIEM exporter
writes to the TLS connection.

Our own, not `logging.handlers.SysLogHandler`: that writes RFC 3164 (no structured data, no
version, local time) and frames by newline, which a body containing one would split.

A message (RFC 5424 §6):

    <PRI>1 TIMESTAMP HOSTNAME APP-NAME PROCID MSGID [origin software="liaison-bot"
      swVersion="…"] MSG                                     (one line)

- PRI = facility × 8 + severity; the facility is authpriv (10): security and authorisation
  messages, which a SOC collects and which a relay's local files keep private;
- TIMESTAMP is the audit row's time, in UTC (`Z`), with a fraction only when it has one (at
  most 6 digits);
- HOSTNAME, APP-NAME, PROCID and MSGID are PRINTUSASCII (33-126) of at most 255, 48, 128 and
  32 characters; MSGID is the audit action, so a SIEM can route on it without parsing the
  body (cut to 32 characters, the whole action is in the body);
- the `origin` element (registered by RFC 5424 §7.2) names the software and its version;
- MSG is the rendered event: printable ASCII only, so no BOM (that announces UTF-8), no line
  break (a receiver that writes one message a line stays one line a message) and nothing a
  receiver's charset handling could change.

A frame is `MSG-LEN SP SYSLOG-MSG` (RFC 5425 §4.3), MSG-LEN the message's length in octets.
A field that breaks these rules raises `SyslogError`, naming it: nothing is cut or replaced
in silence, except the MSGID (see `msgid_of`).
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import metadata

FACILITY_AUTHPRIV = 10
APP_NAME = "liaison-bot"
NILVALUE = "-"
# RFC 5424 §6: the lengths of the header fields.
HOSTNAME_MAX, APP_NAME_MAX, PROCID_MAX, MSGID_MAX = 255, 48, 128, 32
SD_NAME_MAX = 32
# The origin element's parameters (RFC 5424 §7.2): software 1-48 characters, swVersion 1-32.
SOFTWARE_MAX, SW_VERSION_MAX = 48, 32
_PRINTUSASCII = re.compile(r"[\x21-\x7e]+\Z")
_SD_NAME = re.compile(r"[\x21-\x7e]+\Z")
_SD_NAME_FORBIDDEN = frozenset('= ]"')
_BODY = re.compile(r"[\x20-\x7e]+\Z")


class SyslogError(ValueError):
    """A value RFC 5424 (or our one-line, ASCII-only body) does not allow; says which."""


def _printusascii(value: str, field: str, limit: int) -> str:
    if not value or len(value) > limit or not _PRINTUSASCII.match(value):
        raise SyslogError(
            f"{field}: {value!r} is not 1-{limit} printable ASCII characters without spaces"
        )
    return value


def msgid_of(action: str) -> str:
    """An audit action as a MSGID: each character outside PRINTUSASCII becomes `_` and it is
    cut to 32 characters (`-` for an empty one). Why not refuse: an action is the bot's own
    constant, and the whole of it is in the body; refusing would stop the export on it."""
    cleaned = "".join(c if 33 <= ord(c) <= 126 else "_" for c in action)[:MSGID_MAX]
    return cleaned or NILVALUE


def escape_param_value(value: str) -> str:
    """An SD-PARAM value with `\\`, `"` and `]` escaped by a backslash (RFC 5424 §6.3.3):
    the three characters that would otherwise end the value or the element."""
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("]", "\\]")


def sd_element(sd_id: str, params: Mapping[str, str]) -> str:
    """`[SD-ID NAME="value" …]`; names are 1-32 PRINTUSASCII but `=`, space, `]` and `"`."""
    for name in (sd_id, *params):
        if (
            not name
            or len(name) > SD_NAME_MAX
            or not _SD_NAME.match(name)
            or _SD_NAME_FORBIDDEN & set(name)
        ):
            raise SyslogError(f"structured data: {name!r} is not a valid SD-NAME")
    for name, value in params.items():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            raise SyslogError(f"structured data: {name}: not valid UTF-8") from None
    inner = "".join(f' {name}="{escape_param_value(value)}"' for name, value in params.items())
    return f"[{sd_id}{inner}]"


def software_version() -> str:
    """This package's version, for the origin element ("unknown" when it runs uninstalled
    from a checkout, which has no metadata)."""
    try:
        return metadata.version(APP_NAME)
    except metadata.PackageNotFoundError:
        return "unknown"


@dataclass(frozen=True)
class Origin:
    """What every message of this process says of where it comes from."""

    hostname: str
    procid: str
    sw_version: str

    def __post_init__(self) -> None:
        if self.hostname != NILVALUE:
            _printusascii(self.hostname, "HOSTNAME", HOSTNAME_MAX)
        _printusascii(self.procid, "PROCID", PROCID_MAX)
        if not self.sw_version or len(self.sw_version) > SW_VERSION_MAX:
            raise SyslogError(f"swVersion: {self.sw_version!r} is not 1-{SW_VERSION_MAX} chars")

    @classmethod
    def local(cls, hostname: str | None = None) -> Origin:
        """This process: `hostname` (from the config) or the host's name, the pid, the
        package's version. A host name syslog cannot carry is sent as `-` (RFC 5424's
        "unknown"), not refused: the config's own `hostname` is the way to name it."""
        name = hostname or socket.gethostname()
        if not (0 < len(name) <= HOSTNAME_MAX and _PRINTUSASCII.match(name)):
            name = NILVALUE
        return cls(name, str(os.getpid()), software_version()[:SW_VERSION_MAX])

    @property
    def structured_data(self) -> str:
        return sd_element("origin", {"software": APP_NAME, "swVersion": self.sw_version})


def timestamp(at: datetime) -> str:
    """RFC 5424 TIMESTAMP: RFC 3339 in UTC, four-digit year, a fraction (at most six
    digits) only when there is one."""
    if at.tzinfo is None:
        raise SyslogError("TIMESTAMP: a naive datetime (no timezone); give UTC")
    t = at.astimezone(UTC)
    fraction = f".{t.microsecond:06d}".rstrip("0") if t.microsecond else ""
    return (
        f"{t.year:04d}-{t.month:02d}-{t.day:02d}T{t.hour:02d}:{t.minute:02d}:{t.second:02d}"
        f"{fraction}Z"
    )


def message(*, severity: int, at: datetime, msgid: str, body: str, origin: Origin) -> bytes:
    """One RFC 5424 message, facility authpriv; see the module docstring for each field."""
    if not 0 <= severity <= 7:
        raise SyslogError(f"severity: {severity} is not a syslog severity (0-7)")
    if msgid != NILVALUE:
        _printusascii(msgid, "MSGID", MSGID_MAX)
    if not body or not _BODY.match(body):
        bad = next((i for i, c in enumerate(body) if not 32 <= ord(c) <= 126), None)
        where = f"character {ord(body[bad]):#06x} at offset {bad}" if bad is not None else "empty"
        raise SyslogError(f"MSG: must be printable ASCII on one line ({where})")
    pri = FACILITY_AUTHPRIV * 8 + severity
    header = (
        f"<{pri}>1 {timestamp(at)} {origin.hostname} {APP_NAME} {origin.procid} {msgid} "
        f"{origin.structured_data} "
    )
    return (header + body).encode("ascii")


def frame(syslog_message: bytes) -> bytes:
    """RFC 5425 octet counting: the length in octets, a space, the message."""
    return b"%d %s" % (len(syslog_message), syslog_message)
