"""sessions_app.store.turn_writes: a turn's first and a model call's last write in one PostgreSQL
round trip each, checked outcome by outcome against the ORM paths of the same functions (taken
on other databases and inside a caller's transaction), and the SQL functions' columns checked
against the message fields."""

from __future__ import annotations

import re
import threading
import uuid
from datetime import timedelta
from typing import Any

import pytest
from django.db import close_old_connections, connection, transaction
from django.test.utils import CaptureQueriesContext
from django.utils import timezone

from sessions_app import store
from sessions_app.errors import LeaseLost, LimitExceeded, SessionNotFound
from sessions_app.models import ChatMessage, ChatSession, UsageRecord
from sessions_app.schemas import ChatMessageData, Usage
from sessions_app.store import cache as session_cache
from sessions_app.store import turn_writes
from sessions_app.store.rows import MESSAGE_FIELDS, MESSAGE_UPDATABLE, message_from_row

pytestmark = [pytest.mark.postgres, pytest.mark.django_db(transaction=True)]


def begin(session_id: uuid.UUID, owner_id: int, client_id: str = "c-1", **kw: Any) -> Any:
    return turn_writes.turn_begin(
        session_id=session_id,
        owner_id=owner_id,
        turn_id=kw.pop("turn_id", uuid.uuid4()),
        process="test-process",
        messages=[
            ChatMessageData(role="user", content="hello", client_message_id=client_id),
            ChatMessageData(role="assistant", content="", status="streaming"),
        ],
    )


def rows(session_id: uuid.UUID) -> list[tuple[Any, ...]]:
    return list(
        ChatMessage.objects.filter(session_id=session_id)
        .order_by("sequence")
        .values_list("sequence", "role", "content", "status", "client_message_id", "tool_calls")
    )


@pytest.fixture
def session_id(owner: Any) -> uuid.UUID:
    return store.session_create(owner_id=owner.pk, title="t").id


def test_the_functions_are_used_on_postgresql_outside_a_transaction() -> None:
    assert turn_writes.pg_functions_usable()
    with transaction.atomic():
        assert not turn_writes.pg_functions_usable()


def test_a_turn_begins_in_one_round_trip_and_stores_what_the_orm_path_stores(
    owner: Any, session_id: uuid.UUID
) -> None:
    store.messages_append(session_id=session_id, messages=[ChatMessageData(role="system")])
    turn_id = uuid.uuid4()
    with CaptureQueriesContext(connection) as queries:
        begun = begin(session_id, owner.pk, turn_id=turn_id)
    assert len(queries) == 1
    assert begun.outcome == "created"
    assert [m.sequence for m in begun.messages] == [2, 3]
    assert rows(session_id) == [
        (1, "system", None, "complete", None, None),
        (2, "user", "hello", "complete", "c-1", None),
        (3, "assistant", "", "streaming", None, None),
    ]
    row = ChatSession.objects.get(pk=session_id)
    assert (row.turn_id, row.turn_owner, row.last_sequence) == (turn_id, "test-process", 3)
    assert row.updated_at == begun.messages[0].created_at
    # The returned messages are the stored ones, and the cache learnt them after the commit.
    assert store.session_get(session_id=session_id).messages[1:] == begun.messages
    assert session_cache.messages_lookup(session_id, [2, 3]) == {
        m.sequence: m for m in begun.messages
    }


def test_json_fields_and_nulls_are_stored_as_the_orm_stores_them(
    owner: Any, session_id: uuid.UUID
) -> None:
    calls = [{"id": "call-1", "type": "function", "function": {"name": "x", "arguments": "{}"}}]
    message = ChatMessageData(role="assistant", content=None, tool_calls=calls, name="n")
    begun = turn_writes.turn_begin(
        session_id=session_id,
        owner_id=owner.pk,
        turn_id=uuid.uuid4(),
        process="p",
        messages=[message],
    )
    stored = ChatMessage.objects.get(session_id=session_id, sequence=1)
    assert (stored.content, stored.tool_calls, stored.function_call) == (None, calls, None)
    assert ChatMessage.objects.filter(session_id=session_id, function_call__isnull=True).count()
    assert message_from_row(stored) == begun.messages[0]


def test_a_retried_send_changes_nothing(owner: Any, session_id: uuid.UUID) -> None:
    first = begin(session_id, owner.pk)
    ChatSession.objects.filter(pk=session_id).update(turn_id=None)  # that turn ended
    before = rows(session_id)
    again = begin(session_id, owner.pk)
    assert again.outcome == "duplicate"
    assert [m.sequence for m in again.messages] == [first.messages[0].sequence]
    assert rows(session_id) == before
    assert ChatSession.objects.get(pk=session_id).turn_id is None  # no lease taken
    assert first.outcome == "created"


def test_a_live_lease_is_busy_and_a_dead_one_stale(owner: Any, session_id: uuid.UUID) -> None:
    holder = uuid.uuid4()
    assert begin(session_id, owner.pk, "c-1", turn_id=holder).outcome == "created"
    assert begin(session_id, owner.pk, "c-2").outcome == "busy"
    long_ago = timezone.now() - timedelta(hours=1)
    ChatSession.objects.filter(pk=session_id).update(turn_heartbeat_at=long_ago)
    assert begin(session_id, owner.pk, "c-2").outcome == "stale"
    assert ChatSession.objects.get(pk=session_id).turn_id == holder  # left for the recovery
    assert len(rows(session_id)) == 2


def test_a_strangers_session_looks_missing(
    owner: Any, stranger: Any, session_id: uuid.UUID
) -> None:
    with pytest.raises(SessionNotFound):
        begin(session_id, stranger.pk)
    with pytest.raises(SessionNotFound):
        begin(uuid.uuid4(), owner.pk)
    assert rows(session_id) == []
    assert ChatSession.objects.get(pk=session_id).turn_id is None


def test_the_running_turns_limit_refuses_and_takes_nothing(
    owner: Any, session_id: uuid.UUID, settings: Any
) -> None:
    settings.CHAT_USER_MAX_RUNNING_TURNS = 1
    other = store.session_create(owner_id=owner.pk, title="o").id
    assert begin(other, owner.pk).outcome == "created"
    with pytest.raises(LimitExceeded) as refused:
        begin(session_id, owner.pk)
    assert refused.value.code == "too_many_turns"
    assert rows(session_id) == []
    assert ChatSession.objects.get(pk=session_id).turn_id is None
    # A dead turn elsewhere does not count.
    long_ago = timezone.now() - timedelta(hours=1)
    ChatSession.objects.filter(pk=other).update(turn_heartbeat_at=long_ago)
    assert begin(session_id, owner.pk).outcome == "created"


def test_sends_racing_from_many_threads_start_one_turn_and_store_each_message_once(
    owner: Any, session_id: uuid.UUID
) -> None:
    outcomes: list[str] = []
    barrier = threading.Barrier(6)

    def send(client_id: str) -> None:
        try:
            barrier.wait()
            outcomes.append(begin(session_id, owner.pk, client_id).outcome)
        finally:
            close_old_connections()

    threads = [threading.Thread(target=send, args=(f"c-{i % 2}",)) for i in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert outcomes.count("created") == 1
    assert set(outcomes) <= {"created", "busy", "duplicate"}
    assert [r[0] for r in rows(session_id)] == [1, 2]


@pytest.mark.parametrize("path", ["function", "orm"])
def test_both_paths_give_the_same_outcomes(owner: Any, path: str) -> None:
    """created, busy, duplicate (with the stored message), stale, missing: the same on the
    PL/pgSQL path and on the ORM path (a caller's open transaction takes the ORM's)."""
    session_id = store.session_create(owner_id=owner.pk, title="t").id

    def on_path(**kw: Any) -> Any:
        if path == "function":
            return begin(session_id, owner.pk, **kw)
        with transaction.atomic():
            return begin(session_id, owner.pk, **kw)

    with CaptureQueriesContext(connection) as queries:
        created = on_path(client_id="a")
    assert created.outcome == "created" and [m.sequence for m in created.messages] == [1, 2]
    assert (len(queries) == 1) == (path == "function")
    assert on_path(client_id="b").outcome == "busy"
    ChatSession.objects.filter(pk=session_id).update(
        turn_heartbeat_at=timezone.now() - timedelta(hours=1)
    )
    assert on_path(client_id="b").outcome == "stale"
    ChatSession.objects.filter(pk=session_id).update(turn_id=None)
    duplicate = on_path(client_id="a")
    assert duplicate.outcome == "duplicate"
    assert [(m.sequence, m.content) for m in duplicate.messages] == [(1, "hello")]
    assert ChatSession.objects.get(pk=session_id).turn_id is None  # no lease kept
    with pytest.raises(SessionNotFound):
        begin(uuid.uuid4(), owner.pk)


def _function_source(name: str) -> str:
    with connection.cursor() as cursor:
        cursor.execute(
            "SELECT pg_get_functiondef(p.oid) FROM pg_proc p WHERE p.proname = %s", [name]
        )
        [(source,)] = cursor.fetchall()
    return str(source)


def test_the_functions_columns_are_the_message_fields() -> None:
    """A new message field must reach the SQL functions (a new migration), or this fails:
    the begin function inserts every field, the complete function returns every field in
    ``MESSAGE_FIELDS``'s order (the code zips them) and updates exactly the updatable ones."""
    begin_source = _function_source("chat_turn_begin_v1")
    inserted = re.search(r"INSERT INTO \S+ \(([^)]*)\)", begin_source, re.S)
    assert inserted is not None
    columns = [c.strip() for c in inserted.group(1).split(",")]
    assert set(columns) - {"session_id", "sequence", "created_at", "updated_at"} == set(
        MESSAGE_FIELDS
    )
    for name in ("chat_message_complete_v1", "chat_message_complete_v2"):
        complete_source = _function_source(name)
        returned = re.search(r"RETURNS TABLE\((.*?)\)\s*LANGUAGE", complete_source, re.S)
        assert returned is not None
        names = [c.split()[0] for c in returned.group(1).split(",")]
        assert names[0] == "outcome"
        assert names[-3:] == ["created_at", "prompt_tokens", "completion_tokens"]
        assert tuple(names[1:-3]) == MESSAGE_FIELDS
        updated = set(re.findall(r"^\s*(\w+) = CASE WHEN p_changes", complete_source, re.M))
        assert updated == set(MESSAGE_UPDATABLE)


# --- message_complete -----------------------------------------------------------------------


def streaming_reply(session_id: uuid.UUID) -> ChatMessageData:
    [reply] = store.messages_append(
        session_id=session_id,
        messages=[ChatMessageData(role="assistant", content="par", status="streaming")],
    )
    return reply


def test_a_reply_completes_in_one_round_trip_with_its_usage(
    owner: Any, session_id: uuid.UUID
) -> None:
    reply = streaming_reply(session_id)
    store.usage_record(session_id=session_id, usage=Usage(prompt_tokens=5, completion_tokens=1))
    calls = [{"id": "c", "type": "function", "function": {"name": "x", "arguments": "{}"}}]
    assert reply.sequence is not None
    with CaptureQueriesContext(connection) as queries:
        updated, totals = store.message_complete(
            session_id=session_id,
            sequence=reply.sequence,
            changes={"content": None, "tool_calls": calls, "status": "complete"},
            usage=Usage(prompt_tokens=10, completion_tokens=3),
            model="m",
        )
    assert len(queries) == 1
    assert totals == Usage(prompt_tokens=15, completion_tokens=4)
    stored = ChatMessage.objects.get(session_id=session_id, sequence=reply.sequence)
    assert message_from_row(stored) == updated
    assert (updated.content, updated.tool_calls, updated.status) == (None, calls, "complete")
    assert (updated.role, updated.created_at) == ("assistant", reply.created_at)
    row = ChatSession.objects.get(pk=session_id)
    assert (row.prompt_tokens, row.completion_tokens) == (15, 4)
    assert row.updated_at == updated.updated_at
    assert list(
        UsageRecord.objects.filter(session_id=session_id).values_list("model", "total_tokens")
    ) == [("", 6), ("m", 13)]
    # The cache serves the new version at once.
    assert store.session_get(session_id=session_id).messages[-1] == updated


def test_without_usage_only_the_message_and_the_update_time_change(
    owner: Any, session_id: uuid.UUID
) -> None:
    reply = streaming_reply(session_id)
    assert reply.sequence is not None
    updated, totals = store.message_complete(
        session_id=session_id,
        sequence=reply.sequence,
        changes={"content": "partial", "status": "interrupted"},
        usage=None,
    )
    assert totals is None
    assert (updated.content, updated.status, updated.tool_calls) == ("partial", "interrupted", None)
    assert not UsageRecord.objects.filter(session_id=session_id).exists()
    row = ChatSession.objects.get(pk=session_id)
    assert (row.prompt_tokens, row.updated_at) == (0, updated.updated_at)


@pytest.mark.parametrize(
    ("changes", "error"),
    [
        ({"role": "user"}, ValueError),  # not updatable
        ({"status": "nonsense"}, ValueError),  # not a status
        ({"tool_calls": "not a list"}, ValueError),
    ],
)
def test_a_refused_change_writes_nothing(
    owner: Any, session_id: uuid.UUID, changes: dict[str, Any], error: type[Exception]
) -> None:
    reply = streaming_reply(session_id)
    assert reply.sequence is not None
    with pytest.raises(error):
        store.message_complete(
            session_id=session_id,
            sequence=reply.sequence,
            changes=changes,
            usage=Usage(prompt_tokens=1, completion_tokens=1),
        )
    assert rows(session_id) == [(1, "assistant", "par", "streaming", None, None)]
    assert not UsageRecord.objects.filter(session_id=session_id).exists()


def test_a_missing_session_or_message_is_said_and_nothing_is_recorded(
    owner: Any, session_id: uuid.UUID
) -> None:
    with pytest.raises(SessionNotFound):
        store.message_complete(
            session_id=uuid.uuid4(), sequence=1, changes={"status": "complete"}, usage=None
        )
    with pytest.raises(LookupError):
        store.message_complete(
            session_id=session_id,
            sequence=7,
            changes={"status": "complete"},
            usage=Usage(prompt_tokens=1, completion_tokens=1),
        )
    assert not UsageRecord.objects.filter(session_id=session_id).exists()
    assert ChatSession.objects.get(pk=session_id).prompt_tokens == 0


@pytest.mark.parametrize("path", ["function", "orm"])
def test_a_reply_is_not_completed_for_a_turn_that_lost_the_lease(owner: Any, path: str) -> None:
    """Another process recovered the turn (the lease is another's, or nobody's): the turn's
    last write changes nothing and says so, on both paths."""
    session_id = store.session_create(owner_id=owner.pk, title="t").id
    reply = streaming_reply(session_id)
    assert reply.sequence is not None
    ours = begin(session_id, owner.pk).messages  # a turn holds the lease
    holder = ChatSession.objects.get(pk=session_id).turn_id
    assert ours and holder is not None
    before = rows(session_id)

    def complete(turn_id: uuid.UUID) -> Any:
        call = {
            "session_id": session_id,
            "sequence": reply.sequence,
            "changes": {"content": "late", "status": "complete"},
            "usage": Usage(prompt_tokens=1, completion_tokens=1),
            "turn_id": turn_id,
        }
        if path == "function":
            return store.message_complete(**call)
        with transaction.atomic():
            return store.message_complete(**call)

    with pytest.raises(LeaseLost):
        complete(uuid.uuid4())
    assert rows(session_id) == before
    assert (
        not UsageRecord.objects.filter(session_id=session_id, model="")
        .exclude(prompt_tokens=0)
        .exists()
    )
    updated, _ = complete(holder)  # the holder's own write goes through
    assert (updated.content, updated.status) == ("late", "complete")
