"""Chat sessions, their messages and long-running tool operations: data and small invariants.

Rows are written only by ``sessions_app.store`` (and, for operations, ``operations``), which
keep the cache coherent; nothing else should call ``save()`` on them.
"""

from __future__ import annotations

import uuid

from django.conf import settings
from django.db import models
from django.db.models import Q
from django.utils import timezone


class ChatSession(models.Model):
    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    owner = models.ForeignKey(
        settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="chat_sessions"
    )
    title = models.CharField(max_length=200, blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(default=timezone.now)
    prompt_tokens = models.PositiveBigIntegerField(default=0)
    completion_tokens = models.PositiveBigIntegerField(default=0)
    credentials = models.JSONField(default=dict, blank=True)
    successful_agent_runs = models.JSONField(default=dict, blank=True)
    successful_agent_schedules = models.JSONField(default=dict, blank=True)
    # Highest ChatMessage.sequence handed out; allocated under this row's lock.
    last_sequence = models.PositiveIntegerField(default=0)
    # Highest event seq published for this session (the protocol's ``seq``).
    last_event_seq = models.PositiveBigIntegerField(default=0)
    # The turn lease: which turn runs, in which server process, and when that process last
    # said it is alive. A lease whose heartbeat is older than CHAT_LEASE_SECONDS is stale.
    turn_id = models.UUIDField(null=True, blank=True)
    turn_owner = models.CharField(max_length=128, blank=True, default="")
    turn_heartbeat_at = models.DateTimeField(null=True, blank=True)
    # The context window (sessions_app/model/context_window.py): a model-written summary of the
    # oldest messages, those with sequence <= context_summary_through, which no longer fit.
    context_summary = models.TextField(blank=True, default="")
    context_summary_through = models.PositiveIntegerField(null=True, blank=True)

    class Meta:
        ordering = ["-updated_at"]
        indexes = [
            # The session list: one user's sessions, newest first.
            models.Index(fields=["owner", "-updated_at"], name="chatsession_owner_updated"),
            # The crash sweep: sessions whose turn lease may be stale.
            models.Index(
                fields=["turn_heartbeat_at"],
                condition=Q(turn_id__isnull=False),
                name="chatsession_turn_lease",
            ),
        ]

    def __str__(self) -> str:
        return self.title or f"Session {self.id}"


class ChatMessage(models.Model):
    class Role(models.TextChoices):
        SYSTEM = "system"
        DEVELOPER = "developer"
        USER = "user"
        ASSISTANT = "assistant"
        TOOL = "tool"
        FUNCTION = "function"

    class Status(models.TextChoices):
        COMPLETE = "complete"
        STREAMING = "streaming"
        PENDING = "pending"
        INTERRUPTED = "interrupted"
        FAILED = "failed"

    session = models.ForeignKey(ChatSession, on_delete=models.CASCADE, related_name="messages")
    sequence = models.PositiveIntegerField()
    role = models.CharField(max_length=16, choices=Role.choices)
    content = models.TextField(null=True, blank=True)
    name = models.CharField(max_length=128, null=True, blank=True)
    tool_call_id = models.CharField(max_length=128, null=True, blank=True)
    refusal = models.TextField(null=True, blank=True)
    tool_calls = models.JSONField(null=True, blank=True)
    function_call = models.JSONField(null=True, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.COMPLETE)
    # Set by clients that send a message, so a retried send is stored once.
    client_message_id = models.CharField(max_length=64, null=True, blank=True)
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    updated_at = models.DateTimeField(default=timezone.now)

    class Meta:
        ordering = ["session", "sequence"]
        constraints = [
            # Also the index that reads a session's messages in order.
            models.UniqueConstraint(
                fields=["session", "sequence"], name="chatmessage_session_sequence_unique"
            ),
            models.UniqueConstraint(
                fields=["session", "client_message_id"],
                condition=Q(client_message_id__isnull=False),
                name="chatmessage_session_client_id_unique",
            ),
            models.CheckConstraint(
                condition=Q(sequence__gte=1), name="chatmessage_sequence_positive"
            ),
        ]

    def __str__(self) -> str:
        return f"#{self.sequence} {self.role}"


class Operation(models.Model):
    class Status(models.TextChoices):
        PENDING = "pending"
        RUNNING = "running"
        SUCCEEDED = "succeeded"
        FAILED = "failed"
        CANCELLED = "cancelled"

    id = models.UUIDField(primary_key=True, default=uuid.uuid4, editable=False)
    session = models.ForeignKey(ChatSession, on_delete=models.CASCADE, related_name="operations")
    message = models.OneToOneField(
        ChatMessage, on_delete=models.CASCADE, related_name="operation", null=True, blank=True
    )
    tool_call_id = models.CharField(max_length=128)
    tool_name = models.CharField(max_length=128)
    arguments = models.JSONField(default=dict, blank=True)
    status = models.CharField(max_length=16, choices=Status.choices, default=Status.PENDING)
    result = models.TextField(null=True, blank=True)
    error = models.TextField(null=True, blank=True)
    attempts = models.PositiveIntegerField(default=0)
    # Reported by the running tool: a fraction in [0, 1] (or none) and a short text.
    progress = models.FloatField(null=True, blank=True)
    progress_text = models.CharField(max_length=200, blank=True, default="")
    # The worker holding the lease while the operation runs (see heartbeat_at).
    lease_owner = models.CharField(max_length=128, blank=True, default="")
    created_at = models.DateTimeField(default=timezone.now, editable=False)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["created_at"]
        constraints = [
            models.UniqueConstraint(
                fields=["session", "tool_call_id"], name="operation_session_tool_call_unique"
            ),
        ]
        indexes = [
            # The crash sweep: unfinished operations by last heartbeat.
            models.Index(fields=["status", "heartbeat_at"], name="operation_status_heartbeat"),
        ]

    def __str__(self) -> str:
        return f"{self.tool_name} ({self.status})"


class UsageRecord(models.Model):
    """One model call's token usage; the session keeps the running totals."""

    session = models.ForeignKey(ChatSession, on_delete=models.CASCADE, related_name="usage")
    model = models.CharField(max_length=128, blank=True, default="")
    prompt_tokens = models.PositiveIntegerField()
    completion_tokens = models.PositiveIntegerField()
    total_tokens = models.PositiveIntegerField()
    created_at = models.DateTimeField(default=timezone.now, editable=False)

    class Meta:
        ordering = ["session", "id"]

    def __str__(self) -> str:
        return f"{self.prompt_tokens}+{self.completion_tokens} tokens"
