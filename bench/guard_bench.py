"""What the guard rails cost per request: frame parsing, rate limits, context fitting.

Run from the repository root (Redis rows only with REDIS_URL; db 14, a private key prefix):

    REDIS_URL=redis://127.0.0.1:6379/14 .venv/bin/python bench/guard_bench.py

Prints one table: microseconds per call (median of rounds) for

- ``frame_parse`` of a valid ``send`` frame and of a refused one;
- ``FrameRate.check`` (every websocket frame; in memory);
- ``check_message_rate`` (every ``send``), in memory and in Redis;
- fitting a session's history into the context budget (every model call), for histories of
  10 to 5000 messages, with tiktoken (``gpt-4o``) and with the estimate (unknown model),
  plus how many messages were sent.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatproject.settings")
os.environ["CHAT_CACHE_PREFIX"] = f"chatproject-guard-bench-{os.getpid()}"

import django

django.setup()

from django.conf import settings  # noqa: E402
from django.test.utils import override_settings  # noqa: E402

from sessions_app import limits  # noqa: E402
from sessions_app.errors import Refused  # noqa: E402
from sessions_app.model.context_window import context_budget, fit_messages  # noqa: E402
from sessions_app.model.tokens import counter_for  # noqa: E402
from sessions_app.tools.registry import tools_openai_schemas  # noqa: E402
from sessions_app.transport.client_frames import frame_parse  # noqa: E402

SEND = json.dumps({"type": "send", "content": "hello " * 40, "client_message_id": "c-1"})
BAD = json.dumps({"type": "send", "content": 5, "client_message_id": "c-1", "x": 1})
SENTENCE = "The quick brown fox checks the tool results and writes a careful answer. "


def timed(fn: Callable[[], Any], *, calls: int, rounds: int) -> float:
    """Median over ``rounds`` of the mean microseconds per call."""
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(samples)


async def atimed(fn: Callable[[], Awaitable[Any]], *, calls: int, rounds: int) -> float:
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        for _ in range(calls):
            await fn()
        samples.append((time.perf_counter() - start) / calls * 1e6)
    return statistics.median(samples)


def refused_parse() -> None:
    with contextlib.suppress(Refused):
        frame_parse(BAD, max_bytes=settings.CHAT_WS_MAX_FRAME_BYTES)


def history(length: int) -> list[dict[str, Any]]:
    """A conversation of ``length`` messages: user, assistant with a tool call, tool, ..."""
    messages: list[dict[str, Any]] = [{"role": "system", "content": "You are helpful."}]
    for i in range(length):
        kind = i % 4
        if kind == 0:
            messages.append({"role": "user", "content": SENTENCE * 3})
        elif kind == 1:
            call = {"id": f"c{i}", "type": "function", "function": {"name": "calculator",
                    "arguments": json.dumps({"expression": "6*7"})}}  # fmt: skip
            messages.append({"role": "assistant", "content": None, "tool_calls": [call]})
        elif kind == 2:
            messages.append({"role": "tool", "tool_call_id": f"c{i - 1}", "content": "42"})
        else:
            messages.append({"role": "assistant", "content": SENTENCE * 8})
    return messages


async def rate_rows(calls: int, rounds: int) -> list[tuple[str, float]]:
    rows = []
    owner = [0]

    async def message_rate() -> None:
        owner[0] += 1  # a fresh user each call: always allowed, the common case
        await limits.check_message_rate(owner_id=owner[0])

    frames = limits.FrameRate()
    frames.item = type(frames.item)(10**9)  # never refused: the cost of counting
    rows.append(
        ("FrameRate.check (memory)", await atimed(frames.check, calls=calls, rounds=rounds))
    )
    with override_settings(REDIS_URL=None, CHAT_USER_MESSAGES_PER_MINUTE=10**6):
        limits._limiters.clear()
        cost = await atimed(message_rate, calls=calls, rounds=rounds)
        rows.append(("check_message_rate (memory)", cost))
    if os.environ.get("REDIS_URL"):
        with override_settings(CHAT_USER_MESSAGES_PER_MINUTE=10**6):
            limits._limiters.clear()
            cost = await atimed(message_rate, calls=calls // 10, rounds=rounds)
            rows.append(("check_message_rate (Redis)", cost))
            await _delete_keys()
    return rows


async def _delete_keys() -> None:
    from sessions_app.infra.redis_clients import redis_client

    client = redis_client(settings.REDIS_URL)
    async for key in client.scan_iter(f"{settings.CHAT_CACHE_PREFIX}:*"):
        await client.delete(key)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--calls", type=int, default=2000)
    options = parser.parse_args()
    rounds, calls = options.rounds, options.calls
    max_bytes = settings.CHAT_WS_MAX_FRAME_BYTES
    rows: list[tuple[str, float]] = [
        (
            "frame_parse, a valid send",
            timed(lambda: frame_parse(SEND, max_bytes=max_bytes), calls=calls, rounds=rounds),
        ),
        ("frame_parse, a refused send", timed(refused_parse, calls=calls, rounds=rounds)),
    ]
    rows += asyncio.run(rate_rows(calls, rounds))
    tools = tools_openai_schemas()
    budget = context_budget()
    fits = []
    for model in ("gpt-4o", "chatproject-local"):
        counter = counter_for(model)
        fit_messages(history(10), tools=tools, budget=budget, counter=counter)  # warm: load
        for length in (10, 100, 1000, 5000):
            messages = history(length)
            fit = fit_messages(messages, tools=tools, budget=budget, counter=counter)
            cost = timed(
                lambda m=messages, c=counter: fit_messages(
                    m, tools=tools, budget=budget, counter=c
                ),
                calls=1,
                rounds=rounds,
            )
            fits.append((model, length, cost, len(fit.messages)))
    print(f"guard rails, {rounds} rounds (median), Python {sys.version.split()[0]}")
    print(f"{'check':<34} {'µs per call':>12}")
    for name, cost in rows:
        print(f"{name:<34} {cost:>12.1f}")
    print(f"\ncontext fitting, budget {budget} tokens (CHAT_CONTEXT_MAX_TOKENS - reply reserve)")
    print(f"{'model':<18} {'history':>8} {'ms per call':>12} {'messages sent':>14}")
    for model, length, cost, sent in fits:
        print(f"{model:<18} {length:>8} {cost / 1000:>12.2f} {sent:>14}")


if __name__ == "__main__":
    main()
