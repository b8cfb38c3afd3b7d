from __future__ import annotations

from django.urls import path, re_path

from sessions_app.transport import api

urlpatterns = [
    path("sessions/", api.sessions_collection, name="api-sessions"),
    path("sessions/<str:session_id>/", api.session_detail, name="api-session"),
    path("sessions/<str:session_id>/events/", api.session_events, name="api-session-events"),
    path("sessions/<str:session_id>/messages/", api.session_send, name="api-session-send"),
    path("sessions/<str:session_id>/cancel/", api.session_cancel, name="api-session-cancel"),
    re_path(r"^(?P<path>.*)$", api.not_found),
]
