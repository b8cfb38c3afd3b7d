"""A client-side view of the protocol, shared by consumer and end-to-end tests.

``ClientView`` applies frames the way a real client must (docs/protocol.md): it checks that
``seq`` grows by exactly one, applies snapshots and events idempotently, and so ends with
the same messages as the database when nothing was lost or shown twice.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from sessions_app.transport.feed import apply_text_delta


@dataclass
class ClientView:
    last_seq: int | None = None
    messages: dict[int, dict[str, Any]] = field(default_factory=dict)
    title: str = ""
    operations: dict[str, dict[str, Any]] = field(default_factory=dict)
    events: list[dict[str, Any]] = field(default_factory=list)
    gaps: list[tuple[int, int]] = field(default_factory=list)

    def apply(self, frame: dict[str, Any]) -> None:
        kind = frame["type"]
        if kind == "snapshot":
            self.last_seq = frame["seq"]
            self.messages = {m["sequence"]: dict(m) for m in frame["messages"]}
            self.title = frame["session"]["title"]
            self.operations = {op["id"]: dict(op) for op in frame.get("operations", [])}
            return
        if "seq" not in frame:
            return  # socket-local: hello, ack, pong, error
        seq = frame["seq"]
        assert self.last_seq is not None, f"event before resume: {frame}"
        if seq <= self.last_seq:
            raise AssertionError(f"event {seq} shown twice (last {self.last_seq})")
        if seq != self.last_seq + 1:
            self.gaps.append((self.last_seq, seq))
        self.last_seq = seq
        self.events.append(frame)
        if kind.startswith("operation_"):
            self.operations[frame["operation"]["id"]] = dict(frame["operation"])
        if frame.get("message") and kind != "error":
            message = frame["message"]
            self.messages[message["sequence"]] = dict(message)
        elif kind == "text_delta":
            message = self.messages[frame["message_sequence"]]
            if message["status"] != "streaming":
                return  # final already (docs/protocol.md, "Applying frames")
            updated = apply_text_delta(message["content"] or "", frame["offset"], frame["text"])
            assert updated is not None, f"text gap in {frame}"
            message["content"] = updated
        elif kind == "title_updated":
            self.title = frame["title"]

    def contents(self) -> list[tuple[int, str, str | None, str]]:
        return [
            (seq, m["role"], m["content"], m["status"]) for seq, m in sorted(self.messages.items())
        ]


def send_frame(content: str, client_id: str | None = None) -> dict[str, Any]:
    return {"type": "send", "content": content, "client_message_id": client_id or uuid.uuid4().hex}


class FrameReader:
    """Reading frames into a ``ClientView``; subclasses say how a frame is received."""

    def __init__(self) -> None:
        self.view = ClientView()
        self.frames: list[dict[str, Any]] = []

    async def receive_text(self) -> str:
        raise NotImplementedError

    async def send_text(self, text: str) -> None:
        raise NotImplementedError

    async def send(self, frame: dict[str, Any] | str) -> None:
        await self.send_text(frame if isinstance(frame, str) else json.dumps(frame))

    async def next(self) -> dict[str, Any]:
        frame: dict[str, Any] = json.loads(await self.receive_text())
        self.frames.append(frame)
        self.view.apply(frame)
        return frame

    async def until(self, match: Callable[[dict[str, Any]], bool]) -> list[dict[str, Any]]:
        seen = []
        while True:
            frame = await self.next()
            seen.append(frame)
            if match(frame):
                return seen

    async def until_type(self, kind: str) -> list[dict[str, Any]]:
        return await self.until(lambda f: f["type"] == kind)
