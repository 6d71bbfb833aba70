"""What every benchmark script shares: bench/results.json, the machine's name, percentiles,
and the config of a bot that manages many rooms.

The scripts run as `python bench/<name>.py`; they put the project root on sys.path first and
import this module as `bench.common`.
"""

from __future__ import annotations

import json
import platform
from pathlib import Path
from typing import Any

RESULTS = Path(__file__).resolve().parent / "results.json"
# Room labels for the many-rooms benchmarks, cycled through.
LABELS = ("NATO SECRET", "EU SECRET", "DEU GEHEIM", "NATO CONFIDENTIAL")


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{model}, Python {platform.python_version()}"


def record(figures: dict[str, Any], machine_key: str | None = None) -> dict[str, Any]:
    """Merge figures (plus `machine_key` = this machine, if given) into bench/results.json,
    keeping every other key; returns what was merged."""
    figures = dict(figures)
    if machine_key is not None:
        figures[machine_key] = machine()
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {}
    results.update(figures)
    RESULTS.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    return figures


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def rooms_config(
    base_url: str,
    bot_user_id: str,
    rooms: int,
    *,
    admins: tuple[str, ...] = (),
    env_prefix: str = "LIAISON_BENCH",
) -> str:
    """A bot config with `rooms` managed rooms (labels cycling through LABELS); the secrets
    come from the environment variables {env_prefix}_PASSWORD, _PICKLE_KEY and _DATA_KEY."""
    lines = [
        "[homeserver]",
        f'url = "{base_url}"',
        f'user_id = "{bot_user_id}"',
        f'password_env = "{env_prefix}_PASSWORD"',
        f'pickle_key_env = "{env_prefix}_PICKLE_KEY"',
        "[storage]",
        'database_url = "sqlite:///bot.db"',
        'crypto_store = "crypto"',
        f'data_key_env = "{env_prefix}_DATA_KEY"',
        "[bot]",
        "admins = [" + ", ".join(f'"{a}"' for a in admins) + "]",
    ]
    for i in range(rooms):
        lines += [
            "[[rooms]]",
            f'key = "room-{i}"',
            f'name = "Room {i}"',
            f'label = "{LABELS[i % len(LABELS)]}"',
        ]
    return "\n".join(lines) + "\n"
