"""The classification domain, pure: schemes, labels, clearances and access decisions.

No I/O, no Matrix, no database: callers pass in everything a rule needs.

`CATALOGUE` is the packaged catalogue as imported; code reads `current()`, the one in force
(a site schemes file may replace it once at start: see policy.catalogue).
"""

from policy.catalogue import (
    CATALOGUE,
    Catalogue,
    CatalogueError,
    Level,
    Scheme,
    current,
    with_site,
)
from policy.decisions import (
    Clearance,
    Decision,
    Room,
    dominant_label,
    fits,
    level_fits,
    make_room,
    may_enter,
    may_join,
    may_release,
    server_of,
)
from policy.labels import (
    Label,
    MarkingError,
    convert,
    equivalent,
    install_catalogue,
    known_caveats,
    parse_audience,
    parse_marking,
    record_mismatch,
    releasable_set,
    render,
    stored_label,
    why_no_equivalent,
)
from policy.tagged import (
    MAX_TEXT_BYTES,
    Precedence,
    TaggedMessage,
    is_tagged,
    levels_named,
    parse_tagged,
)

__all__ = [
    "CATALOGUE",
    "MAX_TEXT_BYTES",
    "Catalogue",
    "CatalogueError",
    "Clearance",
    "Decision",
    "Label",
    "Level",
    "MarkingError",
    "Precedence",
    "Room",
    "Scheme",
    "TaggedMessage",
    "convert",
    "current",
    "dominant_label",
    "equivalent",
    "fits",
    "install_catalogue",
    "is_tagged",
    "known_caveats",
    "level_fits",
    "levels_named",
    "make_room",
    "may_enter",
    "may_join",
    "may_release",
    "parse_audience",
    "parse_marking",
    "parse_tagged",
    "record_mismatch",
    "releasable_set",
    "render",
    "server_of",
    "stored_label",
    "why_no_equivalent",
    "with_site",
]
