"""The production switch (CHAT_PRODUCTION) and keeping secrets secret.

`check --deploy` must be clean, a bad production configuration must stop start-up with a
message naming the variable, and a real daphne process in production mode must redirect to
HTTPS, set HSTS and secure cookies, check websocket Origins, and never put a secret (the
model's API key, the database password, SECRET_KEY) in a page, a frame, a log line or an
error, even when the model server refuses the key.
"""

from __future__ import annotations

import logging
import os
import secrets
import shutil
import subprocess
import sys
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from channels.db import database_sync_to_async
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from chatproject.redaction import REDACTED, RedactSecrets, redact, secret_values
from sessions_app import store
from tests.conftest import OWNER_PASSWORD
from tests.processes import ManagedProcess, free_port
from tests.servers import WsClient, daphne_process, database_url, session_cookie
from tests.wsclient import send_frame

ROOT = Path(__file__).resolve().parent.parent
SECRET_KEY = "prod-" + secrets.token_urlsafe(48)
MODEL_KEY = "sk-test-" + secrets.token_hex(16)
STATIC_ROOT = Path(tempfile.mkdtemp(prefix="chatproject-static-"))


def production_env(**extra: str) -> dict[str, str]:
    return {
        "CHAT_PRODUCTION": "1",
        "DJANGO_SECRET_KEY": SECRET_KEY,
        "DJANGO_ALLOWED_HOSTS": "127.0.0.1,localhost",
        "DJANGO_STATIC_ROOT": str(STATIC_ROOT),
        **extra,
    }


@pytest.fixture(scope="module", autouse=True)
def collected_static() -> Iterator[None]:
    """A deploy's `collectstatic` (production pages name the manifest's hashed files)."""
    done = manage("collectstatic", "--noinput", env=production_env())
    assert done.returncode == 0, done.stderr
    yield
    shutil.rmtree(STATIC_ROOT, ignore_errors=True)


def manage(*args: str, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if not k.startswith(("DJANGO_", "CHAT_"))}
    return subprocess.run(
        [sys.executable, "manage.py", *args],
        cwd=ROOT,
        env={**clean, **env},
        capture_output=True,
        text=True,
        timeout=120,
    )


# --- settings ---------------------------------------------------------------------------------


def test_check_deploy_is_clean_in_production() -> None:
    done = manage("check", "--deploy", "--fail-level", "WARNING", env=production_env())
    assert done.returncode == 0, done.stdout + done.stderr
    assert "no issues" in done.stdout


def test_check_deploy_finds_problems_outside_production(tmp_path: Path) -> None:
    """The test above can fail: the same check flags the development configuration, and
    a production one whose static files were not collected."""
    done = manage("check", "--deploy", "--fail-level", "WARNING", env={})
    assert done.returncode != 0
    assert "security.W004" in done.stderr + done.stdout  # no HSTS
    uncollected = production_env(DJANGO_STATIC_ROOT=str(tmp_path))
    done = manage("check", "--deploy", "--fail-level", "WARNING", env=uncollected)
    assert done.returncode != 0 and "chatproject.W001" in done.stderr + done.stdout


@pytest.mark.parametrize(
    ("env", "named"),
    [
        ({"DJANGO_SECRET_KEY": ""}, "DJANGO_SECRET_KEY"),
        ({"DJANGO_SECRET_KEY": "too-short"}, "DJANGO_SECRET_KEY"),
        ({"DJANGO_SECRET_KEY": "django-insecure-" + "x1y2z3" * 10}, "DJANGO_SECRET_KEY"),
        ({"DJANGO_ALLOWED_HOSTS": ""}, "DJANGO_ALLOWED_HOSTS"),
        ({"DJANGO_DEBUG": "1"}, "DJANGO_DEBUG"),
    ],
)
def test_a_bad_production_configuration_stops_start_up(env: dict[str, str], named: str) -> None:
    done = manage("check", env=production_env(**env))
    assert done.returncode != 0
    assert "ImproperlyConfigured" in done.stderr and named in done.stderr


# --- redaction ----------------------------------------------------------------------------------


def test_redaction_of_log_records_and_tracebacks(settings: Any) -> None:
    settings.OPENAI_API_KEY = MODEL_KEY
    assert MODEL_KEY in secret_values()
    assert redact(f"key={MODEL_KEY}!") == f"key={REDACTED}!"
    try:
        raise RuntimeError(f"the server said: bad key {MODEL_KEY}")
    except RuntimeError:
        record = logging.getLogger("x").makeRecord(
            "x", logging.ERROR, __file__, 1, "calling with %s", (MODEL_KEY,), sys.exc_info()
        )
    assert RedactSecrets().filter(record)
    line = logging.Formatter().format(record)
    assert MODEL_KEY not in line and line.count(REDACTED) == 2


# --- a production server ------------------------------------------------------------------------


def fetch(url: str, headers: dict[str, str] | None = None) -> tuple[int, dict[str, str], str]:
    class NoRedirect(urllib.request.HTTPRedirectHandler):
        def redirect_request(self, *args: Any, **kwargs: Any) -> None:
            return None

    opener = urllib.request.build_opener(NoRedirect)
    request = urllib.request.Request(url, headers=headers or {})
    try:
        with opener.open(request, timeout=30) as response:
            return response.status, dict(response.headers), response.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, dict(error.headers), error.read().decode()


@pytest.mark.django_db(transaction=True)
@pytest.mark.asyncio
async def test_production_server_keeps_secrets_and_enforces_https(
    owner: Any, settings: Any
) -> None:
    settings.SECRET_KEY = SECRET_KEY  # the session cookie must verify in the server
    model_port = free_port()
    model = ManagedProcess(
        [sys.executable, "manage.py", "local_model", "--host=127.0.0.1", f"--port={model_port}"],
        name="strict-model",
        env={"LOCAL_MODEL_API_KEY": "the-right-key-" + secrets.token_hex(8)},
        ready_line="local model listening on",
        ready_port=model_port,
    )
    db_url = database_url()
    if db_url.startswith("postgres://postgres@"):  # trust auth ignores the password
        db_url = db_url.replace("postgres://postgres@", "postgres://postgres:pw-secret-4711@")
    env = production_env(
        DJANGO_SECURE_PROXY_SSL_HEADER="X-Forwarded-Proto",
        OPENAI_BASE_URL=f"http://127.0.0.1:{model_port}/v1",
        OPENAI_API_KEY=MODEL_KEY,
        DATABASE_URL=db_url,
        CHAT_LOG_LEVEL="DEBUG",
    )
    session_id = (await database_sync_to_async(store.session_create)(owner_id=owner.pk)).id
    cookie = await database_sync_to_async(session_cookie)(owner.get_username(), OWNER_PASSWORD)
    with model, daphne_process("daphne-production", **env) as (address, server):
        base = f"http://{address}"
        https = {"X-Forwarded-Proto": "https", "Cookie": cookie}
        # Plain HTTP is sent to HTTPS; through the proxy header the page is served, with HSTS.
        status, headers, _ = fetch(f"{base}/")
        assert status == 301 and headers["Location"].startswith("https://")
        status, headers, page = fetch(f"{base}/sessions/{session_id}/", https)
        assert status == 200
        assert "max-age=31536000" in headers["Strict-Transport-Security"]
        status, headers, _ = fetch(f"{base}/accounts/login/", {"X-Forwarded-Proto": "https"})
        assert "secure" in headers.get("Set-Cookie", "").lower()
        # The demo model is not served by a server configured with a real one.
        assert fetch(f"{base}/local-model/v1/models", https)[0] == 404
        # A foreign Origin is refused before any websocket exists.
        with pytest.raises(InvalidStatus):
            await connect(
                f"ws://{address}/ws/sessions/{session_id}/",
                additional_headers={"Cookie": cookie, "Origin": "https://evil.example"},
            )
        # The model refuses our key: the user is told, and the key is nowhere.
        socket = await WsClient.open(address, session_id, cookie)
        await socket.send(send_frame("hello"))
        frames = await socket.until_type("turn_finished")
        [error] = [f for f in frames if f["type"] == "error"]
        assert error["code"] == "model_auth_failed"
        api = fetch(f"{base}/api/sessions/{session_id}/", https)[2]
        await socket.close()
        server.stop()
        log = server.log_text()
    seen = "\n".join([page, api, log, *(str(f) for f in frames)])
    assert "model_auth_failed" in log or "model call failed" in log  # the failure was logged
    for secret in (MODEL_KEY, SECRET_KEY, "pw-secret-4711"):
        assert secret not in seen
