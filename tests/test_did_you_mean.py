"""Did-you-mean never crosses a nation: every level of every scheme, edited once, gets
suggestions from its own scheme only when the trigraph is kept, and suggestions that each
name their nation when it is not."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from policy import Level, MarkingError, current, parse_marking
from policy.catalogue import ALLIANCES

ALPHABET = "EXQ"  # replacement and insertion letters, chosen deterministically per position


def one_edits(word: str) -> Iterator[str]:
    """Deletions, replacements and insertions of one character, a few per position."""
    for i in range(len(word) + 1):
        letter = ALPHABET[i % len(ALPHABET)]
        if i < len(word):
            yield word[:i] + word[i + 1 :]
            other = letter if word[i].upper() != letter else "Z"
            yield word[:i] + other + word[i + 1 :]
        yield word[:i] + letter + word[i:]


def level_name_part(level: Level) -> str:
    prefix = level.scheme + " "
    return level.name[len(prefix) :] if level.name.startswith(prefix) else level.name


def error_of(text: str, context: str | None = None) -> MarkingError | None:
    try:
        parse_marking(text, context)
    except MarkingError as exc:
        return exc
    return None


NATIONAL = [
    lv for code, s in sorted(current().schemes.items()) if code not in ALLIANCES for lv in s.levels
]
ALL = [lv for _, s in sorted(current().schemes.items()) for lv in s.levels]


def test_with_the_trigraph_suggestions_come_from_that_nation_only() -> None:
    checked = suggested = 0
    for level in NATIONAL:
        for edited in one_edits(level_name_part(level)):
            text = f"{level.scheme} {edited}"
            exc = error_of(text)
            if exc is None or "ambiguous" in exc.message:
                continue
            checked += 1
            others = [lv.banner for lv in exc.suggestions if lv.scheme != level.scheme]
            assert not others, f"{text!r}: {exc.message}"
            if "did you mean" in exc.message:
                suggested += 1
                hint = exc.message.split("did you mean", 1)[1]
                named = [s for s in current().schemes if f"'{s} " in hint and s != level.scheme]
                assert not named, f"{text!r} suggests another nation: {exc.message}"
    assert checked > 200 and suggested > checked // 2, (checked, suggested)


def test_without_a_trigraph_each_suggestion_names_its_nation() -> None:
    checked = 0
    for n, level in enumerate(ALL):
        # every third variant: the global pool is the costly one
        for edited in list(one_edits(level_name_part(level)))[n % 3 :: 3]:
            exc = error_of(edited)
            if exc is None or not exc.suggestions:
                continue
            checked += 1
            forms = exc.message.split("did you mean", 1)[1]
            for suggestion in exc.suggestions:
                assert suggestion.banner in forms or f"'{suggestion.scheme} " in forms, (
                    f"{edited!r}: {exc.message}"
                )
    assert checked > 50


def test_in_a_room_the_rooms_scheme_is_asked_first() -> None:
    exc = error_of("GEHEIN", "DEU")
    assert exc is not None and [lv.scheme for lv in exc.suggestions] == ["DEU"]
    assert "did you mean 'GEHEIM'" in exc.message


@pytest.mark.parametrize(
    ("text", "nation"),
    [("DEU GEHEIN", "DEU"), ("FRA SECRTE", "FRA"), ("BEL SECRTE", "BEL"), ("ESP SECRETOO", "ESP")],
)
def test_a_known_trigraph_keeps_its_nation(text: str, nation: str) -> None:
    exc = error_of(text)
    assert exc is not None and exc.suggestions
    assert {lv.scheme for lv in exc.suggestions} == {nation}


def test_a_trigraph_without_a_scheme_says_so_and_lists_the_known() -> None:
    code = next(c for c in ("CHE", "JPN", "UKR") if c not in current().schemes)
    exc = error_of(f"{code} GEHEIM")
    assert exc is not None and not exc.suggestions
    assert f"no scheme for {code}; known: " in exc.message
    assert "DEU" in exc.message and "GEHEIM'?" not in exc.message


def test_a_known_trigraph_with_nothing_close_lists_its_levels() -> None:
    exc = error_of("DEU BANANA")
    assert exc is not None and "(DEU levels: DEU STRENG GEHEIM, DEU GEHEIM" in exc.message
