"""`liaison-bot demo`: a throwaway homeserver, the bot, three rooms and a short scenario.

It shows what the bot is for in a minute, with real parts only: a Synapse on loopback, the
bot with its E2EE device, and E2EE clients acting as the people. Every step prints what the
people's clients received, decrypted: the slash commands (MSC4332) a client offers and one
sent structured, a relay held until a second officer releases it, and a digest with its
picture (saved outside the throwaway folder, so that it can be opened afterwards).
Afterwards the homeserver keeps running (until Ctrl-C) so that anyone can log in with
Element and look around.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import secrets
import signal
import tempfile
import textwrap
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from nio import RoomGetStateEventResponse, RoomMessageNotice

from bot.app import LiaisonBot, Secrets
from bot.config import load_config
from bot.devtools import siemdemo
from bot.devtools.botenv import rooms_config
from bot.devtools.devserver import DevServer
from bot.devtools.e2ee_client import E2EEClient, cross_sign, talk
from bot.devtools.testca import TestCA
from bot.gate.config import register_entry
from bot.storage import Store
from bot.storage.migrate import upgrade
from commands.slash import COMMAND_FIELD, COMMANDS_EVENT
from policy.ids import UserId

# deu relays to the NATO and the EU room, GEHEIM and above only once a second officer has
# released it; nato-s has its twice-daily digest.
ROOMS = rooms_config("eu-s", relay_to=("nato-s", "eu-s"), digest=True).replace(
    'to = ["nato-s", "eu-s"]\n',
    'to = ["nato-s", "eu-s"]\napproval = "second-officer"\napproval_from = "GEHEIM"\n',
    1,
)

# The bot's notice of a held item names its id; its receipt to the sender says so too.
HELD = re.compile(r"Held for release approval: (R\d+)")
# "3 item(s): FLASH 1, PRIORITY 2." (the digest's counts) and the exercise line after them.
DIGEST_COUNTS = re.compile(r"(\d+) item\(s\): ([^.]*)\.")
DIGEST_EXERCISE = re.compile(r"Exercise traffic \((\d+),")
# "…: 4 item(s); FLASH 1, IMMEDIATE 0, PRIORITY 2, ROUTINE 0; exercise 1." (the alt text)
ALT_COUNTS = re.compile(r": (\d+) item\(s\); ([^;]*); exercise (\d+)\.$")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@dataclass
class Step:
    title: str
    ok: bool = True
    lines: list[str] = field(default_factory=list)


@dataclass
class Report:
    out: Callable[[str], None]
    steps: list[Step] = field(default_factory=list)

    def step(self, title: str) -> Step:
        step = Step(title)
        self.steps.append(step)
        self.out(f"\n── {len(self.steps)}. {title}")
        return step

    def show(self, step: Step, who: str, text: str) -> None:
        self.out(f"   {who}:")
        for line in text.splitlines() or [""]:
            self.out(f"   │ {line}")
        step.lines.append(text)

    def check(self, step: Step, ok: bool, what: str) -> None:
        step.ok = step.ok and ok
        self.out(f"   {'✓' if ok else '✗'} {what}")

    @property
    def passed(self) -> bool:
        return all(s.ok for s in self.steps)


# On the federated demo's NATO homeserver: the NATO and EU analysts and the visitor.
REMOTE_PEOPLE = ("analyst-nor", "analyst-aut", "visitor-fra")


def federated_rooms(national: DevServer, nato: DevServer) -> str:
    """ROOMS, with the NATO and EU rooms open to the NATO server's members too."""
    servers = f'servers = ["{national.server_name}", "{nato.server_name}"]\n'
    rooms = ROOMS
    for label in ('label = "NATO SECRET"\n', 'label = "EU SECRET"\n'):
        rooms = rooms.replace(label, label + servers, 1)
    return rooms


def config_text(
    server: DevServer, bot: str, admin: str, officers: Sequence[str], rooms: str = ROOMS
) -> str:
    listed = ", ".join(f'"{officer}"' for officer in officers)
    return (
        textwrap.dedent(f"""
        [homeserver]
        url = "{server.base_url}"
        user_id = "{bot}"
        password_env = "LIAISON_DEMO_PASSWORD"
        pickle_key_env = "LIAISON_DEMO_PICKLE_KEY"

        [storage]
        database_url = "sqlite:///liaison.db"
        crypto_store = "crypto"
        data_key_env = "LIAISON_DEMO_DATA_KEY"

        [bot]
        admins = ["{admin}"]
        officers = [{listed}]
        """)
        + rooms
    )


async def scenario(
    workdir: Path,
    out: Callable[[str], None],
    *,
    linger: bool,
    picture_dir: Path,
    federated: bool = False,
    siem: bool = False,
) -> bool:
    report = Report(out)
    receiver: siemdemo.Receiver | None = None
    if siem:
        step = report.step("A local rsyslog receives the audit log as syslog over TLS (RFC 5425)")
        try:
            receiver = await asyncio.to_thread(siemdemo.Receiver.start, workdir / "siem")
        except Exception as exc:  # rsyslogd would not start: say so, start nothing else
            report.check(step, False, f"rsyslog did not start: {exc}")
            return False
        report.check(step, True, f"rsyslogd listening on 127.0.0.1:{receiver.rsyslog.port} (TLS)")
    ca = TestCA.create(workdir / "ca") if federated else None
    server = DevServer(workdir / "synapse", federation=ca)
    remote = DevServer(workdir / "synapse-nato", federation=ca) if federated else server
    if federated:
        step = report.step(
            "Two throwaway Synapses federating over TLS on loopback: the German one and NATO's"
        )
        await asyncio.gather(asyncio.to_thread(server.start), asyncio.to_thread(remote.start))
        report.check(step, True, f"national homeserver {server.server_name} at {server.base_url}")
        report.check(step, True, f"NATO homeserver {remote.server_name} at {remote.base_url}")
    else:
        step = report.step("A throwaway Synapse homeserver on loopback (SQLite, temporary folder)")
        await asyncio.to_thread(server.start)
        report.check(step, True, f"homeserver running at {server.base_url}")

    def password() -> str:
        return f"demo-{secrets.token_hex(4)}"

    names = (
        "liaison",
        "secadmin",
        "lo-deu",
        "fdo-deu",
        "analyst-nor",
        "analyst-aut",
        "visitor-fra",
    )
    home = {name: remote if name in REMOTE_PEOPLE else server for name in names}
    users = {name: await asyncio.to_thread(home[name].register, name, password()) for name in names}
    config_path = workdir / "config.toml"
    config_path.write_text(
        config_text(
            server,
            users["liaison"].user_id,
            users["secadmin"].user_id,
            (users["lo-deu"].user_id, users["fdo-deu"].user_id),
            federated_rooms(server, remote) if federated else ROOMS,
        )
        + (receiver.config_section() if receiver is not None else "")
    )
    config = load_config(config_path)
    data_key = secrets.token_hex(16)
    # The homeserver gate enforces this register, verifying its rows with the data key's
    # public half.
    server.add_register(register_entry(config), data_key=data_key)
    await asyncio.to_thread(upgrade, config.database_url())
    store = Store.from_url(config.database_url())
    bot = LiaisonBot(
        config,
        store,
        Secrets(secrets.token_hex(16), data_key, users["liaison"].password, None),
    )
    clients: list[E2EEClient] = []
    try:
        step = report.step("The bot starts: one cross-signed device, three encrypted rooms")
        await bot.start()
        await asyncio.wait_for(bot.synced.wait(), 60)
        for key, room in bot.rooms.by_key.items():
            report.check(step, True, f"{key}: {room.topic} (invite-only, encrypted)")

        async def client(name: str) -> E2EEClient:
            c = await E2EEClient.create(
                home[name], users[name], workdir / f"client-{name}", device_name="liaison-demo"
            )
            await cross_sign(home[name], c, {})
            await c.start()
            clients.append(c)
            return c

        admin, officer = await client("secadmin"), await client("lo-deu")
        fdo = await client("fdo-deu")
        nor, aut = await client("analyst-nor"), await client("analyst-aut")
        bot_id = users["liaison"].user_id
        step = report.step(
            "The bot opens a DM with the security administrator; their client reads the slash"
            " commands (MSC4332) offered there"
        )
        dm = await bot.messenger.direct_room_for(UserId(admin.user_id))
        await admin.join(await admin.wait_for_invite(timeout=60, inviter=bot_id), timeout=60)
        offered = await commands_offered(admin, dm, bot_id)
        syntaxes = [str(c.get("syntax", "")) for c in offered]
        grant = next((x for x in syntaxes if x.startswith("clearance grant ")), None)
        report.check(
            step, bool(offered), f"the {COMMANDS_EVENT} state event offers {len(offered)} commands"
        )
        report.check(step, grant is not None, f"among them: {grant or 'clearance grant (missing)'}")

        step = report.step("The security administrator keeps the clearance register (in the DM)")
        grants = [
            ("lo-deu", "DEU GEHEIM", "DEU"),
            ("lo-deu", "NATO SECRET", "DEU"),
            ("lo-deu", "EU SECRET", "DEU"),
            ("fdo-deu", "DEU GEHEIM", "DEU"),
            ("analyst-aut", "EU SECRET", "AUT"),
            ("visitor-fra", "NATO CONFIDENTIAL", "FRA"),
        ]
        for name, level, nation in grants:
            command = f'!clearance grant {users[name].user_id} "{level}" --nationality {nation}'
            await talk(admin, dm, command, "Clearance updated", timeout=60)
            report.check(step, True, f"{command}")

        step = report.step(
            "One grant sent as a structured command (what an MSC4332 client sends once the"
            " administrator picks /clearance grant and fills in its arguments)"
        )
        arguments = {
            "user": users["analyst-nor"].user_id,
            "marking": "NATO SECRET",
            "nationality": "NOR",
        }
        content = {
            "msgtype": "m.text",
            "body": f"!clearance grant {arguments['user']} NATO SECRET --nationality NOR",
            COMMAND_FIELD: {"syntax": grant or "clearance grant", "arguments": arguments},
            "m.mentions": {"user_ids": [bot_id]},
        }
        report.show(
            step,
            "secadmin's client sends (the content, before encryption)",
            json.dumps(content, indent=2, ensure_ascii=False),
        )
        mark = admin.event_count(dm)
        await admin.send_event(dm, "m.room.message", content)
        answer = await admin.wait_for(dm, from_bot(bot_id), timeout=60, after=mark)
        report.show(step, "the bot answers the administrator", answer.body)
        report.check(
            step,
            "Clearance updated" in answer.body and arguments["user"] in answer.body,
            "granted NATO SECRET to analyst-nor (a value with a space, no quotes)",
        )

        step = report.step("An invite the register does not allow is refused, with the reason")
        refusal = await talk(
            admin, dm, f"!invite {users['visitor-fra'].user_id} nato-s", "may not join", timeout=60
        )
        report.show(step, "the bot answers the administrator", refusal.body)
        report.check(
            step,
            "below the room's NATO SECRET" in refusal.body,
            "refused: a NATO CONFIDENTIAL grant does not cover a NATO SECRET room",
        )

        step = report.step("Cleared people are invited and join")
        for c, key in (
            (officer, "deu"),
            (officer, "nato-s"),
            (officer, "eu-s"),
            (fdo, "deu"),
            (nor, "nato-s"),
            (aut, "eu-s"),
        ):
            await talk(admin, dm, f"!invite {c.user_id} {key}", "Invited", timeout=60)
            await c.join(await c.wait_for_invite(timeout=60), timeout=60)
            report.check(step, True, f"{c.user_id} joined {key}")

        step = report.step(
            "The German liaison officer posts tagged intelligence in the national room;"
            " GEHEIM waits for a second officer"
        )
        deu, nato_s, eu_s = (bot.rooms.by_key[k].room_id for k in ("deu", "nato-s", "eu-s"))
        message = (
            "[GEHEIM // REL TO NATO] [PRIORITY] Convoy of 12 vehicles near Kiel heading "
            "east #logistics"
        )
        report.show(step, "lo-deu sends in deu", message)
        nor_mark, aut_mark = nor.event_count(nato_s), aut.event_count(eu_s)
        deu_mark = officer.event_count(deu)
        receipt = await talk(officer, deu, message, "Not relayed to", timeout=60)
        notice = await officer.wait_for_text(
            deu, "Held for release approval:", timeout=60, after=deu_mark
        )
        report.show(step, "the bot's receipt to the officer", receipt.body)
        report.show(step, "the bot's notice in deu", notice.body)
        held = HELD.search(notice.body)
        request = held.group(1) if held else "R?"
        report.check(
            step,
            held is not None
            and f"Not relayed to nato-s: held for release approval ({request})" in receipt.body,
            f"held for release approval as {request}",
        )
        report.check(
            step,
            "Not relayed to eu-s: not releasable to AUT, CYP, IRL, MLT" in receipt.body,
            "refused for EU SECRET: Austria, Cyprus, Ireland and Malta are not in NATO",
        )
        # Below GEHEIM an item goes at once: when this one is in nato-s the bot has handled
        # the convoy before it, so its absence there means it is held.
        routine = (
            "[VS-VERTRAULICH // REL TO NATO] [ROUTINE] Ferry timetable Kiel–Oslo changes"
            " on Monday #logistics"
        )
        report.show(step, "lo-deu sends in deu (below GEHEIM: not held)", routine)
        await officer.send_text(deu, routine)
        await nor.wait_for_text(nato_s, "Ferry timetable", timeout=60, after=nor_mark)
        report.check(
            step,
            not any("Convoy" in b for b in bodies_after(nor, nato_s, nor_mark)),
            "analyst-nor's NATO room has the routine item, not yet the convoy",
        )
        report.check(
            step,
            not any("Convoy" in b for b in bodies_after(aut, eu_s, aut_mark)),
            "analyst-aut's EU room received nothing of it",
        )

        step = report.step("A second German officer (foreign disclosure) releases it")
        command = f"!release approve {request}"
        report.show(step, "fdo-deu sends in deu", command)
        approved = await talk(fdo, deu, command, request, timeout=60)
        report.show(step, "the bot answers", approved.body)
        copy = await nor.wait_for_text(nato_s, "Convoy of 12 vehicles", timeout=60, after=nor_mark)
        report.show(step, "analyst-nor reads in nato-s (decrypted)", copy.body)
        report.check(
            step,
            "Relayed to nato-s as NATO SECRET" in approved.body,
            f"{request} approved by fdo-deu and relayed to nato-s",
        )
        report.check(
            step,
            copy.body.startswith("NATO SECRET — originator: DEU GEHEIM // REL TO NATO"),
            "relayed to NATO SECRET with the originator's marking",
        )

        step = report.step("More traffic for the NATO room, below GEHEIM (no approval needed)")
        for text in (
            "[VS-VERTRAULICH // REL TO NATO] [FLASH] Air defence radar outage at Putlos",
            "[VS-VERTRAULICH // REL TO NATO] [IMMEDIATE] Port of Kiel closed to civil traffic",
            "[VS-VERTRAULICH // REL TO NATO] [PRIORITY] Fuel depot Eckernförde resupplied",
            "[VS-VERTRAULICH // REL TO NATO] [EXERCISE] [PRIORITY] Drill: bridge at Rendsburg",
        ):
            await officer.send_text(deu, text)
            await nor.wait_for_text(nato_s, text.rsplit("] ", 1)[1], timeout=60, after=nor_mark)
            report.check(step, True, f"relayed to nato-s: {text}")

        step = report.step(
            "Duty staff ask for the situation digest of the NATO room, with its picture"
        )
        mark = nor.event_count(nato_s)
        await talk(nor, nato_s, "!digest now", "Digest posted", timeout=60)
        digest = await nor.wait_for_text(nato_s, "Situation digest", timeout=60, after=mark)
        report.show(step, "analyst-nor reads in nato-s (decrypted)", digest.body)
        report.check(step, "Convoy of 12 vehicles" in digest.body, "the released item is in it")
        image = await nor.wait_for(nato_s, is_image, timeout=60, after=mark)
        alt = str(image.source["content"].get("body", ""))
        report.show(step, "the picture that follows it: its alt text", alt)
        picture_dir.mkdir(parents=True, exist_ok=True)
        saved = picture_dir / "digest-nato-s.png"
        png = await nor.download_image(image, save_to=saved)
        report.check(
            step,
            png.startswith(PNG_MAGIC) and saved.read_bytes() == png,
            f"downloaded and decrypted: a PNG of {len(png) // 1024} KB",
        )
        report.check(step, counts_agree(digest.body, alt), "the alt text's counts are the digest's")
        out(f"   Open the picture: {saved}")

        if receiver is not None:
            await siem_step(report, receiver, store)

        out("\n" + ("Scenario passed." if report.passed else "Scenario FAILED (see ✗ above)."))
        if linger:
            out(
                textwrap.dedent(f"""
                The homeserver keeps running until Ctrl-C. Log in with any Matrix client
                (e.g. Element: Sign in → Edit homeserver → {server.base_url}):""")
            )
            if federated:
                out(f"   (the analysts and the visitor are on NATO's server: {remote.base_url})")
            for name in names[1:]:
                out(f"   {users[name].user_id:32}  password {users[name].password}")
            out(
                "   (verify the new session with your other devices, or trust it, to read history"
                " shared after you log in; rooms show history only from joining)"
            )
            if receiver is not None:
                out(f"   rsyslog writes the bot's audit events to {receiver.rsyslog.output}")
            out(f"   the digest's picture, as analyst-nor's client saved it: {saved}")
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            for sig in (signal.SIGINT, signal.SIGTERM):
                loop.add_signal_handler(sig, stop.set)
            await stop.wait()
        return report.passed
    except Exception as exc:  # a scenario that breaks says so plainly, then cleans up
        out(f"\nScenario FAILED: {type(exc).__name__}: {exc}")
        return False
    finally:
        await asyncio.gather(*(c.stop() for c in clients), return_exceptions=True)
        with contextlib.suppress(Exception):
            await bot.close()
        store.close()
        await asyncio.to_thread(server.stop)
        if remote is not server:
            await asyncio.to_thread(remote.stop)
        if receiver is not None:
            await asyncio.to_thread(receiver.stop)


async def commands_offered(client: E2EEClient, room_id: str, bot_id: str) -> list[dict[str, Any]]:
    """The commands of the bot's MSC4332 state event in the room, as a client reads them
    (once the bot has published it: it does when the person joins)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 60
    while True:
        response = await client.client.room_get_state_event(room_id, COMMANDS_EVENT, bot_id)
        if isinstance(response, RoomGetStateEventResponse):
            commands = response.content.get("commands", [])
            return [c for c in commands if isinstance(c, dict)]
        if loop.time() > deadline:
            return []
        await asyncio.sleep(0.5)


def from_bot(bot_id: str) -> Callable[[Any], bool]:
    """A notice from the bot: its answer, whatever it says (a refusal shows as ✗)."""
    return lambda event: isinstance(event, RoomMessageNotice) and event.sender == bot_id


def is_image(event: Any) -> bool:
    """A decrypted m.image (the digest's picture)."""
    content = getattr(event, "source", {}).get("content", {})
    return bool(content.get("msgtype") == "m.image")


def bodies_after(client: E2EEClient, room_id: str, mark: int) -> list[str]:
    """The bodies of the events the client received in the room after `mark`."""
    return [
        str(body)
        for event in client.events.get(room_id, [])[mark:]
        if isinstance(body := getattr(event, "body", None), str)
    ]


def counts_agree(digest: str, alt: str) -> bool:
    """Whether the picture's alt text counts what the digest's text counts: per precedence
    (a precedence the digest leaves out: none), exercise apart, the total both together."""
    counted, in_alt = DIGEST_COUNTS.search(digest), ALT_COUNTS.search(alt)
    if counted is None or in_alt is None:
        return False
    exercise = DIGEST_EXERCISE.search(digest)
    drills = int(exercise.group(1)) if exercise else 0

    def parts(text: str) -> dict[str, int]:
        pairs = (part.rsplit(" ", 1) for part in text.split(", ") if part)
        return {name: int(n) for name, n in pairs if int(n)}

    return (
        parts(counted.group(2)) == parts(in_alt.group(2))
        and int(in_alt.group(3)) == drills
        and int(in_alt.group(1)) == int(counted.group(1)) + drills
    )


async def siem_step(report: Report, receiver: siemdemo.Receiver, store: Store) -> None:
    """Wait for the export to catch up, then check and show what rsyslog received."""
    step = report.step("The SOC's SIEM (the local rsyslog) received the audit log")
    try:
        summary = await siemdemo.check(receiver, store)
    except siemdemo.SiemDemoError as exc:
        report.check(step, False, str(exc))
        return
    report.out(summary.line)
    report.check(step, summary.received > 0, "audit events received over TLS")
    report.check(
        step,
        summary.valid == summary.received,
        "each one a valid OCSF 1.5.0 event (the official class schema, offline)",
    )
    report.check(
        step,
        not summary.gaps and not summary.duplicates,
        "every audit id once, from the first received to the bot's newest row",
    )
    for problem in summary.problems[:5]:
        report.out(f"   ✗ {problem}")
    if summary.gaps:
        report.out(f"   ✗ missing audit ids: {summary.gaps[:20]}")
    for event in summary.samples:
        meta = event.get("metadata", {})
        report.show(
            step,
            f"audit row {meta.get('sequence')}: {event.get('class_name')}",
            siemdemo.pretty(event),
        )


def siem_missing() -> str | None:
    """Why `demo --siem` cannot run here (rsyslog, its OpenSSL driver, the OCSF schema)."""
    return siemdemo.missing()


def run_demo(
    *,
    exit_after_scenario: bool,
    federated: bool = False,
    siem: bool = False,
    out: Callable[[str], None] = print,
    picture_dir: Path | None = None,
) -> bool:
    """Play the scenario in a throwaway folder (deleted at the end). The digest's picture
    is saved in `picture_dir`, which outlives it: by default a new folder
    `liaison-demo-…` in the system's temporary directory, named in the output."""
    if siem and (reason := siem_missing()) is not None:
        out(f"error: {reason}")
        return False
    if picture_dir is None:
        picture_dir = Path(tempfile.mkdtemp(prefix="liaison-demo-"))
        out(f"The digest's picture will be saved in {picture_dir} (kept after the demo).")
    with tempfile.TemporaryDirectory(prefix="liaison-demo-") as tmp:
        return asyncio.run(
            scenario(
                Path(tmp),
                out,
                linger=not exit_after_scenario,
                picture_dir=picture_dir,
                federated=federated,
                siem=siem,
            )
        )


__all__ = ["run_demo", "siem_missing"]
