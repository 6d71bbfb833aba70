"""Release approval latency: a second officer sends `!release approve R<n>` for an item the
route holds → a NATO member has the released copy decrypted. Measured like the relay latency
(bench/relay.py): a throwaway Synapse, the bot in-process, real E2EE clients, cross-signed.

The route deu → nato-s holds GEHEIM and above for a second officer (`approval =
"second-officer"`); the officer sends each item, the second officer waits for the bot's
notice of the hold (it names the request's id), and the clock runs from sending the approval
to the member decrypting the copy. Like a relay, that is two hops (approver → bot, bot →
member), plus the approval's transaction (the targets approved and the ledger row written at
once). The approval's reply is awaited, untimed, before the next item.

Run with `make bench` or `python bench/release.py [N]` (default 50 items). Writes
`release_approve_to_copy_*` into bench/results.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nio import RoomMessageNotice

from bench.common import RESULTS, percentile, record
from bot.devtools.botenv import BotEnv, rooms_config, write_config
from bot.devtools.devserver import DevServer
from bot.devtools.e2ee_client import E2EEClient, cross_sign, open_dm, talk

HELD = "[GEHEIM // REL TO NATO]"  # at approval_from: held for a second officer
NOTICE = re.compile(r"Held for release approval: (R\d+)")


async def _held(officer: E2EEClient, approver: E2EEClient, deu: str, text: str) -> str:
    """Send a held item; the request id once the approver has the bot's notice of it."""
    mark = approver.event_count(deu)
    await officer.send_text(deu, f"{HELD} {text}")
    notice = await approver.wait_for(
        deu,
        # One item at a time (the last one's reply awaited): the next notice is this one's.
        lambda e: isinstance(e, RoomMessageNotice) and NOTICE.search(e.body) is not None,
        60,
        after=mark,
    )
    found = NOTICE.search(notice.body)
    assert found is not None
    return found.group(1)


async def _approve_once(
    officer: E2EEClient, approver: E2EEClient, member: E2EEClient, deu: str, nato_s: str, tag: str
) -> float:
    """One held item, released: seconds from the approval sent to the copy decrypted."""
    rid = await _held(officer, approver, deu, tag)
    mark, reply_mark = member.event_count(nato_s), approver.event_count(deu)
    began = time.perf_counter()
    await approver.send_text(deu, f"!release approve {rid}")
    await member.wait_for_text(nato_s, tag, timeout=60, after=mark)
    elapsed = time.perf_counter() - began
    await approver.wait_for_text(deu, f"{rid} approved by", timeout=60, after=reply_mark)
    return elapsed


async def measure(n: int) -> dict[str, float]:
    with contextlib.ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory()))
        server = stack.enter_context(DevServer(work / "synapse"))
        bot_user = server.register("liaison", "pw-bot")
        admin = server.register("admin", "pw-admin")
        officer = server.register("officer", "pw-officer")
        second = server.register("second", "pw-second")
        member = server.register("member", "pw-member")
        rooms = rooms_config() + (
            'approval = "second-officer"\n'
            'approval_from = "GEHEIM"\n'
            f'approvers = ["{officer.user_id}", "{second.user_id}"]\n'
        )
        write_config(work / "config.toml", server, bot_user, admin.user_id, officer.user_id, rooms)
        env = BotEnv(server, work, bot_user, admin, officer, work / "config.toml")
        await env.start()
        identities: dict[str, Any] = {}
        clients: list[E2EEClient] = []
        try:
            for user in (admin, officer, second, member):
                client = await E2EEClient.create(server, user, work / f"store-{user.user_id}")
                await cross_sign(server, client, identities)
                await client.start()
                clients.append(client)
            admin_c, officer_c, second_c, member_c = clients
            dm = await open_dm(admin_c, bot_user.user_id)
            for user_id, level, nation in (
                (officer.user_id, "DEU GEHEIM", "DEU"),
                (second.user_id, "DEU GEHEIM", "DEU"),
                (member.user_id, "NATO SECRET", "NOR"),
            ):
                await talk(
                    admin_c,
                    dm,
                    f'!clearance grant {user_id} "{level}" --nationality {nation}',
                    "Clearance updated",
                )
            for client, key in ((officer_c, "deu"), (second_c, "deu"), (member_c, "nato-s")):
                await talk(admin_c, dm, f"!invite {client.user_id} {key}", "Invited")
                await client.join(await client.wait_for_invite(timeout=60), timeout=60)
            deu, nato_s = env.room_id("deu"), env.room_id("nato-s")
            for i in range(3):  # room keys shared, Olm sessions set up: not timed
                await _approve_once(officer_c, second_c, member_c, deu, nato_s, f"warm-{i}-")
            samples = [
                await _approve_once(officer_c, second_c, member_c, deu, nato_s, f"release-{i}-")
                for i in range(n)
            ]
        finally:
            await asyncio.gather(*(c.stop() for c in clients), return_exceptions=True)
            await env.stop()
    return {
        "release_approve_to_copy_p50_s": round(statistics.median(samples), 4),
        "release_approve_to_copy_p95_s": round(percentile(samples, 0.95), 4),
        "release_approve_to_copy_samples": n,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("n", nargs="?", type=int, default=50, help="items approved")
    args = parser.parse_args()
    figures = record(asyncio.run(measure(args.n)), "release_approve_to_copy_machine")
    print(f"machine: {figures['release_approve_to_copy_machine']}")
    p50 = figures["release_approve_to_copy_p50_s"] * 1000
    p95 = figures["release_approve_to_copy_p95_s"] * 1000
    print(
        f"release (approver → bot → member), decrypted: p50 {p50:.0f} ms, p95 {p95:.0f} ms "
        f"over {args.n} items"
    )
    print(f"written to {RESULTS}")


if __name__ == "__main__":
    main()
