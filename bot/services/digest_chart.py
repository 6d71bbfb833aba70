"""The picture beside each digest part: items per hour over the window, stacked by precedence,
exercise traffic in a panel of its own, the part's classification banner across the top and
the bottom (a picture of classified data is classified like the text beside it).

Two steps, both pure. `ChartData.of` counts the items into bins (what a claimed run stores,
sealed, so that a re-drive after a crash draws the same picture without reading the items
again); `render_chart` draws it. matplotlib is imported inside `render_chart` only: the bot's
start-up (and the restart benchmark) never pays for it, only the first digest that draws.
Rendering is CPU work of ~0.1-0.3 s: callers run it off the event loop.

The output is deterministic (fixed size and dpi, no timestamp or software name in the PNG),
so a test can compare two renders byte for byte.
"""

from __future__ import annotations

import io
import math
import struct
import threading
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

from commands.document import BANNER_COLOURS
from policy import Precedence

WIDTH, HEIGHT, DPI = 1200, 600, 100  # the picture, in pixels
THUMBNAIL_ABOVE = 800  # a picture wider than this also gets a thumbnail ...
THUMBNAIL_WIDTH = 600  # ... this wide (same aspect)
MAX_BINS = 168  # a week of hours; a longer window counts per 2 h, 3 h, ... to stay this few
EXERCISE_TITLE = "EXERCISE EXERCISE EXERCISE"
# matplotlib does not promise thread safety (its font cache and text layout are shared):
# pictures drawn in worker threads at once take turns.
_DRAWING = threading.Lock()
BANNER_FRACTION = 0.07  # each banner band's share of the picture's height

# Precedence colours, most urgent the most alarming; the exercise panel reuses them hatched.
PRECEDENCE_COLOURS = {
    Precedence.FLASH: "#d62728",
    Precedence.IMMEDIATE: "#ff7f0e",
    Precedence.PRIORITY: "#1f77b4",
    Precedence.ROUTINE: "#7f7f7f",
}


class Charted(Protocol):
    """What the chart needs of an item: when, how urgent, exercise or not (never its text)."""

    @property
    def created_at(self) -> datetime: ...

    @property
    def precedence(self) -> Precedence: ...

    @property
    def exercise(self) -> bool: ...


@dataclass(frozen=True)
class ChartCounts:
    """The counts the alt text gives: real items by precedence, and exercise items apart."""

    by_precedence: dict[Precedence, int]
    exercise: int

    @property
    def total(self) -> int:
        """Real and exercise items together: everything the picture shows."""
        return sum(self.by_precedence.values()) + self.exercise

    def alt(self, start: datetime, end: datetime) -> str:
        """The picture's `body`: counts only, never an item's text."""
        parts = ", ".join(f"{p.name} {self.by_precedence.get(p, 0)}" for p in Precedence)
        return (
            f"Digest chart, items {start:%Y-%m-%d %H:%MZ} → {end:%Y-%m-%d %H:%MZ}: "
            f"{self.total} item(s); {parts}; exercise {self.exercise}."
        )


@dataclass(frozen=True)
class ChartData:
    """Items counted per bin over a window: `real[p][b]` and `drill[p][b]` for precedence p
    (in Precedence order) and bin b; and the banner to draw (its text and rank)."""

    start: datetime
    end: datetime
    bin_hours: int
    real: tuple[tuple[int, ...], ...]
    drill: tuple[tuple[int, ...], ...]
    banner: str
    rank: int

    @classmethod
    def of(
        cls,
        items: Iterable[Charted],
        start: datetime,
        end: datetime,
        banner: str,
        rank: int,
    ) -> ChartData:
        """Count the items per bin of `bin_hours` (1, or more for a window over MAX_BINS
        hours). An item at the window's very end counts in the last bin; one outside the
        window (the store's bounds are inclusive) in the nearest."""
        start, end = start.astimezone(UTC), end.astimezone(UTC)
        hours = max(1, math.ceil((end - start) / timedelta(hours=1)))
        bin_hours = max(1, math.ceil(hours / MAX_BINS))
        bins = max(1, math.ceil(hours / bin_hours))
        real = [[0] * bins for _ in Precedence]
        drill = [[0] * bins for _ in Precedence]
        width = timedelta(hours=bin_hours)
        for item in items:
            index = min(bins - 1, max(0, (item.created_at.astimezone(UTC) - start) // width))
            (drill if item.exercise else real)[int(item.precedence)][index] += 1
        return cls(
            start,
            end,
            bin_hours,
            tuple(tuple(r) for r in real),
            tuple(tuple(d) for d in drill),
            banner,
            rank,
        )

    @property
    def counts(self) -> ChartCounts:
        return ChartCounts(
            {p: sum(self.real[int(p)]) for p in Precedence},
            sum(sum(d) for d in self.drill),
        )

    @property
    def empty(self) -> bool:
        return self.counts.total == 0

    def to_json(self) -> dict[str, Any]:
        return {
            "start": self.start.isoformat(),
            "end": self.end.isoformat(),
            "bin_hours": self.bin_hours,
            "real": [list(r) for r in self.real],
            "drill": [list(d) for d in self.drill],
            "banner": self.banner,
            "rank": self.rank,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> ChartData:
        """The stored form back; ValueError/KeyError/TypeError for one that does not fit."""
        real = tuple(tuple(int(n) for n in row) for row in data["real"])
        drill = tuple(tuple(int(n) for n in row) for row in data["drill"])
        if len(real) != len(Precedence) or len(drill) != len(Precedence):
            raise ValueError("one row per precedence expected")
        if len({len(r) for r in real + drill}) != 1:
            raise ValueError("rows of different lengths")
        return cls(
            datetime.fromisoformat(str(data["start"])),
            datetime.fromisoformat(str(data["end"])),
            int(data["bin_hours"]),
            real,
            drill,
            str(data["banner"]),
            int(data["rank"]),
        )


@dataclass(frozen=True)
class Chart:
    """A rendered picture: PNG bytes and size, its thumbnail (None for a small picture), and
    the counts for the alt text."""

    png: bytes
    width: int
    height: int
    thumbnail: tuple[bytes, int, int] | None
    counts: ChartCounts


def png_size(png: bytes) -> tuple[int, int]:
    """Width and height from a PNG's header (IHDR); ValueError for anything else."""
    if len(png) < 24 or png[:8] != b"\x89PNG\r\n\x1a\n" or png[12:16] != b"IHDR":
        raise ValueError("not a PNG")
    width, height = struct.unpack(">II", png[16:24])
    return int(width), int(height)


def chart_of(
    items: Sequence[Charted], start: datetime, end: datetime, banner: str, rank: int
) -> Chart:
    """Items + window + banner -> the picture (see `ChartData.of` and `render_chart`)."""
    return render_chart(ChartData.of(items, start, end, banner, rank))


def render_chart(data: ChartData, *, width: int = WIDTH, height: int = HEIGHT) -> Chart:
    """Draw the chart (Agg, no pyplot and its global figures; one drawing at a time)."""
    with _DRAWING:
        figure = chart_figure(data, width, height)
        png = _png(figure, DPI)
        size = png_size(png)
        thumbnail = None
        if size[0] > THUMBNAIL_ABOVE:
            small = _png(figure, DPI * THUMBNAIL_WIDTH / width)
            thumbnail = (small, *png_size(small))
    return Chart(png, size[0], size[1], thumbnail, data.counts)


def _png(figure: Any, dpi: float) -> bytes:
    out = io.BytesIO()
    figure.savefig(out, format="png", dpi=dpi, metadata={"Software": None})
    return out.getvalue()


def chart_figure(data: ChartData, width: int, height: int) -> Any:
    # Lazy on purpose (see the module's docstring).
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from matplotlib.patches import Rectangle

    figure = Figure(figsize=(width / DPI, height / DPI), dpi=DPI, facecolor="white")
    FigureCanvasAgg(figure)
    colour = BANNER_COLOURS[max(0, min(data.rank, len(BANNER_COLOURS) - 1))]
    for y in (1 - BANNER_FRACTION, 0.0):  # the banner at the top and at the bottom
        figure.add_artist(
            Rectangle(
                (0, y),
                1,
                BANNER_FRACTION,
                transform=figure.transFigure,
                facecolor=colour,
                edgecolor=colour,
                linewidth=0,
                zorder=-1,
            )
        )
        figure.text(
            0.5,
            y + BANNER_FRACTION / 2,
            data.banner,
            ha="center",
            va="center",
            color="white",
            fontsize=14,
            fontweight="bold",
            gid="banner",
        )
    drilled = any(any(row) for row in data.drill)
    top, bottom = 1 - BANNER_FRACTION - 0.08, BANNER_FRACTION + 0.1
    if drilled:
        split = bottom + (top - bottom) * 0.32
        real_axes = figure.add_axes((0.07, split + 0.08, 0.76, top - split - 0.08))
        drill_axes = figure.add_axes((0.07, bottom, 0.76, split - bottom))
    else:
        real_axes = figure.add_axes((0.07, bottom, 0.76, top - bottom))
        drill_axes = None
    unit = "hour" if data.bin_hours == 1 else f"{data.bin_hours} hours"
    real_axes.set_title(
        f"Items per {unit}, {data.start:%Y-%m-%d %H:%MZ} → {data.end:%Y-%m-%d %H:%MZ}",
        fontsize=11,
    )
    _stack(real_axes, data, data.real, hatch=None)
    real_axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=9, frameon=False)
    if drill_axes is not None:
        drill_axes.set_title(f"{EXERCISE_TITLE} (not counted above)", fontsize=10)
        drill_axes.set_facecolor("#f4f4f4")
        _stack(drill_axes, data, data.drill, hatch="//")
        drill_axes.legend(loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8, frameon=False)
    return figure


def _stack(axes: Any, data: ChartData, rows: Sequence[Sequence[int]], hatch: str | None) -> None:
    """Bars per bin, stacked FLASH at the bottom up to ROUTINE, x ticked in UTC."""
    bins = len(rows[0])
    positions = list(range(bins))
    base = [0] * bins
    for precedence in Precedence:
        row = rows[int(precedence)]
        axes.bar(
            positions,
            row,
            bottom=base,
            width=0.85,
            color=PRECEDENCE_COLOURS[precedence],
            edgecolor="black" if hatch else PRECEDENCE_COLOURS[precedence],
            linewidth=0.4,
            hatch=hatch,
            label=f"{precedence.name} {sum(row)}",
            gid=f"bars-{precedence.name}",
        )
        base = [b + n for b, n in zip(base, row, strict=True)]
    step = max(1, math.ceil(bins / 12))
    ticks = positions[::step]
    width = timedelta(hours=data.bin_hours)
    axes.set_xticks(ticks)
    axes.set_xticklabels(
        [f"{data.start + width * t:%d %H:%M}" for t in ticks], fontsize=8, rotation=0
    )
    axes.set_xlim(-0.6, bins - 0.4)
    axes.set_ylim(0, max(1, max(base)) * 1.1)
    axes.yaxis.get_major_locator().set_params(integer=True)
    axes.tick_params(axis="y", labelsize=8)
    axes.grid(axis="y", linewidth=0.3, alpha=0.6)


__all__ = [
    "Chart",
    "ChartCounts",
    "ChartData",
    "Charted",
    "chart_figure",
    "chart_of",
    "png_size",
    "render_chart",
]
