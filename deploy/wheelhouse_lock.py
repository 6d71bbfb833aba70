"""Write WHEELHOUSE/requirements.txt: every wheel in a wheelhouse pinned with its own hash.

`make wheelhouse` checks what it downloads against requirements.lock, but a dependency that
is published only as source (atomicwrites, say) becomes a wheel built here, whose hash no
lock can know in advance. This file pins what was actually shipped, so the offline machine
installs exactly those files and refuses any other:

    pip install --no-index --find-links wheelhouse --require-hashes \\
        -r wheelhouse/requirements.txt

Usage: python deploy/wheelhouse_lock.py dist/wheelhouse
"""

from __future__ import annotations

import hashlib
import re
import sys
from pathlib import Path


def lock_lines(wheelhouse: Path) -> list[str]:
    """One `name==version --hash=sha256:…` line per wheel, sorted by name."""
    lines = []
    for wheel in sorted(wheelhouse.glob("*.whl")):
        # PEP 427: {distribution}-{version}(-{build})?-{python}-{abi}-{platform}.whl
        name, version = wheel.name.split("-")[:2]
        digest = hashlib.sha256(wheel.read_bytes()).hexdigest()
        lines.append(f"{re.sub(r'[-_.]+', '-', name).lower()}=={version} --hash=sha256:{digest}")
    lines.sort()
    names = [line.split("==")[0] for line in lines]
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if duplicates:
        raise SystemExit(f"error: {wheelhouse}: more than one wheel of {', '.join(duplicates)}")
    return lines


def main(argv: list[str]) -> int:
    if len(argv) != 1 or not Path(argv[0]).is_dir():
        print("usage: python deploy/wheelhouse_lock.py WHEELHOUSE_FOLDER", file=sys.stderr)
        return 2
    wheelhouse = Path(argv[0])
    lines = lock_lines(wheelhouse)
    if not lines:
        print(f"error: {wheelhouse}: no wheels", file=sys.stderr)
        return 2
    header = "# The wheels of this wheelhouse, each with its hash (deploy/wheelhouse_lock.py).\n"
    (wheelhouse / "requirements.txt").write_text(header + "\n".join(lines) + "\n")
    print(f"{wheelhouse / 'requirements.txt'}: {len(lines)} wheels")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
