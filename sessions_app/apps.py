from __future__ import annotations

from django.apps import AppConfig


class SessionsAppConfig(AppConfig):
    name = "sessions_app"
    verbose_name = "Chat sessions"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # A bad CHAT_TOOLS entry stops start-up (every process, daphne and task workers
        # included) instead of failing the first turn that offers tools.
        from sessions_app.tools.registry import tools_check_configured

        tools_check_configured()
        import chatproject.checks  # noqa: F401  (registers the deployment checks)
