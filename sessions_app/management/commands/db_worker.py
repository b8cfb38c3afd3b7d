"""``manage.py db_worker``: django-tasks-db's worker, going on through database restarts.

django-tasks-db's worker exits on the first database error that is not a locked SQLite
(``OperationalError: terminating connection due to administrator command`` when PostgreSQL
restarts), and queued operations then wait for ever. This one drops its connections, waits
(0.5 s, doubling up to 10 s) and takes up its loop again; every option is django-tasks-db's.
A task whose run was cut by the outage is recovered like any other (its operation's lease
expires and the crash sweep acts).
"""

from __future__ import annotations

import logging
import time
from typing import Any

from django.db import DatabaseError, connections
from django_tasks_db.management.commands import db_worker

logger = logging.getLogger("django_tasks_db")

RECONNECT_FIRST_SECONDS = 0.5
RECONNECT_MAX_SECONDS = 10.0


class ReconnectingWorker(db_worker.Worker):
    def run(self) -> None:
        delay = RECONNECT_FIRST_SECONDS
        while True:
            started = time.monotonic()
            try:
                super().run()
                return  # stopped, a batch done, or --max-tasks reached
            except DatabaseError as exc:
                if not self.running:
                    raise
                if time.monotonic() - started > RECONNECT_MAX_SECONDS:
                    delay = RECONNECT_FIRST_SECONDS  # it ran a while: a new outage
                logger.warning(
                    "database error (%s: %s); reconnecting in %.1f s",
                    type(exc).__name__,
                    str(exc).strip().splitlines()[0] if str(exc).strip() else "",
                    delay,
                )
                connections.close_all()
                time.sleep(delay)
                delay = min(delay * 2, RECONNECT_MAX_SECONDS)


class Command(db_worker.Command):
    help = db_worker.Command.help + " Goes on through database restarts."

    def handle(self, *args: Any, **options: Any) -> None:
        # django-tasks-db's handle builds its module's ``Worker``: the same options, ours.
        original = db_worker.Worker
        db_worker.Worker = ReconnectingWorker  # type: ignore[misc]
        try:
            super().handle(*args, **options)
        finally:
            db_worker.Worker = original  # type: ignore[misc]
