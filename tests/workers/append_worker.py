"""Appends messages to one session from a process of its own (tests/store/test_concurrency.py).

Usage: append_worker.py SESSION_ID NAME COUNT BATCH. Prints "ready", waits for a line on
stdin so that every worker starts at once, appends COUNT batches of BATCH messages whose
content is "NAME:<batch>:<index>", then prints "done".
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatproject.settings")

import django

django.setup()

from sessions_app import store  # noqa: E402
from sessions_app.schemas import ChatMessageData  # noqa: E402


def main() -> None:
    session_id, name, count, batch = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
    print("ready", flush=True)
    sys.stdin.readline()
    for number in range(count):
        messages = [
            ChatMessageData(role="user", content=f"{name}:{number}:{index}")
            for index in range(batch)
        ]
        store.messages_append(session_id=session_id, messages=messages)
    print("done", flush=True)


if __name__ == "__main__":
    main()
