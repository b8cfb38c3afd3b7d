"""One Lua script's calls from one event loop, sent to Redis in batches.

The event log runs its append script once per event (``sessions_app.events.log``), the
socket registry its scripts once per socket. A call on a connection of its own holds that
connection until the loop comes back to read the answer, and a busy loop comes back late:
its pool of connections runs dry and calls fail waiting for one. Here calls made while a
batch is on its way wait for the next batch, and each batch is one pipelined round trip on
one connection: a lightly loaded process sends each call alone, at once; a busy one sends
fewer, larger batches instead of queueing for connections. Calls run in the order they were
made.
"""

from __future__ import annotations

import asyncio
import hashlib
from typing import Any

from redis.exceptions import NoScriptError

from sessions_app.infra.loop_local import LoopLocal
from sessions_app.infra.redis_clients import redis_client

# Calls sent in one round trip at most; more wait for the next batch.
BATCH_MAX = 500

Arg = str | int | float
_Call = tuple[list[str], list[Arg], "asyncio.Future[Any]"]


class _LoopBatches:
    """The batches of one loop: calls not sent yet, and the task that sends them."""

    def __init__(self) -> None:
        self.waiting: list[_Call] = []
        self.sender: asyncio.Task[None] | None = None


class ScriptBatches:
    """Runs ``script`` (Lua) on the Redis at ``url`` with EVALSHA, batching concurrent calls."""

    def __init__(self, url: str, script: str) -> None:
        self.url = url
        self.script = script
        self.sha = hashlib.sha1(script.encode()).hexdigest()  # what Redis names it
        self._batches: LoopLocal[_LoopBatches] = LoopLocal()

    async def run(self, keys: list[str], args: list[Arg]) -> Any:
        """The script's answer for ``keys`` and ``args``; raises what Redis raised for it
        (or for its batch, when the round trip failed: then it may or may not have run)."""
        batches = self._batches.get(_LoopBatches)
        done: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        batches.waiting.append((keys, args, done))
        if batches.sender is None or batches.sender.done():
            batches.sender = asyncio.ensure_future(self._send(batches))
        return await done

    async def _send(self, batches: _LoopBatches) -> None:
        while batches.waiting:
            batch = batches.waiting[:BATCH_MAX]
            del batches.waiting[:BATCH_MAX]
            try:
                results = await self._round_trip(batch)
            except asyncio.CancelledError:  # the loop is closing: nobody waits any more
                for *_, done in batch + batches.waiting:
                    done.cancel()
                raise
            except Exception as exc:
                results = [exc] * len(batch)
            for (*_, done), result in zip(batch, results, strict=True):
                if done.done():
                    continue  # its caller was cancelled; the script ran anyway
                if isinstance(result, Exception):
                    done.set_exception(result)
                else:
                    done.set_result(result)

    async def _round_trip(self, batch: list[_Call]) -> list[Any]:
        client = redis_client(self.url)
        results: list[Any] = [None] * len(batch)
        todo = list(range(len(batch)))
        for attempt in range(2):
            async with client.pipeline(transaction=False) as pipe:
                for i in todo:
                    keys, args, _ = batch[i]
                    pipe.evalsha(self.sha, len(keys), *keys, *args)
                answers: list[Any] = await pipe.execute(raise_on_error=False)
            for i, answer in zip(todo, answers, strict=True):
                results[i] = answer
            # Redis forgot the script (restarted, SCRIPT FLUSH): a call refused so did not
            # run. Load the script and send those calls again, in their order.
            todo = [i for i in todo if isinstance(results[i], NoScriptError)]
            if not todo or attempt == 1:
                break
            await client.script_load(self.script)
        return results
