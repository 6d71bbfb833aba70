"""RFC 5424 messages and RFC 5425 frames (bot/siem/syslog.py): what the SIEM exporter
writes, parsed back field by field; and what they refuse."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone

import pytest
from hypothesis import given
from hypothesis import strategies as st

from bot.siem.syslog import (
    FACILITY_AUTHPRIV,
    Origin,
    SyslogError,
    escape_param_value,
    frame,
    message,
    msgid_of,
    sd_element,
    timestamp,
)

ORIGIN = Origin("relay-1.example.org", "4242", "0.1.0")
AT = datetime(2026, 12, 8, 10, 30, 5, tzinfo=UTC)
# RFC 5424 §6 in one expression: PRI VERSION SP TIMESTAMP SP HOSTNAME SP APP-NAME SP PROCID
# SP MSGID SP STRUCTURED-DATA [SP MSG]; header fields PRINTUSASCII of their lengths.
HEADER = re.compile(
    rb"<(?P<pri>\d{1,3})>1 (?P<ts>\S+) (?P<host>[\x21-\x7e]{1,255}) (?P<app>[\x21-\x7e]{1,48}) "
    rb"(?P<procid>[\x21-\x7e]{1,128}) (?P<msgid>[\x21-\x7e]{1,32}) "
    rb"(?P<sd>\[origin software=\"liaison-bot\" swVersion=\"[^\"]+\"\]) (?P<msg>.*)\Z",
    re.DOTALL,
)


def unframe(data: bytes) -> list[bytes]:
    """Split octet-counted frames as a receiver does: the count, a space, that many octets."""
    out = []
    while data:
        count, _, rest = data.partition(b" ")
        assert count.isdigit() and not count.startswith(b"0"), data[:20]
        out.append(rest[: int(count)])
        data = rest[int(count) :]
    return out


@pytest.mark.parametrize("severity", range(8))
def test_pri_is_authpriv_times_eight_plus_the_severity(severity: int) -> None:
    built = message(severity=severity, at=AT, msgid="x", body="b", origin=ORIGIN)
    found = HEADER.match(built)
    assert found is not None, built
    assert int(found["pri"]) == FACILITY_AUTHPRIV * 8 + severity == 80 + severity


def test_every_header_field_is_where_rfc_5424_puts_it() -> None:
    built = message(severity=6, at=AT, msgid="clearance.grant", body='{"a":1} x=y', origin=ORIGIN)
    found = HEADER.match(built)
    assert found is not None, built
    assert found["ts"] == b"2026-12-08T10:30:05Z"
    assert (found["host"], found["app"], found["procid"]) == (
        b"relay-1.example.org",
        b"liaison-bot",
        b"4242",
    )
    assert found["msgid"] == b"clearance.grant"
    assert found["sd"] == b'[origin software="liaison-bot" swVersion="0.1.0"]'
    assert found["msg"] == b'{"a":1} x=y'
    assert not built.startswith(b"\xef\xbb\xbf") and b"\xef\xbb\xbf" not in built  # no BOM


def test_the_frame_length_is_the_message_byte_count() -> None:
    messages = [
        message(severity=s, at=AT, msgid=f"m{s}", body="x" * (s * 997 + 1), origin=ORIGIN)
        for s in range(8)
    ]
    framed = b"".join(frame(m) for m in messages)
    assert unframe(framed) == messages
    for m in messages:
        assert frame(m).split(b" ", 1)[0] == str(len(m)).encode()


@given(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), min_size=1))
def test_any_printable_ascii_body_frames_and_reads_back(body: str) -> None:
    built = message(severity=5, at=AT, msgid="x", body=body, origin=ORIGIN)
    [again] = unframe(frame(built))
    found = HEADER.match(again)
    assert found is not None and found["msg"] == body.encode("ascii")


def test_timestamps_are_utc_with_a_fraction_only_when_there_is_one() -> None:
    assert timestamp(AT) == "2026-12-08T10:30:05Z"
    assert timestamp(AT.replace(microsecond=120000)) == "2026-12-08T10:30:05.12Z"
    assert timestamp(AT.replace(microsecond=1)) == "2026-12-08T10:30:05.000001Z"
    berlin = AT.astimezone(timezone(timedelta(hours=1)))
    assert timestamp(berlin) == "2026-12-08T10:30:05Z"
    assert timestamp(datetime(99, 1, 2, tzinfo=UTC)) == "0099-01-02T00:00:00Z"
    with pytest.raises(SyslogError, match="naive"):
        timestamp(datetime(2026, 1, 1))


@pytest.mark.parametrize(
    ("body", "why"),
    [
        ("", "empty"),
        ("line one\nline two", "0x000a at offset 8"),
        ("tab\there", "0x0009 at offset 3"),
        ("Grüße", "0x00fc at offset 2"),
        ("\ufeff{}", "0xfeff at offset 0"),
        ("nul\x00", "0x0000 at offset 3"),
        ("del\x7f", "0x007f at offset 3"),
    ],
)
def test_a_body_that_is_not_printable_ascii_on_one_line_is_refused(body: str, why: str) -> None:
    with pytest.raises(SyslogError, match=f"MSG: .*{why}"):
        message(severity=6, at=AT, msgid="x", body=body, origin=ORIGIN)


@pytest.mark.parametrize("severity", [-1, 8, 99])
def test_a_severity_outside_syslog_is_refused(severity: int) -> None:
    with pytest.raises(SyslogError, match="severity"):
        message(severity=severity, at=AT, msgid="x", body="b", origin=ORIGIN)


@pytest.mark.parametrize(
    ("field", "origin"),
    [
        ("HOSTNAME", lambda: Origin("has space", "1", "1")),
        ("HOSTNAME", lambda: Origin("h" * 256, "1", "1")),
        ("HOSTNAME", lambda: Origin("hôte", "1", "1")),
        ("PROCID", lambda: Origin("h", "", "1")),
        ("PROCID", lambda: Origin("h", "p" * 129, "1")),
        ("swVersion", lambda: Origin("h", "1", "")),
        ("swVersion", lambda: Origin("h", "1", "v" * 33)),
    ],
)
def test_header_fields_out_of_rfc_5424_are_refused(field: str, origin: object) -> None:
    assert callable(origin)
    with pytest.raises(SyslogError, match=field):
        origin()


def test_the_msgid_is_the_action_made_printable_and_cut_to_32() -> None:
    assert msgid_of("clearance.grant") == "clearance.grant"
    assert msgid_of("a b\tc") == "a_b_c"
    assert msgid_of("x" * 40) == "x" * 32
    assert msgid_of("") == "-"
    assert msgid_of("spillage.é") == "spillage._"
    with pytest.raises(SyslogError, match="MSGID"):
        message(severity=6, at=AT, msgid="has space", body="b", origin=ORIGIN)
    with pytest.raises(SyslogError, match="MSGID"):
        message(severity=6, at=AT, msgid="m" * 33, body="b", origin=ORIGIN)


def test_structured_data_escapes_quote_backslash_and_bracket() -> None:
    assert escape_param_value('a"b\\c]d') == 'a\\"b\\\\c\\]d'
    assert sd_element("x", {"v": 'say "hi" \\ [ok]'}) == '[x v="say \\"hi\\" \\\\ [ok\\]"]'
    assert sd_element("origin", {}) == "[origin]"
    # a backslash is escaped once, before the others (no double escaping of their escapes)
    assert escape_param_value("\\]") == "\\\\\\]"


@pytest.mark.parametrize("name", ["", "a=b", "a b", "a]b", 'a"b', "n" * 33, "é"])
def test_bad_sd_names_are_refused(name: str) -> None:
    with pytest.raises(SyslogError, match="SD-NAME"):
        sd_element(name, {})
    with pytest.raises(SyslogError, match="SD-NAME"):
        sd_element("x", {name: "v"})


def test_the_local_origin_names_this_process() -> None:
    import os
    import socket

    here = Origin.local()
    assert here.procid == str(os.getpid())
    assert here.hostname in (socket.gethostname(), "-")
    assert Origin.local("siem-relay.example.org").hostname == "siem-relay.example.org"
    assert Origin.local("not a host name").hostname == "-"  # RFC 5424's "unknown"
