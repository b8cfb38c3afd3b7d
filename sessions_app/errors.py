"""Errors the services raise; views and consumers translate them into responses."""

from __future__ import annotations

import uuid
from typing import Any

from pydantic import BaseModel, ValidationError


class SessionNotFound(Exception):
    """No such session, or not one the given user owns: the two look exactly alike."""

    code = "session_not_found"

    def __init__(self, session_id: uuid.UUID | str) -> None:
        self.session_id = session_id
        super().__init__(f"Session {session_id} not found")


class StoreWriteError(Exception):
    """The database refused a write; nothing of it was saved and nothing was cached."""

    code = "store_write_failed"


class LeaseLost(Exception):
    """The turn no longer holds its session's lease (another process recovered it): the
    write was not made, and the turn must write and publish nothing more."""


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


# --- validation problems ------------------------------------------------------------------

# An input error lists at most this many problems, each field name clipped: a big bad input
# (thousands of unknown fields) must not buy an answer many times its own size.
MAX_PROBLEMS = 10
FIELD_NAME_CHARS = 64

Problem = tuple[tuple[int | str, ...], str]


class InvalidInput(Exception):
    """An input that does not validate against its schema, with its problems."""

    def __init__(self, problems: list[Problem]) -> None:
        super().__init__(f"{len(problems)} problem(s)")
        self.problems = problems

    def describe(self, *, whole: str) -> tuple[str, list[dict[str, str]]]:
        """A one-line summary and the ``details`` list of an error, both bounded in size.

        ``whole`` names the input itself, for a problem with an empty location."""
        details = [
            {"field": _field_name(loc, whole), "problem": problem}
            for loc, problem in self.problems[:MAX_PROBLEMS]
        ]
        summary = "; ".join(f"{d['field']}: {d['problem']}" for d in details)
        if len(self.problems) > MAX_PROBLEMS:
            summary += f"; and {len(self.problems) - MAX_PROBLEMS} more"
        return summary, details


def validated[M: BaseModel](model: type[M], data: dict[str, Any]) -> M:
    """``model.model_validate(data)`` for a ``model`` with ``extra="forbid"``.

    Raises ``InvalidInput``. Unknown keys are found before pydantic runs, which would build
    one error object per key (a body of 300,000 keys took a second to refuse)."""
    fields = model.model_fields
    unknown: list[Problem] = [
        ((key,), "Extra inputs are not permitted") for key in data if key not in fields
    ]
    known = {key: value for key, value in data.items() if key in fields} if unknown else data
    try:
        value = model.model_validate(known)
    except ValidationError as exc:
        errors = exc.errors(include_url=False, include_input=False)
        raise InvalidInput([(tuple(e["loc"]), e["msg"]) for e in errors] + unknown) from None
    if unknown:
        raise InvalidInput(unknown)
    return value


def _field_name(loc: tuple[int | str, ...], whole: str) -> str:
    name = ".".join(str(part) for part in loc) or whole
    if len(name) > FIELD_NAME_CHARS:
        name = name[: FIELD_NAME_CHARS - 1] + "…"
    # A key may hold a lone surrogate ("\ud800" escapes): it must still encode as UTF-8.
    return name.encode("utf-8", "backslashreplace").decode("utf-8")
