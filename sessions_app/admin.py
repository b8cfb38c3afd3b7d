"""The admin: staff inspect sessions, fix their titles and purge their cache entries.

History is never rewritten here: messages, operations and usage records are shown read-only,
and every write to a session purges its cache entries once the transaction has committed.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from typing import TYPE_CHECKING, Any

from django.contrib import admin, messages
from django.db import transaction
from django.db.models import F, Model, Q, QuerySet
from django.forms import ModelForm
from django.http import HttpRequest
from django.utils import timezone
from django.utils.html import format_html
from django.utils.safestring import SafeString
from django.utils.text import Truncator
from django.utils.translation import ngettext

from sessions_app import operations, store
from sessions_app.errors import SessionNotFound
from sessions_app.models import ChatMessage, ChatSession, Operation, UsageRecord

if TYPE_CHECKING:
    _SessionAdmin = admin.ModelAdmin[ChatSession]
    _OperationAdmin = admin.ModelAdmin[Operation]
    _MessageInline = admin.TabularInline[ChatMessage, ChatSession]
    _OperationInline = admin.StackedInline[Operation, ChatSession]
    _UsageInline = admin.TabularInline[UsageRecord, ChatSession]
else:
    _SessionAdmin = _OperationAdmin = admin.ModelAdmin
    _MessageInline = _UsageInline = admin.TabularInline
    _OperationInline = admin.StackedInline

STAFF_FAILED = "Error: a staff member stopped this operation."
# Long contents are cut on the list of messages; the full text is in the database.
CONTENT_PREVIEW_CHARS = 2000


def _text_block(text: str | None, *, limit: int = CONTENT_PREVIEW_CHARS) -> SafeString | str:
    if text is None:
        return "-"
    # Admin read-only values sit in a <p>: only inline elements may go inside.
    return format_html(
        '<span style="white-space: pre-wrap">{}</span>', Truncator(text).chars(limit)
    )


def _json_block(value: Any) -> SafeString | str:
    if value is None:
        return "-"
    pretty = json.dumps(value, indent=2, ensure_ascii=False)
    return format_html('<code style="white-space: pre">{}</code>', pretty)


def _flat(fields: list[Any]) -> list[str]:
    """The field names of a ``fields`` layout (rows are tuples): all of them read-only."""
    names: list[str] = []
    for entry in fields:
        names.extend(entry if isinstance(entry, tuple) else [entry])
    return names


def _uuid_term(search_term: str) -> uuid.UUID | None:
    """The UUID a search term spells (hyphenated, bare hex, braces, urn), if any."""
    try:
        return uuid.UUID(search_term.strip())
    except ValueError:
        return None


class _ReadOnlyInline:
    """History is never rewritten from the admin: no add, change or delete here."""

    extra = 0
    can_delete = False
    show_change_link = False

    def has_add_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Model | None = None) -> bool:
        return False


class ChatMessageInline(_ReadOnlyInline, _MessageInline):
    model = ChatMessage
    ordering = ["sequence"]
    fields = readonly_fields = (
        "sequence",
        "role",
        "status",
        "content_display",
        "name",
        "tool_call_id",
        "tool_calls_display",
        "created_at",
    )

    @admin.display(description="content")
    def content_display(self, obj: ChatMessage) -> SafeString | str:
        if obj.refusal:
            return _text_block(f"[refusal] {obj.refusal}")
        return _text_block(obj.content)

    @admin.display(description="tool calls")
    def tool_calls_display(self, obj: ChatMessage) -> SafeString | str:
        return _json_block(obj.tool_calls if obj.tool_calls is not None else obj.function_call)


class OperationInline(_ReadOnlyInline, _OperationInline):
    model = Operation
    show_change_link = True  # to the operation's own (read-only) page, with its arguments
    ordering = ["created_at"]
    fields = [
        ("tool_name", "tool_call_id", "status", "attempts"),
        ("created_at", "started_at", "finished_at", "heartbeat_at"),
        ("progress", "progress_text"),
        "error",
        "result_display",
    ]
    readonly_fields = _flat(fields)

    @admin.display(description="result")
    def result_display(self, obj: Operation) -> SafeString | str:
        return _text_block(obj.result)


class UsageRecordInline(_ReadOnlyInline, _UsageInline):
    model = UsageRecord
    ordering = ["id"]
    fields = readonly_fields = (
        "model",
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "created_at",
    )


@admin.register(ChatSession)
class ChatSessionAdmin(_SessionAdmin):
    list_display = [
        "id",
        "owner",
        "title",
        "message_count",
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "updated_at",
        "created_at",
    ]
    list_select_related = ["owner"]
    list_filter = ["updated_at", "created_at"]
    date_hierarchy = "updated_at"
    # ``id`` finds a hyphenated fragment of an id; a whole UUID, in any spelling, is matched
    # exactly by ``get_search_results`` (PostgreSQL compares icontains with the hyphens).
    search_fields = ["id", "title", "owner__username"]
    ordering = ["-updated_at"]
    # A COUNT(*) of the whole table on every filtered page is not worth it.
    show_full_result_count = False
    actions = ["purge_cache"]
    fields = [
        "id",
        "owner",
        "title",
        ("created_at", "updated_at"),
        ("message_count", "last_event_seq"),
        ("prompt_tokens", "completion_tokens", "total_tokens"),
        "credentials_summary",
        "successful_agent_runs_display",
        "successful_agent_schedules_display",
    ]
    # Only the title is editable; credentials are never shown, only which keys they hold.
    readonly_fields = [
        "id",
        "owner",
        "created_at",
        "updated_at",
        "message_count",
        "last_event_seq",
        "prompt_tokens",
        "completion_tokens",
        "total_tokens",
        "credentials_summary",
        "successful_agent_runs_display",
        "successful_agent_schedules_display",
    ]
    inlines = [ChatMessageInline, OperationInline, UsageRecordInline]

    @admin.display(description="messages", ordering="last_sequence")
    def message_count(self, obj: ChatSession) -> int:
        # Sequences are dense from 1: the last one is the count.
        return obj.last_sequence

    @admin.display(description="total tokens", ordering=F("prompt_tokens") + F("completion_tokens"))
    def total_tokens(self, obj: ChatSession) -> int:
        return obj.prompt_tokens + obj.completion_tokens

    @admin.display(description="credentials")
    def credentials_summary(self, obj: ChatSession) -> str:
        creds = obj.credentials
        if not creds:
            return "none"
        if not isinstance(creds, dict):
            return f"{type(creds).__name__} (values hidden)"
        keys = ", ".join(sorted(str(key) for key in creds))
        return f"{len(creds)} key(s): {keys} (values hidden)"

    @admin.display(description="successful agent runs")
    def successful_agent_runs_display(self, obj: ChatSession) -> SafeString | str:
        return _json_block(obj.successful_agent_runs)

    @admin.display(description="successful agent schedules")
    def successful_agent_schedules_display(self, obj: ChatSession) -> SafeString | str:
        return _json_block(obj.successful_agent_schedules)

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Any], search_term: str
    ) -> tuple[QuerySet[ChatSession], bool]:
        results, may_have_duplicates = super().get_search_results(request, queryset, search_term)
        session_id = _uuid_term(search_term)
        if session_id is not None:
            results |= queryset.filter(pk=session_id)
        return results, may_have_duplicates

    def has_add_permission(self, request: HttpRequest) -> bool:
        # Sessions are started by their owners; the admin only inspects and repairs them.
        return False

    def save_model(
        self, request: HttpRequest, obj: ChatSession, form: ModelForm[ChatSession], change: bool
    ) -> None:
        """Write only the fields the form changed, then purge the cache after commit.

        A full ``save()`` would write back the counters read when the page was loaded, over
        messages or usage a running turn committed meanwhile.
        """
        if form.changed_data:
            obj.updated_at = timezone.now()
            obj.save(update_fields=[*form.changed_data, "updated_at"])
        session_id = obj.pk
        transaction.on_commit(lambda: store.session_cache_invalidate(session_id=session_id))

    def delete_model(self, request: HttpRequest, obj: ChatSession) -> None:
        # Through the store, which knows every cache entry of the session (messages
        # included) and purges them once the deletion has committed.
        with contextlib.suppress(SessionNotFound):  # deleted meanwhile: nothing left to do
            store.session_delete(session_id=obj.pk, owner_id=obj.owner_id)

    def delete_queryset(self, request: HttpRequest, queryset: QuerySet[ChatSession]) -> None:
        with transaction.atomic():
            for session_id, owner_id in queryset.values_list("pk", "owner_id"):
                with contextlib.suppress(SessionNotFound):
                    store.session_delete(session_id=session_id, owner_id=owner_id)

    def get_deleted_objects(
        self, objs: Any, request: HttpRequest
    ) -> tuple[list[Any], dict[str, int], set[str], list[Any]]:
        deleted, counts, perms_needed, protected = super().get_deleted_objects(objs, request)
        # Operations are read-only on their own page, but they go with their session.
        perms_needed.discard(str(Operation._meta.verbose_name))
        return deleted, counts, perms_needed, protected

    @admin.action(description="Purge cache entries of the selected sessions")
    def purge_cache(self, request: HttpRequest, queryset: QuerySet[ChatSession]) -> None:
        session_ids = list(queryset.values_list("pk", flat=True))
        for session_id in session_ids:
            store.session_cache_invalidate(session_id=session_id)
        count = len(session_ids)
        self.message_user(
            request,
            ngettext(
                "Purged the cache entries of %(count)d session.",
                "Purged the cache entries of %(count)d sessions.",
                count,
            )
            % {"count": count},
            messages.SUCCESS,
        )


@admin.register(Operation)
class OperationAdmin(_OperationAdmin):
    """Read-only rows; staff can retry or fail operations through ``operations``."""

    list_display = ["id", "session", "tool_name", "status", "attempts", "created_at", "finished_at"]
    list_select_related = ["session"]
    list_filter = ["status", "tool_name"]
    search_fields = ["id", "tool_call_id", "session__id"]
    ordering = ["-created_at"]
    show_full_result_count = False
    actions = ["retry_operations", "fail_operations"]
    fields = [
        "id",
        "session",
        "message",
        ("tool_name", "tool_call_id"),
        ("status", "attempts", "lease_owner"),
        ("created_at", "started_at", "finished_at", "heartbeat_at"),
        ("progress", "progress_text"),
        "arguments_display",
        "error",
        "result",
    ]
    readonly_fields = _flat(fields)

    @admin.display(description="arguments")
    def arguments_display(self, obj: Operation) -> SafeString | str:
        return _json_block(obj.arguments)

    def get_search_results(
        self, request: HttpRequest, queryset: QuerySet[Any], search_term: str
    ) -> tuple[QuerySet[Operation], bool]:
        results, may_have_duplicates = super().get_search_results(request, queryset, search_term)
        some_id = _uuid_term(search_term)
        if some_id is not None:
            results |= queryset.filter(Q(pk=some_id) | Q(session_id=some_id))
        return results, may_have_duplicates

    def has_add_permission(self, request: HttpRequest) -> bool:
        return False

    def has_change_permission(self, request: HttpRequest, obj: Operation | None = None) -> bool:
        return False

    def has_delete_permission(self, request: HttpRequest, obj: Operation | None = None) -> bool:
        return False

    @admin.action(description="Retry the selected operations from the start")
    def retry_operations(self, request: HttpRequest, queryset: QuerySet[Operation]) -> None:
        retried = sum(
            operations.operation_retry(operation_id=pk)
            for pk in queryset.values_list("pk", flat=True)
        )
        self.message_user(
            request,
            f"Queued {retried} operation(s) again; finished ones were left alone.",
            messages.SUCCESS,
        )

    @admin.action(description="Fail the selected unfinished operations")
    def fail_operations(self, request: HttpRequest, queryset: QuerySet[Operation]) -> None:
        failed = 0
        for pk in queryset.values_list("pk", flat=True):
            outcome = operations.operation_fail(operation_id=pk, error=STAFF_FAILED)
            if outcome is not None:
                failed += 1
                operations.publish_outcome_sync(*outcome)
                operations.operation_follow_up(outcome[0])
        self.message_user(request, f"Failed {failed} unfinished operation(s).", messages.SUCCESS)
