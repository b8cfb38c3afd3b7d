"""The cache layout of chat sessions: keys, reads, writes and invalidation, in one place.

Per session the cache holds three kinds of entries (all under ``settings.CHAT_CACHE_TTL``):

- ``…:gen``: the session's *generation*, an integer every committed write bumps;
- ``…:meta``: ``CachedMeta``, the metadata tagged with the generation it was read under;
- ``…:msg:<sequence>``: one ``ChatMessageData`` per message.

Appending a message writes its own entry and bumps the generation: nothing is rewritten, so
the cost does not grow with the history. Metadata is only ever written by a *reader* that
read the generation **before** reading the database; a write that commits in between bumps
the generation, so a stale entry is never served, whatever order processes run in.
Messages are written by their writer after commit (``set``) and back-filled by readers only
where absent (``add``), so a reader never overwrites a newer version with an older one.

Every function here may raise; ``sessions_app.store.messages`` decides what a failure means.
"""

from __future__ import annotations

import contextlib
import logging
import secrets
import uuid
from collections.abc import Iterable, Mapping
from typing import Any

from django.conf import settings
from django.core.cache import cache
from pydantic import ValidationError

from sessions_app.schemas import CachedMeta, ChatMessageData, SessionMeta

logger = logging.getLogger(__name__)

KEY_VERSION = 1


def _base(session_id: uuid.UUID) -> str:
    return f"chat:v{KEY_VERSION}:session:{session_id}"


def generation_key(session_id: uuid.UUID) -> str:
    return f"{_base(session_id)}:gen"


def meta_key(session_id: uuid.UUID) -> str:
    return f"{_base(session_id)}:meta"


def message_key(session_id: uuid.UUID, sequence: int) -> str:
    return f"{_base(session_id)}:msg:{sequence}"


def _ttl() -> int:
    return int(settings.CHAT_CACHE_TTL)


def meta_lookup(session_id: uuid.UUID) -> tuple[int, SessionMeta | None]:
    """The current generation and the cached metadata, ``None`` when absent or stale.

    Creates the generation when it is missing: a random start, so an entry left over from
    an earlier life of the key can never match it.
    """
    gen_k, meta_k = generation_key(session_id), meta_key(session_id)
    found = cache.get_many([gen_k, meta_k])
    generation = found.get(gen_k)
    if not isinstance(generation, int):
        cache.add(gen_k, secrets.randbits(62), timeout=_ttl())
        generation = cache.get(gen_k)
        if not isinstance(generation, int):
            raise RuntimeError(f"cache did not keep the generation of session {session_id}")
        return generation, None
    raw = found.get(meta_k)
    if raw is None:
        return generation, None
    try:
        entry = CachedMeta.model_validate_json(raw)
    except (ValidationError, TypeError, ValueError):
        logger.warning("corrupt cache entry %s; reading the session from the database", meta_k)
        return generation, None
    if entry.generation != generation or entry.meta.id != session_id:
        return generation, None
    return generation, entry.meta


def meta_store(meta: SessionMeta, *, generation: int) -> None:
    """Cache metadata read from the database after ``generation`` was read."""
    entry = CachedMeta(generation=generation, meta=meta)
    cache.set(meta_key(meta.id), entry.model_dump_json(), timeout=_ttl())


def generation_bump(session_id: uuid.UUID) -> None:
    """Invalidate the cached metadata of a session. Call after the write committed."""
    # No generation (ValueError): no metadata entry can be valid; the next reader starts one.
    with contextlib.suppress(ValueError):
        cache.incr(generation_key(session_id))


def messages_lookup(session_id: uuid.UUID, sequences: Iterable[int]) -> dict[int, ChatMessageData]:
    """The cached messages among ``sequences``; absent and corrupt entries are left out."""
    keys = {message_key(session_id, seq): seq for seq in sequences}
    if not keys:
        return {}
    found = cache.get_many(list(keys))
    messages: dict[int, ChatMessageData] = {}
    for key, raw in found.items():
        seq = keys[key]
        try:
            message = ChatMessageData.model_validate_json(raw)
        except (ValidationError, TypeError, ValueError):
            logger.warning("corrupt cache entry %s; reading the message from the database", key)
            cache.delete(key)
            continue
        if message.sequence != seq:
            logger.warning("cache entry %s holds message %s; dropping it", key, message.sequence)
            cache.delete(key)
            continue
        messages[seq] = message
    return messages


def _encoded(session_id: uuid.UUID, messages: Iterable[ChatMessageData]) -> dict[str, str]:
    encoded = {}
    for message in messages:
        if message.sequence is None:
            raise ValueError("only saved messages (with a sequence) can be cached")
        encoded[message_key(session_id, message.sequence)] = message.model_dump_json()
    return encoded


def messages_store(session_id: uuid.UUID, messages: Iterable[ChatMessageData]) -> None:
    """Cache messages as their writer committed them (overwrites older versions)."""
    encoded = _encoded(session_id, messages)
    if encoded:
        cache.set_many(encoded, timeout=_ttl())


def messages_written(session_id: uuid.UUID, messages: Iterable[ChatMessageData]) -> None:
    """After a write of ``messages`` committed: bump the generation, then store the messages
    as written; on Redis both in one pipelined round trip (in that order, as separate
    commands: when storing fails, the bump still sends readers to the database)."""
    client = _redis_client()
    if client is None:
        generation_bump(session_id)
        messages_store(session_id, messages)
        return
    try:
        encoded = _encoded(session_id, messages)
        pipeline = client.get_client(write=True).pipeline(transaction=False)
        # django-redis's own incr (of an existing generation only) and set, on the pipeline.
        client.incr(generation_key(session_id), client=pipeline)
        for key, value in encoded.items():
            client.set(key, value, timeout=_ttl(), client=pipeline)
        pipeline.execute()
    except Exception:
        generation_bump(session_id)  # whatever failed, at least the bump (again is harmless)
        raise


def _redis_client() -> Any:
    """django-redis's client behind the cache, or ``None`` for another backend."""
    client = getattr(cache, "client", None)
    return client if client is not None and hasattr(client, "get_client") else None


def messages_backfill(session_id: uuid.UUID, messages: Iterable[ChatMessageData]) -> None:
    """Cache messages a reader loaded from the database, only where no entry exists.

    A writer's newer version, stored meanwhile, must win over what this reader loaded.
    """
    _add_many(_encoded(session_id, messages))


def _add_many(entries: Mapping[str, Any]) -> None:
    if not entries:
        return
    client = _redis_client()
    if client is not None:
        # django-redis: one pipelined round trip of SET NX instead of one per entry.
        pipeline = client.get_client(write=True).pipeline()
        for key, value in entries.items():
            client.set(key, value, timeout=_ttl(), client=pipeline, nx=True)
        pipeline.execute()
        return
    for key, value in entries.items():
        cache.add(key, value, timeout=_ttl())


def message_forget(session_id: uuid.UUID, sequence: int) -> None:
    """Drop one message entry, before a write that changes it commits."""
    cache.delete(message_key(session_id, sequence))


def session_forget(session_id: uuid.UUID, *, last_sequence: int) -> None:
    """Drop every entry of a session."""
    keys = [generation_key(session_id), meta_key(session_id)]
    keys += [message_key(session_id, seq) for seq in range(1, last_sequence + 1)]
    cache.delete_many(keys)
