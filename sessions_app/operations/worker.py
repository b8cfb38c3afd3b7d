"""The in-process worker: runs queued operations inside a server process (embedded default).

It takes tasks from the same django-tasks-db queue that ``manage.py db_worker`` serves in
production, claiming them the way that command does (a locked ``DBTaskResult`` marked
running), but runs them as asyncio tasks on the server's own event loop instead of a loop
of its own per task. So an operation publishes its events through the process's in-memory
channel layer, and a newcomer's ``scripts/run`` needs no second command.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Coroutine
from typing import Any

from django.conf import settings
from django.db.utils import OperationalError
from django.tasks import DEFAULT_TASK_BACKEND_ALIAS
from django.tasks.base import DEFAULT_TASK_QUEUE_NAME
from django_tasks_db.models import DBTaskResult
from django_tasks_db.utils import exclusive_transaction, is_locked_database_exception

from sessions_app import process
from sessions_app.infra.db import db_sync_to_async

logger = logging.getLogger(__name__)

# Seconds between looks at the queue when nothing woke the worker (work queued elsewhere).
IDLE_POLL_SECONDS = 1.0

# The running worker's loop and the event that wakes it.
_wake: tuple[asyncio.AbstractEventLoop, asyncio.Event] | None = None


def _claim(worker_id: str) -> DBTaskResult | None:
    tasks = DBTaskResult.objects.ready().filter(
        backend_name=DEFAULT_TASK_BACKEND_ALIAS, queue_name=DEFAULT_TASK_QUEUE_NAME
    )
    try:
        with exclusive_transaction(tasks.db):
            result = tasks.get_locked()
            if result is not None:
                result.claim(worker_id)
            return result
    except OperationalError as exc:
        if is_locked_database_exception(exc):
            return None  # SQLite is busy: look again shortly
        raise


async def _run(result: DBTaskResult) -> None:
    try:
        task = result.task
        args = result.task_result.args
        kwargs = result.task_result.kwargs
        value: Any = await task.acall(*args, **kwargs)
    except asyncio.CancelledError:
        await _record(result, result.set_failed, RuntimeError("worker shut down"))
        raise
    except Exception as exc:
        logger.exception("task %s failed", result.id)
        await _record(result, result.set_failed, exc)
    else:
        await _record(result, result.set_successful, value)


async def _record(result: DBTaskResult, setter: Any, outcome: Any) -> None:
    """Write the task's end to its row. The row is bookkeeping (the operation row holds the
    outcome), so a row deleted meanwhile (a purge of old results) is only logged."""
    try:
        await db_sync_to_async(setter)(outcome)
    except DBTaskResult.NotUpdated:
        logger.info("task %s: its row was deleted before it finished", result.id)


def worker_start() -> Coroutine[Any, Any, None] | None:
    """The in-process worker of this loop when ``CHAT_TASK_WORKER`` is ``in-process`` (a
    service of the process's lifecycle), else ``None``."""
    if settings.CHAT_TASK_WORKER != "in-process":
        return None
    global _wake
    loop = asyncio.get_running_loop()
    _wake = (loop, asyncio.Event())
    return worker_loop(_wake[1])


def worker_wake() -> None:
    """Tell this process's in-process worker (if any) that an operation was queued; from
    any thread."""
    if _wake is None:
        return
    loop, wake = _wake
    if loop.is_closed():
        return
    with contextlib.suppress(RuntimeError):  # the loop is closing
        loop.call_soon_threadsafe(wake.set)


async def worker_loop(wake: asyncio.Event) -> None:
    """Claim and run tasks, at most ``CHAT_WORKER_CONCURRENCY`` at once, until cancelled."""
    slots = asyncio.Semaphore(settings.CHAT_WORKER_CONCURRENCY)
    running: set[asyncio.Task[None]] = set()
    worker_id = process.process_id()[:64]
    try:
        while not process.draining():  # a draining process takes no new work
            await slots.acquire()
            wake.clear()
            if process.draining():
                break
            try:
                result = await db_sync_to_async(_claim)(worker_id)
            except Exception:
                logger.exception("could not read the task queue")
                result = None
            if result is None:
                slots.release()
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(wake.wait(), IDLE_POLL_SECONDS)
                continue
            job = asyncio.get_running_loop().create_task(_run(result), name=f"task {result.id}")
            running.add(job)
            job.add_done_callback(running.discard)
            job.add_done_callback(lambda _: slots.release())
    finally:
        for job in running:
            job.cancel()
