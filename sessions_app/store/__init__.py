"""The session store: the reads and writes of sessions, messages and usage.

``sessions`` (session rows), ``messages`` (message rows), ``turn_writes`` (a turn's first
and a model call's last write, one PL/pgSQL call each on PostgreSQL), ``rows`` (what they
share), ``cache`` (the cache's layout; only the store writes it) and ``leases`` (the turn
lease columns). Operations keep their own rows (``operations.service``) and change their
tool messages through this store.
"""

from __future__ import annotations

from sessions_app.store.messages import (
    SEARCH_SNIPPET_CHARS,
    AppendedOnce,
    message_append_once,
    message_by_client_id,
    message_checkpoint,
    message_pk,
    message_update,
    messages_append,
    messages_interrupt_unfinished,
    messages_search,
)
from sessions_app.store.sessions import (
    SAVED_FIELDS,
    ContextSummary,
    event_floor_get,
    event_floor_raise,
    session_cache_invalidate,
    session_check_owner,
    session_context_summary,
    session_context_summary_set,
    session_create,
    session_delete,
    session_get,
    session_list,
    session_owner,
    session_rename,
    session_save,
    session_title_set_if_empty,
    session_usage,
    usage_record,
)
from sessions_app.store.turn_writes import (
    TurnBegun,
    message_complete,
    pg_functions_usable,
    turn_begin,
)

__all__ = [
    "SAVED_FIELDS",
    "SEARCH_SNIPPET_CHARS",
    "AppendedOnce",
    "ContextSummary",
    "TurnBegun",
    "event_floor_get",
    "event_floor_raise",
    "message_append_once",
    "message_by_client_id",
    "message_checkpoint",
    "message_complete",
    "message_pk",
    "message_update",
    "messages_append",
    "messages_interrupt_unfinished",
    "messages_search",
    "pg_functions_usable",
    "session_cache_invalidate",
    "session_check_owner",
    "session_context_summary",
    "session_context_summary_set",
    "session_create",
    "session_delete",
    "session_get",
    "session_list",
    "session_owner",
    "session_rename",
    "session_save",
    "session_title_set_if_empty",
    "session_usage",
    "turn_begin",
    "usage_record",
]
