"""System checks of the deployment (``manage.py check --deploy``)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from django.conf import settings
from django.core.checks import Tags, Warning, register

MANIFEST = "staticfiles.json"


@register(Tags.staticfiles, deploy=True)
def static_files_collected(app_configs: Any = None, **kwargs: Any) -> list[Warning]:
    """In production, pages name hashed static files from collectstatic's manifest: without
    it every page fails, so say so before the first request does."""
    if not settings.CHAT_PRODUCTION or (Path(settings.STATIC_ROOT) / MANIFEST).exists():
        return []
    return [
        Warning(
            f"No {MANIFEST} in STATIC_ROOT ({settings.STATIC_ROOT}): pages will fail.",
            hint="Run `manage.py collectstatic --noinput` with the production environment.",
            id="chatproject.W001",
        )
    ]
