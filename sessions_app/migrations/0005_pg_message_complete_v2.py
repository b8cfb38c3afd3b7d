"""PostgreSQL only: ``chat_message_complete_v2``, a model call's last write that writes
nothing unless the given turn still holds the session's lease (``lease_lost`` then): a
process whose turn another process recovered must not overwrite the recovered message.
It is ``chat_message_complete_v1`` (migration 0004, frozen) with that check added after the
session row is locked; v1 stays for code of the previous release during a rolling deploy.
"""

import importlib
from typing import Any

from django.conf import settings
from django.db import migrations

V1 = importlib.import_module("sessions_app.migrations.0004_pg_turn_functions").COMPLETE

COMPLETE_V2 = (
    V1.replace("chat_message_complete_v1(", "chat_message_complete_v2(")
    .replace("    p_completion integer\n)", "    p_completion integer,\n    p_turn uuid\n)")
    .replace(
        "    v_completion bigint;\nBEGIN",
        "    v_completion bigint;\n    v_turn uuid;\nBEGIN",
    )
    .replace(
        "    PERFORM 1 FROM {session} s WHERE s.id = p_session FOR UPDATE;\n",
        "    SELECT s.turn_id INTO v_turn FROM {session} s WHERE s.id = p_session FOR UPDATE;\n",
    )
    .replace(
        "    -- Only the fields named in p_changes change",
        "    IF p_turn IS NOT NULL AND v_turn IS DISTINCT FROM p_turn THEN\n"
        "        RETURN QUERY SELECT 'lease_lost'::text, NULL, NULL, NULL, NULL, NULL,"
        " NULL::jsonb,\n"
        "            NULL::jsonb, NULL, NULL, NULL::timestamptz, NULL::bigint, NULL::bigint;\n"
        "        RETURN;\n"
        "    END IF;\n"
        "    -- Only the fields named in p_changes change",
    )
)
assert COMPLETE_V2.count("p_turn") == 3 and "v_turn" in COMPLETE_V2  # every edit applied

DROP = (
    "DROP FUNCTION IF EXISTS chat_message_complete_v2("
    "uuid, integer, jsonb, timestamptz, text, integer, integer, uuid);"
)


def create(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    quote = schema_editor.quote_name
    tables = {
        "session": apps.get_model("sessions_app", "ChatSession")._meta.db_table,
        "message": apps.get_model("sessions_app", "ChatMessage")._meta.db_table,
        "usage": apps.get_model("sessions_app", "UsageRecord")._meta.db_table,
    }
    schema_editor.execute(COMPLETE_V2.format(**{k: quote(t) for k, t in tables.items()}))


def drop(apps: Any, schema_editor: Any) -> None:
    if schema_editor.connection.vendor == "postgresql":
        schema_editor.execute(DROP)


class Migration(migrations.Migration):
    dependencies = [
        ("sessions_app", "0004_pg_turn_functions"),
        migrations.swappable_dependency(settings.AUTH_USER_MODEL),
    ]

    operations = [migrations.RunPython(create, drop)]
