"""Values that belong to one event loop: clients whose connections live on that loop.

A server process has one loop for its life, but ``async_to_sync`` (the task worker runs each
operation through it, the admin publishes through it) runs each call on a new loop that is
closed at its end. A value kept per loop must go with its loop: a ``WeakKeyDictionary``
keyed by the loop never lets go, because the value (a client, its pool, its transports)
refers back to the loop; the worker grew by ~0.8 MB an operation that way.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable


class LoopLocal[T]:
    """One value per running event loop; values of closed loops are dropped."""

    def __init__(self) -> None:
        self._values: dict[asyncio.AbstractEventLoop, T] = {}
        self._lock = threading.Lock()

    def get(self, make: Callable[[], T]) -> T:
        """The running loop's value, made by ``make()`` the first time."""
        loop = asyncio.get_running_loop()
        with self._lock:
            value = self._values.get(loop)
            if value is None:
                # Few loops are alive at once, so sweeping the closed ones here is cheap, and
                # the clients of a closed loop cannot be used (or closed) any more anyway.
                for closed in [other for other in self._values if other.is_closed()]:
                    del self._values[closed]
                value = self._values[loop] = make()
            return value

    def pop(self) -> T | None:
        """Take the running loop's value away (to close it before its loop ends)."""
        loop = asyncio.get_running_loop()
        with self._lock:
            return self._values.pop(loop, None)

    def clear(self) -> None:
        with self._lock:
            self._values.clear()

    def __len__(self) -> int:
        return len(self._values)
