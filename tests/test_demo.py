"""`liaison-bot demo --exit-after-scenario` runs the whole scenario and exits 0."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

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
