"""Concurrent writers in separate processes never lose, reorder or duplicate a message.

Runs on both passes: SQLite (a file, BEGIN IMMEDIATE) and PostgreSQL (row lock), and on the
second pass the worker processes share the real Redis cache with this one.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest
from django.conf import settings

from sessions_app import store
from sessions_app.models import ChatMessage, ChatSession
from tests.servers import database_url

pytestmark = pytest.mark.django_db(transaction=True)

WORKER = Path(__file__).parents[1] / "workers" / "append_worker.py"
ROOT = Path(__file__).resolve().parents[2]


def run_workers(session_id: Any, specs: list[tuple[str, int, int]]) -> None:
    env = {**os.environ, "DATABASE_URL": database_url(), "CHAT_LOG_LEVEL": "ERROR"}
    if settings.REDIS_URL:
        env["REDIS_URL"] = settings.REDIS_URL
    workers = [
        subprocess.Popen(
            [sys.executable, str(WORKER), str(session_id), name, str(count), str(batch)],
            cwd=ROOT,
            env=env,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, count, batch in specs
    ]
    try:
        for worker in workers:
            assert worker.stdout is not None
            assert worker.stdout.readline().strip() == "ready", worker.stderr
        for worker in workers:  # release them together
            assert worker.stdin is not None
            worker.stdin.write("go\n")
            worker.stdin.flush()
        for worker in workers:
            out, err = worker.communicate(timeout=120)
            assert worker.returncode == 0, err
            assert out.strip() == "done"
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()


def test_concurrent_appends_from_processes(owner: Any) -> None:
    session = store.session_create(owner_id=owner.pk, title="busy")
    store.session_get(session_id=session.id)  # a warm cache must stay right, too
    specs = [("a", 40, 1), ("b", 40, 1), ("c", 20, 3), ("d", 20, 2)]
    run_workers(session.id, specs)

    expected_total = sum(count * batch for _, count, batch in specs)
    rows = list(ChatMessage.objects.filter(session_id=session.id).order_by("sequence"))
    assert [row.sequence for row in rows] == list(range(1, expected_total + 1))
    assert len({row.content for row in rows}) == expected_total  # no duplicate
    assert ChatSession.objects.get(pk=session.id).last_sequence == expected_total

    by_worker: dict[str, list[tuple[int, int, int]]] = defaultdict(list)
    for row in rows:
        assert row.content is not None
        name, number, index = row.content.split(":")
        by_worker[name].append((row.sequence, int(number), int(index)))
    for name, count, batch in specs:
        seen = by_worker[name]
        # Each worker's messages keep its order ...
        assert [(n, i) for _, n, i in seen] == [(n, i) for n in range(count) for i in range(batch)]
        # ... and each batch is contiguous.
        for start in range(0, len(seen), batch):
            chunk = [seq for seq, _, _ in seen[start : start + batch]]
            assert chunk == list(range(chunk[0], chunk[0] + batch))

    if not settings.REDIS_URL:
        # The local-memory cache is private to each process (the embedded default runs one
        # server process): this process never saw the workers' writes, so drop its entry.
        store.session_cache_invalidate(session_id=session.id)
    cached = store.session_get(session_id=session.id, owner_id=owner.pk)
    assert [(m.sequence, m.content) for m in cached.messages] == [
        (row.sequence, row.content) for row in rows
    ]
