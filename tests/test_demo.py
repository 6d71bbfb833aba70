"""`liaison-bot demo --exit-after-scenario` runs the whole scenario and exits 0: a structured
slash command, a relay held until a second officer releases it, a digest whose picture is
saved as a PNG outside the throwaway folder (with `--siem`: and a local rsyslog got every
audit row once, as valid OCSF)."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path

import pytest

from bot.devtools import siemdemo
from bot.devtools.demo import counts_agree
from bot.siem import Markings, render
from bot.storage.records import AuditEntry
from tests.siem_harness import require_rsyslog

SCRIPT = str(Path(sys.executable).parent / "liaison-bot")


def check_picture(out: str) -> None:
    """The digest's picture, saved in the folder the demo named (kept after the scenario):
    a PNG. The folder is removed afterwards."""
    kept = re.search(r"^The digest's picture will be saved in (\S+) \(kept", out, re.MULTILINE)
    shown = re.search(r"^   Open the picture: (\S+)$", out, re.MULTILINE)
    assert kept is not None and shown is not None, out
    folder, picture = Path(kept[1]), Path(shown[1])
    try:
        assert folder.name.startswith("liaison-demo-") and picture.parent == folder
        assert picture.read_bytes().startswith(b"\x89PNG\r\n\x1a\n")
    finally:
        shutil.rmtree(folder, ignore_errors=True)


def test_demo_scenario_passes() -> None:
    result = subprocess.run(
        [SCRIPT, "demo", "--exit-after-scenario"], capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    check_picture(out)
    assert "Scenario passed." in out
    assert "✗" not in out
    # The slash commands the admin's client reads, and one structured grant.
    assert re.search(r"org\.matrix\.msc4332\.commands state event offers \d+ commands", out)
    assert "among them: clearance grant {user} {marking} --nationality {nationality}" in out
    assert '"org.matrix.msc4332.command": {' in out
    assert "@analyst-nor:localhost — nationality NOR" in out
    assert "may not join nato-s: grant NATO CONFIDENTIAL is below the room's NATO SECRET" in out
    # The held item: the notice, the NATO room without it, the second officer's release.
    assert "⏸ Held for release approval: R1 (DEU GEHEIM // REL TO NATO)" in out
    assert "Not relayed to nato-s: held for release approval (R1)" in out
    assert "Not relayed to eu-s: not releasable to AUT, CYP, IRL, MLT" in out
    assert "analyst-nor's NATO room has the routine item, not yet the convoy" in out
    assert "✅ R1 approved by @fdo-deu:localhost." in out
    # The NATO copy (the first line with its originator banner) only after the approval.
    copy = out.find("NATO SECRET — originator: DEU GEHEIM // REL TO NATO")
    assert out.index("✅ R1 approved") < copy
    # The digest and its picture.
    assert "Situation digest — NATO SECRET liaison (nato-s)" in out
    assert "5 item(s): FLASH 1, IMMEDIATE 1, PRIORITY 2, ROUTINE 1." in out
    assert ": 6 item(s); FLASH 1, IMMEDIATE 1, PRIORITY 2, ROUTINE 1; exercise 1." in out


@pytest.mark.parametrize(
    ("digest", "alt", "agree"),
    [
        (
            "5 item(s): FLASH 1, PRIORITY 4. By source: deu 5.\nExercise traffic (2, not counted",
            "Digest chart, …: 7 item(s); FLASH 1, IMMEDIATE 0, PRIORITY 4, ROUTINE 0; exercise 2.",
            True,
        ),
        (
            "5 item(s): FLASH 1, PRIORITY 4. By source: deu 5.",
            "Digest chart, …: 5 item(s); FLASH 1, IMMEDIATE 0, PRIORITY 4, ROUTINE 0; exercise 0.",
            True,
        ),
        (  # a precedence counted differently
            "5 item(s): FLASH 1, PRIORITY 4. By source: deu 5.",
            "Digest chart, …: 5 item(s); FLASH 2, IMMEDIATE 0, PRIORITY 3, ROUTINE 0; exercise 0.",
            False,
        ),
        (  # exercise traffic the digest does not have
            "5 item(s): FLASH 1, PRIORITY 4. By source: deu 5.",
            "Digest chart, …: 6 item(s); FLASH 1, IMMEDIATE 0, PRIORITY 4, ROUTINE 0; exercise 1.",
            False,
        ),
        (  # a total that is not the sum
            "5 item(s): FLASH 1, PRIORITY 4. By source: deu 5.",
            "Digest chart, …: 4 item(s); FLASH 1, IMMEDIATE 0, PRIORITY 4, ROUTINE 0; exercise 0.",
            False,
        ),
        ("no counts", "Digest chart, …: 0 item(s); exercise 0.", False),
    ],
)
def test_demo_compares_the_pictures_counts_with_the_digests(
    digest: str, alt: str, agree: bool
) -> None:
    assert counts_agree(digest, alt) is agree


def test_federated_demo_scenario_passes() -> None:
    result = subprocess.run(
        [SCRIPT, "demo", "--exit-after-scenario", "--federated"],
        capture_output=True,
        text=True,
        timeout=420,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    out = result.stdout
    check_picture(out)
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
    check_picture(out)
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
