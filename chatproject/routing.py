"""Websocket URL routes."""

from __future__ import annotations

from typing import Any

from django.urls import path

from sessions_app.transport.consumers import ChatConsumer

# django-stubs types path() for views only; channels' URLRouter takes ASGI apps.
websocket_urlpatterns: list[Any] = [
    path("ws/sessions/<str:session_id>/", ChatConsumer.as_asgi()),  # type: ignore[arg-type]
]
