"""PostgreSQL only: the two hottest writes of a turn as functions, one round trip each
(``sessions_app/store/turn_writes.py`` calls them; other databases take the ORM paths):
``chat_turn_begin_v1``, the work before a turn starts (``turn_begin``), and
``chat_message_complete_v1``, a model call's last write (``message_complete``).
Frozen like every migration: a change is a new function name in a new migration, so code
and database never disagree silently.
"""

from typing import Any

from django.conf import settings
from django.db import migrations

BEGIN = """
CREATE OR REPLACE FUNCTION chat_turn_begin_v1(
    p_session uuid,
    p_owner integer,
    p_turn uuid,
    p_process text,
    p_now timestamptz,
    p_stale_before timestamptz,
    p_max_running integer,
    p_client_message_id text,
    p_messages jsonb
) RETURNS TABLE (outcome text, first_sequence integer, running integer)
LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
    v_last integer;
    v_turn uuid;
    v_beat timestamptz;
    v_running integer;
BEGIN
    -- The same locks in the same order as the ORM path: the owner's row (so two sessions
    -- of one user starting at once cannot both pass the running-turns limit), then the
    -- session's. Each statement below sees what committed before it (read committed).
    PERFORM 1 FROM {user} WHERE id = p_owner FOR UPDATE;
    SELECT s.last_sequence, s.turn_id, s.turn_heartbeat_at INTO v_last, v_turn, v_beat
        FROM {session} s WHERE s.id = p_session AND s.owner_id = p_owner FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'missing'::text, NULL::integer, NULL::integer;
        RETURN;
    END IF;
    IF v_turn IS NOT NULL THEN
        RETURN QUERY SELECT
            CASE WHEN v_beat < p_stale_before THEN 'stale' ELSE 'busy' END::text,
            NULL::integer, NULL::integer;
        RETURN;
    END IF;
    SELECT count(*) INTO v_running FROM {session} r
        WHERE r.owner_id = p_owner AND r.turn_id IS NOT NULL
          AND r.turn_heartbeat_at >= p_stale_before AND r.id <> p_session;
    IF v_running >= p_max_running THEN
        RETURN QUERY SELECT 'limited'::text, NULL::integer, v_running;
        RETURN;
    END IF;
    IF p_client_message_id IS NOT NULL AND EXISTS (
        SELECT 1 FROM {message} m
        WHERE m.session_id = p_session AND m.client_message_id = p_client_message_id
    ) THEN
        RETURN QUERY SELECT 'duplicate'::text, NULL::integer, v_running;
        RETURN;
    END IF;
    INSERT INTO {message} (
        session_id, sequence, role, content, name, tool_call_id, refusal, tool_calls,
        function_call, status, client_message_id, created_at, updated_at
    )
    SELECT p_session, v_last + e.ord::integer, e.m->>'role', e.m->>'content', e.m->>'name',
           e.m->>'tool_call_id', e.m->>'refusal', NULLIF(e.m->'tool_calls', 'null'::jsonb),
           NULLIF(e.m->'function_call', 'null'::jsonb), e.m->>'status',
           e.m->>'client_message_id', p_now, p_now
    FROM jsonb_array_elements(p_messages) WITH ORDINALITY AS e(m, ord);
    UPDATE {session} SET
        turn_id = p_turn, turn_owner = p_process, turn_heartbeat_at = p_now,
        last_sequence = v_last + jsonb_array_length(p_messages), updated_at = p_now
    WHERE id = p_session;
    RETURN QUERY SELECT 'created'::text, v_last + 1, v_running;
END;
$fn$;
"""

COMPLETE = """
CREATE OR REPLACE FUNCTION chat_message_complete_v1(
    p_session uuid,
    p_sequence integer,
    p_changes jsonb,
    p_now timestamptz,
    p_model text,
    p_prompt integer,
    p_completion integer
) RETURNS TABLE (
    outcome text, role text, content text, name text, tool_call_id text, refusal text,
    tool_calls jsonb, function_call jsonb, status text, client_message_id text,
    created_at timestamptz, prompt_tokens bigint, completion_tokens bigint
)
LANGUAGE plpgsql VOLATILE AS $fn$
DECLARE
    v_message record;
    v_prompt bigint;
    v_completion bigint;
BEGIN
    PERFORM 1 FROM {session} s WHERE s.id = p_session FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'missing'::text, NULL, NULL, NULL, NULL, NULL, NULL::jsonb,
            NULL::jsonb, NULL, NULL, NULL::timestamptz, NULL::bigint, NULL::bigint;
        RETURN;
    END IF;
    -- Only the fields named in p_changes change (a JSON null sets SQL NULL).
    UPDATE {message} m SET
        content = CASE WHEN p_changes ? 'content' THEN p_changes->>'content' ELSE m.content END,
        refusal = CASE WHEN p_changes ? 'refusal' THEN p_changes->>'refusal' ELSE m.refusal END,
        name = CASE WHEN p_changes ? 'name' THEN p_changes->>'name' ELSE m.name END,
        status = CASE WHEN p_changes ? 'status' THEN p_changes->>'status' ELSE m.status END,
        tool_calls = CASE WHEN p_changes ? 'tool_calls'
            THEN NULLIF(p_changes->'tool_calls', 'null'::jsonb) ELSE m.tool_calls END,
        function_call = CASE WHEN p_changes ? 'function_call'
            THEN NULLIF(p_changes->'function_call', 'null'::jsonb) ELSE m.function_call END,
        updated_at = p_now
    WHERE m.session_id = p_session AND m.sequence = p_sequence
    RETURNING m.* INTO v_message;
    IF NOT FOUND THEN
        RETURN QUERY SELECT 'no_message'::text, NULL, NULL, NULL, NULL, NULL, NULL::jsonb,
            NULL::jsonb, NULL, NULL, NULL::timestamptz, NULL::bigint, NULL::bigint;
        RETURN;
    END IF;
    IF p_prompt IS NOT NULL THEN
        INSERT INTO {usage} (session_id, model, prompt_tokens, completion_tokens,
                             total_tokens, created_at)
        VALUES (p_session, p_model, p_prompt, p_completion, p_prompt + p_completion, p_now);
        UPDATE {session} s SET updated_at = p_now,
            prompt_tokens = s.prompt_tokens + p_prompt,
            completion_tokens = s.completion_tokens + p_completion
        WHERE s.id = p_session
        RETURNING s.prompt_tokens, s.completion_tokens INTO v_prompt, v_completion;
    ELSE
        UPDATE {session} s SET updated_at = p_now WHERE s.id = p_session;
    END IF;
    RETURN QUERY SELECT 'completed'::text, v_message.role::text, v_message.content,
        v_message.name::text, v_message.tool_call_id::text, v_message.refusal,
        v_message.tool_calls, v_message.function_call, v_message.status::text,
        v_message.client_message_id::text, v_message.created_at, v_prompt, v_completion;
END;
$fn$;
"""

DROP = (
    "DROP FUNCTION IF EXISTS chat_turn_begin_v1("
    "uuid, integer, uuid, text, timestamptz, timestamptz, integer, text, jsonb);"
    "DROP FUNCTION IF EXISTS chat_message_complete_v1("
    "uuid, integer, jsonb, timestamptz, text, integer, integer);"
)


def create(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    quote = schema_editor.quote_name
    user = apps.get_model(settings.AUTH_USER_MODEL)._meta.db_table
    session = apps.get_model("sessions_app", "ChatSession")._meta.db_table
    message = apps.get_model("sessions_app", "ChatMessage")._meta.db_table
    usage = apps.get_model("sessions_app", "UsageRecord")._meta.db_table
    tables = {"user": user, "session": session, "message": message, "usage": usage}
    quoted = {key: quote(table) for key, table in tables.items()}
    schema_editor.execute(BEGIN.format(**quoted))
    schema_editor.execute(COMPLETE.format(**quoted))


def drop(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP)


class Migration(migrations.Migration):
    dependencies = [
        ("sessions_app", "0003_context_summary"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [migrations.RunPython(create, drop)]
