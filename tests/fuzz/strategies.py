"""Hypothesis strategies for frames and API bodies: valid ones, mutated ones, hostile ones."""

from __future__ import annotations

import json
import os
from typing import Any

from hypothesis import strategies as st

from tests.fuzz.oracle import FIELDS, is_unicode


def examples(count: int) -> int:
    """An example count, scaled by ``FUZZ_SCALE`` (a longer local run: ``FUZZ_SCALE=10``)."""
    return max(1, round(count * float(os.environ.get("FUZZ_SCALE", "1"))))


# Strings that break naive code: lone surrogates (only through ``\\ud800`` escapes on a real
# socket), NUL and controls, bidi marks, zero-width and BOM, non-characters, the last code
# point, emoji (outside the BMP, and joined), combining marks, line separators, case folds.
UNICODE_EDGES = [
    "\ud800",
    "\udbff",
    "\udc00",
    "\udfff",
    "\ud83d",
    "\x00",
    "\x01",
    "\x1f",
    "\x7f",
    "\x85",
    "\u200f",
    "\u202e",
    "\u2066",
    "\u200b",
    "\u200d",
    "\ufeff",
    "\ufffe",
    "\uffff",
    "\ufdd0",
    "\U0010ffff",
    "\U0001f600",
    "\U0001f468\u200d\U0001f469\u200d\U0001f467",
    "e\u0301",
    "\u0301",
    "a" + "\u0300" * 40,
    "\u2028",
    "\u2029",
    "\\",
    '"',
    "İ",
    "ß",
    "\ufb03",
    "' OR 1=1 --",
    "<script>",
    "%00",
    "../",
]

# Any code point, lone surrogates included.
any_char = st.characters(exclude_categories=())
any_text = st.text(any_char, max_size=80)
edge_text = st.lists(
    st.sampled_from(UNICODE_EDGES) | st.text(any_char, max_size=4), max_size=6
).map("".join)
texts = any_text | edge_text
keys = texts | st.sampled_from(["type", "content", "client_message_id", "last_seq", "id", "title"])

scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.floats(allow_nan=True, allow_infinity=True)
    | texts
)
json_values = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=4) | st.dictionaries(keys, children, max_size=4),
    max_leaves=20,
)
# Values of the wrong JSON type for any field (and numbers in disguise).
wrong_types = st.one_of(
    st.booleans(),
    st.floats(allow_nan=True),
    st.integers(max_value=-1),
    st.sampled_from(["5", " 5 ", "1_000", "0x10", "", "null", "true", "-1", "1e3", 2.0, 0.0]),
    st.lists(scalars, max_size=3),
    st.dictionaries(keys, scalars, max_size=3),
)

client_message_ids = st.from_regex(r"\A[A-Za-z0-9._:-]{1,64}\Z")

valid_frames: st.SearchStrategy[dict[str, Any]] = st.one_of(
    st.fixed_dictionaries(
        {
            "type": st.just("send"),
            # Valid: no U+0000 (refused, docs/protocol.md); the mutations still send it.
            "content": (
                st.text(min_size=1, max_size=80)
                | edge_text.filter(lambda s: bool(s) and is_unicode(s))
            ).filter(lambda s: "\x00" not in s),
            "client_message_id": client_message_ids,
        }
    ),
    st.just({"type": "cancel"}),
    st.fixed_dictionaries(
        {"type": st.just("resume"), "last_seq": st.none() | st.integers(min_value=0)}
    ),
    st.fixed_dictionaries(
        {"type": st.just("ping")}, optional={"id": st.none() | st.text(max_size=64)}
    ),
)

FIELD_NAMES = sorted({name for fields in FIELDS.values() for name in fields} | {"type"})
OTHER_TYPES = [
    "SEND",
    "send ",
    " ping",
    "",
    "hello",
    "pong",
    "error",
    "snapshot",
    None,
    1,
    ["send"],
]


@st.composite
def mutated_objects(draw: st.DrawFn, base: st.SearchStrategy[dict[str, Any]]) -> dict[str, Any]:
    """A valid object with one to three changes: a field dropped, added, of the wrong type,
    huge, full of unicode edge cases, or another ``type``."""
    obj = dict(draw(base))
    for _ in range(draw(st.integers(1, 3))):
        present = sorted(obj, key=repr)
        op = draw(st.sampled_from(["drop", "add", "retype", "huge", "unicode", "type", "long"]))
        if op == "drop" and present:
            del obj[draw(st.sampled_from(present))]
        elif op == "add":
            obj[draw(keys | st.sampled_from(FIELD_NAMES))] = draw(json_values)
        elif op == "retype" and present:
            obj[draw(st.sampled_from(present))] = draw(wrong_types)
        elif op == "huge" and present:
            size = draw(st.sampled_from([65, 201, 4_096, 32_001, 70_000, 300_000]))
            obj[draw(st.sampled_from(present))] = draw(st.sampled_from(["x", "é", "😀"])) * size
        elif op == "unicode" and present:
            obj[draw(st.sampled_from(present))] = draw(edge_text)
        elif op == "type":
            obj["type"] = draw(st.sampled_from(OTHER_TYPES))
        elif op == "long" and present:
            obj[draw(st.sampled_from(present))] = 10 ** draw(st.integers(18, 400))
    return obj


def dumps(obj: Any, ascii_only: bool) -> str:
    return json.dumps(obj, ensure_ascii=ascii_only)


@st.composite
def text_mutations(draw: st.DrawFn, source: st.SearchStrategy[str]) -> str:
    """The JSON text of a frame broken on the text level."""
    text = draw(source)
    op = draw(
        st.sampled_from(["truncate", "insert", "delete", "nest", "digits", "bom", "dupe", "none"])
    )
    at = draw(st.integers(0, len(text)))
    if op == "truncate":
        return text[:at]
    if op == "insert":
        return text[:at] + draw(edge_text | st.sampled_from(list('{}[]",:\\')))
    if op == "delete":
        return text[:at] + text[at + draw(st.integers(1, 8)) :]
    if op == "nest":
        depth = draw(st.sampled_from([10, 999, 1_000, 5_000, 100_000]))
        close = draw(st.booleans())
        return "[" * depth + text + ("]" * depth if close else "")
    if op == "digits":
        return text[:at] + "9" * draw(st.sampled_from([20, 4_300, 4_301, 10_000])) + text[at:]
    if op == "bom":
        return "\ufeff" + text
    if op == "dupe" and text.endswith("}"):
        return text[:-1] + ', "type": ' + json.dumps(draw(st.sampled_from(OTHER_TYPES))) + "}"
    return text


frame_objects = valid_frames | mutated_objects(valid_frames)
frame_texts = st.builds(dumps, frame_objects, st.booleans())
hostile_frames = st.one_of(
    frame_texts,
    text_mutations(frame_texts),
    st.builds(dumps, json_values, st.booleans()),
    any_text,
)


def nested(depth: int, opener: str, inside_frame: bool, closed: bool) -> str:
    closer = {"[": "]", '{"a":': "}"}[opener]
    body = opener * depth + "1" + (closer * depth if closed else "")
    return '{"type": "ping", "id": ' + body + "}" if inside_frame else body
