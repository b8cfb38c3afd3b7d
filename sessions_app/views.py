"""Server-rendered pages. Thin: they call the store and render."""

from __future__ import annotations

from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render

from sessions_app import store


@login_required
def home(request: HttpRequest) -> HttpResponse:
    """The signed-in user's sessions, newest first (the chat UI builds on this page)."""
    assert request.user.pk is not None
    sessions = store.session_list(owner_id=request.user.pk, page=1)
    return render(request, "sessions_app/home.html", {"page": sessions})
