"""Issue 24: a fuzz test over the real Synapse. Hypothesis makes message contents with wrong
types in every field the bot reads (body, msgtype, formatted_body, m.relates_to,
m.new_content, m.mentions, the label field, the structured command field), nesting, large
values and adversarial unicode; a cleared member whose device nobody verified sends each batch, encrypted and in clear, as
messages and as edits of real events. After each batch a tagged message must still relay
and /healthz must stay 200: no content may stall or stop the bot.

In CI the examples are derandomized (the same ones every run: a red CI is a finding, not
luck); elsewhere they are new each run."""

from __future__ import annotations

import asyncio
import os
import secrets
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nio import RoomSendResponse
from nio.api import Api

from bot.services.render import LABEL_KEY
from commands.slash import COMMAND_FIELD
from policy.adatp4774 import label_metadata, to_json
from policy.labels import parse_marking
from tests.bot_harness import BotEnv
from tests.fuzzing import COMBINING, HTML_BITS, INVISIBLES, LOOKALIKES
from tests.test_poison import Cast, healthz, relays
from tests.test_poison import cast as cast

BOT_EXTRA_CONFIG = """
[metrics]
bind = "127.0.0.1:0"
"""

LABEL = to_json(label_metadata(parse_marking("DEU GEHEIM // REL TO NATO")))
MARKINGS = ["[GEHEIM]", "[STRENG GEHEIM]", "[GEHEIM // REL TO NATO]", "[PRIORITY]", "[", "[]"]

words = st.text(
    alphabet=st.sampled_from(
        [*"abcXYZ01 #[]/<>&\"'", *LOOKALIKES["E"], *INVISIBLES, *COMBINING, "\u202e", "𝕏"]
    ),
    max_size=40,
)
texts = st.one_of(
    words,
    st.builds(lambda m, w: f"{m} {w}", st.sampled_from(MARKINGS), words),
    st.sampled_from(HTML_BITS),
    st.builds(lambda n: "x" * n, st.integers(1000, 30_000)),  # large, under the event limit
)
scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**53), 2**53),
    st.floats(allow_nan=False, allow_infinity=False),
    texts,
)
junk = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(words, inner, max_size=3),
    max_leaves=12,
)
deep = st.integers(10, 60).map(lambda n: _nest(n))


def _nest(depth: int) -> Any:
    value: Any = "x"
    for _ in range(depth):
        value = {"a": [value]}
    return value


def field_of(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """A field's value: well formed, or anything else."""
    return st.one_of(good, junk, deep)


def mostly(good: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Well formed three times in four: a message without a text body or msgtype is no text
    message to nio, so the bot never sees it; the other fields are where the poison goes."""
    return st.one_of(good, good, good, junk)


relation = st.one_of(
    st.fixed_dictionaries(
        {"rel_type": field_of(st.just("m.replace")), "event_id": field_of(st.just("$OWN"))}
    ),
    st.fixed_dictionaries({"m.in_reply_to": field_of(st.just({"event_id": "$OWN"}))}),
    junk,
)
labels = st.one_of(st.just(LABEL), st.just("<xml"), junk, deep)
# A structured command (MSC4332): a syntax and arguments, each well formed or anything.
structured = st.fixed_dictionaries(
    {"syntax": field_of(st.just("clearance grant {user} {marking}") | words)},
    optional={"arguments": field_of(st.dictionaries(words, field_of(texts), max_size=3))},
)
new_content = st.fixed_dictionaries(
    {"msgtype": st.just("m.text"), "body": field_of(texts)}, optional={LABEL_KEY: labels}
)
anything = st.fixed_dictionaries(
    {"msgtype": mostly(st.just("m.text")), "body": mostly(texts)},
    optional={
        "format": st.just("org.matrix.custom.html"),
        "formatted_body": field_of(texts),
        "m.relates_to": relation,
        "m.new_content": field_of(new_content),
        "m.mentions": field_of(st.fixed_dictionaries({"user_ids": field_of(st.just(["@a:x"]))})),
        LABEL_KEY: labels,
        COMMAND_FIELD: field_of(structured),
    },
)
# One field the bot reads, wrong: in a message, or in an edit of a real event.
READ = ["formatted_body", "m.relates_to", "m.new_content", "m.mentions", LABEL_KEY, COMMAND_FIELD]
wrong = st.one_of(junk, deep).filter(lambda v: v is not None)
poisoned_message = st.builds(
    lambda key, value, body: {"msgtype": "m.text", "body": body, key: value},
    st.sampled_from(READ),
    wrong,
    texts,
)
poisoned_edit = st.builds(
    lambda where, value, body: {
        "msgtype": "m.text",
        "body": f"* {body}",
        "m.relates_to": {"rel_type": "m.replace", "event_id": "$OWN"},
        "m.new_content": (
            value if where == "m.new_content" else {"msgtype": "m.text", "body": body, where: value}
        ),
    },
    st.sampled_from(["m.new_content", "body", LABEL_KEY, "m.mentions"]),
    wrong,
    texts,
)
contents = st.one_of(poisoned_message, poisoned_edit, anything)
batches = st.lists(st.tuples(contents, st.booleans()), min_size=1, max_size=4)


def _with_own(value: Any, own: str) -> Any:
    """`$OWN` replaced by a real event id (Synapse refuses relations to unknown events)."""
    if value == "$OWN":
        return own
    if isinstance(value, dict):
        return {k: _with_own(v, own) for k, v in value.items()}
    if isinstance(value, list):
        return [_with_own(v, own) for v in value]
    return value


async def send(cast: Cast, content: dict[str, Any], encrypted: bool, own: str) -> str | None:
    """The event id, or None when the homeserver refused the content (too large, a float in
    clear, …): such content never reaches the bot."""
    content = _with_own(content, own)
    if encrypted:
        try:
            return await cast.mallory.send_event(cast.deu, "m.room.message", content)
        except AssertionError:  # the harness's word for a refusal by the homeserver
            return None
    nio = cast.mallory.client
    method, path, data = Api.room_send(
        nio.access_token, cast.deu, "m.room.message", content, secrets.token_hex(8)
    )
    response = await nio._send(RoomSendResponse, method, path, data, response_data=(cast.deu,))
    return str(response.event_id) if isinstance(response, RoomSendResponse) else None


EXAMPLES = int(os.environ.get("LIAISON_FUZZ_EVENTS_EXAMPLES", "12"))


@settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=os.environ.get("CI") == "true",
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(batch=batches)
async def test_no_content_stops_the_bot(bot_env: BotEnv, cast: Cast, batch: Any) -> None:
    own = await cast.mallory.send_text(cast.deu, "a message of mallory's own")
    for content, encrypted in batch:
        await send(cast, content, encrypted, own)
    await relays(cast, "a fuzzed batch")
    assert await asyncio.to_thread(healthz, bot_env) == 200
