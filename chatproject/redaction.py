"""Keep secrets out of logs and error messages.

The secrets are the configured values themselves (the model's API key, the database and
Redis passwords, ``SECRET_KEY``): any text that contains one gets it replaced with
``[redacted]`` before it is logged or shown. ``RedactSecrets`` is a logging filter on the
console handler (settings ``LOGGING``), so it covers tracebacks and third-party log lines too.
"""

from __future__ import annotations

import functools
import logging
from urllib.parse import urlsplit

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver

REDACTED = "[redacted]"
# Shorter values are not secrets worth the name and would redact ordinary words.
MIN_SECRET_LENGTH = 6


@functools.cache
def secret_values() -> tuple[str, ...]:
    """The secret strings of this configuration, longest first."""
    candidates = {settings.SECRET_KEY, getattr(settings, "OPENAI_API_KEY", "")}
    for database in settings.DATABASES.values():
        candidates.add(str(database.get("PASSWORD") or ""))
    redis_url = getattr(settings, "REDIS_URL", None)
    if redis_url:
        candidates.add(urlsplit(redis_url).password or "")
    return tuple(sorted((c for c in candidates if len(c) >= MIN_SECRET_LENGTH), key=len)[::-1])


def redact(text: str) -> str:
    for secret in secret_values():
        if secret in text:
            text = text.replace(secret, REDACTED)
    return text


class RedactSecrets(logging.Filter):
    """Rewrite a log record (message, arguments and traceback) with the secrets redacted."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            return True  # a broken record is logging's to report, not ours
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


@receiver(setting_changed)
def _forget_secrets(**kwargs: object) -> None:
    secret_values.cache_clear()
