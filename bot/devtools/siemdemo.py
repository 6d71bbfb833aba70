"""`liaison-bot demo --siem`: the demo's audit log exported to a local, real rsyslog over TLS
(bot/devtools/rsyslog.py, a certificate from bot/devtools/testca.py), and checked after the
scenario.

The check, once the exporter has caught up (its cursor at the newest audit row):

- every line rsyslog wrote parses as JSON and validates against its OCSF 1.5.0 class's
  official schema (the `ocsf-json-schema` package's offline export, with `jsonschema`, as
  tests/test_siem_format.py does);
- gaps: audit ids in the database, from the first one received to the last one, that no
  line carries (`metadata.sequence` is the audit id); duplicates: lines beyond the first
  for an id.

Tooling (bot/devtools): never imported by the running bot.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

from bot.devtools import rsyslog
from bot.devtools.testca import TestCA
from bot.storage import Store

PACKAGES = "rsyslog rsyslog-openssl"
CATCH_UP_TIMEOUT_S = 60.0
SAMPLES = 3
# The events shown after the summary: a clearance granted, an invite and a relay refused.
SHOWN = ("clearance.grant", "invite.refused", "relay.refused")


class SiemDemoError(RuntimeError):
    """The SIEM half of the demo cannot go on (the message says why)."""


def missing() -> str | None:
    """Why `demo --siem` cannot run here, or None."""
    reason = rsyslog.missing()
    if reason is not None:
        return (
            f"the SIEM demo needs a local rsyslog with its OpenSSL driver, the packages "
            f"{PACKAGES} (apt-get install {PACKAGES}): {reason}"
        )
    try:
        import jsonschema  # noqa: F401
        import ocsf_json_schema  # noqa: F401
    except ImportError:
        return (
            "the SIEM demo validates the events with ocsf-json-schema and jsonschema: "
            "pip install 'liaison-bot[demo]' (make siem-demo does this)"
        )
    return None


@dataclass
class Receiver:
    """rsyslogd on a free loopback port, its TLS certificate from a throwaway CA."""

    rsyslog: rsyslog.Rsyslog
    ca_file: Path

    @classmethod
    def start(cls, folder: Path) -> Receiver:
        ca = TestCA.create(folder / "ca")
        cert, key = ca.issue("rsyslog", folder / "certs")
        receiver = cls(rsyslog.Rsyslog(folder / "rsyslog", cert, key, ca.ca_path), ca.ca_path)
        receiver.rsyslog.start()
        return receiver

    def stop(self) -> None:
        self.rsyslog.stop()

    def config_section(self) -> str:
        """The bot's `[siem]` for this receiver (its certificate names localhost)."""
        return (
            "\n[siem]\n"
            f'target = "127.0.0.1:{self.rsyslog.port}"\n'
            'server_name = "localhost"\n'
            f'ca_file = "{self.ca_file}"\n'
            'format = "ocsf"\n'
            'retry_max = "1s"\n'
        )


async def caught_up(store: Store, timeout: float = CATCH_UP_TIMEOUT_S) -> int:
    """The newest audit row's id, once the exporter's cursor stands at it."""
    deadline = time.monotonic() + timeout
    while True:
        cursor = await asyncio.to_thread(store.siem_cursor)
        at = cursor.position.last_id if cursor and cursor.position else None
        behind = await asyncio.to_thread(store.audit_rows_after, at or 0)
        if at and behind == 0:
            return at
        if time.monotonic() > deadline:
            error = cursor.last_error if cursor else "no cursor"
            raise SiemDemoError(
                f"the SIEM export did not catch up within {timeout:.0f} s: cursor at row "
                f"{at if at is not None else '(not started)'}, {behind} rows behind, last "
                f"error: {error or 'none'}"
            )
        await asyncio.sleep(0.2)


@cache
def _validator(class_uid: int) -> Any:
    """The official OCSF 1.5.0 JSON Schema of one class, offline (tests/test_siem_format.py)."""
    import jsonschema
    from ocsf_json_schema import OcsfJsonSchema, OcsfJsonSchemaEmbedded, get_ocsf_schema

    from bot.siem.ocsf import OCSF_VERSION

    schema = OcsfJsonSchemaEmbedded(OcsfJsonSchema(get_ocsf_schema(OCSF_VERSION)))
    document = schema.get_class_schema(schema.lookup_class_name_from_uid(class_uid))
    cls = jsonschema.validators.validator_for(document)
    cls.check_schema(document)
    return cls(document, format_checker=cls.FORMAT_CHECKER)


def ocsf_problems(line: str) -> tuple[dict[str, Any] | None, list[str]]:
    """The line's event (None if it is not a JSON object) and what makes it invalid OCSF."""
    try:
        event = json.loads(line)
    except ValueError as exc:
        return None, [f"not JSON: {exc}"]
    if not isinstance(event, dict):
        return None, ["not a JSON object"]
    class_uid = event.get("class_uid")
    if not isinstance(class_uid, int):
        return event, ["no class_uid"]
    try:
        validator = _validator(class_uid)
    except Exception as exc:  # an unknown class: the schema has no such uid
        return event, [f"class_uid {class_uid}: {type(exc).__name__}: {exc}"]
    found = validator.iter_errors(event)
    return event, [f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in found]


@dataclass
class Summary:
    received: int
    valid: int
    gaps: list[int]
    duplicates: int
    problems: list[str] = field(default_factory=list)
    samples: list[dict[str, Any]] = field(default_factory=list)

    @property
    def line(self) -> str:
        return (
            f"received {self.received}, valid OCSF {self.valid}, gaps {len(self.gaps)}, "
            f"duplicates {self.duplicates}"
        )

    @property
    def ok(self) -> bool:
        return (
            self.received > 0
            and self.valid == self.received
            and not self.gaps
            and not self.duplicates
        )


def summarise(lines: list[str], stored_ids: Callable[[int, int], list[int]], last: int) -> Summary:
    """Check what the receiver wrote; `stored_ids(first, last)`: the database's ids between."""
    valid, problems, events = 0, [], []
    for number, line in enumerate(lines, 1):
        event, wrong = ocsf_problems(line)
        if event is not None:
            events.append(event)
        if wrong:
            problems.append(f"line {number}: {'; '.join(wrong[:3])}")
        else:
            valid += 1
    sequences = [
        e["metadata"]["sequence"]
        for e in events
        if isinstance(e.get("metadata"), dict) and isinstance(e["metadata"].get("sequence"), int)
    ]
    counts = Counter(sequences)
    duplicates = sum(n - 1 for n in counts.values())
    expected = stored_ids(min(sequences), last) if sequences else []
    gaps = [i for i in expected if i not in counts]
    return Summary(len(lines), valid, gaps, duplicates, problems, samples_of(events))


def samples_of(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """A few events to show: the scenario's story (SHOWN) where present, else the first of
    each class, else the first ones."""

    def code(event: dict[str, Any]) -> object:
        meta = event.get("metadata")
        return meta.get("event_code") if isinstance(meta, dict) else None

    samples = [next(e for e in events if code(e) == c) for c in SHOWN if c in map(code, events)]
    classes = {e.get("class_uid") for e in samples}
    for event in events:
        if len(samples) >= SAMPLES:
            break
        if event.get("class_uid") not in classes:
            classes.add(event.get("class_uid"))
            samples.append(event)
    samples += [e for e in events if all(e is not s for s in samples)]
    return samples[:SAMPLES]


def database_ids(store: Store) -> Callable[[int, int], list[int]]:
    def ids(first: int, last: int) -> list[int]:
        rows = store.audit_after(first - 1, last - first + 1, until_id=last)
        return [r.entry.id for r in rows]

    return ids


async def check(receiver: Receiver, store: Store) -> Summary:
    """Wait for the exporter to reach the newest audit row, then check what rsyslog got."""
    last = await caught_up(store)
    return summarise(receiver.rsyslog.lines(), database_ids(store), last)


def pretty(event: dict[str, Any]) -> str:
    return json.dumps(event, indent=2, sort_keys=True)


__all__ = ["PACKAGES", "Receiver", "SiemDemoError", "Summary", "check", "missing", "pretty"]
