"""sessions_app.infra.lua_batches: concurrent calls of a Lua script share round trips."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any
from unittest import mock

import pytest
import redis
from django.conf import settings

from sessions_app.infra.lua_batches import ScriptBatches
from sessions_app.infra.redis_clients import redis_client

pytestmark = pytest.mark.redis

# Appends ARGV[1] to the list KEYS[1] and returns the list's new length; 'boom' errs.
SCRIPT = """
if ARGV[1] == 'boom' then return redis.error_reply('boom') end
return redis.call('RPUSH', KEYS[1], ARGV[1])
"""


URL = str(settings.REDIS_URL)


@pytest.fixture
def key() -> str:
    return f"test:script-batches:{uuid.uuid4()}"


def counting_round_trips() -> tuple[list[int], Any]:
    sizes: list[int] = []
    real = redis.asyncio.client.Pipeline.execute

    async def execute(self: Any, *args: Any, **kwargs: Any) -> Any:
        sizes.append(len(self.command_stack))
        return await real(self, *args, **kwargs)

    return sizes, mock.patch.object(redis.asyncio.client.Pipeline, "execute", execute)


async def test_a_lone_call_goes_out_at_once_and_concurrent_ones_share_round_trips(
    key: str,
) -> None:
    batches = ScriptBatches(URL, SCRIPT)
    await redis_client(URL).script_load(SCRIPT)  # as after the first call of the process
    sizes, patch = counting_round_trips()
    with patch:
        assert await batches.run([key], ["first"]) == 1
        assert sizes == [1]
        results = await asyncio.gather(*(batches.run([key], [str(n)]) for n in range(200)))
    # Every call ran once, in the order it was made.
    assert results == list(range(2, 202))
    assert await redis_client(URL).lrange(key, 0, -1) == [
        b"first",
        *(str(n).encode() for n in range(200)),
    ]
    assert sum(sizes) == 201 and len(sizes) <= 3  # the first alone, the rest together
    await redis_client(URL).delete(key)


async def test_a_failing_call_fails_alone(key: str) -> None:
    batches = ScriptBatches(URL, SCRIPT)
    results = await asyncio.gather(
        batches.run([key], ["a"]),
        batches.run([key], ["boom"]),
        batches.run([key], ["b"]),
        return_exceptions=True,
    )
    assert results[0] == 1 and results[2] == 2
    assert isinstance(results[1], redis.exceptions.ResponseError)
    await redis_client(URL).delete(key)


async def test_calls_survive_redis_forgetting_the_script(key: str) -> None:
    batches = ScriptBatches(URL, SCRIPT)
    assert await batches.run([key], ["a"]) == 1
    await redis_client(URL).script_flush()
    results = await asyncio.gather(*(batches.run([key], [str(n)]) for n in range(5)))
    assert results == [2, 3, 4, 5, 6]  # each ran once, after the script was loaded again
    await redis_client(URL).delete(key)


async def test_an_unreachable_redis_fails_every_call_of_the_batch() -> None:
    batches = ScriptBatches("redis://127.0.0.1:1/0", SCRIPT)  # nothing listens on port 1
    results = await asyncio.gather(
        *(batches.run(["k"], ["x"]) for _ in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, redis.exceptions.ConnectionError) for r in results)


async def test_a_cancelled_caller_leaves_the_others_their_answers(key: str) -> None:
    batches = ScriptBatches(URL, SCRIPT)
    calls = [asyncio.ensure_future(batches.run([key], [str(n)])) for n in range(3)]
    calls[1].cancel()
    results = await asyncio.gather(*calls, return_exceptions=True)
    assert isinstance(results[1], asyncio.CancelledError)
    assert results[0] == 1 and results[2] in (2, 3)
    await redis_client(URL).delete(key)
