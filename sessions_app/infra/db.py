"""Database work from async code, optionally on several threads instead of one.

channels' ``database_sync_to_async`` is thread-sensitive: every call of the process runs on
one thread, one after another, and with PostgreSQL that thread spends much of its time
waiting for the server's answers, so each socket's and turn's call queues behind all the
others (docs/performance.md, "Streaming over websockets").

``db_sync_to_async`` runs a call on one of ``CHAT_DATABASE_THREADS`` threads (PostgreSQL
only; default 1, which is channels' own thread; the setting says when more pay). Like
channels, it closes stale connections before and after each call, so with the pool
(``DATABASE_POOL_MAX_SIZE``, which should have at least as many connections) each call
borrows a connection and gives it back. channels' test communicators turn channels'
clean-up off, for test transactions held by the test's own thread; these threads never hold
one, so the clean-up here stays on. Each call is its own unit of work, its own transaction:
callers that need an order between two calls await the first before starting the second.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any

from asgiref.sync import SyncToAsync
from channels.db import database_sync_to_async
from django.conf import settings
from django.db import close_old_connections

_executors: dict[int, ThreadPoolExecutor] = {}
_lock = threading.Lock()


def _executor(threads: int) -> ThreadPoolExecutor:
    with _lock:
        executor = _executors.get(threads)
        if executor is None:
            executor = _executors[threads] = ThreadPoolExecutor(
                max_workers=threads, thread_name_prefix="database"
            )
        return executor


class _OnDatabaseThreads(SyncToAsync[Any, Any]):
    def thread_handler(self, loop: Any, *args: Any, **kwargs: Any) -> Any:
        close_old_connections()
        try:
            return super().thread_handler(loop, *args, **kwargs)
        finally:
            close_old_connections()


def db_sync_to_async[**P, R](fn: Callable[P, R]) -> Callable[P, Any]:
    """``fn`` as a coroutine function whose calls run on the database threads."""
    threads = settings.CHAT_DATABASE_THREADS
    if threads <= 1:
        return database_sync_to_async(fn)
    return _OnDatabaseThreads(fn, thread_sensitive=False, executor=_executor(threads))
