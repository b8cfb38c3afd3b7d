"""sessions_app.admin: the session list, the read-only history, cache purges and permissions."""

from __future__ import annotations

import datetime
import re
import uuid
from typing import Any
from unittest import mock

import pytest
from django.core.cache import cache
from django.db import connection
from django.test import Client
from django.test.utils import CaptureQueriesContext
from django.urls import reverse
from django.utils import timezone

from sessions_app import store
from sessions_app.admin import ChatSessionAdmin
from sessions_app.models import ChatMessage, ChatSession, Operation
from sessions_app.schemas import ChatMessageData, Usage
from sessions_app.store import cache as session_cache

pytestmark = pytest.mark.django_db

CHANGELIST = reverse("admin:sessions_app_chatsession_changelist")
SECRET = "sk-live-0123456789abcdefSECRET"
TOOL_CALLS = [
    {
        "id": "call_report_1",
        "type": "function",
        "function": {"name": "slow_report", "arguments": '{"days": 3}'},
    }
]


def change_url(session_id: uuid.UUID) -> str:
    return reverse("admin:sessions_app_chatsession_change", args=[session_id])


@pytest.fixture
def staff(django_user_model: Any) -> Any:
    return django_user_model.objects.create_superuser("boss", "boss@example.com", "boss-pass-123")


@pytest.fixture
def staff_client(client: Client, staff: Any) -> Client:
    client.force_login(staff)
    return client


def make_session(owner: Any, *, title: str = "t", count: int = 0) -> uuid.UUID:
    state = store.session_create(owner_id=owner.pk, title=title)
    if count:
        store.messages_append(
            session_id=state.id,
            messages=[ChatMessageData(role="user", content=f"m{i}") for i in range(count)],
        )
    return state.id


def listed(response: Any) -> list[uuid.UUID]:
    assert response.status_code == 200
    return [row.pk for row in response.context["cl"].result_list]


def cache_keys(session_id: uuid.UUID, last_sequence: int) -> list[str]:
    keys = [session_cache.generation_key(session_id), session_cache.meta_key(session_id)]
    return keys + [session_cache.message_key(session_id, s) for s in range(1, last_sequence + 1)]


def cells(html: str, field: str) -> list[str]:
    """The texts of one column of an admin table (list or tabular inline), top to bottom."""
    found = re.findall(
        rf'<td class="field-{field}(?: [^"]*)?">\s*(?:<p>)?(.*?)(?:</p>)?\s*</td>', html, re.S
    )
    return [text.strip() for text in found]


def management_data(response: Any) -> dict[str, Any]:
    """The inline formsets' management forms of a change page, as its form would post them."""
    data: dict[str, Any] = {}
    for inline in response.context["inline_admin_formsets"]:
        formset = inline.formset
        for name, value in formset.management_form.initial.items():
            data[f"{formset.prefix}-{name}"] = value
    return data


@pytest.fixture
def tool_session(owner: Any) -> uuid.UUID:
    """A session mid-way through a long-running tool: its pending message and operation."""
    state = store.session_create(
        owner_id=owner.pk, title="Quarterly report", credentials={"api_key": SECRET}
    )
    store.messages_append(
        session_id=state.id,
        messages=[
            ChatMessageData(role="system", content="MARK-1 be helpful"),
            ChatMessageData(role="user", content="MARK-2 build the report"),
            ChatMessageData(role="assistant", content="MARK-3 on it", tool_calls=TOOL_CALLS),
            ChatMessageData(
                role="tool",
                name="slow_report",
                tool_call_id="call_report_1",
                content="MARK-4 working",
                status="pending",
            ),
        ],
    )
    Operation.objects.create(
        session_id=state.id,
        message=ChatMessage.objects.get(session_id=state.id, sequence=4),
        tool_call_id="call_report_1",
        tool_name="slow_report",
        arguments={"days": 3},
        status=Operation.Status.RUNNING,
        attempts=1,
        error="OPERATION-ERROR-TEXT",
    )
    store.usage_record(session_id=state.id, usage=Usage(prompt_tokens=40, completion_tokens=2))
    return state.id


# --- the session list ------------------------------------------------------------------


def test_changelist_shows_counts_and_tokens_without_counting_messages(
    staff_client: Client, owner: Any
) -> None:
    sid = make_session(owner, title="Counted", count=3)
    store.usage_record(session_id=sid, usage=Usage(prompt_tokens=100, completion_tokens=23))
    make_session(owner, title="Other", count=1)

    with CaptureQueriesContext(connection) as queries:
        response = staff_client.get(CHANGELIST)

    assert sid in listed(response)
    html = response.content.decode()
    row = html[html.index(str(sid)) :]
    row = row[: row.index("</tr>")]
    assert (cells(row, "owner"), cells(row, "title")) == (["owner"], ["Counted"])
    assert cells(row, "message_count") == ["3"]
    assert cells(row, "prompt_tokens") == ["100"]
    assert cells(row, "completion_tokens") == ["23"]
    assert cells(row, "total_tokens") == ["123"]
    assert not [q for q in queries.captured_queries if "sessions_app_chatmessage" in q["sql"]]


def test_changelist_lists_newest_update_first(staff_client: Client, owner: Any) -> None:
    old = make_session(owner, title="old")
    new = make_session(owner, title="new")
    ChatSession.objects.filter(pk=old).update(updated_at=timezone.now() - datetime.timedelta(1))
    assert listed(staff_client.get(CHANGELIST)) == [new, old]


@pytest.mark.parametrize(
    "query",
    [
        lambda a, b: str(b),
        lambda a, b: str(b).upper(),
        lambda a, b: b.hex,
        lambda a, b: f"  {{{b}}} ",
        lambda a, b: str(b)[:13],
        lambda a, b: "Beta",
        lambda a, b: "stranger",
    ],
    ids=["uuid", "uuid-uppercase", "uuid-hex", "uuid-braces", "uuid-prefix", "title", "owner"],
)
def test_search_finds_the_right_session(
    staff_client: Client, owner: Any, stranger: Any, query: Any
) -> None:
    alpha = make_session(owner, title="Alpha plans")
    beta = make_session(stranger, title="Beta notes")
    assert listed(staff_client.get(CHANGELIST, {"q": query(alpha, beta)})) == [beta]


def test_search_without_a_match_lists_nothing(staff_client: Client, owner: Any) -> None:
    make_session(owner, title="Alpha plans")
    assert listed(staff_client.get(CHANGELIST, {"q": str(uuid.uuid4())})) == []
    assert listed(staff_client.get(CHANGELIST, {"q": "nothing-like-this"})) == []


def test_date_filters(staff_client: Client, owner: Any) -> None:
    old = make_session(owner, title="old")
    recent = make_session(owner, title="recent")
    ChatSession.objects.filter(pk=old).update(
        updated_at=datetime.datetime(2020, 5, 17, 12, tzinfo=datetime.UTC),
        created_at=datetime.datetime(2020, 5, 1, 12, tzinfo=datetime.UTC),
    )

    assert listed(
        staff_client.get(CHANGELIST, {"updated_at__gte": "2021-01-01 00:00:00+00:00"})
    ) == [recent]
    assert listed(
        staff_client.get(CHANGELIST, {"created_at__lt": "2021-01-01 00:00:00+00:00"})
    ) == [old]
    by_month = {"updated_at__year": "2020", "updated_at__month": "5"}
    assert listed(staff_client.get(CHANGELIST, by_month)) == [old]


# --- one session -----------------------------------------------------------------------


def test_change_page_shows_history_in_order_and_the_operation(
    staff_client: Client, tool_session: uuid.UUID
) -> None:
    response = staff_client.get(change_url(tool_session))

    assert response.status_code == 200
    html = response.content.decode()
    contents = cells(html, "content_display")
    assert [re.sub(r"<[^>]+>", "", c).split()[0] for c in contents] == [
        "MARK-1",
        "MARK-2",
        "MARK-3",
        "MARK-4",
    ]
    assert cells(html, "sequence") == ["1", "2", "3", "4"]
    assert cells(html, "role") == ["System", "User", "Assistant", "Tool"]
    assert cells(html, "status") == ["Complete", "Complete", "Complete", "Pending"]
    assert cells(html, "tool_call_id") == ["-", "-", "-", "call_report_1"]
    # Tool calls are pretty-printed JSON (escaped in the HTML).
    tool_calls = cells(html, "tool_calls_display")
    assert "&quot;name&quot;: &quot;slow_report&quot;" in tool_calls[2]
    assert tool_calls[3] == "-"
    # The operation inline, and the usage record.
    assert "OPERATION-ERROR-TEXT" in html and "slow_report (running)" in html
    assert cells(html, "total_tokens") == ["42"]


def test_history_is_read_only(staff_client: Client, tool_session: uuid.UUID) -> None:
    html = staff_client.get(change_url(tool_session)).content.decode()

    assert 'name="title"' in html
    # Only the hidden keys of each row: nothing an inline form could save.
    inline_inputs = re.findall(r'name="(?:messages|operations|usage)-\d+-(\w+)"', html)
    assert inline_inputs and set(inline_inputs) == {"id", "session"}
    assert "<textarea" not in html
    for prefix in ("messages", "operations", "usage"):  # no "Add another" row either
        assert f'name="{prefix}-MAX_NUM_FORMS" value="0"' in html
    assert "DELETE" not in html


def test_credentials_are_never_shown(staff_client: Client, tool_session: uuid.UUID) -> None:
    change = staff_client.get(change_url(tool_session)).content.decode()
    listing = staff_client.get(CHANGELIST).content.decode()

    assert SECRET not in change and SECRET not in listing
    assert "1 key(s): api_key (values hidden)" in change


def test_saving_a_title_does_not_undo_a_concurrent_append(staff_client: Client, owner: Any) -> None:
    sid = make_session(owner, title="before", count=2)
    page = staff_client.get(change_url(sid))
    read = ChatSessionAdmin.get_object

    def read_then_append(self: ChatSessionAdmin, request: Any, *args: Any) -> Any:
        obj = read(self, request, *args)
        if request.method == "POST":
            # A turn appends while staff save: the row the admin holds is now stale.
            store.messages_append(session_id=sid, messages=[ChatMessageData(role="user")])
        return obj

    with mock.patch.object(ChatSessionAdmin, "get_object", read_then_append):
        response = staff_client.post(change_url(sid), {"title": "after", **management_data(page)})

    assert response.status_code == 302
    row = ChatSession.objects.get(pk=sid)
    assert (row.title, row.last_sequence) == ("after", 3)


# --- the cache -------------------------------------------------------------------------


def test_purge_action_drops_the_selected_sessions_cache_entries(
    staff_client: Client, owner: Any
) -> None:
    picked = make_session(owner, title="picked", count=2)
    kept = make_session(owner, title="kept", count=1)
    store.session_get(session_id=picked)
    store.session_get(session_id=kept)
    assert all(cache.get(k) is not None for k in cache_keys(picked, 2) + cache_keys(kept, 1))

    response = staff_client.post(
        CHANGELIST, {"action": "purge_cache", "_selected_action": [str(picked)]}, follow=True
    )

    assert "Purged the cache entries of 1 session." in response.content.decode()
    assert all(cache.get(k) is None for k in cache_keys(picked, 2))
    assert all(cache.get(k) is not None for k in cache_keys(kept, 1))


@pytest.mark.django_db(transaction=True)
def test_saving_the_title_invalidates_the_cache_after_commit(
    staff_client: Client, owner: Any
) -> None:
    sid = make_session(owner, title="before", count=2)
    assert store.session_get(session_id=sid).title == "before"  # now cached
    page = staff_client.get(change_url(sid))

    response = staff_client.post(change_url(sid), {"title": "after", **management_data(page)})

    assert response.status_code == 302
    state = store.session_get(session_id=sid)
    assert state.title == "after"
    assert [m.content for m in state.messages] == ["m0", "m1"]


@pytest.mark.django_db(transaction=True)
def test_deleting_a_session_with_an_operation_purges_its_cache(
    staff_client: Client, tool_session: uuid.UUID
) -> None:
    store.session_get(session_id=tool_session)
    delete_url = reverse("admin:sessions_app_chatsession_delete", args=[tool_session])

    confirm = staff_client.get(delete_url)
    assert confirm.status_code == 200
    assert not confirm.context["perms_lacking"]
    response = staff_client.post(delete_url, {"post": "yes"})

    assert response.status_code == 302
    assert not ChatSession.objects.filter(pk=tool_session).exists()
    assert not Operation.objects.exists()
    assert all(cache.get(k) is None for k in cache_keys(tool_session, 4))


@pytest.mark.django_db(transaction=True)
def test_bulk_delete_purges_the_cache(staff_client: Client, owner: Any) -> None:
    doomed = [make_session(owner, count=2), make_session(owner, count=1)]
    kept = make_session(owner, count=1)
    for sid in [*doomed, kept]:
        store.session_get(session_id=sid)
    selected = {"action": "delete_selected", "_selected_action": [str(s) for s in doomed]}

    assert staff_client.post(CHANGELIST, selected).status_code == 200  # the confirmation
    response = staff_client.post(CHANGELIST, {**selected, "post": "yes"})

    assert response.status_code == 302
    assert list(ChatSession.objects.values_list("pk", flat=True)) == [kept]
    assert all(cache.get(k) is None for k in cache_keys(doomed[0], 2) + cache_keys(doomed[1], 1))
    assert all(cache.get(k) is not None for k in cache_keys(kept, 1))


# --- permissions and the operation admin -------------------------------------------------


@pytest.mark.parametrize("login", [True, False], ids=["plain-user", "anonymous"])
def test_non_staff_are_sent_to_the_login_page(client: Client, owner: Any, login: bool) -> None:
    sid = make_session(owner)
    if login:
        client.force_login(owner)
    for url in (CHANGELIST, change_url(sid)):
        response = client.get(url)
        assert response.status_code == 302
        assert response["Location"].startswith(reverse("admin:login"))


def test_sessions_cannot_be_added_from_the_admin(staff_client: Client) -> None:
    assert staff_client.get(reverse("admin:sessions_app_chatsession_add")).status_code == 403


def test_operation_admin_is_read_only(staff_client: Client, tool_session: uuid.UUID) -> None:
    operation = Operation.objects.get()
    listing = staff_client.get(
        reverse("admin:sessions_app_operation_changelist"), {"q": "call_report_1"}
    )
    detail = staff_client.get(reverse("admin:sessions_app_operation_change", args=[operation.pk]))

    assert listed(listing) == [operation.pk]
    assert detail.status_code == 200
    html = detail.content.decode()
    assert "slow_report" in html and "&quot;days&quot;: 3" in html
    assert 'name="_save"' not in html
    assert staff_client.get(reverse("admin:sessions_app_operation_add")).status_code == 403
    delete_url = reverse("admin:sessions_app_operation_delete", args=[operation.pk])
    assert staff_client.post(delete_url, {"post": "yes"}).status_code == 403
    assert Operation.objects.filter(pk=operation.pk).exists()


def test_operation_search_by_its_id_or_its_session_id(
    staff_client: Client, tool_session: uuid.UUID
) -> None:
    url = reverse("admin:sessions_app_operation_changelist")
    operation = Operation.objects.get()
    for term in (str(tool_session), tool_session.hex, str(operation.pk), operation.pk.hex):
        assert listed(staff_client.get(url, {"q": term})) == [operation.pk]
    assert listed(staff_client.get(url, {"q": str(uuid.uuid4())})) == []


@pytest.mark.django_db(transaction=True)
def test_staff_can_fail_an_unfinished_operation(
    staff_client: Client, tool_session: uuid.UUID
) -> None:
    operation = Operation.objects.get()
    response = staff_client.post(
        reverse("admin:sessions_app_operation_changelist"),
        {"action": "fail_operations", "_selected_action": [str(operation.pk)]},
        follow=True,
    )
    assert "Failed 1 unfinished operation(s)." in response.content.decode()
    operation.refresh_from_db()
    assert operation.status == "failed" and "staff member" in (operation.error or "")
    message = store.session_get(session_id=tool_session).messages[3]
    assert (message.status, message.content) == ("failed", operation.error)


@pytest.mark.django_db(transaction=True)
def test_staff_can_retry_a_failed_operation(
    staff_client: Client, tool_session: uuid.UUID, settings: Any
) -> None:
    operation = Operation.objects.get()
    Operation.objects.filter(pk=operation.pk).update(status="failed", error="boom")
    staff_client.post(
        reverse("admin:sessions_app_operation_changelist"),
        {"action": "retry_operations", "_selected_action": [str(operation.pk)]},
    )
    operation.refresh_from_db()
    assert (operation.status, operation.error) == ("pending", None)
    message = store.session_get(session_id=tool_session).messages[3]
    assert message.status == "pending"
    from django_tasks_db.models import DBTaskResult

    queued = DBTaskResult.objects.get()
    assert queued.args_kwargs["kwargs"] == {"operation_id": str(operation.pk)}
