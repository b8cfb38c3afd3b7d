from __future__ import annotations

from django.contrib import admin
from django.contrib.auth import views as auth_views
from django.urls import include, path

from sessions_app.transport import views

# The JSON API answers its own errors in JSON, also those raised before a view runs.
handler400 = "sessions_app.transport.api.bad_request"
handler500 = "sessions_app.transport.api.server_error"

urlpatterns = [
    path("admin/", admin.site.urls),
    path("accounts/login/", views.login, name="login"),
    path("accounts/logout/", auth_views.LogoutView.as_view(), name="logout"),
    path("api/", include("sessions_app.transport.api_urls")),
    path("", include("sessions_app.transport.urls")),
]
