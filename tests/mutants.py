"""Mutation check of the guards behind the "never" claims (`make mutants`, part of `make test`).

Each mutant is a one-line (or one-statement) change that breaks a guard: the member who is
not cleared stays in the room, the room key goes to a device its owner did not sign, a room's
label is lowered, the sync loop's backoff loses its cap, a sent copy is relayed again, a
replayed message runs again, the policy admits what it cannot judge. For each one the
repository's sources are copied to a temporary directory, the change is made there (the
working tree is never touched) and the tests named for it are run on the copy: the mutant is
killed when they fail (pytest's exit status 1). The same tests run once unmutated first and
must pass, so a test that was broken already kills nothing.

The snippet a mutant replaces must occur exactly once in its file: a refactor that moves or
rewrites a guard stops this script with an error naming the mutant, and the table below is
updated with it, rather than the mutant quietly applying nowhere.

    python -m tests.mutants              # every mutant, two at a time
    python -m tests.mutants --list       # the table, with each guard's file:line
    python -m tests.mutants -k backoff   # the mutants whose name contains "backoff"
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
# What the tests need of the repository (never .venv, caches or local databases).
COPIED_DIRS = ("policy", "commands", "bot", "migrations", "tests")
COPIED_FILES = ("pyproject.toml", "config.example.toml", "README.md")
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", ".hypothesis", ".pytest_cache", "*.db")
TIMEOUT = 300.0  # seconds for one pytest run
TESTS_FAILED = 1  # pytest's exit status when tests ran and some failed (2-5: usage, collection…)


class MutantError(Exception):
    """The table does not match the sources: a snippet missing, or found more than once."""


@dataclass(frozen=True)
class Mutant:
    name: str
    claim: str  # the "never" claim the guard stands for
    path: str  # relative to the repository root
    snippet: str  # must occur exactly once in the file
    replacement: str
    tests: tuple[str, ...]  # node ids; at least one must fail on the mutant
    slow: bool = False  # its tests start a Synapse: started first, the others run alongside


MUTANTS: tuple[Mutant, ...] = (
    Mutant(
        "enforce-keeps-everyone",
        "a member without a valid clearance is removed (sweep, join, revocation)",
        "bot/services/membership.py",
        "if decision.allowed:\n            return False",
        "if True:\n            return False",
        (
            "tests/test_never_guards.py::test_a_sweep_removes_every_member_without_a_valid_clearance",
        ),
    ),
    Mutant(
        "key-to-every-member",
        "a room key goes only to members who may read the room",
        "bot/services/membership.py",
        "return [u for u in members if u != self.user_id and self.may_read(room_id, u)]",
        "return [u for u in members if u != self.user_id]",
        (
            "tests/test_never_guards.py::test_only_members_who_may_read_are_the_room_keys_recipients",
            "tests/test_admin_room.py::test_only_cleared_admins_get_the_admin_rooms_key",
        ),
    ),
    Mutant(
        "key-to-unsigned-device",
        "a device its owner did not cross-sign is not trusted",
        "bot/matrix/trust.py",
        "if identity.signed_devices.get(device_id) != ed25519:",
        "if False:",
        ("tests/test_never_guards.py::test_a_device_its_owner_did_not_sign_is_not_trusted",),
    ),
    Mutant(
        "key-share-ignores-device-policy",
        "the room key is shared only with devices the device policy trusts",
        "bot/matrix/gateway.py",
        "if device_trusted(user_id, device):",
        "if True:",
        # Only a real share shows it (nio's device store, Synapse): ~10 s.
        ("tests/test_trust.py::test_unsigned_device_of_a_cleared_user_gets_no_room_key",),
        slow=True,
    ),
    Mutant(
        "label-lowered",
        "the bot never lowers a room's label",
        "bot/services/rooms.py",
        "if previous_rank is not None and room.rank < previous_rank:",
        "if False:",
        ("tests/test_never_guards.py::test_provisioning_never_lowers_a_rooms_label",),
    ),
    Mutant(
        "gate-label-lowered",
        "the homeserver gate refuses a label below the one on record",
        "bot/gate/rules.py",
        'if record is not None and int(content["rank"]) < record.rank:',
        "if False:",
        (
            "tests/test_gate_rules.py::test_the_label_event_has_the_bots_shape_and_is_never_lowered[sqlite]",
        ),
    ),
    Mutant(
        "spillage-lowest-reading",
        "a word several nations use at different ranks is judged at its highest reading",
        "policy/decisions.py",
        "above = [level.banner for level in levels if level.rank > room.rank]",
        "above = [lv.banner for lv in levels if all(o.rank > room.rank for o in levels)]",
        ("tests/test_shared_words.py::test_a_word_with_a_reading_above_the_room_is_spillage",),
    ),
    Mutant(
        "backoff-uncapped",
        "the sync loop never waits longer than the cap (30 s)",
        "bot/backoff.py",
        "delay = min(self.cap, self.first * 2 ** min(self.failures, 64))",
        "delay = self.first * 2 ** min(self.failures, 64)",
        ("tests/test_backoff.py::test_the_cap_holds_however_many_failures",),
    ),
    Mutant(
        "backoff-exponent-unbounded",
        "an outage of any length never ends the sync loop (no overflow)",
        "bot/backoff.py",
        "delay = min(self.cap, self.first * 2 ** min(self.failures, 64))",
        "delay = min(self.cap, self.first * 2 ** self.failures)",
        ("tests/test_backoff.py::test_the_cap_holds_through_an_outage_of_a_day",),
    ),
    Mutant(
        "relay-resends-sent",
        "a copy is relayed exactly once (a sent ledger row is never sent again)",
        "bot/services/relay.py",
        "if row.state == RelayState.SENT:\n            return row.target_event_id",
        "if False:\n            return row.target_event_id",
        ("tests/test_never_guards.py::test_a_message_handled_again_is_not_relayed_again",),
    ),
    Mutant(
        "replay-accepted",
        "an encrypted message sent again under a new event id never runs again",
        "bot/storage/store.py",
        "return row.event_id == event_id",
        "return True",
        (
            "tests/test_never_guards.py::test_one_encrypted_message_under_a_second_event_id_is_a_replay",
        ),
    ),
    Mutant(
        "no-equivalent-admits",
        "deny by default: a label with no equivalent in the room's scheme never fits it",
        "policy/decisions.py",
        'denied.add("level.no_equivalent", why_no_equivalent(label, room.scheme))',
        'allowed.add("level.no_equivalent", why_no_equivalent(label, room.scheme))',
        (
            "tests/test_decisions.py::test_no_equivalent_is_named",
            "tests/test_decisions.py::"
            "test_a_level_the_room_scheme_lacks_is_refused_with_the_reason_not_rounded",
        ),
    ),
    Mutant(
        "write-down",
        "material never goes to a room below its level",
        "policy/decisions.py",
        "elif equivalent.rank > room.rank:",
        "elif equivalent.rank > room.rank + 1:",
        ("tests/test_decisions.py::test_write_down_is_refused",),
    ),
    Mutant(
        "releasability-ignored",
        "material never reaches a nation it is not releasable to",
        "policy/decisions.py",
        "missing = room.audience - releasable_set(label)",
        "missing = frozenset[str]()",
        ("tests/test_decisions.py::test_national_item_without_rel_to_is_not_releasable",),
    ),
    Mutant(
        "revoked-admitted",
        "a revoked clearance admits nobody",
        "policy/decisions.py",
        "if clearance.revoked:",
        "if False:",
        ("tests/test_decisions.py::test_may_join_refusals_name_the_condition",),
    ),
    Mutant(
        "fenced-node-sends",
        "a node that lost its lease sends nothing to the homeserver",
        "bot/matrix/cryptostore.py",
        "        self.gate.check()\n        return await super().send(*args, **kwargs)",
        "        return await super().send(*args, **kwargs)",
        ("tests/test_ha_gate.py::test_a_shut_gate_lets_no_request_out",),
        slow=True,
    ),
    Mutant(
        "gate-ignores-time",
        "a paused node finds its gate shut when it resumes, before its watchdog runs",
        "bot/ha.py",
        "return not self._shut and self._clock() < self._until",
        "return not self._shut",
        (
            "tests/test_ha_lease.py::test_the_gate_opens_only_until_the_self_fence_time_after_a_renewal",
        ),
    ),
)


# ------------------------------------------------------------ applying


def mutate(source: str, mutant: Mutant) -> str:
    """`source` with the mutant's snippet replaced; MutantError unless it occurs exactly once."""
    count = source.count(mutant.snippet)
    if count != 1:
        where = "not found" if count == 0 else f"found {count} times"
        raise MutantError(
            f"mutant {mutant.name!r}: the snippet {mutant.snippet!r} is {where} in "
            f"{mutant.path} (it must occur exactly once). The guard was moved or rewritten: "
            "update its entry in tests/mutants.py."
        )
    return source.replace(mutant.snippet, mutant.replacement)


def line_of(source: str, snippet: str) -> int:
    """The 1-based line where `snippet` starts in `source` (it occurs there)."""
    return source[: source.index(snippet)].count("\n") + 1


def check_table(root: Path, mutants: Iterable[Mutant]) -> None:
    """Every mutant applies to the sources under `root` (MutantError naming the first that
    does not), and the replacement changes something."""
    for mutant in mutants:
        path = root / mutant.path
        if not path.is_file():
            raise MutantError(f"mutant {mutant.name!r}: no file {mutant.path}")
        if mutant.snippet == mutant.replacement:
            raise MutantError(f"mutant {mutant.name!r}: the replacement changes nothing")
        if not mutant.tests:
            raise MutantError(f"mutant {mutant.name!r}: names no test")
        mutate(path.read_text(encoding="utf-8"), mutant)


def copy_sources(root: Path, dest: Path) -> None:
    """The parts of the repository the tests need, into `dest` (which must not exist)."""
    dest.mkdir(parents=True)
    for name in COPIED_DIRS:
        shutil.copytree(root / name, dest / name, ignore=IGNORED)
    for name in COPIED_FILES:
        if (root / name).is_file():
            shutil.copy2(root / name, dest / name)


def apply_to_copy(copy: Path, mutant: Mutant) -> None:
    path = copy / mutant.path
    path.write_text(mutate(path.read_text(encoding="utf-8"), mutant), encoding="utf-8")


# ------------------------------------------------------------ running


@dataclass(frozen=True)
class Run:
    status: int | None  # pytest's exit status; None when it timed out
    output: str
    seconds: float

    def first_failure(self) -> str | None:
        """The node id of the first test reported FAILED or ERROR (pytest -ra's summary)."""
        for line in self.output.splitlines():
            for word in ("FAILED ", "ERROR "):
                if line.startswith(word):
                    return line.removeprefix(word).split(" - ", 1)[0].strip()
        return None


def run_tests(copy: Path, tests: Sequence[str]) -> Run:
    """pytest on `tests` in the copy, importing only the copy's packages."""
    env = {**os.environ, "PYTHONPATH": str(copy), "PYTHONDONTWRITEBYTECODE": "1"}
    command = [
        sys.executable,
        "-m",
        "pytest",
        "-x",
        "-q",
        "-p",
        "no:cacheprovider",
        f"--basetemp={copy.parent / 'pytest-tmp'}",
        *tests,
    ]
    started = time.monotonic()
    # A session of its own: on a timeout the whole group goes (a Synapse a test started too).
    with subprocess.Popen(
        command,
        cwd=copy,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    ) as proc:
        try:
            output, _ = proc.communicate(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            output, _ = proc.communicate()
            return Run(None, output, time.monotonic() - started)
    return Run(proc.returncode, output, time.monotonic() - started)


def imports_from(copy: Path) -> str | None:
    """None when the copy's own packages are the ones imported there; else what was."""
    probe = "import bot, commands, policy, tests; print(bot.__file__, policy.__file__, sep='\\n')"
    env = {**os.environ, "PYTHONPATH": str(copy), "PYTHONDONTWRITEBYTECODE": "1"}
    done = subprocess.run(
        [sys.executable, "-c", probe], cwd=copy, env=env, capture_output=True, text=True
    )
    files = done.stdout.splitlines()
    if done.returncode != 0 or not files:
        return done.stderr.strip() or "the packages do not import"
    outside = [f for f in files if not Path(f).resolve().is_relative_to(copy.resolve())]
    return f"imported from outside the copy: {', '.join(outside)}" if outside else None


@dataclass(frozen=True)
class Outcome:
    mutant: Mutant
    line: int
    run: Run

    @property
    def verdict(self) -> str:
        if self.run.status == TESTS_FAILED:
            return "killed"
        if self.run.status == 0:
            return "SURVIVED"
        if self.run.status is None:
            return "ERROR (timed out)"
        return f"ERROR (pytest exit {self.run.status})"


def run_mutant(root: Path, work: Path, mutant: Mutant) -> Outcome:
    copy = work / mutant.name / "src"
    copy_sources(root, copy)
    line = line_of((copy / mutant.path).read_text(encoding="utf-8"), mutant.snippet)
    apply_to_copy(copy, mutant)
    return Outcome(mutant, line, run_tests(copy, mutant.tests))


def baseline(root: Path, work: Path, mutants: Sequence[Mutant]) -> tuple[Run, str | None]:
    """Every listed test, unmutated, in a copy of its own."""
    copy = work / "baseline" / "src"
    copy_sources(root, copy)
    problem = imports_from(copy)
    tests = list(dict.fromkeys(t for m in mutants for t in m.tests))
    return run_tests(copy, tests), problem


def _tail(output: str, lines: int = 30) -> str:
    return "\n".join(output.rstrip().splitlines()[-lines:])


def report(outcomes: Sequence[Outcome]) -> str:
    rows = [("mutant", "guard", "claim", "result", "time", "failed first")]
    for o in outcomes:
        rows.append(
            (
                o.mutant.name,
                f"{o.mutant.path}:{o.line}",
                o.mutant.claim,
                o.verdict,
                f"{o.run.seconds:.1f} s",
                (o.run.first_failure() or "-").split("::")[-1],
            )
        )
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    widths[2] = min(widths[2], 60)
    out = []
    for r in rows:
        claim = r[2] if len(r[2]) <= widths[2] else r[2][: widths[2] - 1] + "…"
        cells = (r[0], r[1], claim, r[3], r[4], r[5])
        out.append("  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip())
    return "\n".join(out)


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.mutants", description=__doc__)
    parser.add_argument("-k", dest="select", help="only mutants whose name contains this")
    parser.add_argument("-j", "--jobs", type=int, default=2, help="mutants run at once (2)")
    parser.add_argument("--list", action="store_true", help="print the table and stop")
    args = parser.parse_args(argv)
    mutants = [m for m in MUTANTS if not args.select or args.select in m.name]
    if not mutants:
        print(f"no mutant's name contains {args.select!r}", file=sys.stderr)
        return 2
    try:
        check_table(ROOT, mutants)
    except MutantError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    if args.list:
        for m in mutants:
            line = line_of((ROOT / m.path).read_text(encoding="utf-8"), m.snippet)
            print(f"{m.name}  {m.path}:{line}  {m.claim}\n    {', '.join(m.tests)}")
        return 0
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="liaison-mutants-") as tmp:
        work = Path(tmp)
        base, problem = baseline(ROOT, work, mutants)
        if problem is not None:
            print(f"error: the copy does not import its own packages: {problem}", file=sys.stderr)
            return 1
        if base.status != 0:
            print(_tail(base.output), file=sys.stderr)
            print(
                f"error: the mutants' tests fail unmutated (pytest exit {base.status}); "
                "nothing a mutant makes fail would count. Fix them first.",
                file=sys.stderr,
            )
            return 1
        print(f"baseline: the mutants' tests pass unmutated ({base.seconds:.1f} s)")
        # The slow ones first, so that the fast ones fill the other worker meanwhile.
        order = sorted(mutants, key=lambda m: not m.slow)
        with ThreadPoolExecutor(max_workers=max(1, args.jobs)) as pool:
            done = {o.mutant.name: o for o in pool.map(lambda m: run_mutant(ROOT, work, m), order)}
        outcomes = [done[m.name] for m in mutants]
    print(report(outcomes))
    bad = [o for o in outcomes if o.verdict != "killed"]
    for o in bad:
        print(f"\n--- {o.mutant.name}: {o.verdict}\n{_tail(o.run.output)}", file=sys.stderr)
    total = time.monotonic() - started
    print(
        f"{len(outcomes) - len(bad)}/{len(outcomes)} mutants killed in {total:.1f} s"
        + (f"; not killed: {', '.join(o.mutant.name for o in bad)}" if bad else "")
    )
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
