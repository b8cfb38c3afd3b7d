"""What ``frame_parse`` must answer, written from docs/protocol.md and not from the code.

Shared by the hypothesis tests and the atheris script (so it imports neither).
``check_frame`` is the property: ``frame_parse`` raises ``Refused`` with the code the
oracle expects, or returns a frame the oracle accepts that survives a round trip; anything
else (another exception, another code, a frame the oracle refuses) is a failure.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any

from sessions_app.errors import Refused
from sessions_app.events.frames import ErrorFrame
from sessions_app.transport.client_frames import ClientFrameModel, frame_parse

# Every code frame_parse may raise (docs/protocol.md#error-codes).
PARSER_CODES = frozenset(
    {"unsupported_frame", "frame_too_large", "bad_json", "invalid_frame", "unknown_type"}
)
CLIENT_MESSAGE_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")
# An error frame answers any refused frame in at most this many bytes, whatever its size: a
# big bad frame must not buy a bigger answer (thousands of unknown fields once got 11 times
# the frame's size). protocol.py lists 10 problems with field names of at most 64 characters.
ERROR_FRAME_MAX = 16 * 1024


def is_unicode(value: str) -> bool:
    """A string a real websocket can carry: no lone surrogates."""
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _text(
    *, min_len: int = 0, max_len: int | None = None, nul: bool = True
) -> Callable[[Any], bool]:
    def check(value: Any) -> bool:
        return (
            isinstance(value, str)
            and is_unicode(value)
            and len(value) >= min_len
            and (max_len is None or len(value) <= max_len)
            and (nul or "\x00" not in value)
        )

    return check


def _cursor(value: Any) -> bool:
    # JSON integers only: not true/false, not 2.0, not "5".
    return value is None or (type(value) is int and value >= 0)


def _client_message_id(value: Any) -> bool:
    return isinstance(value, str) and CLIENT_MESSAGE_ID.fullmatch(value) is not None


def _optional_id(value: Any) -> bool:
    return value is None or _text(max_len=64)(value)


# type -> field -> (required, valid value)
FIELDS: dict[str, dict[str, tuple[bool, Callable[[Any], bool]]]] = {
    # A message never holds U+0000, which PostgreSQL cannot store (docs/protocol.md).
    "send": {
        "content": (True, _text(min_len=1, nul=False)),
        "client_message_id": (True, _client_message_id),
    },
    "cancel": {},
    "resume": {"last_seq": (True, _cursor)},
    "ping": {"id": (False, _optional_id)},
}


def utf8_size(text: str) -> int:
    # A str that is not valid Unicode (only possible in tests, never on a socket) counts one
    # byte per lone surrogate, as the server measures it.
    return len(text.encode("utf-8", "replace"))


def expected_code(text: str | None, max_bytes: int) -> str | None:
    """The error code the protocol prescribes for this frame, or None for a valid frame."""
    if text is None:
        return "unsupported_frame"
    if utf8_size(text) > max_bytes:
        return "frame_too_large"
    try:
        data = json.loads(text)
    except (ValueError, RecursionError):
        return "bad_json"
    if not isinstance(data, dict):
        return "invalid_frame"
    kind = data.get("type")
    if not isinstance(kind, str) or kind not in FIELDS:
        return "unknown_type"
    fields = FIELDS[kind]
    if set(data) - {"type"} - set(fields):
        return "invalid_frame"
    for name, (required, valid) in fields.items():
        if name not in data:
            if required:
                return "invalid_frame"
        elif not valid(data[name]):
            return "invalid_frame"
    return None


def check_frame(text: str | None, max_bytes: int) -> ClientFrameModel | None:
    """Parse ``text`` and check the answer against the oracle; the frame, or None if refused.

    Raises AssertionError on a wrong answer; any other exception is a crash of the parser.
    """
    expected = expected_code(text, max_bytes)
    try:
        frame = frame_parse(text, max_bytes=max_bytes)
    except Refused as exc:
        assert exc.code in PARSER_CODES, f"unknown code {exc.code!r}"
        assert exc.code == expected, f"refused as {exc.code!r}, expected {expected!r}: {exc}"
        assert isinstance(exc.message, str) and exc.message
        # The consumer must be able to send it: it serialises, and it stays small.
        sent = ErrorFrame(
            code=exc.code, message=exc.message, retry_after=exc.retry_after, details=exc.details
        ).model_dump_json(exclude_none=True)
        assert len(sent) <= ERROR_FRAME_MAX, f"an error frame of {len(sent)} bytes"
        return None
    assert expected is None, f"accepted {frame!r}, expected {expected!r}"
    again = frame_parse(frame.model_dump_json(), max_bytes=2**40)
    assert again == frame and type(again) is type(frame), f"round trip: {frame!r} -> {again!r}"
    return frame
