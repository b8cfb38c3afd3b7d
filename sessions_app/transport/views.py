"""Server-rendered pages of the chat UI (docs/ui.md). Thin: they call the store and render.

The chat page is rendered from a snapshot (``transport.feed``) so the first paint
shows the whole history; the page embeds that snapshot and its ``seq``, and the script
(``static/js/chat.js``) resumes the websocket from exactly there.

Another user's session and a missing one get the same 404 page, whatever ``DEBUG`` says.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from datetime import datetime
from functools import wraps
from inspect import iscoroutinefunction
from typing import Any

from asgiref.sync import sync_to_async
from django import forms
from django.conf import settings
from django.contrib import messages
from django.contrib.auth import views as auth_views
from django.contrib.auth.decorators import login_required
from django.contrib.auth.forms import AuthenticationForm
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.shortcuts import redirect, render
from django.urls import reverse
from django.utils.cache import add_never_cache_headers
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from sessions_app import limits, store
from sessions_app.errors import LimitExceeded, SessionNotFound, StoreWriteError
from sessions_app.schemas import PAGE_MAX
from sessions_app.tools.registry import tools_all
from sessions_app.transport.feed import snapshot_build

# Defence in depth for model output: no inline script, no third-party origin, no plugins.
# (The websocket is same-origin: CSP 3 lets 'self' match ws:/wss: of the page's host.)
CONTENT_SECURITY_POLICY = "; ".join(
    [
        "default-src 'self'",
        "script-src 'self'",
        "style-src 'self'",
        "img-src 'self' data:",
        "connect-src 'self'",
        "object-src 'none'",
        "base-uri 'none'",
        "form-action 'self'",
        "frame-ancestors 'none'",
    ]
)


class RenameForm(forms.Form):
    title = forms.CharField(
        max_length=settings.CHAT_TITLE_MAX_LENGTH, required=False, strip=True, label="Title"
    )


def _with_csp[V: Callable[..., Any]](view: V) -> V:
    """Add the page's Content-Security-Policy (sync and async views alike)."""
    if iscoroutinefunction(view):

        @wraps(view)
        async def async_wrapper(*args: Any, **kwargs: Any) -> HttpResponse:
            response: HttpResponse = await view(*args, **kwargs)
            response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
            return response

        return async_wrapper  # type: ignore[return-value]

    @wraps(view)
    def wrapper(*args: Any, **kwargs: Any) -> HttpResponse:
        response: HttpResponse = view(*args, **kwargs)
        response.headers.setdefault("Content-Security-Policy", CONTENT_SECURITY_POLICY)
        return response

    return wrapper  # type: ignore[return-value]


def _owner_id(request: HttpRequest) -> int:
    owner_id = request.user.pk
    assert isinstance(owner_id, int), "login_required lets only logged-in users through"
    return owner_id


def not_found(request: HttpRequest) -> HttpResponse:
    """The one page for a missing session and for someone else's: they must look alike."""
    return render(request, "sessions_app/not_found.html", status=404)


def unavailable(request: HttpRequest, exc: StoreWriteError) -> HttpResponse:
    """The database refused a write: nothing was saved, and the page says so."""
    return render(request, "sessions_app/unavailable.html", {"error": str(exc)}, status=503)


def _page_number(request: HttpRequest) -> int:
    try:
        return min(max(1, int(request.GET.get("page", "1"))), PAGE_MAX)
    except ValueError:
        return 1


@_with_csp
@login_required
@require_GET
def home(request: HttpRequest) -> HttpResponse:
    """The user's chats, newest update first, a page at a time, and the "New chat" button."""
    page = store.session_list(owner_id=_owner_id(request), page=_page_number(request))
    pages = max(1, -(-page.total // page.page_size))
    return render(
        request,
        "sessions_app/home.html",
        {
            "page": page,
            "previous_page": page.page - 1 if page.page > 1 else None,
            "next_page": page.page + 1 if page.page < pages else None,
        },
    )


@login_required
@require_POST
def session_new(request: HttpRequest) -> HttpResponse:
    try:
        state = store.session_create(owner_id=_owner_id(request), limited=True)
    except StoreWriteError as exc:
        return unavailable(request, exc)
    except LimitExceeded as exc:
        messages.error(request, exc.message)
        return redirect("home")
    return redirect("chat", session_id=state.id)


@_with_csp
@login_required
@require_GET
async def chat(request: HttpRequest, session_id: uuid.UUID) -> HttpResponse:
    """A session's chat view: its history as of the embedded snapshot, then the live socket."""
    user = await request.auser()
    owner_id = user.pk
    assert isinstance(owner_id, int)
    try:
        snapshot = (await snapshot_build(session_id, owner_id)).as_json()
    except SessionNotFound:
        return await sync_to_async(not_found)(request)
    sidebar = await sync_to_async(store.session_list)(owner_id=owner_id, page=1)
    long_running = sorted(name for name, tool in tools_all().items() if tool.is_long_running)
    config = {
        "session_id": str(session_id),
        "ws_path": f"/ws/sessions/{session_id}/",
        "login_url": reverse("login"),
        "long_running_tools": long_running,
    }
    context = {
        "snapshot": snapshot,
        "config": config,
        "session_id": session_id,
        "title": snapshot["session"]["title"],
        "usage": snapshot["session"]["usage"],
        "items": _history_items(snapshot, set(long_running)),
        "sidebar": sidebar,
        "offline_demo": snapshot["model"]["offline_demo"],
        "rename_form": RenameForm(initial={"title": snapshot["session"]["title"]}),
    }
    return await sync_to_async(render)(request, "sessions_app/chat.html", context)


def _history_items(snapshot: dict[str, Any], long_running: set[str]) -> list[dict[str, Any]]:
    """The snapshot's messages with what the template needs to show them (no logic beyond)."""
    operations = {
        op.get("message_sequence"): op
        for op in snapshot.get("operations") or []
        if isinstance(op, dict)
    }
    items = []
    for message in snapshot["messages"]:
        operation = operations.get(message["sequence"])
        calls = [
            {
                "name": (call.get("function") or {}).get("name") or "tool",
                "arguments": (call.get("function") or {}).get("arguments") or "",
            }
            for call in message.get("tool_calls") or []
            if isinstance(call, dict)
        ]
        items.append(
            {
                **message,
                "created": _parse_time(message.get("created_at")),
                "calls": calls,
                "operation": operation,
                "long_running": operation is not None or message.get("name") in long_running,
            }
        )
    return items


def _parse_time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        return datetime.fromisoformat(value)
    except ValueError:
        return None


@_with_csp
@login_required
@require_http_methods(["GET", "POST"])
def session_rename(request: HttpRequest, session_id: uuid.UUID) -> HttpResponse:
    owner_id = _owner_id(request)
    try:
        state = store.session_get(session_id=session_id, owner_id=owner_id)
    except SessionNotFound:
        return not_found(request)
    form = RenameForm(request.POST or None, initial={"title": state.title})
    if request.method == "POST" and form.is_valid():
        try:
            store.session_rename(
                session_id=session_id, owner_id=owner_id, title=form.cleaned_data["title"]
            )
        except SessionNotFound:
            return not_found(request)
        except StoreWriteError as exc:
            return unavailable(request, exc)
        return redirect("chat", session_id=session_id)
    status = 400 if request.method == "POST" else 200
    return render(
        request,
        "sessions_app/rename.html",
        {"session": state, "form": form},
        status=status,
    )


@_with_csp
@login_required
@require_http_methods(["GET", "POST"])
def session_delete(request: HttpRequest, session_id: uuid.UUID) -> HttpResponse:
    """GET asks for confirmation; POST deletes (the messages and operations go with it)."""
    owner_id = _owner_id(request)
    try:
        if request.method == "POST":
            store.session_delete(session_id=session_id, owner_id=owner_id)
            return redirect("home")
        state = store.session_get(session_id=session_id, owner_id=owner_id)
    except SessionNotFound:
        return not_found(request)
    except StoreWriteError as exc:
        return unavailable(request, exc)
    return render(request, "sessions_app/delete.html", {"session": state})


# --- login --------------------------------------------------------------------------------------

_django_login = auth_views.LoginView.as_view()


def _login_refused(request: HttpRequest, refusal: LimitExceeded) -> HttpResponse:
    form = AuthenticationForm(request, data=request.POST)
    context = {"form": form, "refused": refusal.message, "next": request.POST.get("next", "")}
    response = render(request, "registration/login.html", context, status=429)
    response["Retry-After"] = str(math.ceil(refusal.retry_after or 1))
    add_never_cache_headers(response)
    return response


async def login(request: HttpRequest) -> HttpResponseBase:
    """Django's login view, with failed logins counted per username and per client address
    (``limits.login_refusal``): past the limit every attempt is answered 429, the right
    password included, until the window has passed."""
    if request.method != "POST":
        return await sync_to_async(_django_login)(request)
    username = str(request.POST.get("username", ""))[:150]
    address = str(request.META.get("REMOTE_ADDR") or "unknown")
    refusal = await limits.login_refusal(username=username, address=address)
    if refusal is not None:
        return await sync_to_async(_login_refused)(request, refusal)
    response: HttpResponseBase = await sync_to_async(_django_login)(request)
    if response.status_code == 200:  # the form came back: the credentials did not match
        await limits.login_failed(username=username, address=address)
    return response
