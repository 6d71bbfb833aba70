"""`liaison-bot demo --exit-after-scenario` runs the whole scenario and exits 0 (with
`--siem`: and a local rsyslog got every audit row once, as valid OCSF)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bot.devtools import siemdemo
from bot.siem import Markings, render
from bot.storage.records import AuditEntry
from tests.siem_harness import require_rsyslog

SCRIPT = str(Path(sys.executable).parent / "liaison-bot")


def test_demo_scenario_passes() -> None:
    result = subprocess.run(
        [SCRIPT, "demo", "--exit-after-scenario"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "Scenario passed." in out
    assert "may not join nato-s: grant NATO CONFIDENTIAL is below the room's NATO SECRET" in out
    assert "NATO SECRET — originator: DEU GEHEIM // REL TO NATO" in out
    assert "Not relayed to eu-s: not releasable to AUT, CYP, IRL, MLT" in out
    assert "Situation digest — NATO SECRET liaison (nato-s)" in out
    assert "✗" not in out


def test_federated_demo_scenario_passes() -> None:
    result = subprocess.run(
        [SCRIPT, "demo", "--exit-after-scenario", "--federated"],
        capture_output=True,
        text=True,
        timeout=420,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "Scenario passed." in out and "✗" not in out
    assert "Two throwaway Synapses federating over TLS" in out
    assert "NATO SECRET — originator: DEU GEHEIM // REL TO NATO" in out
    assert "@analyst-nor:127.0.0.1:" in out  # a reader on NATO's homeserver


def test_siem_demo_exports_every_audit_row_once_as_valid_ocsf() -> None:
    require_rsyslog()  # a visible skip where rsyslogd or its ossl driver is missing
    result = subprocess.run(
        [SCRIPT, "demo", "--siem", "--exit-after-scenario"],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    assert "Scenario passed." in out and "✗" not in out
    found = re.search(
        r"^received (\d+), valid OCSF (\d+), gaps 0, duplicates 0$", out, re.MULTILINE
    )
    assert found is not None, out
    assert int(found[1]) > 0 and found[1] == found[2]
    for code in siemdemo.SHOWN:  # the events shown, pretty-printed
        assert f'"event_code": "{code}"' in out


def _event(sequence: int) -> str:
    """A valid OCSF event for audit row `sequence` (the exporter's own rendering)."""
    entry = AuditEntry(
        id=sequence,
        at=datetime(2026, 11, 25, 14, 5, 1, tzinfo=UTC),
        actor="liaison-bot",
        action="audit.keyed",
        subject=None,
        detail={},
    )
    return render(entry, "ocsf", installation="i-1", markings=Markings("level")).body


@pytest.mark.parametrize(
    ("sequences", "extra", "line"),
    [
        ([1, 2, 3], [], "received 3, valid OCSF 3, gaps 0, duplicates 0"),
        ([1, 3, 3], [], "received 3, valid OCSF 3, gaps 1, duplicates 1"),
        ([2, 3], [], "received 2, valid OCSF 2, gaps 0, duplicates 0"),  # from the first
        ([1, 2, 3], ["not json", json.dumps({"class_uid": 3004})], "received 5, valid OCSF 3"),
    ],
)
def test_siem_demo_summary_counts(sequences: list[int], extra: list[str], line: str) -> None:
    lines = [_event(n) for n in sequences] + extra
    summary = siemdemo.summarise(lines, lambda first, last: list(range(first, last + 1)), 3)
    assert summary.line.startswith(line)
    assert summary.ok == (line.endswith("gaps 0, duplicates 0") and not extra)
    assert len(summary.samples) == min(3, len(sequences))
