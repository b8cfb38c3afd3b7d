"""Create the demo user, or reset its password, and print its login.

``scripts/run`` calls this on every start, so the printed login always works. The password
comes from ``CHATPROJECT_DEMO_PASSWORD`` (default ``demo-password``). The demo user is an
ordinary user: no staff or superuser rights, since its password is printed and well known.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand, CommandParser
from django.db import transaction

from chatproject.settings.env import env_str

DEMO_USERNAME = "demo"
DEFAULT_DEMO_PASSWORD = "demo-password"
DEFAULT_URL = "http://127.0.0.1:8000/"


class Command(BaseCommand):
    help = (
        f'Create the user "{DEMO_USERNAME}" (or reset its password) with the password from '
        f"CHATPROJECT_DEMO_PASSWORD (default {DEFAULT_DEMO_PASSWORD!r}) and print the login."
    )

    def add_arguments(self, parser: CommandParser) -> None:
        parser.add_argument(
            "--url",
            default=DEFAULT_URL,
            help=f"Address printed with the login (default {DEFAULT_URL}).",
        )

    def handle(self, *args: object, **options: object) -> None:
        password = env_str("CHATPROJECT_DEMO_PASSWORD", default=DEFAULT_DEMO_PASSWORD)
        url = str(options["url"])
        user_model = get_user_model()
        # USERNAME_FIELD rather than `username=`, so a custom user model works too.
        lookup: dict[str, Any] = {user_model.USERNAME_FIELD: DEMO_USERNAME}
        with transaction.atomic():
            user, _created = user_model._default_manager.get_or_create(**lookup)
            user.set_password(password)
            user.is_active = True
            user.save()
        self.stdout.write(f'Demo login: username "{DEMO_USERNAME}", password "{password}" at {url}')
