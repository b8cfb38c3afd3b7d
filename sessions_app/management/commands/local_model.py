"""``manage.py local_model``: serve the local scripted model on its own port.

The same server as ``python -m sessions_app.local_model``; through manage.py it gets the
project's logging. Options: ``--host``, ``--port`` (0 picks a free one), ``--word-delay-ms``,
``--api-key``; see docs/local-model.md.
"""

from __future__ import annotations

from django.core.management.base import BaseCommand, CommandError, CommandParser

from sessions_app.local_model.serve import ServeError, add_arguments, serve
from sessions_app.local_model.server import ConfigError, LocalModelConfig


class Command(BaseCommand):
    help = "Serve the offline scripted OpenAI-compatible model (docs/local-model.md)."
    # Serving the model needs no models, database or checks: start fast for tests.
    requires_system_checks: list[str] = []

    def add_arguments(self, parser: CommandParser) -> None:
        add_arguments(parser)

    def handle(self, *args: object, **options: object) -> None:
        try:
            config = LocalModelConfig.from_env(
                word_delay_ms=_optional_int(options["word_delay_ms"]),
                api_key=_optional_str(options["api_key"]),
            )
            serve(host=str(options["host"]), port=int(str(options["port"])), config=config)
        except (ConfigError, ServeError) as error:
            raise CommandError(str(error)) from None


def _optional_int(value: object) -> int | None:
    return None if value is None else int(str(value))


def _optional_str(value: object) -> str | None:
    return None if value is None else str(value)
