"""sessions_app.events.frames against docs/protocol.md: every frame the server sends and every
frame a client sends has a section there whose field table names exactly the model's fields,
and a frame is encoded the way the log and the live path expect."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from sessions_app.events import frames
from sessions_app.events.log import frame_text
from sessions_app.schemas import MessageOut, Usage
from sessions_app.transport import client_frames

PROTOCOL = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"
# Every session event has these; the protocol says so once, before the events' sections.
EVENT_COMMON = {"type", "seq", "turn_id"}

SECTIONS: dict[str, type[BaseModel]] = {
    **{f"`{name}`": model for name, model in frames.SESSION_EVENTS.items() if name != "error"},
    "`error` (event)": frames.ErrorEvent,
    **{f"`{name}`": model for name, model in frames.SOCKET_FRAMES.items() if name != "error"},
    "`error` (socket-local)": frames.ErrorFrame,
    **{f"`{name}`": model for name, model in client_frames.FRAME_MODELS.items()},
    "The message object": MessageOut,
    "The operation object": frames.OperationOut,
    "The snapshot's session object": frames.SnapshotSession,
    "The usage object": Usage,
}


def _documented_fields() -> dict[str, set[str]]:
    """Each ``### `` section of the protocol, with the fields named in the first column of
    the field table that follows its heading (``| `a`, `b` | ... |`` names two)."""
    sections: dict[str, set[str]] = {}
    current: str | None = None
    in_table = False
    for line in PROTOCOL.read_text().splitlines():
        if line.startswith("### "):
            current = line[4:].strip()
            sections[current] = set()
            in_table = False
        elif line.startswith("## "):
            current = None
        elif current is not None and line.startswith("| field |"):
            in_table = True
        elif in_table and line.startswith("|"):
            first = line.split("|")[1]
            sections[current] |= set(re.findall(r"`([a-z_]+)`", first))
        elif in_table:
            in_table = False
    return sections


DOCUMENTED = _documented_fields()


def _model_fields(model: type[BaseModel]) -> set[str]:
    return set(model.model_fields) | set(model.model_computed_fields)


@pytest.mark.parametrize("heading", sorted(SECTIONS))
def test_the_protocol_documents_each_frame_with_its_fields(heading: str) -> None:
    model = SECTIONS[heading]
    assert heading in DOCUMENTED, f"docs/protocol.md has no section '### {heading}'"
    documented = DOCUMENTED[heading]
    fields = _model_fields(model)
    implicit = EVENT_COMMON if issubclass(model, frames.SessionEvent) else {"type"}
    assert documented - fields == set(), f"{heading}: documented but not sent"
    assert fields - implicit - documented == set(), f"{heading}: sent but not documented"


def test_every_frame_type_has_a_model() -> None:
    """The models' registries are complete: each type names its own model."""
    for registry in (frames.SESSION_EVENTS, frames.SOCKET_FRAMES):
        for name, model in registry.items():
            assert model.model_fields["type"].default == name


def test_an_event_is_encoded_once_with_its_optional_fields_left_out() -> None:
    event = frames.ErrorEvent(code="c", message="m")
    assert json.loads(event.encode()) == {"type": "error", "code": "c", "message": "m"}
    event.turn_id = "t"
    live = json.loads(frame_text(event.encode(), 7))
    assert live == {"type": "error", "code": "c", "message": "m", "turn_id": "t", "seq": 7}
    failed = frames.OperationFailed.model_construct(type="operation_failed", message=None)
    assert "message" in failed.model_dump()  # null, not left out: the tool message is gone
