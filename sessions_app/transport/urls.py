"""Page URLs of the chat UI (the JSON API lives in ``api_urls``, websockets in routing)."""

from __future__ import annotations

from django.urls import path

from sessions_app.transport import views

urlpatterns = [
    path("", views.home, name="home"),
    path("sessions/new/", views.session_new, name="session-new"),
    path("sessions/<uuid:session_id>/", views.chat, name="chat"),
    path("sessions/<uuid:session_id>/rename/", views.session_rename, name="session-rename"),
    path("sessions/<uuid:session_id>/delete/", views.session_delete, name="session-delete"),
]
