from __future__ import annotations

from django.apps import AppConfig


class SessionsAppConfig(AppConfig):
    name = "sessions_app"
    verbose_name = "Chat sessions"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        # Imported here, not at module level: Django imports this module before the models.
        import chatproject.checks  # noqa: F401  (registers the deployment checks)
        from sessions_app import operations, process, turns
        from sessions_app.model import client as llm
        from sessions_app.operations import worker
        from sessions_app.tools.registry import tools_check_configured

        # A bad CHAT_TOOLS entry stops start-up (every process, daphne and task workers
        # included) instead of failing the first turn that offers tools.
        tools_check_configured()

        # The lower layers call upward only through these hooks (docs/architecture.md).
        process.on_sweep(turns.turns_sweep)
        process.on_sweep(operations.operations_sweep)
        process.on_start(worker.worker_start)
        process.on_drain(turns.turns_interrupt_all)
        process.on_drain(operations.operations_hand_back)
        process.on_close(llm.clients_close)
        operations.on_finished(turns.operation_follow_up_turn)
