"""Reply documents: built once as a small tree, rendered to HTML and plain text together.

Why a tree and not strings: user text (display names, markings, command arguments) must be
escaped in HTML and left alone in plain text. Escaping at the leaves, in one place, means no
handler can forget it (Draupnir's renderer works the same way). Never run markdown over
user text.
"""

from __future__ import annotations

import html
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

# Banner colours by rank, as classification banners are usually shown (rank 0 … 4).
BANNER_COLOURS = ("#007a33", "#502b85", "#0033a0", "#c8102e", "#ff8c00")


@dataclass(frozen=True, slots=True)
class Text:
    text: str


@dataclass(frozen=True, slots=True)
class Strong:
    text: str


@dataclass(frozen=True, slots=True)
class Code:
    text: str


@dataclass(frozen=True, slots=True)
class Banner:
    """A classification banner, coloured by rank in HTML."""

    text: str
    rank: int = 3


@dataclass(frozen=True, slots=True)
class Mention:
    """A user pill: a link in HTML, the user id in plain text."""

    user_id: str


Inline = Text | Strong | Code | Banner | Mention


@dataclass(frozen=True, slots=True)
class Paragraph:
    parts: tuple[Inline, ...]


@dataclass(frozen=True, slots=True)
class Heading:
    parts: tuple[Inline, ...]


@dataclass(frozen=True, slots=True)
class Items:
    """A bulleted list; each item is a line of inlines."""

    items: tuple[tuple[Inline, ...], ...]


@dataclass(frozen=True, slots=True)
class Preformatted:
    text: str


Block = Paragraph | Heading | Items | Preformatted


@dataclass(frozen=True, slots=True)
class Document:
    blocks: tuple[Block, ...]

    def __add__(self, other: Document) -> Document:
        return Document(self.blocks + other.blocks)

    @property
    def plain(self) -> str:
        return render_plain(self)

    @property
    def html(self) -> str:
        return render_html(self)


def inlines(parts: Iterable[Inline | str]) -> tuple[Inline, ...]:
    return tuple(Text(p) if isinstance(p, str) else p for p in parts)


def para(*parts: Inline | str) -> Paragraph:
    return Paragraph(inlines(parts))


def heading(*parts: Inline | str) -> Heading:
    return Heading(inlines(parts))


def items(rows: Iterable[Iterable[Inline | str]]) -> Items:
    return Items(tuple(inlines(r) for r in rows))


def doc(*blocks: Block | str) -> Document:
    return Document(tuple(para(b) if isinstance(b, str) else b for b in blocks))


def _plain_inline(part: Inline) -> str:
    if isinstance(part, Mention):
        return part.user_id
    return part.text


def _html_inline(part: Inline) -> str:
    if isinstance(part, Text):
        return html.escape(part.text).replace("\n", "<br>")
    if isinstance(part, Strong):
        return f"<strong>{html.escape(part.text)}</strong>"
    if isinstance(part, Code):
        return f"<code>{html.escape(part.text)}</code>"
    if isinstance(part, Banner):
        colour = BANNER_COLOURS[max(0, min(part.rank, len(BANNER_COLOURS) - 1))]
        return f'<font color="{colour}"><strong>{html.escape(part.text)}</strong></font>'
    quoted = html.escape(part.user_id, quote=True)
    return f'<a href="https://matrix.to/#/{quoted}">{html.escape(part.user_id)}</a>'


def render_plain(document: Document) -> str:
    lines: list[str] = []
    for block in document.blocks:
        if isinstance(block, Items):
            lines.extend("• " + "".join(_plain_inline(p) for p in item) for item in block.items)
        elif isinstance(block, Preformatted):
            lines.append(block.text)
        else:
            lines.append("".join(_plain_inline(p) for p in block.parts))
    return "\n".join(lines)


def render_html(document: Document) -> str:
    out: list[str] = []
    for block in document.blocks:
        if isinstance(block, Items):
            rows = "".join(
                "<li>" + "".join(_html_inline(p) for p in item) + "</li>" for item in block.items
            )
            out.append(f"<ul>{rows}</ul>")
        elif isinstance(block, Preformatted):
            out.append(f"<pre><code>{html.escape(block.text)}</code></pre>")
        elif isinstance(block, Heading):
            out.append("<h4>" + "".join(_html_inline(p) for p in block.parts) + "</h4>")
        else:
            out.append("<p>" + "".join(_html_inline(p) for p in block.parts) + "</p>")
    return "".join(out)


def split_document(document: Document, fits: Callable[[Document], bool]) -> list[Document]:
    """The document in consecutive parts that each `fits` (an event-size limit), cut between
    blocks and, for a long list, between its items; never inside a line. A single block or
    item too big on its own becomes a part of its own (the caller's limit then decides).

    Parts are grown by halving: `fits` renders a whole part, so trying every line in turn
    would render a thousand-line listing a thousand times."""
    if fits(document):
        return [document]
    lines: list[tuple[int, Block | tuple[Inline, ...]]] = []  # (block index, block or row)
    for index, block in enumerate(document.blocks):
        if isinstance(block, Items):
            lines += [(index, row) for row in block.items]
        else:
            lines.append((index, block))

    def build(chunk: Sequence[tuple[int, Block | tuple[Inline, ...]]]) -> Document:
        blocks: list[Block] = []
        rows: list[tuple[Inline, ...]] = []
        last = -1
        for index, line in chunk:
            if rows and index != last:
                blocks.append(Items(tuple(rows)))
                rows = []
            if isinstance(line, tuple):
                rows.append(line)
            else:
                blocks.append(line)
            last = index
        if rows:
            blocks.append(Items(tuple(rows)))
        return Document(tuple(blocks))

    parts: list[Document] = []
    start = 0
    while start < len(lines):
        # The longest run from `start` that fits: double while it fits, then bisect.
        good, size = 0, 1
        while start + size <= len(lines) and fits(build(lines[start : start + size])):
            good, size = size, size * 2
        if start + good < len(lines):
            bad = min(size, len(lines) - start + 1)
            while bad - good > 1:
                middle = (good + bad) // 2
                if fits(build(lines[start : start + middle])):
                    good = middle
                else:
                    bad = middle
        take = max(good, 1)  # a line too big on its own goes alone
        parts.append(build(lines[start : start + take]))
        start += take
    return parts
