"""sessions_app.store.messages: reads, writes, ownership, cache fallback and failure paths."""

from __future__ import annotations

import logging
import uuid
from typing import Any
from unittest import mock

import pytest
from django.core.cache import cache
from django.db import DatabaseError, connection
from django.test import override_settings
from django.test.utils import CaptureQueriesContext
from pydantic import ValidationError

from sessions_app import store
from sessions_app.errors import SessionNotFound, StoreWriteError
from sessions_app.models import ChatMessage, ChatSession
from sessions_app.schemas import ChatMessageData, Usage
from sessions_app.store import cache as session_cache
from sessions_app.store import sessions as store_sessions
from sessions_app.store.rows import meta_from_row

# The store touches the cache after commit, so tests need real commits.
pytestmark = pytest.mark.django_db(transaction=True)

UNREACHABLE_REDIS = {
    "default": {
        "BACKEND": "django_redis.cache.RedisCache",
        # Port 1 on loopback: nothing listens, connections are refused at once.
        "LOCATION": "redis://127.0.0.1:1/0",
        "OPTIONS": {"SOCKET_CONNECT_TIMEOUT": 0.2, "SOCKET_TIMEOUT": 0.2},
    }
}


def user_msg(text: str, **extra: Any) -> ChatMessageData:
    return ChatMessageData(role="user", content=text, **extra)


def make_session(owner: Any, count: int = 0, title: str = "t") -> uuid.UUID:
    state = store.session_create(owner_id=owner.pk, title=title)
    if count:
        store.messages_append(
            session_id=state.id, messages=[user_msg(f"m{i}") for i in range(1, count + 1)]
        )
    return state.id


def contents(session_id: uuid.UUID) -> list[str | None]:
    return [m.content for m in store.session_get(session_id=session_id).messages]


def db_contents(session_id: uuid.UUID) -> list[str | None]:
    return list(
        ChatMessage.objects.filter(session_id=session_id)
        .order_by("sequence")
        .values_list("content", flat=True)
    )


# --- create and get ---------------------------------------------------------------------


def test_create_stores_session_and_first_messages(owner: Any) -> None:
    state = store.session_create(
        owner_id=owner.pk,
        title="First",
        credentials={"github": "cred-1"},
        messages=[ChatMessageData(role="system", content="be brief"), user_msg("hi")],
    )
    row = ChatSession.objects.get(pk=state.id)
    assert (row.owner_id, row.title, row.last_sequence) == (owner.pk, "First", 2)
    assert row.credentials == {"github": "cred-1"}
    assert [m.sequence for m in state.messages] == [1, 2]
    assert db_contents(state.id) == ["be brief", "hi"]


def test_create_failure_raises_clear_error_and_stores_nothing(owner: Any) -> None:
    with (
        mock.patch.object(
            ChatMessage.objects, "bulk_create", side_effect=DatabaseError("disk full")
        ),
        pytest.raises(StoreWriteError, match="Could not save the new session"),
    ):
        store.session_create(owner_id=owner.pk, messages=[user_msg("hi")])
    assert ChatSession.objects.count() == 0


def test_get_returns_messages_in_order_and_metadata(owner: Any) -> None:
    sid = make_session(owner, 3, title="Ordered")
    state = store.session_get(session_id=sid, owner_id=owner.pk)
    assert state.title == "Ordered"
    assert [(m.sequence, m.content) for m in state.messages] == [(1, "m1"), (2, "m2"), (3, "m3")]
    assert state.last_sequence == 3


def test_get_by_string_id(owner: Any) -> None:
    sid = make_session(owner, 1)
    assert store.session_get(session_id=str(sid)).id == sid


def test_stranger_gets_exactly_what_a_missing_session_gets(owner: Any, stranger: Any) -> None:
    sid = make_session(owner, 1)
    store.session_get(session_id=sid, owner_id=owner.pk)  # cached now: both paths checked
    with pytest.raises(SessionNotFound) as as_stranger:
        store.session_get(session_id=sid, owner_id=stranger.pk)
    missing = uuid.uuid4()
    with pytest.raises(SessionNotFound) as as_missing:
        store.session_get(session_id=missing, owner_id=stranger.pk)
    assert str(as_stranger.value) == str(as_missing.value).replace(str(missing), str(sid))
    assert as_stranger.value.code == as_missing.value.code
    cache.clear()
    with pytest.raises(SessionNotFound):
        store.session_get(session_id=sid, owner_id=stranger.pk)


def test_malformed_id_is_not_found(owner: Any) -> None:
    with pytest.raises(SessionNotFound):
        store.session_get(session_id="not-a-uuid")


def test_second_get_is_served_from_cache_without_queries(owner: Any) -> None:
    sid = make_session(owner, 5)
    store.session_get(session_id=sid)
    with CaptureQueriesContext(connection) as queries:
        state = store.session_get(session_id=sid, owner_id=owner.pk)
    assert len(queries) == 0
    assert [m.content for m in state.messages] == ["m1", "m2", "m3", "m4", "m5"]


def test_get_after_append_reads_only_the_session_row(owner: Any) -> None:
    sid = make_session(owner, 50)
    store.session_get(session_id=sid)
    store.messages_append(session_id=sid, messages=[user_msg("new")])
    with CaptureQueriesContext(connection) as queries:
        state = store.session_get(session_id=sid)
    assert len(queries) == 1, [q["sql"] for q in queries.captured_queries]
    assert "chatmessage" not in queries.captured_queries[0]["sql"].lower()
    assert state.messages[-1].content == "new"
    assert len(state.messages) == 51


# --- cache failures -----------------------------------------------------------------------


def test_unreachable_redis_falls_back_to_database(
    owner: Any, caplog: pytest.LogCaptureFixture
) -> None:
    sid = make_session(owner, 2)
    with override_settings(CACHES=UNREACHABLE_REDIS), caplog.at_level(logging.WARNING):
        state = store.session_get(session_id=sid, owner_id=owner.pk)
        assert [m.content for m in state.messages] == ["m1", "m2"]
        # Writes still succeed: the cache is best effort.
        store.messages_append(session_id=sid, messages=[user_msg("m3")])
        created = store.session_create(owner_id=owner.pk, title="offline")
        store.session_rename(session_id=sid, owner_id=owner.pk, title="renamed")
        store.session_cache_invalidate(session_id=sid)
        assert store.session_get(session_id=created.id).title == "offline"
        with pytest.raises(SessionNotFound):
            store.session_get(session_id=sid, owner_id=owner.pk + 1000)
    assert "cache unavailable" in caplog.text
    assert db_contents(sid) == ["m1", "m2", "m3"]
    assert contents(sid) == ["m1", "m2", "m3"]
    assert store.session_get(session_id=sid).title == "renamed"


def test_corrupt_meta_entry_falls_back_and_is_repaired(
    owner: Any, caplog: pytest.LogCaptureFixture
) -> None:
    sid = make_session(owner, 2, title="Real")
    store.session_get(session_id=sid)
    cache.set(session_cache.meta_key(sid), "{not json")
    with caplog.at_level(logging.WARNING):
        state = store.session_get(session_id=sid)
    assert state.title == "Real"
    assert "corrupt cache entry" in caplog.text
    _, meta = session_cache.meta_lookup(sid)
    assert meta is not None and meta.title == "Real"


@pytest.mark.parametrize("garbage", ["{}", b"\x00\xff", 12345, '{"role": "user", "sequence": 99}'])
def test_corrupt_message_entry_falls_back_and_is_repaired(
    owner: Any, caplog: pytest.LogCaptureFixture, garbage: Any
) -> None:
    sid = make_session(owner, 3)
    store.session_get(session_id=sid)
    cache.set(session_cache.message_key(sid, 2), garbage)
    with caplog.at_level(logging.WARNING):
        assert contents(sid) == ["m1", "m2", "m3"]
    assert "cache entry" in caplog.text
    assert session_cache.messages_lookup(sid, [2])[2].content == "m2"


def test_stale_meta_written_by_a_slow_reader_is_never_served(owner: Any) -> None:
    """A reader reads the generation, a write commits, then the reader caches old metadata."""
    sid = make_session(owner, 1, title="old")
    generation, _ = session_cache.meta_lookup(sid)
    old_meta = meta_from_row(ChatSession.objects.get(pk=sid))
    store.session_rename(session_id=sid, owner_id=owner.pk, title="new")
    store.messages_append(session_id=sid, messages=[user_msg("m2")])
    session_cache.meta_store(old_meta, generation=generation)
    state = store.session_get(session_id=sid)
    assert state.title == "new"
    assert [m.content for m in state.messages] == ["m1", "m2"]


def test_backfill_never_overwrites_a_newer_message(owner: Any) -> None:
    sid = make_session(owner, 1)
    old = store.session_get(session_id=sid).messages[0]
    store.message_update(session_id=sid, sequence=1, changes={"content": "edited"})
    session_cache.messages_backfill(sid, [old])
    assert contents(sid) == ["edited"]


# --- writes -------------------------------------------------------------------------------


def test_append_allocates_consecutive_sequences(owner: Any) -> None:
    sid = make_session(owner, 2)
    saved = store.messages_append(session_id=sid, messages=[user_msg("a"), user_msg("b")])
    assert [m.sequence for m in saved] == [3, 4]
    assert ChatSession.objects.get(pk=sid).last_sequence == 4


def test_append_checks_owner(owner: Any, stranger: Any) -> None:
    sid = make_session(owner, 1)
    with pytest.raises(SessionNotFound):
        store.messages_append(session_id=sid, messages=[user_msg("x")], owner_id=stranger.pk)
    assert db_contents(sid) == ["m1"]


def test_append_failure_raises_and_cache_claims_nothing(owner: Any) -> None:
    sid = make_session(owner, 2)
    store.session_get(session_id=sid)
    with (
        mock.patch.object(ChatMessage.objects, "bulk_create", side_effect=DatabaseError("boom")),
        pytest.raises(StoreWriteError, match=f"Could not save 1 message\\(s\\) of session {sid}"),
    ):
        store.messages_append(session_id=sid, messages=[user_msg("lost")])
    assert db_contents(sid) == ["m1", "m2"]
    assert contents(sid) == ["m1", "m2"]
    assert session_cache.messages_lookup(sid, [3]) == {}
    assert ChatSession.objects.get(pk=sid).last_sequence == 2


def test_append_cost_does_not_grow_with_history(owner: Any) -> None:
    """Cache bytes and SQL statements of one append are the same at 10 and 400 messages."""

    def measure(sid: uuid.UUID) -> tuple[int, int]:
        store.session_get(session_id=sid)
        written: list[int] = []
        real_set_many = cache.set_many

        def spy(data: dict[str, Any], *args: Any, **kwargs: Any) -> Any:
            written.extend(len(str(v)) for v in data.values())
            return real_set_many(data, *args, **kwargs)

        with (
            mock.patch.object(cache, "set_many", spy),
            CaptureQueriesContext(connection) as queries,
        ):
            store.messages_append(session_id=sid, messages=[user_msg("same size")])
        return sum(written), len(queries)

    short_bytes, short_queries = measure(make_session(owner, 10))
    long_bytes, long_queries = measure(make_session(owner, 400))
    assert short_queries == long_queries
    # Only the sequence number's digits may differ.
    assert abs(long_bytes - short_bytes) <= 4
    assert short_bytes < 1000


def test_save_writes_only_new_messages_and_metadata(owner: Any) -> None:
    sid = make_session(owner, 3)
    state = store.session_get(session_id=sid)
    before = {m.sequence: m.updated_at for m in state.messages}
    state.messages.append(ChatMessageData(role="assistant", content="answer"))
    state.credentials = {"google": "token-ref"}
    state.successful_agent_runs = {"agent-1": 2}
    state.successful_agent_schedules = {"agent-2": 1}
    state.prompt_tokens, state.completion_tokens = 11, 7
    with CaptureQueriesContext(connection) as queries:
        saved = store.session_save(session=state, owner_id=owner.pk)
    writes = [
        q["sql"] for q in queries.captured_queries if q["sql"].startswith(("INSERT", "UPDATE"))
    ]
    message_writes = [sql for sql in writes if "chatmessage" in sql.lower()]
    assert len(message_writes) == 1 and message_writes[0].startswith("INSERT")
    assert [m.sequence for m in saved.messages] == [1, 2, 3, 4]
    reloaded = store.session_get(session_id=sid)
    assert reloaded.credentials == {"google": "token-ref"}
    assert reloaded.successful_agent_runs == {"agent-1": 2}
    assert reloaded.successful_agent_schedules == {"agent-2": 1}
    assert reloaded.usage == Usage(prompt_tokens=11, completion_tokens=7)
    assert {m.sequence: m.updated_at for m in reloaded.messages[:3]} == before
    assert reloaded.messages[3].content == "answer"


def test_save_failure_leaves_database_and_cache_unchanged(owner: Any) -> None:
    sid = make_session(owner, 1, title="before")
    state = store.session_get(session_id=sid)
    state.title = "after"
    state.messages.append(user_msg("unsaved"))
    with (
        mock.patch.object(ChatSession, "save", side_effect=DatabaseError("gone")),
        pytest.raises(StoreWriteError, match="Could not save the session"),
    ):
        store.session_save(session=state)
    for reloaded in (store.session_get(session_id=sid), store_sessions._session_from_db(sid, None)):
        assert reloaded.title == "before"
        assert [m.content for m in reloaded.messages] == ["m1"]


def test_save_checks_owner(owner: Any, stranger: Any) -> None:
    sid = make_session(owner, 1)
    state = store.session_get(session_id=sid)
    state.title = "hijack"
    with pytest.raises(SessionNotFound):
        store.session_save(session=state, owner_id=stranger.pk)
    assert ChatSession.objects.get(pk=sid).title == "t"


def test_message_update_changes_one_message(owner: Any) -> None:
    sid = make_session(owner, 2)
    store.session_get(session_id=sid)
    updated = store.message_update(
        session_id=sid, sequence=2, changes={"content": "partial…", "status": "interrupted"}
    )
    assert (updated.content, updated.status) == ("partial…", "interrupted")
    assert [(m.content, m.status) for m in store.session_get(session_id=sid).messages] == [
        ("m1", "complete"),
        ("partial…", "interrupted"),
    ]


def test_a_checkpoint_writes_a_streaming_message_only(owner: Any) -> None:
    sid = make_session(owner, 1)
    [streaming] = store.messages_append(
        session_id=sid,
        messages=[ChatMessageData(role="assistant", content="", status="streaming")],
    )
    assert streaming.sequence == 2
    touched = ChatSession.objects.get(pk=sid).updated_at
    store.session_get(session_id=sid)  # cached with its empty text
    assert store.message_checkpoint(session_id=sid, sequence=2, content="so far")
    # Readers see the new text (the cached entry was dropped), the session row is untouched.
    assert store.session_get(session_id=sid).messages[1].content == "so far"
    assert ChatSession.objects.get(pk=sid).updated_at == touched
    store.message_update(
        session_id=sid, sequence=2, changes={"content": "done", "status": "complete"}
    )
    # A checkpoint that lands after the final write changes nothing.
    assert not store.message_checkpoint(session_id=sid, sequence=2, content="so")
    assert store.session_get(session_id=sid).messages[1].content == "done"
    assert not store.message_checkpoint(session_id=sid, sequence=1, content="user text")
    assert ChatMessage.objects.get(session_id=sid, sequence=1).content == "m1"


def test_message_update_rejects_bad_changes_and_keeps_data(owner: Any) -> None:
    sid = make_session(owner, 1)
    with pytest.raises(ValueError, match="not updatable: role"):
        store.message_update(session_id=sid, sequence=1, changes={"role": "system"})
    with pytest.raises(ValidationError):
        store.message_update(session_id=sid, sequence=1, changes={"status": "exploded"})
    with pytest.raises(LookupError):
        store.message_update(session_id=sid, sequence=9, changes={"content": "x"})
    row = ChatMessage.objects.get(session_id=sid, sequence=1)
    assert (row.role, row.status, row.content) == ("user", "complete", "m1")


def test_usage_records_and_totals(owner: Any) -> None:
    sid = make_session(owner)
    store.session_get(session_id=sid)
    store.usage_record(
        session_id=sid, usage=Usage(prompt_tokens=10, completion_tokens=5), model="m"
    )
    totals = store.usage_record(session_id=sid, usage=Usage(prompt_tokens=3, completion_tokens=2))
    assert totals == Usage(prompt_tokens=13, completion_tokens=7)
    assert totals.total_tokens == 20
    assert store.session_get(session_id=sid).usage.total_tokens == 20
    records = store.session_usage(session_id=sid, owner_id=owner.pk)
    assert [(u.prompt_tokens, u.completion_tokens, u.total_tokens) for u in records] == [
        (10, 5, 15),
        (3, 2, 5),
    ]


def test_usage_of_a_strangers_session_is_not_found(owner: Any, stranger: Any) -> None:
    sid = make_session(owner)
    with pytest.raises(SessionNotFound):
        store.session_usage(session_id=sid, owner_id=stranger.pk)


# --- list, rename, delete, invalidate -----------------------------------------------------


def test_list_is_newest_first_paginated_and_loads_no_messages(owner: Any, stranger: Any) -> None:
    ids = [make_session(owner, 2, title=f"s{i}") for i in range(5)]
    make_session(stranger, 1, title="theirs")
    store.messages_append(session_id=ids[1], messages=[user_msg("bump")])
    with CaptureQueriesContext(connection) as queries:
        first = store.session_list(owner_id=owner.pk, page=1, page_size=2)
    assert all("chatmessage" not in q["sql"].lower() for q in queries.captured_queries)
    assert first.total == 5
    assert [s.title for s in first.items] == ["s1", "s4"]
    assert first.items[0].message_count == 3
    second = store.session_list(owner_id=owner.pk, page=2, page_size=2)
    third = store.session_list(owner_id=owner.pk, page=3, page_size=2)
    assert [s.title for s in second.items + third.items] == ["s3", "s2", "s0"]
    assert store.session_list(owner_id=owner.pk, page=4, page_size=2).items == []


def test_rename_changes_title_only_and_invalidates(owner: Any, stranger: Any) -> None:
    sid = make_session(owner, 2, title="old")
    store.session_get(session_id=sid)
    stamps = list(ChatMessage.objects.filter(session_id=sid).values_list("updated_at", flat=True))
    with CaptureQueriesContext(connection) as queries:
        store.session_rename(session_id=sid, owner_id=owner.pk, title="new")
    assert all("chatmessage" not in q["sql"].lower() for q in queries.captured_queries)
    assert store.session_get(session_id=sid).title == "new"
    assert (
        list(ChatMessage.objects.filter(session_id=sid).values_list("updated_at", flat=True))
        == stamps
    )
    with pytest.raises(SessionNotFound):
        store.session_rename(session_id=sid, owner_id=stranger.pk, title="theirs")
    assert store.session_get(session_id=sid).title == "new"


def test_a_generated_title_is_set_once_and_never_over_the_users(owner: Any) -> None:
    sid = make_session(owner, 1, title="")
    assert store.session_get(session_id=sid).title == ""  # metadata cached
    with CaptureQueriesContext(connection) as queries:
        assert store.session_title_set_if_empty(session_id=sid, title="Tea") is True
    assert len(queries) == 1
    assert store.session_get(session_id=sid).title == "Tea"  # the cache learnt it
    assert store.session_title_set_if_empty(session_id=sid, title="Other") is False
    store.session_rename(session_id=sid, owner_id=owner.pk, title="Mine")
    assert store.session_title_set_if_empty(session_id=sid, title="Other") is False
    assert store.session_get(session_id=sid).title == "Mine"
    assert store.session_title_set_if_empty(session_id=uuid.uuid4(), title="x") is False


def test_delete_checks_owner_then_drops_cache(owner: Any, stranger: Any) -> None:
    sid = make_session(owner, 2)
    store.session_get(session_id=sid)
    with pytest.raises(SessionNotFound):
        store.session_delete(session_id=sid, owner_id=stranger.pk)
    assert ChatSession.objects.filter(pk=sid).exists()
    store.session_delete(session_id=sid, owner_id=owner.pk)
    assert not ChatSession.objects.filter(pk=sid).exists()
    assert ChatMessage.objects.filter(session_id=sid).count() == 0
    keys = [session_cache.meta_key(sid), session_cache.message_key(sid, 1)]
    assert cache.get_many(keys) == {}
    with pytest.raises(SessionNotFound):
        store.session_get(session_id=sid)


def test_invalidate_drops_every_entry(owner: Any) -> None:
    sid = make_session(owner, 2)
    store.session_get(session_id=sid)
    keys = [
        session_cache.generation_key(sid),
        session_cache.meta_key(sid),
        session_cache.message_key(sid, 1),
        session_cache.message_key(sid, 2),
    ]
    assert len(cache.get_many(keys)) == 4
    store.session_cache_invalidate(session_id=sid)
    assert cache.get_many(keys) == {}
    assert contents(sid) == ["m1", "m2"]


def test_failed_message_cache_write_still_invalidates(owner: Any) -> None:
    sid = make_session(owner, 1)
    assert contents(sid) == ["m1"]  # metadata and message 1 cached
    with mock.patch.object(session_cache, "_encoded", side_effect=ConnectionError("down")):
        store.messages_append(session_id=sid, messages=[user_msg("m2")])
    assert contents(sid) == ["m1", "m2"]


@pytest.mark.redis
def test_an_appends_cache_writes_are_one_round_trip_to_redis(owner: Any) -> None:
    import redis

    sid = make_session(owner, 1)
    assert contents(sid) == ["m1"]  # the generation and the entries exist
    single, pipelines = [], []
    real_command, real_execute = redis.Redis.execute_command, redis.client.Pipeline.execute

    def command(self: Any, *args: Any, **kwargs: Any) -> Any:
        single.append(args[0])
        return real_command(self, *args, **kwargs)

    def execute(self: Any, *args: Any, **kwargs: Any) -> Any:
        pipelines.append([c[0][0] for c in self.command_stack])
        return real_execute(self, *args, **kwargs)

    with (
        mock.patch.object(redis.Redis, "execute_command", command),
        mock.patch.object(redis.client.Pipeline, "execute", execute),
    ):
        store.messages_append(session_id=sid, messages=[user_msg("m2"), user_msg("m3")])
    assert single == []
    assert pipelines == [["EVAL", "SET", "SET"]]  # the generation's bump, then the entries
    assert contents(sid) == ["m1", "m2", "m3"]
