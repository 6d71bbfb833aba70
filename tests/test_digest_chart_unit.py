"""The digest's picture without a homeserver: what the renderer draws (banner top and bottom,
items per hour stacked by precedence, exercise in a panel of its own), the counts its alt
text gives, what a claimed run stores for it, and that the bot's start never loads
matplotlib. tests/test_digest_chart.py sends and reads it on a real Synapse."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pytest

from bot.services.digest import (
    DigestService,
    build_digest_parts,
    chart_txn_id,
    part_txn_ids,
)
from bot.services.digest_chart import (
    EXERCISE_TITLE,
    MAX_BINS,
    ChartData,
    chart_figure,
    png_size,
    render_chart,
)
from bot.services.ports import Device
from bot.services.render import LABEL_KEY
from bot.storage import DigestSchedule, IntelItemRow, Origin, RunState, Store
from commands.document import BANNER_COLOURS
from policy import Precedence
from policy.ids import EventId
from tests.test_digest_logic import NATO, T0, Clock, FakeMessenger, digest_service, item
from tests.test_digest_redrive import FlakyMessenger

END = T0 + timedelta(hours=12)
START = T0


def sample() -> list[Any]:
    """Real items in hours 0 and 2 of the window, exercise ones in hour 1."""
    return [
        item("$f1", "NATO SECRET", NATO, 10, precedence=Precedence.FLASH),
        item("$f2", "NATO SECRET", NATO, 20, precedence=Precedence.FLASH),
        item("$i1", "NATO SECRET", NATO, 30, precedence=Precedence.IMMEDIATE),
        item("$r1", "NATO SECRET", NATO, 130, precedence=Precedence.ROUTINE),
        item("$x1", "NATO SECRET", NATO, 70, precedence=Precedence.PRIORITY, exercise=True),
        item("$x2", "NATO SECRET", NATO, 80, precedence=Precedence.FLASH, exercise=True),
    ]


def sample_data(banner: str = "NATO SECRET", rank: int = 3) -> ChartData:
    return ChartData.of(sample(), START, END, banner, rank)


# ---------------------------------------------------------------- counting


def test_items_are_counted_per_hour_by_precedence_exercise_apart() -> None:
    data = sample_data()
    assert data.bin_hours == 1 and len(data.real[0]) == 12
    assert data.real[Precedence.FLASH][:3] == (2, 0, 0)
    assert data.real[Precedence.IMMEDIATE][:3] == (1, 0, 0)
    assert data.real[Precedence.ROUTINE][:3] == (0, 0, 1)
    assert data.drill[Precedence.PRIORITY][:3] == (0, 1, 0)
    assert data.drill[Precedence.FLASH][:3] == (0, 1, 0)
    assert sum(map(sum, data.real)) == 4 and sum(map(sum, data.drill)) == 2
    counts = data.counts
    assert counts.total == 6 and counts.exercise == 2
    assert counts.by_precedence == {
        Precedence.FLASH: 2,
        Precedence.IMMEDIATE: 1,
        Precedence.PRIORITY: 0,
        Precedence.ROUTINE: 1,
    }


def test_the_alt_text_gives_the_counts_and_never_an_items_text() -> None:
    secret = "convoy leaves at dawn"
    items = [item("$a", "NATO SECRET", NATO, 5, precedence=Precedence.FLASH, text=secret)]
    alt = ChartData.of(items, START, END, "NATO SECRET", 3).counts.alt(START, END)
    assert alt == (
        "Digest chart, items 2026-11-23 06:00Z → 2026-11-23 18:00Z: 1 item(s); "
        "FLASH 1, IMMEDIATE 0, PRIORITY 0, ROUTINE 0; exercise 0."
    )
    assert secret not in alt


def test_an_item_at_the_windows_end_counts_in_the_last_hour_and_a_long_window_in_wider_bins() -> (
    None
):
    at_end = [item("$e", "NATO SECRET", NATO, 12 * 60)]
    data = ChartData.of(at_end, START, END, "NATO SECRET", 3)
    assert data.real[Precedence.ROUTINE][-1] == 1
    month = ChartData.of(at_end, START, START + timedelta(days=30), "NATO SECRET", 3)
    assert month.bin_hours == 5 and len(month.real[0]) <= MAX_BINS  # 720 h in 5 h bins
    assert sum(map(sum, month.real)) == 1


def test_the_stored_form_reads_back_and_a_tampered_one_is_refused() -> None:
    data = sample_data()
    assert ChartData.from_json(data.to_json()) == data
    bad = data.to_json()
    bad["real"] = bad["real"][:2]
    with pytest.raises(ValueError):
        ChartData.from_json(bad)
    ragged = data.to_json()
    ragged["drill"][0] = [1]
    with pytest.raises(ValueError):
        ChartData.from_json(ragged)


# ---------------------------------------------------------------- drawing


def _pixels(png: bytes) -> Any:
    from matplotlib.image import imread

    return imread(io.BytesIO(png), format="png")


def _rgb(hex_colour: str) -> tuple[float, float, float]:
    value = hex_colour.lstrip("#")
    r, g, b = (int(value[i : i + 2], 16) / 255 for i in (0, 2, 4))
    return (r, g, b)


def test_the_banner_is_drawn_at_the_top_and_the_bottom_in_its_colour() -> None:
    chart = render_chart(sample_data("NATO SECRET", 3))
    assert (chart.width, chart.height) == png_size(chart.png) == (1200, 600)
    pixels = _pixels(chart.png)
    assert pixels.shape[:2] == (600, 1200)
    colour = _rgb(BANNER_COLOURS[3])
    for row in (0, 1, 2, 597, 598, 599):  # the first and last rows: the banner's colour
        for column in (0, 5, 600, 1195):
            assert tuple(pixels[row, column, :3]) == pytest.approx(colour, abs=1 / 255)
    assert tuple(pixels[300, 1195, :3]) == pytest.approx((1.0, 1.0, 1.0))  # not the middle
    # another rank, another colour
    other = _pixels(render_chart(sample_data("NATO UNCLASSIFIED", 0)).png)
    assert tuple(other[0, 0, :3]) == pytest.approx(_rgb(BANNER_COLOURS[0]), abs=1 / 255)


def test_the_banner_text_is_drawn_twice_and_the_exercise_in_its_own_hatched_panel() -> None:
    figure = chart_figure(sample_data("NATO SECRET // REL TO SWE", 3), 1200, 600)
    banners = [t for t in figure.texts if t.get_gid() == "banner"]
    assert [t.get_text() for t in banners] == ["NATO SECRET // REL TO SWE"] * 2
    ys = sorted(t.get_position()[1] for t in banners)
    assert ys[0] < 0.1 and ys[1] > 0.9
    real, drill = figure.axes
    assert EXERCISE_TITLE in drill.get_title() and EXERCISE_TITLE not in real.get_title()
    assert all(p.get_hatch() == "//" for c in drill.containers for p in c.patches)
    assert all(not p.get_hatch() for c in real.containers for p in c.patches)


def test_the_bars_are_stacked_by_precedence_per_hour() -> None:
    figure = chart_figure(sample_data(), 1200, 600)
    real, drill = figure.axes

    def stacks(axes: Any, hour: int) -> list[tuple[float, float]]:
        """(bottom, height) of each precedence's bar in that hour, FLASH first."""
        return [(c.patches[hour].get_y(), c.patches[hour].get_height()) for c in axes.containers]

    assert [c.get_label() for c in real.containers] == [
        "FLASH 2",
        "IMMEDIATE 1",
        "PRIORITY 0",
        "ROUTINE 1",
    ]
    assert stacks(real, 0) == [(0, 2), (2, 1), (3, 0), (3, 0)]
    assert stacks(real, 2) == [(0, 0), (0, 0), (0, 0), (0, 1)]
    assert stacks(real, 1) == [(0, 0)] * 4  # the exercise hour: nothing in the real panel
    assert stacks(drill, 1) == [(0, 1), (1, 0), (1, 1), (2, 0)]


def test_without_exercise_traffic_there_is_one_panel() -> None:
    real_only = [i for i in sample() if not i.exercise]
    figure = chart_figure(ChartData.of(real_only, START, END, "NATO SECRET", 3), 1200, 600)
    assert len(figure.axes) == 1


def test_the_picture_is_deterministic_with_a_thumbnail_and_no_software_stamp() -> None:
    first, second = render_chart(sample_data()), render_chart(sample_data())
    assert first.png == second.png
    assert first.thumbnail is not None and first.thumbnail == second.thumbnail
    small, w, h = first.thumbnail
    assert (w, h) == png_size(small) == (600, 300)
    assert b"matplotlib" not in first.png.lower()
    narrow = render_chart(sample_data(), width=800, height=400)
    assert (narrow.width, narrow.height) == (800, 400) and narrow.thumbnail is None


def test_starting_the_bot_does_not_import_matplotlib() -> None:
    """Start-up (and the restart benchmark) never pays for matplotlib: only drawing loads it."""
    code = (
        "import sys\n"
        "import bot.app, bot.cli, bot.run, bench.startup\n"
        "from bot.services.digest_chart import ChartData\n"
        "from datetime import datetime, UTC\n"
        "ChartData.of([], datetime.now(UTC), datetime.now(UTC), 'X', 0)\n"
        "assert 'matplotlib' not in sys.modules, 'imported'\n"
        "from bot.services.digest_chart import render_chart\n"
        "render_chart(ChartData.of([], datetime.now(UTC), datetime.now(UTC), 'X', 0))\n"
        "assert 'matplotlib' in sys.modules, 'the check cannot see an import'\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert done.returncode == 0, done.stderr


# ---------------------------------------------------------------- the service


def test_each_part_draws_its_own_items_and_an_empty_window_none() -> None:
    many = [
        item(f"$m{n}", "NATO SECRET", NATO, n % 700, precedence=Precedence(n % 4), text="x" * 400)
        for n in range(300)
    ]
    parts = build_digest_parts(NATO, many, START, END)
    assert len(parts) > 1
    totals = [p.chart.counts.total for p in parts if p.chart is not None]
    assert len(totals) == len(parts) and sum(totals) == len(many)
    assert all(p.label_content == {LABEL_KEY: p.labels[LABEL_KEY]} for p in parts)
    (empty,) = build_digest_parts(NATO, [], START, END)
    assert empty.chart is None


@dataclass
class FakeImages:
    """The pictures' port: records what it would post; refuses the first `failures`."""

    sent: list[dict[str, Any]] = field(default_factory=list)
    failures: int = 0

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
    ) -> EventId:
        if self.failures:
            from bot.matrix.gateway import MatrixError

            self.failures -= 1
            raise MatrixError("upload", None, "unreachable", None)
        self.sent.append(
            {"room": room_id, "size": (width, height), "alt": alt, "label": dict(label_content)}
            | {"tx_id": tx_id, "png": png}
        )
        return EventId(f"$image{len(self.sent)}")


@dataclass
class ContentMessenger(FakeMessenger):
    """Records each sent content whole, too."""

    contents: list[dict[str, Any]] = field(default_factory=list)

    async def send(
        self,
        room_id: str,
        content: dict[str, Any],
        tx_id: str | None = None,
        also_to: Sequence[Device] = (),
    ) -> EventId:
        self.contents.append(content)
        return await super().send(room_id, content, tx_id, also_to)


def _row(event_id: str, at: datetime, precedence: Precedence, exercise: bool) -> IntelItemRow:
    return IntelItemRow(
        event_id=event_id,
        room_key="nato-s",
        room_id="!n:x",
        sender="@lo:x",
        label="NATO SECRET",
        scheme="NATO",
        rank=3,
        precedence=int(precedence),
        exercise=exercise,
        topics=[],
        text="sealed",
        created_at=at,
    )


def _service(
    store: Store, messenger: FakeMessenger, images: FakeImages, chart: bool = True
) -> tuple[DigestService, Clock]:
    clock = Clock(T0 + timedelta(minutes=1))
    service = digest_service(store, clock, messenger)
    service.images = images
    service.config.digests[0].chart = chart
    return service, clock


def _items(store: Store, rows: Sequence[IntelItemRow]) -> None:
    with store.session() as session:
        session.add_all(rows)


def test_a_scheduled_digest_posts_its_picture_after_its_part_under_a_fixed_id(
    store: Store,
) -> None:
    _items(
        store,
        [
            _row("$a", T0 - timedelta(hours=3), Precedence.FLASH, False),
            _row("$b", T0 - timedelta(hours=1), Precedence.ROUTINE, True),
        ],
    )
    bot, images = ContentMessenger(), FakeImages()
    service, _ = _service(store, bot, images)
    asyncio.run(service.fire("cfg-1"))
    (part_txn,) = part_txn_ids("cfg-1", T0, 1)
    assert [p[2] for p in bot.posted] == [part_txn]
    (sent,) = images.sent
    assert sent["tx_id"] == chart_txn_id(part_txn) != part_txn
    assert sent["size"] == (1200, 600) and png_size(sent["png"]) == (1200, 600)
    assert "2 item(s); FLASH 1, IMMEDIATE 0, PRIORITY 0, ROUTINE 0; exercise 1." in sent["alt"]
    (text,) = bot.contents
    assert sent["label"] == {LABEL_KEY: text[LABEL_KEY]}  # the banner's label, as the text's
    run = store.digest_run("cfg-1", T0)
    assert run is not None and run.state == RunState.POSTED


def test_a_picture_refused_by_the_homeserver_is_sent_again_by_the_redrive(store: Store) -> None:
    """The text part went out, its picture did not: the run stays claimed; the next tick
    sends both again under the same ids (the homeserver keeps one copy of the text), and
    the picture drawn from what was claimed, not from the items as they are now."""
    _items(store, [_row("$a", T0 - timedelta(hours=3), Precedence.IMMEDIATE, False)])
    bot, images = FlakyMessenger(), FakeImages(failures=1)
    service, clock = _service(store, bot, images)
    asyncio.run(service.fire("cfg-1"))
    assert images.sent == [] and len(bot.posted) == 1
    claimed = store.digest_run("cfg-1", T0)
    assert claimed is not None and claimed.state == RunState.POSTING
    _items(store, [_row("$late", T0 - timedelta(hours=2), Precedence.FLASH, False)])
    clock.now = T0 + timedelta(hours=12, minutes=1)
    asyncio.run(service.fire("cfg-1"))
    first = part_txn_ids("cfg-1", T0, 1)[0]
    assert [p[2] for p in bot.posted][:2] == [first, first]
    assert images.sent[0]["tx_id"] == chart_txn_id(first)
    assert "1 item(s); FLASH 0, IMMEDIATE 1" in images.sent[0]["alt"]  # as claimed
    posted = store.digest_run("cfg-1", T0)
    assert posted is not None and posted.state == RunState.POSTED


def test_chart_false_and_no_image_port_post_no_picture(store: Store) -> None:
    _items(store, [_row("$a", T0 - timedelta(hours=3), Precedence.FLASH, False)])
    bot, images = FakeMessenger(), FakeImages()
    service, _ = _service(store, bot, images, chart=False)
    asyncio.run(service.fire("cfg-1"))
    assert len(bot.posted) == 1 and images.sent == []
    assert service.charts_for(service.config_schedules()[0]) is False
    chat = DigestSchedule("db-4", "nato-s", "0 6 * * *", 3600, ("nato-s",), Origin.CHAT)
    assert service.charts_for(chat) is True and service.charts_for(None) is True
    service.images = None
    assert service.charts_for(chat) is False


def test_an_empty_window_posts_no_picture(store: Store) -> None:
    bot, images = FakeMessenger(), FakeImages()
    service, _ = _service(store, bot, images)
    asyncio.run(service.fire("cfg-1"))
    assert len(bot.posted) == 1 and "No items in this window" in bot.posted[0][1]
    assert images.sent == []


def test_a_picture_that_cannot_be_drawn_leaves_the_text_posted(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    """matplotlib missing or failing: the digest's text goes out and the run is recorded
    posted (not re-driven for ever); the audit entry counts no picture."""

    def broken(data: ChartData) -> Any:
        raise ImportError("No module named 'matplotlib'")

    monkeypatch.setattr("bot.services.digest.render_chart", broken)
    _items(store, [_row("$a", T0 - timedelta(hours=3), Precedence.FLASH, False)])
    bot, images = FakeMessenger(), FakeImages()
    service, _ = _service(store, bot, images)
    asyncio.run(service.fire("cfg-1"))
    assert len(bot.posted) == 1 and images.sent == []
    run = store.digest_run("cfg-1", T0)
    assert run is not None and run.state == RunState.POSTED
    (entry,) = [e for e in store.recent_audit(5) if e.action == "digest.posted"]
    assert entry.detail["charts"] == 0
