"""Micro-benchmark: the cost of one `may_release` (and `may_join`) decision, in µs.

Run with `make bench`. Writes `decision_us` (and the raw figures) into bench/results.json,
keeping any other keys already there, and names the machine it ran on.
"""

from __future__ import annotations

import statistics
import sys
import timeit
from datetime import date
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.common import RESULTS, record
from policy import (
    Clearance,
    current,
    install_catalogue,
    make_room,
    may_join,
    may_release,
    parse_marking,
    with_site,
)

SCHEMES = 37  # NATO, EU and every member state's scheme: what the data will hold


def load_schemes(total: int = SCHEMES) -> int:
    """Measure with `total` schemes loaded: the packaged ones, and while the data holds fewer,
    synthetic national schemes of four levels for the missing member states (installed as a
    site file would be). Returns the number loaded."""
    catalogue = current()
    members = catalogue.alliance_members["NATO"] | catalogue.alliance_members["EU"]
    missing = [c for c in sorted(members) if c not in catalogue.schemes]
    missing = missing[: max(0, total - len(catalogue.schemes))]
    if missing:
        site = {
            "schemes": [
                {
                    "code": code,
                    "name": f"synthetic {code}",
                    "levels": [
                        {"rank": rank, "name": f"{code} LEVEL {rank}"} for rank in (4, 3, 2, 1)
                    ],
                }
                for code in missing
            ]
        }
        install_catalogue(with_site(site, "bench synthetic schemes"))
    return len(current().schemes)


def per_call_us(stmt, number: int = 20_000, repeat: int = 7) -> tuple[float, float]:  # type: ignore[no-untyped-def]
    runs = timeit.repeat(stmt, number=number, repeat=repeat)
    per = [r / number * 1e6 for r in runs]
    return min(per), statistics.median(per)


def main() -> None:
    loaded = load_schemes()
    source = make_room(parse_marking("DEU GEHEIM"))
    targets = [
        make_room(parse_marking(m))
        for m in ("NATO SECRET", "SECRET UE/EU SECRET", "NATO CONFIDENTIAL")
    ]
    label = parse_marking("GEHEIM // REL TO NATO, UKR", "DEU")
    person = Clearance("@lo:example.org", "DEU", {"NATO": parse_marking("NATO SECRET").level})
    today = date(2026, 11, 25)

    release_min, release_med = per_call_us(lambda: [may_release(label, source, t) for t in targets])
    release_min /= len(targets)
    release_med /= len(targets)
    _join_min, join_med = per_call_us(lambda: may_join(person, targets[0], today))
    _parse_min, parse_med = per_call_us(
        lambda: parse_marking("GEHEIM // REL TO NATO, UKR", "DEU"), number=5_000
    )

    figures = record(
        {
            "decision_us": round(release_med, 2),
            "decision_us_min": round(release_min, 2),
            "may_join_us": round(join_med, 2),
            "parse_marking_us": round(parse_med, 2),
            "decision_schemes": loaded,
        },
        "decision_machine",
    )
    print(f"machine: {figures['decision_machine']}; {loaded} schemes loaded")
    print(
        f"may_release: {release_med:.2f} µs median per decision "
        f"(min {release_min:.2f}; goal ≤ 20 µs)"
    )
    print(f"may_join:    {join_med:.2f} µs median")
    print(f"parse_marking: {parse_med:.2f} µs median")
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
