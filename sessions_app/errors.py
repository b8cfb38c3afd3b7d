"""Errors the services raise; views and consumers translate them into responses."""

from __future__ import annotations

import uuid
from typing import Any


class SessionNotFound(Exception):
    """No such session, or not one the given user owns: the two look exactly alike."""

    code = "session_not_found"

    def __init__(self, session_id: uuid.UUID | str) -> None:
        self.session_id = session_id
        super().__init__(f"Session {session_id} not found")


class StoreWriteError(Exception):
    """The database refused a write; nothing of it was saved and nothing was cached."""

    code = "store_write_failed"


class Refused(Exception):
    """A request the server will not act on, for a reason the client can act on: a stable
    ``code``, a readable message, and (when waiting helps) ``retry_after`` seconds."""

    def __init__(
        self,
        code: str,
        message: str,
        *,
        retry_after: float | None = None,
        details: list[dict[str, Any]] | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.retry_after = retry_after
        self.details = details


class LimitExceeded(Refused):
    """A configured limit (``sessions_app.limits``; docs/reliability.md) refused the request."""
