"""What a server process runs besides requests: the crash sweep, the in-process worker, shutdown.

``ensure_started`` is called on the first request or websocket of a process (daphne has no
ASGI lifespan) and starts, on that event loop (the *home loop*):

- the sweep, at once and every ``CHAT_SWEEP_SECONDS``: turns and operations whose owner
  process stopped renewing its lease are recovered (``turns.turns_sweep``,
  ``operations.operations_sweep``);
- with ``CHAT_TASK_WORKER=in-process`` (the embedded default), the worker that runs queued
  operations in this process (``sessions_app.operations.worker``);
- a SIGTERM handler: the process stops taking turns, interrupts its running turns (their
  text is kept), hands its operations back (re-queued when retry-safe, failed otherwise),
  releases its leases, and only then lets the server stop. So a rolling deploy loses nothing.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import os
import random
import secrets
import signal
import socket
import threading
import uuid
from collections.abc import Callable, Coroutine
from types import FrameType
from typing import Any

from django.conf import settings

logger = logging.getLogger(__name__)

# Seconds a draining process waits for its turns and operations to hand back their work.
DRAIN_TIMEOUT_SECONDS = 10.0

_identity: tuple[int, str] | None = None
_home: asyncio.AbstractEventLoop | None = None
_wake: asyncio.Event | None = None
_tasks: set[asyncio.Task[Any]] = set()
_operations: dict[uuid.UUID, asyncio.Future[Any]] = {}
_draining = False


def process_id() -> str:
    """This process's name in leases: host, pid and a random part (pids are reused)."""
    global _identity
    pid = os.getpid()
    if _identity is None or _identity[0] != pid:
        _identity = (pid, f"{socket.gethostname()}:{pid}:{secrets.token_hex(3)}")
    return _identity[1]


def home_loop() -> asyncio.AbstractEventLoop | None:
    return _home


def draining() -> bool:
    return _draining


def ensure_started() -> None:
    """Start this process's background work on the running loop, once."""
    global _home, _wake
    loop = asyncio.get_running_loop()
    if _home is loop:
        return
    _home = loop
    _wake = asyncio.Event()
    _spawn(_sweeper(), "crash sweep")
    if settings.CHAT_TASK_WORKER == "in-process":
        from sessions_app.operations.worker import worker_loop

        _spawn(worker_loop(_wake), "in-process worker")
    if settings.CHAT_HANDLE_SIGTERM and threading.current_thread() is threading.main_thread():
        _install_sigterm(loop)
        # SIGUSR1 logs what every asyncio task of this process is waiting on (diagnosis).
        loop.add_signal_handler(signal.SIGUSR1, _log_tasks)


async def stop() -> None:
    """Cancel this process's background work (tests; a new loop starts it again)."""
    global _home, _wake
    tasks = list(_tasks)
    for task in tasks:
        task.cancel()
    if tasks:
        await asyncio.wait(tasks)
    _home = _wake = None


def detached(coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
    """A task that owes nothing to the request or socket that started it: a fresh context,
    so it does not inherit (and outlive) a request's thread-sensitive executor."""
    return asyncio.get_running_loop().create_task(coro, name=name, context=contextvars.Context())


def _spawn(coro: Any, name: str) -> None:
    task = detached(coro, name)
    _tasks.add(task)
    task.add_done_callback(_tasks.discard)


def background(make: Callable[[], Coroutine[Any, Any, Any]], name: str) -> bool:
    """Run ``make()`` as background work of this process (from any thread), on the loop
    its sweep runs on. False when this process has none started (a management command)."""
    loop = _home
    if loop is None or loop.is_closed():
        return False
    try:
        loop.call_soon_threadsafe(lambda: _spawn(make(), name))
    except RuntimeError:  # the loop closed in between
        return False
    return True


def worker_wake() -> None:
    """Tell this process's in-process worker (if any) that an operation was queued."""
    loop, wake = _home, _wake
    if loop is None or wake is None or loop.is_closed():
        return
    with contextlib.suppress(RuntimeError):  # the loop is closing
        loop.call_soon_threadsafe(wake.set)


def operation_started(operation_id: uuid.UUID, work: asyncio.Future[Any]) -> None:
    _operations[operation_id] = work


def operation_finished(operation_id: uuid.UUID) -> None:
    _operations.pop(operation_id, None)


async def sweep_once() -> None:
    from sessions_app import operations, turns

    await turns.turns_sweep()
    await operations.operations_sweep()


async def _sweeper() -> None:
    while True:
        try:
            await sweep_once()
        except Exception:
            logger.exception("crash sweep failed; trying again later")
        # Jitter, so the sweeps of many processes do not line up.
        await asyncio.sleep(settings.CHAT_SWEEP_SECONDS * random.uniform(0.8, 1.2))


# --- shutdown ------------------------------------------------------------------------------------


async def drain() -> None:
    """Stop taking turns and hand back every turn and operation this process runs."""
    global _draining
    _draining = True
    from sessions_app import operations, turns
    from sessions_app.model import client as llm

    await turns.turns_interrupt_all()
    owner = process_id()
    for operation_id in list(_operations):
        action, op, message = await _db(operations.operation_hand_back)(
            operation_id=operation_id, owner=owner
        )
        if op is not None:
            await operations.publish_recovery(action, op, message)
    # Stop the handed-back work and let each record its end before the process exits.
    works = list(_operations.values())
    for work in works:
        work.cancel()
    if works:
        await asyncio.wait(works, timeout=2)
    background = list(_tasks)
    for task in background:
        if task is not asyncio.current_task():
            task.cancel()
    # The model client's connections close with their loop, not at exit (where aiohttp
    # logs an ERROR for each session left open).
    await llm.clients_close()


def _db(fn: Callable[..., Any]) -> Callable[..., Any]:
    from sessions_app.infra.db import db_sync_to_async

    return db_sync_to_async(fn)


def _log_tasks() -> None:
    import io

    for task in asyncio.all_tasks():
        out = io.StringIO()
        task.print_stack(limit=12, file=out)
        logger.warning("task %s:\n%s", task.get_name(), out.getvalue())


def _install_sigterm(loop: asyncio.AbstractEventLoop) -> None:
    previous = signal.getsignal(signal.SIGTERM)

    def stop_after_drain() -> None:
        if callable(previous):
            previous(signal.SIGTERM, None)
        else:
            raise SystemExit(0)

    async def shutdown() -> None:
        logger.warning("SIGTERM: handing back turns and operations before stopping")
        try:
            await asyncio.wait_for(drain(), DRAIN_TIMEOUT_SECONDS)
        except Exception:
            logger.exception("draining failed; stopping anyway")
        stop_after_drain()

    def on_sigterm(signum: int, frame: FrameType | None) -> None:
        if _draining:
            stop_after_drain()  # a second SIGTERM: stop now
            return
        loop.call_soon_threadsafe(lambda: _spawn(shutdown(), "shutdown"))

    signal.signal(signal.SIGTERM, on_sigterm)
