"""Turn leases: which turn of a session runs, in which process, and whether it is alive.

A turn holds its session's lease (``ChatSession.turn_*``) from start to finish and renews
it every ``CHAT_HEARTBEAT_SECONDS``. A lease not renewed for ``CHAT_LEASE_SECONDS`` is stale:
its process is presumed dead, the crash sweep recovers the turn, and a new turn may take it.
Only the lease columns are written here; they are not part of the cached session.
"""

from __future__ import annotations

import uuid
from datetime import datetime, timedelta
from typing import Any

from django.conf import settings
from django.contrib.auth import get_user_model
from django.db import transaction
from django.db.models import Q, Value
from django.db.models.functions import Greatest
from django.utils import timezone

from sessions_app import limits
from sessions_app.models import ChatSession


def lease_stale_before() -> datetime:
    """The instant before which a lease's last heartbeat makes it stale."""
    return timezone.now() - timedelta(seconds=settings.CHAT_LEASE_SECONDS)


def turn_lease_acquire(
    *,
    session_id: uuid.UUID,
    turn_id: uuid.UUID,
    owner: str,
    owner_id: int,
    take_stale: bool = True,
) -> bool:
    """Take the session's turn lease unless a turn holds it: a live one, or (without
    ``take_stale``) any, so that the caller can finish a dead turn's work first.

    Raises ``LimitExceeded`` (nothing taken) when the user already has
    ``CHAT_USER_MAX_RUNNING_TURNS`` live turns in other sessions. The user's row is locked
    while counting, so two sessions of one user starting at once cannot both slip past it.
    Inside a caller's transaction it is part of it (no savepoint).
    """
    free = Q(turn_id__isnull=True)
    if take_stale:
        free |= Q(turn_heartbeat_at__lt=lease_stale_before())
    with transaction.atomic(savepoint=False):
        get_user_model().objects.select_for_update().filter(pk=owner_id).first()
        taken = (
            ChatSession.objects.filter(free, pk=session_id).update(
                turn_id=turn_id, turn_owner=owner, turn_heartbeat_at=timezone.now()
            )
            == 1
        )
        if taken:
            running = (
                ChatSession.objects.filter(
                    owner_id=owner_id,
                    turn_id__isnull=False,
                    turn_heartbeat_at__gte=lease_stale_before(),
                )
                .exclude(pk=session_id)
                .count()
            )
            refusal = limits.running_turns_refusal(running=running)
            if refusal is not None:
                raise refusal  # rolls the lease back
    return taken


def turn_lease_renew(*, session_id: uuid.UUID, turn_id: uuid.UUID) -> bool:
    """Renew the lease; ``False`` when this turn no longer holds it (swept as dead)."""
    renewed = ChatSession.objects.filter(pk=session_id, turn_id=turn_id).update(
        turn_heartbeat_at=timezone.now()
    )
    return renewed == 1


def turn_lease_release(
    *, session_id: uuid.UUID, turn_id: uuid.UUID, event_seq: int | None = None
) -> bool:
    """Give the lease up; with ``event_seq``, raise the session's event floor to it in the
    same update (``events.log``: where a lost counter restarts). ``False`` when ``turn_id``
    did not hold it any more (another process recovered the turn)."""
    changes: dict[str, Any] = {"turn_id": None, "turn_owner": "", "turn_heartbeat_at": None}
    if event_seq is not None:
        changes["last_event_seq"] = Greatest("last_event_seq", Value(event_seq))
    return ChatSession.objects.filter(pk=session_id, turn_id=turn_id).update(**changes) == 1


def turn_lease_live(*, session_id: uuid.UUID) -> uuid.UUID | None:
    """The id of the live turn of a session, if one runs anywhere."""
    row = (
        ChatSession.objects.filter(pk=session_id, turn_heartbeat_at__gte=lease_stale_before())
        .values_list("turn_id", flat=True)
        .first()
    )
    return row


def turn_leases_stale(*, session_id: uuid.UUID | None = None) -> list[tuple[uuid.UUID, uuid.UUID]]:
    """``(session_id, turn_id)`` of every turn (of one session, if given) whose process
    stopped renewing its lease."""
    rows = ChatSession.objects.filter(
        turn_id__isnull=False, turn_heartbeat_at__lt=lease_stale_before()
    )
    if session_id is not None:
        rows = rows.filter(pk=session_id)
    pairs = rows.values_list("pk", "turn_id")
    return [(sid, tid) for sid, tid in pairs if tid is not None]


def turn_lease_break(*, session_id: uuid.UUID, turn_id: uuid.UUID) -> bool:
    """Take a stale lease away from a dead turn; ``False`` if it was renewed meanwhile."""
    broken = ChatSession.objects.filter(
        pk=session_id, turn_id=turn_id, turn_heartbeat_at__lt=lease_stale_before()
    ).update(turn_id=None, turn_owner="", turn_heartbeat_at=None)
    return broken == 1
