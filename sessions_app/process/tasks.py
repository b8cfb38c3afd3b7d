"""Who this process is, and the asyncio tasks it runs on its own behalf.

Work that belongs to the process rather than to a request or a socket (a turn, a model call
read ahead, a title, a follow-up turn, the sweep) is started with ``spawn``: a fresh
context, so it does not inherit (and outlive) a request's thread-sensitive executor, and a
strong reference held until it ends, since the loop keeps only weak ones. Code on another
thread (a database thread, the admin) hands work to the process's home loop with
``spawn_threadsafe``.
"""

from __future__ import annotations

import asyncio
import contextvars
import logging
import os
import secrets
import socket
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

from django.conf import settings

logger = logging.getLogger(__name__)

_identity: tuple[int, str] | None = None
_home: asyncio.AbstractEventLoop | None = None
_spawned: set[asyncio.Task[Any]] = set()
_services: set[asyncio.Task[Any]] = set()
_draining = False


def process_id() -> str:
    """This process's name in leases: host, pid and a random part (pids are reused)."""
    global _identity
    pid = os.getpid()
    if _identity is None or _identity[0] != pid:
        _identity = (pid, f"{socket.gethostname()}:{pid}:{secrets.token_hex(3)}")
    return _identity[1]


def home_loop() -> asyncio.AbstractEventLoop | None:
    """The loop this process's background work runs on (``None`` before it started)."""
    return _home


def home_loop_set(loop: asyncio.AbstractEventLoop | None) -> None:
    global _home
    _home = loop


def draining() -> bool:
    """Whether this process is handing its work back before it stops (takes no new work)."""
    return _draining


def draining_set(value: bool) -> None:
    global _draining
    _draining = value


def spawn[T](coro: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
    """Run ``coro`` on the running loop as work of this process, owed to no caller: work
    that ends (a turn, a title, a follow-up), which a drain cancels."""
    task = asyncio.get_running_loop().create_task(coro, name=name, context=contextvars.Context())
    _spawned.add(task)
    task.add_done_callback(_spawned.discard)
    return task


def spawn_service[T](coro: Coroutine[Any, Any, T], name: str) -> asyncio.Task[T]:
    """``spawn`` for a service: a task that runs for the life of its loop (the sweep, the
    in-process worker, a cancel inbox), which ``lifecycle.stop`` cancels."""
    task = spawn(coro, name)
    _services.add(task)
    task.add_done_callback(_services.discard)
    return task


def spawn_threadsafe(make: Callable[[], Coroutine[Any, Any, Any]], name: str) -> bool:
    """``spawn(make())`` on the home loop, from any thread. ``False`` when this process has
    no home loop (a management command): then nothing runs."""
    loop = _home
    if loop is None or loop.is_closed():
        return False
    try:
        loop.call_soon_threadsafe(lambda: spawn(make(), name))
    except RuntimeError:  # the loop closed in between
        return False
    return True


def spawned(*, services: bool = True) -> list[asyncio.Task[Any]]:
    """The spawned tasks still running (without the services, unless asked), but the
    caller's own."""
    current = asyncio.current_task()
    return [
        task
        for task in _spawned
        if task is not current and not task.done() and (services or task not in _services)
    ]


def services_running() -> list[asyncio.Task[Any]]:
    """The services (``spawn_service``) still running."""
    return [task for task in _services if not task.done()]


async def keep_renewing(
    renew: Callable[[], Awaitable[bool]], on_lost: Callable[[], None], what: str
) -> None:
    """Renew a lease every ``CHAT_HEARTBEAT_SECONDS`` until cancelled; when ``renew`` says
    it is gone (another process took the work over, presuming this one dead), call
    ``on_lost`` and stop. A renewal that fails is tried again at the next beat: one failed
    write is not a lost lease."""
    while True:
        await asyncio.sleep(settings.CHAT_HEARTBEAT_SECONDS)
        try:
            renewed = await renew()
        except Exception:
            logger.warning("could not renew the lease of %s", what, exc_info=True)
            continue
        if not renewed:
            logger.warning("%s lost its lease; stopping it", what)
            on_lost()
            return
