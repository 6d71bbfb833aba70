"""Scheduled situation digests.

APScheduler 3's AsyncIOScheduler runs on the bot's loop with an in-memory job store rebuilt
at start from the config and our own schedule table; each window is recorded (digest_runs)
before it is posted, with the events it will post (sealed) and their transaction ids,
derived from the window, so a restart never posts a window twice: a run a crash (or a
failed send) left claimed is re-driven at start and on its schedule's next tick with
exactly those events and ids, and the homeserver keeps one copy of a part that had gone
out; past the homeserver's memory of transaction ids (TXN_MEMORY) it is recorded stale and
the admins are told instead. A window missed while the bot was down is posted once, marked
delayed, within `[bot] digest_catchup_grace`; older misses are skipped and audited.

Each part with items is followed by its picture (bot/services/digest_chart.py): that part's
items per hour over the whole window, under that part's banner, so a digest split into parts
has one picture per part, each beside the text it counts; a part with no items, or a
schedule with `chart = false`, has none. What a picture draws (counts, no text) is sealed
with the run's parts; it is sent under a transaction id made from its part's, after its part
and before the run is recorded posted, so a re-drive sends it again under the same id and
the homeserver keeps one copy (the re-drive uploads the media again: an unreferenced upload
is the cost of not recording each send).

Only a schedule that has recorded a window can have missed one: on its first start there is
nothing to catch up. The older misses of one downtime are recorded as one "skipped" run and
one audit entry (first and last window end, and how many), however many there were.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import logging
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence, Set
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol, runtime_checkable

from apscheduler.schedulers.asyncio import AsyncIOScheduler
from apscheduler.triggers.cron import CronTrigger

from bot.config import Config
from bot.metrics import Metrics
from bot.schedule import cron_trigger, format_duration, parse_duration
from bot.services.digest_chart import Chart, ChartData, render_chart
from bot.services.ports import Audit, HomeserverError, Messenger
from bot.services.relay import TXN_MEMORY
from bot.services.render import EXERCISE_LINE, LABEL_KEY, target_banner
from bot.services.rooms import ManagedRoom, RoomDirectory
from bot.storage import (
    AuditNote,
    DigestRun,
    DigestSchedule,
    IntelItem,
    Origin,
    RunState,
    ScheduleKey,
    Store,
    StoreError,
    in_thread,
)
from bot.storage.sealing import Sealer, SealError
from bot.wire import EVENT_LIMIT, encrypted_size, txn_id
from commands.context import CommandError, PermissionDenied, Role
from commands.document import Banner, Code, Document, Inline, Strong, doc, heading, items, para
from policy import (
    Label,
    MarkingError,
    Precedence,
    dominant_label,
    may_release,
    record_mismatch,
    stored_label,
)
from policy.adatp4774 import label_metadata, to_json
from policy.ids import EventId

log = logging.getLogger(__name__)

TOP_PER_PRECEDENCE = 25  # a very large window shows this many per precedence, and the count
MAX_ITEM_CHARS = 500


@dataclass(frozen=True)
class DigestItem:
    event_id: str
    label: Label
    source_key: str
    source: ManagedRoom | None
    precedence: Precedence
    exercise: bool
    topics: tuple[str, ...]
    text: str
    created_at: datetime


# ---------------------------------------------------------------- content

# Beside the message's own label (LABEL_KEY: the digest's banner, as ADatP-4774), each item
# it shows with its machine-readable label: the originator's and the room's equivalent.
DIGEST_KEY = "io.github.liaison_bot.digest"


@dataclass(frozen=True)
class DigestPart:
    """One digest event: what people read, and the labels machines read; and what its
    picture draws (this part's items, over the whole window, under this part's banner),
    None for a part with no items."""

    document: Document
    labels: dict[str, Any]
    chart: ChartData | None = None

    @property
    def plain(self) -> str:
        return self.document.plain

    @property
    def label_content(self) -> dict[str, Any]:
        """The message's own label, for the picture: the same banner as the text."""
        return {LABEL_KEY: self.labels[LABEL_KEY]}

    @property
    def content(self) -> dict[str, Any]:
        return {
            "msgtype": "m.notice",
            "body": self.document.plain,
            "format": "org.matrix.custom.html",
            "formatted_body": self.document.html,
            **self.labels,
        }


def _labels(room: ManagedRoom, banner: Label, shown: Sequence[DigestItem]) -> dict[str, Any]:
    scheme = [room.policy.scheme]
    return {
        LABEL_KEY: to_json(label_metadata(banner, scheme)),
        DIGEST_KEY: {
            "items": [
                {
                    "source_event": i.event_id,
                    LABEL_KEY: to_json(label_metadata(i.label, scheme, created=i.created_at)),
                }
                for i in shown
            ]
        },
    }


def select_items(room: ManagedRoom, candidates: Iterable[DigestItem]) -> list[DigestItem]:
    """Only what the room may see: each item's label released from its own room to this one."""
    chosen: dict[str, DigestItem] = {}
    for item in candidates:
        if item.event_id in chosen or item.source is None:
            continue
        if may_release(item.label, item.source.policy, room.policy).allowed:
            chosen[item.event_id] = item
    return sorted(chosen.values(), key=lambda i: (int(i.precedence), i.created_at))


def build_digest(
    room: ManagedRoom,
    selected: Sequence[DigestItem],
    start: datetime,
    end: datetime,
    *,
    delayed: bool = False,
    top: int = TOP_PER_PRECEDENCE,
    part: tuple[int, int] | None = None,
    shrink: bool = True,
    held: Set[str] = frozenset(),
) -> Document:
    """The digest document (see `build_digest_part`)."""
    return build_digest_part(
        room, selected, start, end, delayed=delayed, top=top, part=part, shrink=shrink, held=held
    ).document


def build_digest_part(
    room: ManagedRoom,
    selected: Sequence[DigestItem],
    start: datetime,
    end: datetime,
    *,
    delayed: bool = False,
    top: int = TOP_PER_PRECEDENCE,
    part: tuple[int, int] | None = None,
    shrink: bool = True,
    held: Set[str] = frozenset(),
) -> DigestPart:
    """The digest document: heading with window and banner, counts, items, topics; and the
    machine-readable labels of the message and of each item it shows.
    `part` (i, n) marks one of n events a large window is split into; with `shrink`, a
    document over the event limit shows fewer items per precedence (the rest counted).
    `held`: event ids of items held for release approval; the room's own are marked so
    (`held_mark`): its members see them, while no target has a copy yet.

    The banner that opens and closes the message is the dominant label of every item shown,
    exercise ones included: an exercise item is kept out of the counts, not out of the
    protection the message needs, so a NATO SECRET drill under a NATO UNCLASSIFIED banner
    would under-mark the whole message.
    """
    real = [i for i in selected if not i.exercise]
    drill = [i for i in selected if i.exercise]
    window = f"{start:%Y-%m-%d %H:%MZ} → {end:%Y-%m-%d %H:%MZ}"
    dominant = dominant_label([i.label for i in selected], room.policy.scheme, room.policy.audience)
    banner = dominant.banner if dominant is not None else room.banner
    rank = dominant.rank if dominant is not None else room.policy.rank
    labelled = dominant if dominant is not None else room.label
    shown: list[DigestItem] = []
    blocks: list[Any] = [
        para(Banner(banner, rank)),
        heading(
            f"Situation digest — {room.name} ({room.key})"
            + (f", part {part[0]} of {part[1]}" if part else "")
        ),
        para(
            f"Window {window}" + (" (delayed: the bot was down when it was due)" if delayed else "")
        ),
    ]
    if not real and not drill:
        blocks.append(para("No items in this window."))
        blocks.append(para(Banner(banner, rank)))
        return DigestPart(doc(*blocks), _labels(room, labelled, shown))
    if real:
        blocks.extend(_section(room, real, top, shown, held))
    else:
        blocks.append(para("No real items in this window."))
    if drill:
        blocks.append(para(Banner(EXERCISE_LINE, 0)))
        blocks.append(heading(f"Exercise traffic ({len(drill)}, not counted above)"))
        blocks.extend(_section(room, drill, top, shown, held))
        blocks.append(para(Banner(EXERCISE_LINE, 0)))
    blocks.append(para(Banner(banner, rank)))
    chart = ChartData.of(selected, start, end, banner, rank)
    built = DigestPart(doc(*blocks), _labels(room, labelled, shown), chart)
    if shrink and not _fits(built) and top > 1:
        return build_digest_part(
            room,
            selected,
            start,
            end,
            delayed=delayed,
            top=max(1, top // 2),
            part=part,
            held=held,
        )
    return built


MAX_PARTS = 8  # a window bigger than this many events shows fewer items per part


def build_digest_parts(
    room: ManagedRoom,
    selected: Sequence[DigestItem],
    start: datetime,
    end: datetime,
    *,
    delayed: bool = False,
    held: Set[str] = frozenset(),
) -> list[DigestPart]:
    """The digest as one event, or split into as few parts as fit the event limit each
    (every item shown), up to MAX_PARTS; past that each part shows fewer (counted).
    `held` as `build_digest_part`'s."""
    parts = 1
    while True:
        size = -(-len(selected) // parts) if selected else 1
        chunks = [selected[i : i + size] for i in range(0, max(len(selected), 1), size)]
        documents = [
            build_digest_part(
                room,
                chunk,
                start,
                end,
                delayed=delayed,
                part=(n + 1, len(chunks)) if len(chunks) > 1 else None,
                shrink=parts >= MAX_PARTS,
                held=held,
            )
            for n, chunk in enumerate(chunks)
        ]
        if parts >= MAX_PARTS or all(_fits(d) for d in documents):
            return documents
        parts *= 2


def _fits(part: DigestPart) -> bool:
    """Whether the part fits one event as it is sent (JSON, megolm, base64)."""
    return encrypted_size(part.content) <= EVENT_LIMIT


HELD_MARK = " ⏸ held for release approval"


def held_mark(room: ManagedRoom, item: DigestItem, held: Set[str]) -> str:
    """What follows an item's text where it is listed (digest, search): a note that it is
    held for release approval, in its source room only (another room never lists a held
    item: it has no copy there), or nothing."""
    return HELD_MARK if item.source_key == room.key and item.event_id in held else ""


def _section(
    room: ManagedRoom,
    selected: Sequence[DigestItem],
    top: int,
    shown: list[DigestItem],
    held: Set[str] = frozenset(),
) -> list[Any]:
    by_precedence = Counter(i.precedence for i in selected)
    by_source = Counter(i.source_key for i in selected)
    counts = ", ".join(f"{p.name} {by_precedence[p]}" for p in Precedence if by_precedence[p])
    sources = ", ".join(f"{k} {n}" for k, n in sorted(by_source.items()))
    blocks: list[Any] = [para(f"{len(selected)} item(s): {counts}. By source: {sources}.")]
    groups: dict[Precedence, list[DigestItem]] = defaultdict(list)
    for item in selected:
        groups[item.precedence].append(item)
    for precedence in Precedence:
        group = groups.get(precedence, [])
        if not group:
            continue
        rows: list[tuple[Inline | str, ...]] = []
        for item in group[:top]:
            shown.append(item)
            marked, rank = target_banner(item.label, room.policy.scheme)
            text = (
                item.text if len(item.text) <= MAX_ITEM_CHARS else item.text[:MAX_ITEM_CHARS] + "…"
            )
            when = f" {item.created_at:%m-%d %H:%MZ} ({item.source_key}) "
            rows.append((Banner(marked, rank), when, text + held_mark(room, item, held)))
        blocks.append(heading(f"{precedence.name} ({len(group)})"))
        blocks.append(items(rows))
        if len(group) > top:
            blocks.append(
                para(f"… and {len(group) - top} more {precedence.name} item(s) not shown.")
            )
    topics = Counter(t for i in selected for t in i.topics)
    if topics:
        blocks.append(para("Topics: " + ", ".join(f"#{t} ({n})" for t, n in topics.most_common())))
    return blocks


# ---------------------------------------------------------------- schedule arithmetic


_TICK = timedelta(microseconds=1)  # the finest step of a datetime: "after" made exclusive


def _iter_fire_times(trigger: CronTrigger, after: datetime, until: datetime) -> Iterator[datetime]:
    """The fire times in (after, until], stepping in UTC.

    Why UTC and no previous fire time: adding to a zoned datetime is wall-clock arithmetic and
    drops `fold`, so one microsecond after 01:59 (second time round) in a zone that turns its
    clocks back is 01:59 the *first* time round, and APScheduler 3 (which does the same when
    given the previous fire time) answers the same fire time for ever; a `59 * * * *` schedule
    in Australia/Lord_Howe looped here. The check that each step advances makes the walk end
    whatever the trigger answers.
    """
    moment = after.astimezone(UTC) + _TICK
    while True:
        fire = trigger.get_next_fire_time(None, moment)
        if fire is None or fire > until or fire < moment:
            return
        fire = fire.astimezone(UTC)
        yield fire
        moment = fire + _TICK


def fire_times(
    trigger: CronTrigger, after: datetime, until: datetime, limit: int = 1000
) -> list[datetime]:
    """The trigger's fire times in (after, until], oldest first (at most `limit`: the
    *oldest* ones, so never take the last of them as "the newest"; see latest_fire_time)."""
    return list(itertools.islice(_iter_fire_times(trigger, after, until), limit))


def latest_fire_time(trigger: CronTrigger, after: datetime, until: datetime) -> datetime | None:
    """The trigger's newest fire time in (after, until], or None.

    Why a search: APScheduler 3 only steps forward, and walking forward from `after` costs one
    step per fire time (a `* * * * *` schedule fires 1 440 times a day; any cap on the walk
    then ends it hours early). "The earliest fire time at or after t" only grows with t, so
    we search backwards from `until` instead: double a span back until a fire time falls in
    it, then bisect to the microsecond. That is O(log) calls whatever the frequency.
    """

    def first_from(moment: datetime) -> datetime | None:
        fire = trigger.get_next_fire_time(None, moment)
        return fire if fire is not None and fire <= until else None

    after, until = after.astimezone(UTC), until.astimezone(UTC)  # UTC arithmetic: see above
    floor = after + _TICK
    if floor > until:
        return None
    span = timedelta(seconds=1)
    while True:  # lo: some fire time in [lo, until]
        lo = max(until - span, floor)
        if first_from(lo) is not None:
            break
        if lo == floor:
            return None
        span *= 2
    hi = until + _TICK  # no fire time in [hi, until]
    while hi - lo > _TICK:
        mid = lo + (hi - lo) // 2
        if first_from(mid) is not None:
            lo = mid
        else:
            hi = mid
    fire = first_from(lo)  # lo itself, or hi at a DST gap (02:30 that never was -> 03:00)
    assert fire is not None
    return fire.astimezone(UTC)


@dataclass(frozen=True)
class MissedWindows:
    """Windows missed while down and too old to post, summarised: a minutely schedule down
    for a day misses 1 440 of them, and one row and one audit entry say as much as 1 440."""

    first: datetime  # the oldest window end
    last: datetime  # the newest window end (the one recorded as skipped)
    count: int


@dataclass(frozen=True)
class CatchUp:
    """What a start owes one schedule: a window to post late, and the missed ones skipped."""

    late: datetime | None = None
    skipped: MissedWindows | None = None


def plan_catch_up(
    trigger: CronTrigger,
    last_end: datetime | None,
    now: datetime,
    grace: timedelta,
    lookback: timedelta = timedelta(days=7),
) -> CatchUp:
    """After a downtime: the newest missed window, if within `grace`, is posted once; older
    missed ones (back to `lookback`) are skipped, as one summary.

    A window can be missed only after the schedule has run: with no run recorded (the first
    start, or a schedule just added) nothing is owed, even if fire times passed in the last
    `grace`, because the bot was never down for them. Counting the skipped windows walks them
    once (at most a week of a minutely schedule, ~10 000 steps), so call this off the loop.
    """
    if last_end is None:
        return CatchUp()
    since = max(last_end, now - lookback)
    newest = latest_fire_time(trigger, since, now)
    if newest is None:
        return CatchUp()
    late = newest if now - newest <= grace else None
    last_skipped = newest if late is None else latest_fire_time(trigger, since, newest - _TICK)
    if last_skipped is None:
        return CatchUp(late)
    skipped = _iter_fire_times(trigger, since, last_skipped)
    first = next(skipped)  # there is one: last_skipped itself
    return CatchUp(late, MissedWindows(first, last_skipped, 1 + sum(1 for _ in skipped)))


# ---------------------------------------------------------------- the service


def part_txn_ids(schedule_key: str, end: datetime, count: int) -> list[str]:
    """The fixed transaction ids of a window's parts (the first is the window's own id, as
    before parts were stored, so a run claimed then is re-sent under the same ids)."""
    txn = "dg" + hashlib.sha256(f"{schedule_key}|{end.isoformat()}".encode()).hexdigest()[:40]
    return [txn if n == 0 else f"{txn}-{n}" for n in range(count)]


def chart_txn_id(part_txn: str) -> str:
    """The fixed transaction id of a part's picture, made from the part's own: a re-drive
    sends the picture under the same id, so the homeserver keeps one copy of it too."""
    return f"{part_txn}-chart"


@runtime_checkable
class ImageSender(Protocol):
    """The pictures' port: the PNG encrypted and uploaded, then an m.image sent through the
    same encrypted send as text (room keys only for the readers' trusted devices)."""

    async def send_image(
        self,
        room_id: str,
        png: bytes,
        *,
        width: int,
        height: int,
        alt: str,
        label_content: Mapping[str, Any],
        thumbnail: tuple[bytes, int, int] | None = None,
        tx_id: str | None = None,
    ) -> EventId: ...


# A stored part: its transaction id, its content, and the picture to post after it.
StoredPart = tuple[str, dict[str, Any], ChartData | None]


def parts_binding(schedule_key: str, end: datetime, room_key: str) -> str:
    """What a run's sealed parts are bound to: moved to another run or room, they do not
    open."""
    return f"digest-run|{schedule_key}|{end.astimezone(UTC).isoformat()}|{room_key}"


class DigestService:
    def __init__(
        self,
        config: Config,
        store: Store,
        rooms: RoomDirectory,
        messenger: Messenger,
        audit: Audit,
        metrics: Metrics,
        open_item: Callable[[IntelItem], tuple[str, tuple[str, ...]]],
        clock: Callable[[], datetime] | None = None,
        sealer: Sealer | None = None,
        images: ImageSender | None = None,
    ) -> None:
        self.config = config
        self.store = store
        self.rooms = rooms
        self.messenger = messenger
        self.audit = audit
        self.metrics = metrics
        self.open_item = open_item  # an item's text and topics, unsealed
        self.clock = clock or (lambda: datetime.now(UTC))
        # Pictures go through the messenger when it can send them (the bot's does), so the
        # composition root needs no wiring of its own; None: text only.
        if images is None and isinstance(messenger, ImageSender):
            images = messenger
        self.images = images
        self.scheduler = AsyncIOScheduler(timezone=config.bot.timezone)
        self._sealer = sealer  # None: derived from the store's key when first needed
        self._driving: set[tuple[str, datetime]] = set()  # runs being posted now
        # item event id -> when it last changed (stored, edited, withdrawn) in this process:
        # a run re-driven after one of its window's items changed is not sent as composed.
        self._changed: dict[str, datetime] = {}
        store.add_item_listener(self._item_changed)

    @property
    def sealer(self) -> Sealer:
        """Seals a claimed run's events. Derived from the store's audit key (itself derived
        from the data key) unless given: every store the bot runs with holds that key, so
        no other wiring is needed, and the purpose keeps it apart from every other key."""
        if self._sealer is None:
            if self.store.audit_key is None:
                raise StoreError("sealing a digest's parts needs the data key")
            self._sealer = Sealer(self.store.audit_key.hex(), "digest-parts")
        return self._sealer

    # -- schedules

    def config_schedules(self) -> list[DigestSchedule]:
        out = []
        for i, d in enumerate(self.config.digests):
            out.append(
                DigestSchedule(
                    str(ScheduleKey(Origin.CONFIG, i + 1)),
                    d.room,
                    d.cron,
                    int(d.window.total_seconds()),
                    tuple(d.sources or (d.room,)),
                    Origin.CONFIG,
                )
            )
        return out

    async def schedules(self) -> list[DigestSchedule]:
        return self.config_schedules() + await in_thread(self.store.digest_schedules)

    def charts_for(self, schedule: DigestSchedule | None) -> bool:
        """Whether a schedule's digests come with pictures: a config schedule's `chart`
        (default true); a chat schedule and `!digest now` without one, always."""
        if self.images is None:
            return False
        key = ScheduleKey.parse(schedule.key) if schedule is not None else None
        configured = self.config.digests
        if key is not None and key.origin is Origin.CONFIG and 0 < key.number <= len(configured):
            return bool(configured[key.number - 1].chart)
        return True

    def trigger(self, schedule: DigestSchedule) -> CronTrigger:
        return cron_trigger(schedule.cron, self.config.bot.timezone)

    async def start(self) -> None:
        """Post the runs a crash left claimed, catch up on windows missed while down, then
        schedule every job."""
        await self.redrive()
        for schedule in await self.schedules():
            await self._catch_up(schedule)
            self._add_job(schedule)
        self.scheduler.start()

    def shutdown(self) -> None:
        if self.scheduler.running:
            self.scheduler.shutdown(wait=False)

    def _add_job(self, schedule: DigestSchedule) -> None:
        self.scheduler.add_job(
            self.fire,
            self.trigger(schedule),
            args=[schedule.key],
            id=schedule.key,
            replace_existing=True,
            misfire_grace_time=60,
            coalesce=True,
        )

    def next_runs(self) -> list[tuple[str, datetime | None]]:
        return [(job.id, job.next_run_time) for job in self.scheduler.get_jobs()]

    async def add(
        self, actor: str, room_key: str, cron: str, window: timedelta, sources: Sequence[str]
    ) -> DigestSchedule:
        schedule = await in_thread(
            self.store.add_digest_schedule,
            actor,
            room_key,
            cron,
            int(window.total_seconds()),
            list(sources),
        )
        self._add_job(schedule)
        return schedule

    async def cancel(self, actor: str, key: ScheduleKey) -> bool:
        done = await in_thread(self.store.cancel_digest_schedule, actor, key)
        if done and self.scheduler.get_job(str(key)) is not None:
            self.scheduler.remove_job(str(key))
        return done

    # -- running

    async def fire(self, key: str) -> None:
        """A scheduled run: the window ends at the newest fire time not after now (searched
        backwards, so a schedule firing every minute gets this minute's window). APScheduler
        runs a job only once its fire time has passed on the same clock, so that fire time is
        the one this run is for; a day back bounds the search for a call with none."""
        schedule = next((s for s in await self.schedules() if s.key == key), None)
        if schedule is None:
            return
        await self.redrive(key)  # a window claimed earlier and not posted goes first
        now = self.clock()
        end = latest_fire_time(self.trigger(schedule), now - timedelta(days=1), now)
        if end is not None:
            await self.post_window(schedule, end, delayed=False)

    async def _catch_up(self, schedule: DigestSchedule) -> None:
        """Post the window owed since the last recorded run, if recent; record the older
        misses as one skipped run at the newest of them (so the next start does not count them
        again) with one audit entry naming the first, the last and how many."""
        last = await in_thread(self.store.last_digest_run, schedule.key)
        plan = await in_thread(
            plan_catch_up,
            self.trigger(schedule),
            last,
            self.clock(),
            self.config.bot.digest_catchup_grace,
        )
        missed = plan.skipped
        if missed is not None:
            self.metrics.digests.labels("skipped").inc(missed.count)
            await in_thread(
                self.store.finish_digest_run,
                schedule.key,
                missed.last,
                RunState.SKIPPED,
                None,
                AuditNote(
                    self.messenger.user_id,
                    "digest.skipped",
                    schedule.key,
                    {
                        "room": schedule.room_key,
                        "window_end": missed.last.isoformat(),
                        "first_window_end": missed.first.isoformat(),
                        "windows": missed.count,
                        "reason": "missed while down, older than digest_catchup_grace",
                    },
                ),
            )
        if plan.late is not None:
            await self.post_window(schedule, plan.late, delayed=True)

    async def post_window(
        self, schedule: DigestSchedule, end: datetime, *, delayed: bool
    ) -> str | None:
        """Post one window of a schedule, at most once: compose it, claim the window with
        its sealed events and their fixed transaction ids in one transaction, then send
        exactly those. A window already claimed is posted from its stored events."""
        room = self.rooms.by_key.get(schedule.room_key)
        if room is None:
            log.error("digest %s: no managed room %s", schedule.key, schedule.room_key)
            return None
        run = await in_thread(self.store.digest_run, schedule.key, end)
        if run is None:
            start = end - timedelta(seconds=schedule.window_s)
            parts = await self.compose_parts(room, schedule.sources, start, end, delayed=delayed)
            sealed = self._seal(schedule.key, end, room, parts, self.charts_for(schedule))
            run = await in_thread(
                self.store.claim_digest_run,
                schedule.key,
                room.key,
                end,
                delayed=delayed,
                parts=sealed,
            )
        if run.state != RunState.POSTING:
            return run.event_id
        return await self._drive(run, schedule)

    async def redrive(self, schedule_key: str | None = None) -> None:
        """Post the runs left claimed (a crash between claim and post, or a send that
        failed), with the events and transaction ids stored at the claim: the homeserver
        keeps one copy of a part that had gone out. Called at start and on each tick of the
        run's schedule."""
        runs = await in_thread(self.store.posting_digest_runs, schedule_key)
        if not runs:
            return
        schedules = {s.key: s for s in await self.schedules()}
        for run in runs:
            await self._drive(run, schedules.get(run.schedule_key))

    async def _drive(self, run: DigestRun, schedule: DigestSchedule | None) -> str | None:
        """Send a claimed run's parts and record it posted; None if it could not be (left
        claimed for the next try, or given up as stale)."""
        key = (run.schedule_key, run.window_end)
        if key in self._driving:
            return None  # being posted right now (a start's re-drive and a tick)
        self._driving.add(key)
        try:
            current = await in_thread(self.store.digest_run, run.schedule_key, run.window_end)
            if current is None or current.state != RunState.POSTING:
                return current.event_id if current is not None else None  # done meanwhile
            return await self._drive_once(current, schedule)
        finally:
            self._driving.discard(key)

    def _item_changed(self, event_id: str) -> None:
        """From the writer's thread: only take note (a dict assignment is atomic)."""
        self._changed[event_id] = datetime.now(UTC)

    async def _changed_since(self, run: DigestRun) -> bool:
        """Whether an item that may be in the run's window changed after the run was
        composed (edited, re-marked or withdrawn): its stored parts may show what may no
        longer be shown. Known for changes made while this process runs; a crash between
        the claim and the post leaves a window of seconds."""
        if run.created_at is None:
            return False
        horizon = datetime.now(UTC) - TXN_MEMORY
        for event_id, at in list(self._changed.items()):
            if at < horizon:
                self._changed.pop(event_id, None)
        changed = [e for e, at in self._changed.items() if at > run.created_at]
        if not changed:
            return False

        def any_in_window() -> bool:  # withdrawn ones included
            items = (self.store.item(e) for e in changed)
            return any(i is not None and i.created_at <= run.window_end for i in items)

        return await in_thread(any_in_window)

    async def _drive_once(self, run: DigestRun, schedule: DigestSchedule | None) -> str | None:
        room = self.rooms.by_key.get(run.room_key)
        age = datetime.now(UTC) - run.created_at if run.created_at is not None else None
        if age is not None and age > TXN_MEMORY:
            # The homeserver has forgotten the transaction ids: a re-send could post a
            # second copy of a part that went out before the crash.
            return await self._give_up(run, "claimed over 23 hours ago", alert=True)
        if room is None:
            return await self._give_up(run, f"room {run.room_key} is no longer managed")
        if run.parts is not None:
            try:
                room_id, parts = self._open(run)
            except (SealError, ValueError, KeyError, TypeError):  # changed in the database
                return await self._give_up(run, "its stored events do not open", alert=True)
            if room_id != room.room_id:
                return await self._give_up(run, f"room {run.room_key} has another room id now")
            if await self._changed_since(run):
                return await self._give_up(
                    run,
                    "an item of its window was edited or withdrawn after it was composed",
                    alert=True,
                )
        elif schedule is not None:  # claimed before 0011: composed again, same txn ids
            start = run.window_end - timedelta(seconds=schedule.window_s)
            composed = await self.compose_parts(
                room, schedule.sources, start, run.window_end, delayed=run.delayed
            )
            txn = part_txn_ids(run.schedule_key, run.window_end, len(composed))
            charts = self.charts_for(schedule)
            parts = [
                (t, p.content, p.chart if charts else None)
                for t, p in zip(txn, composed, strict=True)
            ]
        else:
            return await self._give_up(run, f"schedule {run.schedule_key} no longer exists")
        # A fixed txn id per part and per picture: a replay after a crash posts none of them
        # twice and skips none (a picture whose send failed is sent again with its part).
        pictures = 0
        try:
            event_ids = []
            for part_txn, content, chart in parts:
                event_ids.append(await self.messenger.send(room.room_id, content, tx_id=part_txn))
                if chart is not None:
                    label = {LABEL_KEY: content[LABEL_KEY]}
                    pictures += await self._post_chart(room, chart, label, chart_txn_id(part_txn))
            event_id = event_ids[0]
        except HomeserverError as exc:
            log.error("digest %s for %s not posted: %s", run.schedule_key, room.key, exc)
            return None
        await in_thread(
            self.store.finish_digest_run,
            run.schedule_key,
            run.window_end,
            RunState.POSTED,
            event_id,
            AuditNote(
                self.messenger.user_id,
                "digest.posted",
                run.schedule_key,
                {
                    "room": room.key,
                    "window_end": run.window_end.isoformat(),
                    "window_s": schedule.window_s if schedule is not None else None,
                    "delayed": run.delayed,
                    "parts": len(parts),
                    "charts": pictures,
                },
            ),
        )
        self.metrics.digests.labels("posted").inc()
        return event_id

    async def _give_up(self, run: DigestRun, reason: str, *, alert: bool = False) -> str | None:
        """Record a claimed run as stale (never sent again), audited; admins hear of the
        ones that may be missing from the room."""
        log.error("digest %s for %s not posted: %s", run.schedule_key, run.room_key, reason)
        await in_thread(
            self.store.finish_digest_run,
            run.schedule_key,
            run.window_end,
            RunState.STALE,
            None,
            AuditNote(
                self.messenger.user_id,
                "digest.stale",
                run.schedule_key,
                {"room": run.room_key, "window_end": run.window_end.isoformat(), "reason": reason},
            ),
        )
        self.metrics.digests.labels("stale").inc()
        if alert:
            await self.messenger.alert_admins(
                doc(
                    para(
                        "⚠ The digest ",
                        Code(run.schedule_key),
                        " for ",
                        Strong(run.room_key),
                        f" of the window ending {run.window_end:%Y-%m-%d %H:%MZ} was not "
                        f"posted ({reason}) and will not be re-sent: check the room, and "
                        "post it with !digest now if it is missing.",
                    )
                ),
                txn_id("alert-digest", run.schedule_key, run.window_end.isoformat()),
            )
        return None

    async def _post_chart(
        self, room: ManagedRoom, chart: ChartData, label: Mapping[str, Any], tx_id: str | None
    ) -> bool:
        """Draw a part's picture (off the loop) and send it; False when it could not be
        drawn (logged; the text part went out, and the audit entry counts the pictures).
        A refused send raises HomeserverError like the text's."""
        if self.images is None or chart.empty:
            return False
        try:
            picture: Chart = await in_thread(render_chart, chart)
        except Exception:  # matplotlib missing or failing: the digest's text stands alone
            log.exception("digest chart for %s not drawn", room.key)
            return False
        await self.images.send_image(
            room.room_id,
            picture.png,
            width=picture.width,
            height=picture.height,
            alt=picture.counts.alt(chart.start, chart.end),
            label_content=label,
            thumbnail=picture.thumbnail,
            tx_id=tx_id,
        )
        return True

    def _seal(
        self,
        schedule_key: str,
        end: datetime,
        room: ManagedRoom,
        parts: Sequence[DigestPart],
        charts: bool,
    ) -> str:
        """The events of a window, sealed with the room id they go to and their fixed
        transaction ids, bound to the run (schedule, window, room key); with `charts`, each
        part with items also holds what its picture draws (counts per hour, no text), so a
        re-drive draws the same picture without reading the items again."""
        txn = part_txn_ids(schedule_key, end, len(parts))
        stored: list[dict[str, Any]] = []
        for t, p in zip(txn, parts, strict=True):
            entry: dict[str, Any] = {"txn_id": t, "content": p.content}
            if charts and p.chart is not None and not p.chart.empty:
                entry["chart"] = p.chart.to_json()
            stored.append(entry)
        body = {"room_id": room.room_id, "parts": stored}
        return self.sealer.seal_text(json.dumps(body), parts_binding(schedule_key, end, room.key))

    def _open(self, run: DigestRun) -> tuple[str, list[StoredPart]]:
        assert run.parts is not None
        body = json.loads(
            self.sealer.open_text(
                run.parts, parts_binding(run.schedule_key, run.window_end, run.room_key)
            )
        )
        parts: list[StoredPart] = [
            (
                str(p["txn_id"]),
                dict(p["content"]),
                ChartData.from_json(p["chart"]) if "chart" in p else None,
            )
            for p in body["parts"]
        ]
        if not parts:
            raise ValueError("no parts")
        return str(body["room_id"]), parts

    async def post_now(self, actor: str, room: ManagedRoom, cause: str | None = None) -> str:
        """`!digest now`: this room's configured window and sources, ending now. `cause` is
        the command's event: each part's transaction id is fixed by it, so the command
        handled again (a replay, a standby) posts no second digest. Without one (not asked
        from chat) the ids are random."""
        schedule = next((s for s in await self.schedules() if s.room_key == room.key), None)
        window = timedelta(seconds=schedule.window_s) if schedule else timedelta(hours=24)
        sources = schedule.sources if schedule else (room.key,)
        end = self.clock()
        parts = await self.compose_parts(room, sources, end - window, end)
        charts = self.charts_for(schedule)
        event_ids = []
        pictures = 0
        for n, part in enumerate(parts, 1):
            tx = None if cause is None else txn_id("digest-now", room.room_id, cause, str(n))
            event_ids.append(await self.messenger.send(room.room_id, part.content, tx_id=tx))
            if charts and part.chart is not None:
                chart_tx = None if tx is None else chart_txn_id(tx)
                pictures += await self._post_chart(room, part.chart, part.label_content, chart_tx)
        event_id = event_ids[0]
        self.metrics.digests.labels("posted").inc()
        await self.audit(
            actor,
            "digest.posted",
            f"now:{room.key}",
            {
                "room": room.key,
                "window_s": int(window.total_seconds()),
                "on_demand": True,
                "charts": pictures,
            },
        )
        return event_id

    async def compose(
        self,
        room: ManagedRoom,
        sources: Sequence[str],
        start: datetime,
        end: datetime,
        *,
        delayed: bool = False,
    ) -> Document:
        """The digest as one document (fewer items per precedence if it must)."""
        selected = await self._selected(room, sources, start, end)
        held = await in_thread(self.store.held_item_ids)
        return build_digest(room, selected, start, end, delayed=delayed, held=held)

    async def _selected(
        self, room: ManagedRoom, sources: Sequence[str], start: datetime, end: datetime
    ) -> list[DigestItem]:
        # Originator control: the room's own items, and another source's only where they
        # were released, i.e. relayed into this room; never merely because a label would
        # allow it (a non-officer's item is stored, not released).
        own = await in_thread(self.store.items_between, [room.key], start, end)
        released = await in_thread(self.store.relayed_items_to, [room.key], start, end)
        wanted = set(sources)
        mine = room.key in wanted  # the room's own traffic: its items and what reached it
        chosen = [i for i in own if mine] + [i for i in released if mine or i.room_key in wanted]
        candidates = [self._item(i) for i in chosen]
        return select_items(room, [c for c in candidates if c is not None])

    async def compose_parts(
        self,
        room: ManagedRoom,
        sources: Sequence[str],
        start: datetime,
        end: datetime,
        *,
        delayed: bool = False,
    ) -> list[DigestPart]:
        """The digest as the events to post: one, or a large window split into parts."""
        selected = await self._selected(room, sources, start, end)
        held = await in_thread(self.store.held_item_ids)
        return build_digest_parts(room, selected, start, end, delayed=delayed, held=held)

    def item_of(self, item: IntelItem) -> DigestItem | None:
        return self._item(item)

    def _item(self, item: IntelItem) -> DigestItem | None:
        try:
            label = stored_label(item.label, tuple(self.config.bot.caveats))
            text, topics = self.open_item(item)
        except MarkingError:
            log.error("stored item %s has an unreadable label", item.event_id)
            return None
        except SealError:  # its label or room was changed in the database: never shown
            log.error("stored item %s does not open for its label and room", item.event_id)
            return None
        changed = record_mismatch(label, item.label, item.scheme, item.rank)
        if changed is not None:  # never shown at a rank it was not stored at
            log.error("stored item %s not shown: its label is %s", item.event_id, changed)
            return None
        return DigestItem(
            event_id=item.event_id,
            label=label,
            source_key=item.room_key,
            source=self.rooms.by_key.get(item.room_key),
            precedence=item.precedence,
            exercise=item.exercise,
            topics=topics,
            text=text,
            created_at=item.created_at,
        )

    # -- from chat

    async def post_now_for(
        self,
        actor: str,
        room_key: str,
        roles: frozenset[Role],
        is_member: bool,
        cause: str | None = None,
    ) -> str:
        """`!digest now`: members for their own room; admins and officers for any. `cause`:
        the command's event (see `post_now`)."""
        managed = self.rooms.managed(room_key)
        if not roles & {Role.ADMIN, Role.OFFICER} and not is_member:
            raise PermissionDenied(
                f"members may ask for the digest of their own room only; you are not in {room_key}",
                "not a member of that room",
                code="permission.not_member",
                room=room_key,
            )
        await self.post_now(actor, managed, cause)
        return managed.key

    async def schedule_from_chat(
        self,
        actor: str,
        room_key: str,
        cron: str,
        window: str | None,
        sources: Sequence[str] | None,
    ) -> str:
        """Validate everything first (nothing is stored for a bad field), then add."""
        self.rooms.managed(room_key)
        try:
            cron_trigger(cron, self.config.bot.timezone)
            span = parse_duration(window) if window else timedelta(hours=24)
        except ValueError as exc:
            raise CommandError(str(exc)) from None
        chosen = list(sources) if sources else [room_key]
        for key in chosen:
            self.rooms.managed(key)
        schedule = await self.add(actor, room_key, cron, span, chosen)
        return describe(schedule, dict(self.next_runs()).get(schedule.key))

    async def described(self) -> list[str]:
        runs = dict(self.next_runs())
        return [describe(s, runs.get(s.key)) for s in await self.schedules()]

    async def cancel_from_chat(self, actor: str, key: str) -> None:
        parsed = ScheduleKey.parse(key)
        if key.startswith("cfg-"):
            raise CommandError(f"{key} comes from the config file; remove it there")
        if parsed is None or not await self.cancel(actor, parsed):
            raise CommandError(f"no active chat schedule {key!r} (see !digest list)")


def describe(schedule: DigestSchedule, next_run: datetime | None) -> str:
    when = f"next {next_run:%Y-%m-%d %H:%M %Z}" if next_run else "not scheduled"
    return (
        f'{schedule.key}: {schedule.room_key} "{schedule.cron}" window '
        f"{format_duration(timedelta(seconds=schedule.window_s))} sources "
        f"{','.join(schedule.sources)} ({when})"
    )


__all__ = [
    "CatchUp",
    "DigestItem",
    "DigestService",
    "ImageSender",
    "MissedWindows",
    "build_digest",
    "chart_txn_id",
    "describe",
    "fire_times",
    "latest_fire_time",
    "plan_catch_up",
    "select_items",
]
