"""Shared hypothesis strategies and checks for the fuzz tests (tests/test_fuzz_*.py).

Why fuzz: every parser here reads text written by someone else: a chat member, a homeserver,
an operator. Each must answer any input with a result or its own documented error, fast, and
nothing a user typed may reach the HTML of a reply, a relayed copy or a digest unescaped.
The strategies mix the grammar's own words with adversarial text: look-alike Greek and
Cyrillic letters, bidi and zero-width marks, combining characters, NUL bytes, lone
surrogates (which JSON can carry into a Matrix event), HTML and deeply nested brackets.
`checked_html` is the allow-list every posted HTML body is held to (its own test is in
tests/test_fuzz_html.py).
"""

from __future__ import annotations

from html.parser import HTMLParser

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from commands.document import BANNER_COLOURS
from policy import CATALOGUE

MEGABYTE = 1_000_000
FAST = 2.0  # seconds: generous for a loaded CI runner; the parsers answer in milliseconds

FUZZ = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FUZZ_SLOW = settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# ---------------------------------------------------------------- adversarial text

# Latin letters and their Greek / Cyrillic look-alikes (not canonically equivalent: NFC keeps
# them apart, unlike the Kelvin sign, which *is* a K after normalisation).
LOOKALIKES: dict[str, str] = {
    "A": "ΑА",
    "B": "ΒВ",
    "C": "С",
    "E": "ΕЕ",
    "H": "ΗН",
    "I": "ΙІ",
    "K": "ΚК",
    "M": "ΜМ",
    "N": "Ν",
    "O": "ΟО",
    "P": "ΡР",
    "S": "Ѕ",
    "T": "ΤТ",
    "X": "ΧХ",
    "Y": "ΥУ",
    "Z": "Ζ",
}
INVISIBLES = ["\u200f", "\u202e", "\u200b", "\ufeff", "\u200d", "\u2066", "\u00ad", "\x00"]
COMBINING = ["\u0301", "\u0316", "\u0308", "\u0327", "\u20dd", "\u0336"]
SURROGATES = ["\ud800", "\udfff", "\udc80", "\ud83d"]
HTML_BITS = [
    "<script>alert(1)</script>",
    "<img src=x onerror=alert(1)>",
    '<a href="javascript:alert(1)">x</a>',
    "<iframe src=//evil>",
    "<svg/onload=alert(1)>",
    '"><b>',
    "&amp;",
    "&lt;",
    "&#60;script&#62;",
    "<!-- x -->",
    "<![CDATA[x]]>",
    "</p>",
    "<br>",
    "'",
    '"',
    "&",
]
SHAPES = ["[", "]", "[[[[", "]]]]", "//", " / ", "/", ",", "--", "#", "\n", "\t", " ", "\u00a0"]
QUOTES = ['"', "'", "“", "”", "„", "‘", "’", "«", "»"]
CONFUSABLE_MARKINGS = [
    "ΝΑΤΟ SECRET",  # Greek capitals
    "NАТО SECRET",  # Cyrillic А, Т, О
    "NATO SЕCRET",  # Cyrillic Е
    "СOSMIC TOP SECRET",  # Cyrillic С
    "ЕU SECRET",
    "NATO SECRET // REL TO DЕU",
    "NATO SECRET // АTOMAL",
]

adversarial_bits = st.sampled_from(
    [*INVISIBLES, *COMBINING, *SURROGATES, *HTML_BITS, *SHAPES, *QUOTES, *CONFUSABLE_MARKINGS]
)
lone_surrogates = st.characters(categories=["Cs"])
any_text = st.text(st.characters(codec=None) | lone_surrogates, max_size=40)


def mixed(words: st.SearchStrategy[str], max_size: int = 8) -> st.SearchStrategy[str]:
    """Grammar words, adversarial bits and random text, concatenated."""
    return st.lists(st.one_of(words, adversarial_bits, any_text), max_size=max_size).map("".join)


SCHEMES = sorted(CATALOGUE.schemes)


# ---------------------------------------------------------------- HTML allow-list check

ALLOWED_TAGS = {"p", "br", "strong", "font", "code", "pre", "ul", "li", "h4", "a"}


class _AllowList(HTMLParser):
    """Fails on any tag, attribute or markup the renderers never produce; keeps the text."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.problems: list[str] = []
        self.text: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag not in ALLOWED_TAGS:
            self.problems.append(f"tag <{tag}>")
        elif tag == "font":
            if len(attrs) != 1 or attrs[0][0] != "color" or attrs[0][1] not in BANNER_COLOURS:
                self.problems.append(f"font attributes {attrs!r}")
        elif tag == "a":
            href = attrs[0][1] if len(attrs) == 1 and attrs[0][0] == "href" else None
            if href is None or not href.startswith("https://matrix.to/#/"):
                self.problems.append(f"link attributes {attrs!r}")
        elif attrs:
            self.problems.append(f"attributes on <{tag}>: {attrs!r}")
        if tag == "br":
            self.text.append("\n")

    def handle_startendtag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        self.problems.append(f"self-closing <{tag}/>")

    def handle_endtag(self, tag: str) -> None:
        if tag not in ALLOWED_TAGS - {"br"}:
            self.problems.append(f"end tag </{tag}>")

    def handle_data(self, data: str) -> None:
        self.text.append(data)

    def handle_comment(self, data: str) -> None:
        self.problems.append(f"comment {data!r}")

    def handle_decl(self, decl: str) -> None:
        self.problems.append(f"declaration {decl!r}")

    def handle_pi(self, data: str) -> None:
        self.problems.append(f"processing instruction {data!r}")

    def unknown_decl(self, data: str) -> None:
        self.problems.append(f"unknown declaration {data!r}")


def checked_html(html_text: str) -> str:
    """Assert that `html_text` holds only the renderers' own markup; return its text."""
    parser = _AllowList()
    parser.feed(html_text)
    parser.close()
    assert not parser.problems, (parser.problems, html_text[:500])
    lowered = html_text.casefold()
    for bad in ("<script", "<img", "<iframe", "<svg", '<a href="j'):
        assert bad not in lowered, (bad, html_text[:500])
    return "".join(parser.text)
