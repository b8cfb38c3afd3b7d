"""A server process's life: what it starts beside requests, and how it stops.

``ensure_started`` is called on the first request or websocket of a process (daphne has no
ASGI lifespan) and starts, on that event loop (the *home loop*):

- the crash sweep, at once and every ``CHAT_SWEEP_SECONDS``: every hook registered with
  ``on_sweep`` (turns and operations whose owner process stopped renewing its lease);
- every service registered with ``on_start`` (the in-process worker, when configured);
- a SIGTERM handler: the process stops taking work and runs the ``on_drain`` hooks (turns
  interrupted with their text kept, operations handed back: re-queued when retry-safe,
  failed otherwise), cancels what it still runs, runs the ``on_close`` hooks (clients that
  belong to the loop), and only then lets the server stop. So a rolling deploy loses
  nothing.

The hooks are registered by ``SessionsAppConfig.ready``: this package sits below turns and
operations and imports neither.
"""

from __future__ import annotations

import asyncio
import io
import logging
import random
import signal
import threading
from collections.abc import Awaitable, Callable, Coroutine
from types import FrameType
from typing import Any

from django.conf import settings

from sessions_app.process.tasks import (
    draining,
    draining_set,
    home_loop,
    home_loop_set,
    services_running,
    spawn,
    spawn_service,
    spawned,
)

logger = logging.getLogger(__name__)

# Seconds a draining process waits for its turns and operations to hand back their work.
DRAIN_TIMEOUT_SECONDS = 10.0

Hook = Callable[[], Awaitable[None]]
# A service: a coroutine to run for the life of the loop, or None when it is not wanted.
Service = Callable[[], Coroutine[Any, Any, None] | None]

_sweeps: list[Hook] = []
_drains: list[Hook] = []
_closes: list[Hook] = []
_starts: list[Service] = []


def _register[H](hooks: list[H], hook: H) -> H:
    if hook not in hooks:
        hooks.append(hook)
    return hook


def on_sweep(hook: Hook) -> Hook:
    """Run ``hook`` at every crash sweep, in the order of registration."""
    return _register(_sweeps, hook)


def on_drain(hook: Hook) -> Hook:
    """Run ``hook`` when the process drains (SIGTERM), in the order of registration."""
    return _register(_drains, hook)


def on_close(hook: Hook) -> Hook:
    """Run ``hook`` last when the process drains, after its remaining work was cancelled."""
    return _register(_closes, hook)


def on_start(service: Service) -> Service:
    """Start ``service()`` on the home loop with the process's background work."""
    return _register(_starts, service)


def ensure_started() -> None:
    """Start this process's background work on the running loop, once."""
    loop = asyncio.get_running_loop()
    if home_loop() is loop:
        return
    home_loop_set(loop)
    spawn_service(_sweeper(), "crash sweep")
    for service in _starts:
        coro = service()
        if coro is not None:
            spawn_service(coro, getattr(service, "__qualname__", "service"))
    if settings.CHAT_HANDLE_SIGTERM and threading.current_thread() is threading.main_thread():
        _install_sigterm(loop)
        # SIGUSR1 logs what every asyncio task of this process is waiting on (diagnosis).
        loop.add_signal_handler(signal.SIGUSR1, _log_tasks)


async def stop() -> None:
    """Cancel this process's services (tests; a new loop starts them again)."""
    services = services_running()
    for task in services:
        task.cancel()
    if services:
        await asyncio.wait(services)
    home_loop_set(None)


async def background_wait() -> None:
    """Wait until the process's spawned work (titles, follow-ups, ...) has ended; its
    services, which run for the life of the loop, excepted (tests)."""
    while pending := spawned(services=False):
        await asyncio.wait(pending)


async def sweep_once() -> None:
    for hook in _sweeps:
        await hook()


async def _sweeper() -> None:
    while True:
        try:
            await sweep_once()
        except Exception:
            logger.exception("crash sweep failed; trying again later")
        # Jitter, so the sweeps of many processes do not line up.
        await asyncio.sleep(settings.CHAT_SWEEP_SECONDS * random.uniform(0.8, 1.2))


async def drain() -> None:
    """Stop taking work and hand back every turn and operation this process runs."""
    draining_set(True)
    for hook in _drains:
        await hook()
    for task in spawned():
        task.cancel()
    for hook in _closes:
        await hook()


def _log_tasks() -> None:
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
        if draining():
            stop_after_drain()  # a second SIGTERM: stop now
            return
        loop.call_soon_threadsafe(lambda: spawn(shutdown(), "shutdown"))

    signal.signal(signal.SIGTERM, on_sigterm)
