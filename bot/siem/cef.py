"""The same event as one ArcSight CEF:0 line, for SIEMs that take CEF (ArcSight, Sentinel).

Made from the OCSF event (bot/siem/ocsf.py), never from the audit row: it carries exactly
the fields the OCSF export allowed, so the two formats cannot disagree on what leaves.

    CEF:0|Vendor|Product|Version|Signature ID|Name|Severity|Extension

Escaping follows the CEF specification (Micro Focus, "Implementing ArcSight CEF", rev. 25):
in the header `\\` and `|` are escaped with a backslash; in extension values `\\` and `=`
are, and line breaks become `\\n` / `\\r`. The line is ASCII: any other character (or a
control character) is written as the text `\\uXXXX` (JSON's form), whose backslash is then
escaped like any other, so a receiver reads back exactly the JSON escape.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

# OCSF severity_id (0-6) -> CEF severity (0-10: 0-3 low, 4-6 medium, 7-8 high, 9-10 very
# high). Other (99) and anything unknown: 5, the middle, neither dismissed nor alarming.
CEF_SEVERITY = {0: 0, 1: 1, 2: 3, 3: 5, 4: 7, 5: 9, 6: 10}

# Custom string fields and their labels, in the order they are written.
CUSTOM = (
    ("cs1", "auditHash"),
    ("cs2", "auditPrevHash"),
    ("cs3", "detail"),
    ("cs4", "subject"),
    ("cs5", "ocsfTypeUid"),
    ("cs6", "eventUid"),
)


def cef_severity(ocsf_severity_id: int) -> int:
    return CEF_SEVERITY.get(ocsf_severity_id, 5)


def line(ev: Mapping[str, Any]) -> str:
    """The CEF line of an OCSF event built by `bot.siem.ocsf.event`."""
    meta = ev["metadata"]
    product = meta["product"]
    header = [
        "CEF:0",
        _header(product["vendor_name"]),
        _header(product["name"]),
        _header(product["version"]),
        _header(meta["event_code"]),
        _header(ev["message"]),
        str(cef_severity(ev["severity_id"])),
    ]
    unmapped = ev["unmapped"]
    audit = unmapped["audit"]
    detail = unmapped["detail"]
    fields: list[tuple[str, Any]] = [
        ("rt", ev["time"]),
        ("externalId", audit["id"]),
        ("act", meta["event_code"]),
        ("cat", ev["class_name"]),
    ]
    if "status" in ev:
        fields.append(("outcome", ev["status"]))
    if "status_code" in ev:
        fields.append(("reason", ev["status_code"]))
    actor = (ev.get("actor") or {}).get("user") or {}
    suser = actor.get("uid") or actor.get("name")
    if suser is not None:
        fields.append(("suser", suser))
    elif "app_name" in (ev.get("actor") or {}):
        fields.append(("sproc", ev["actor"]["app_name"]))
    target = ev.get("user") or {}
    if "uid" in target:
        fields.append(("duser", target["uid"]))
    values = {
        "cs1": audit["hash"],
        "cs2": audit["prev_hash"],
        "cs3": json.dumps(detail, ensure_ascii=True, separators=(",", ":"), sort_keys=True)
        if detail
        else None,
        "cs4": unmapped.get("subject"),
        "cs5": ev["type_uid"],
        "cs6": meta["uid"],
    }
    for key, label in CUSTOM:
        if values[key] is not None:
            fields += [(f"{key}Label", label), (key, values[key])]
    extension = " ".join(f"{key}={_value(value)}" for key, value in fields)
    return "|".join([*header, extension])


def _ascii(text: str) -> str:
    r"""Printable ASCII kept (and CR/LF, escaped later); everything else as `\uXXXX`."""
    out = []
    for ch in text:
        if " " <= ch <= "~" or ch in "\r\n":
            out.append(ch)
            continue
        code = ord(ch)
        if code > 0xFFFF:  # as JSON writes it: a surrogate pair
            code -= 0x10000
            out.append(f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}")
        else:
            out.append(f"\\u{code:04x}")
    return "".join(out)


def _header(value: Any) -> str:
    text = _ascii(str(value)).replace("\\", "\\\\").replace("|", "\\|")
    return text.replace("\r", " ").replace("\n", " ")  # the header has no escape for these


def _value(value: Any) -> str:
    text = _ascii(str(value))
    text = text.replace("\\", "\\\\").replace("=", "\\=")
    return text.replace("\r", "\\r").replace("\n", "\\n")
