"""The login page (``transport.views.login``): failed logins are counted per username and per
client address, and past the limit every attempt is refused with 429, the right password
included."""

from __future__ import annotations

from typing import Any

import pytest
from django.test import AsyncClient

from tests.conftest import OWNER_PASSWORD, STRANGER_PASSWORD

pytestmark = [pytest.mark.django_db(transaction=True)]


async def log_in(client: AsyncClient, username: str, password: str) -> Any:
    return await client.post(
        "/accounts/login/", {"username": username, "password": password, "next": "/"}
    )


def logged_in(client: AsyncClient) -> bool:
    return "sessionid" in client.cookies


@pytest.fixture(autouse=True)
def small_limits(settings: Any) -> None:
    settings.CHAT_LOGIN_FAILURES_PER_USER = 3
    settings.CHAT_LOGIN_FAILURES_PER_ADDRESS = 5
    settings.CHAT_CACHE_PREFIX = f"login-test-{id(settings)}"  # fresh counters in Redis


async def test_a_username_is_locked_after_its_failures_even_for_the_right_password(
    owner: Any, stranger: Any
) -> None:
    client = AsyncClient()
    for _ in range(3):
        wrong = await log_in(client, owner.get_username(), "wrong")
        assert wrong.status_code == 200 and not logged_in(client)
    refused = await log_in(client, owner.get_username(), OWNER_PASSWORD)
    assert refused.status_code == 429 and not logged_in(client)
    assert int(refused["Retry-After"]) >= 1
    assert b"Too many failed logins for this username" in refused.content
    # The same address may still log in another user (its own limit is not reached).
    other = AsyncClient()
    ok = await log_in(other, stranger.get_username(), STRANGER_PASSWORD)
    assert ok.status_code == 302 and logged_in(other)


async def test_an_address_is_locked_after_its_failures_whatever_the_username(
    owner: Any,
) -> None:
    client = AsyncClient()
    for n in range(5):
        wrong = await log_in(client, f"guess-{n}", "wrong")
        assert wrong.status_code == 200
    refused = await log_in(client, owner.get_username(), OWNER_PASSWORD)
    assert refused.status_code == 429 and not logged_in(client)
    assert b"Too many failed logins for this address" in refused.content


async def test_a_right_password_before_the_limit_logs_in(owner: Any) -> None:
    client = AsyncClient()
    await log_in(client, owner.get_username(), "wrong")
    ok = await log_in(client, owner.get_username(), OWNER_PASSWORD)
    assert ok.status_code == 302 and logged_in(client)
