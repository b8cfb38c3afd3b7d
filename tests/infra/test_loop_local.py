"""sessions_app.infra.loop_local: one value per event loop, let go with its loop."""

from __future__ import annotations

import asyncio
import gc
import weakref
from dataclasses import dataclass

import pytest
from asgiref.sync import async_to_sync
from django.conf import settings

from sessions_app.infra import redis_clients
from sessions_app.infra.loop_local import LoopLocal
from sessions_app.model import client as llm


@dataclass(eq=False)
class Client:
    """Stands for a client whose pool holds transports of its loop: it refers to the loop."""

    loop: asyncio.AbstractEventLoop


def test_one_value_per_loop_and_closed_loops_let_go() -> None:
    local: LoopLocal[Client] = LoopLocal()
    made: list[weakref.ref[Client]] = []

    async def use() -> tuple[Client, Client]:
        first = local.get(lambda: Client(asyncio.get_running_loop()))
        again = local.get(lambda: Client(asyncio.get_running_loop()))
        made.append(weakref.ref(first))
        return first, again

    for _ in range(20):  # as the task worker runs operations: a new loop each, then closed
        first, again = async_to_sync(use)()
        assert first is again
    del first, again
    gc.collect()
    # Only the last loop's value is still held (until the next loop asks); the others,
    # with their loops, are gone. A WeakKeyDictionary kept all 20: each value holds its key.
    assert len(local) == 1
    assert sum(ref() is not None for ref in made) == 1


def test_the_project_clients_do_not_pile_up_across_loops() -> None:
    async def use() -> None:
        redis_clients.redis_client("redis://127.0.0.1:6379/0")
        llm._client()

    for _ in range(10):
        async_to_sync(use)()
    assert len(redis_clients._clients) == 1
    assert len(llm._clients) == 1


@pytest.mark.redis
async def test_more_callers_than_pooled_connections_wait_for_one() -> None:
    """Twice as many callers as the pool has connections, each holding one for a moment
    (a blocking pop with a timeout): all get their answer, none an error."""
    client = redis_clients.redis_client(settings.REDIS_URL)
    callers = 2 * redis_clients.POOL_MAX_CONNECTIONS
    results = await asyncio.gather(
        *(client.blpop([f"chatproject-test:empty:{i}"], timeout=0.2) for i in range(callers)),
        return_exceptions=True,
    )
    assert results == [None] * callers
    await client.aclose()
