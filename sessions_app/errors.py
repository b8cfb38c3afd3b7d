"""Errors the services raise; views and consumers translate them into responses."""

from __future__ import annotations

import uuid


class SessionNotFound(Exception):
    """No such session, or not one the given user owns: the two look exactly alike."""

    code = "session_not_found"

    def __init__(self, session_id: uuid.UUID | str) -> None:
        self.session_id = session_id
        super().__init__(f"Session {session_id} not found")


class StoreWriteError(Exception):
    """The database refused a write; nothing of it was saved and nothing was cached."""

    code = "store_write_failed"
