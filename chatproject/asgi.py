"""ASGI entry point: HTTP through Django, websockets through Channels.

The local scripted model is mounted at ``/local-model/`` (its API at
``/local-model/v1/...``), so the embedded one-command setup needs no second process. It is
a plain ASGI app and never enters Django's middleware; see docs/local-model.md.
"""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from typing import Any

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatproject.settings")

# Django must be set up before anything imports models (the websocket routing will).
django_asgi_app = get_asgi_application()

from channels.auth import AuthMiddlewareStack  # noqa: E402
from channels.routing import ProtocolTypeRouter, URLRouter  # noqa: E402
from channels.security.websocket import AllowedHostsOriginValidator  # noqa: E402
from django.conf import settings  # noqa: E402

from chatproject.routing import websocket_urlpatterns  # noqa: E402
from sessions_app import process  # noqa: E402
from sessions_app.local_model import LocalModelApp, LocalModelConfig  # noqa: E402
from sessions_app.model import client as llm  # noqa: E402

ASGIApp = Callable[[Any, Any, Any], Awaitable[None]]

LOCAL_MODEL_PREFIX = "/local-model"


class PrefixMount:
    """Send paths under ``prefix`` to ``app`` (with ``root_path`` extended), others to
    ``fallback``.

    A plain string test rather than channels' URLRouter: every Django request passes through
    here, and django-stubs types ``re_path`` for views, not ASGI apps.
    """

    def __init__(self, prefix: str, app: ASGIApp, fallback: ASGIApp):
        self.prefix = prefix.rstrip("/")
        self.app = app
        self.fallback = fallback

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        root = str(scope.get("root_path", ""))
        path = str(scope.get("path", ""))
        inner = path[len(root) :] if root and path.startswith(root) else path
        if inner == self.prefix or inner.startswith(self.prefix + "/"):
            # ``path`` stays whole: the ASGI convention is that apps strip ``root_path``.
            await self.app({**scope, "root_path": root + self.prefix}, receive, send)
        else:
            await self.fallback(scope, receive, send)


# LOCAL_MODEL_WORD_DELAY_MS and LOCAL_MODEL_API_KEY apply here as in the standalone server.
local_model_app = LocalModelApp(LocalModelConfig.from_env())


class StartBackgroundWork:
    """Start the process's sweep, worker and shutdown handler on the first connection:
    daphne speaks no ASGI lifespan, so the first scope is the earliest moment on its loop."""

    def __init__(self, app: ASGIApp):
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        process.ensure_started()
        if settings.CHAT_USING_LOCAL_MODEL:
            llm.local_model_served_at(scope.get("server"), mount=LOCAL_MODEL_PREFIX)
        await self.app(scope, receive, send)


application = StartBackgroundWork(
    ProtocolTypeRouter(
        {
            # The demo model is served only while it is the configured model.
            "http": (
                PrefixMount(LOCAL_MODEL_PREFIX, local_model_app, django_asgi_app)
                if settings.CHAT_USING_LOCAL_MODEL
                else django_asgi_app
            ),
            "websocket": AllowedHostsOriginValidator(
                AuthMiddlewareStack(URLRouter(websocket_urlpatterns))
            ),
        }
    )
)
