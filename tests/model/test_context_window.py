"""sessions_app.model.context_window and tokens: counting, fitting, summaries, and real turns
against the local model."""

from __future__ import annotations

import copy
import gzip
import hashlib
import json
import logging
import os
import random
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import tiktoken
from channels.db import database_sync_to_async
from tiktoken_ext import openai_public

from sessions_app import store
from sessions_app.errors import SessionNotFound
from sessions_app.local_model import script
from sessions_app.local_model.shapes import ChatRequest
from sessions_app.model import client as llm
from sessions_app.model import context_window
from sessions_app.model.context_window import (
    SUMMARY_INTRO,
    SUMMARY_PROMPT,
    ContextTooLong,
    fit_messages,
)
from sessions_app.model.tokens import (
    DATA_DIR,
    VENDORED,
    TokenCounter,
    counter_for,
    encoding_name_for,
    estimate_tokens,
)
from sessions_app.models import ChatMessage
from sessions_app.schemas import Usage
from sessions_app.tools.registry import tools_openai_schemas
from tests.chat_fixtures import Socket, db_messages, open_socket
from tests.wsclient import send_frame

ROOT = Path(__file__).resolve().parents[2]
ESTIMATE = counter_for("chatproject-local")
SAMPLES = [
    "Hello, world!",
    "The quick brown fox jumps over the lazy dog. " * 5,
    'def f(x: int) -> dict[str, int]:\n    return {"x": x ** 2}  # squares\n',
    json.dumps({"id": str(uuid.UUID(int=7)), "values": [1, 22, 333, 4444], "ok": True}),
    "Съешь же ещё этих мягких французских булок, да выпей чаю.",
    "我们今天去公园散步天气非常好。今日はとても良い天気ですね。",
    "emoji 😀🎉🚀👍🏽❤️ and accents: café, naïve, Ångström",
    "   leading spaces\n\n\ttabs and trailing   ",
    "<|endoftext|> is only text here",
]
TOOLS = [
    {
        "type": "function",
        "function": {
            "name": "calc",
            "description": "Evaluate an arithmetic expression.",
            "parameters": {"type": "object", "properties": {"x": {"type": "string"}}},
        },
    }
]


# --- token counting --------------------------------------------------------------------------


@pytest.fixture(scope="module")
def reference_encodings(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """tiktoken's own loader (hash check, patterns) over the vendored files, as its cache."""
    cache = tmp_path_factory.mktemp("tiktoken-cache")
    for name, spec in VENDORED.items():
        url = f"https://openaipublic.blob.core.windows.net/encodings/{name}.tiktoken"
        raw = gzip.decompress((DATA_DIR / spec.file).read_bytes())
        (cache / hashlib.sha1(url.encode()).hexdigest()).write_bytes(raw)
    before = os.environ.get("TIKTOKEN_CACHE_DIR")
    os.environ["TIKTOKEN_CACHE_DIR"] = str(cache)
    yield
    if before is None:
        del os.environ["TIKTOKEN_CACHE_DIR"]
    else:
        os.environ["TIKTOKEN_CACHE_DIR"] = before


def test_vendored_encodings_are_tiktokens_own(monkeypatch: pytest.MonkeyPatch) -> None:
    """Same file hashes, split patterns and special tokens as tiktoken_ext.openai_public."""
    for name, spec in VENDORED.items():
        asked: dict[str, Any] = {}

        def fake_load(
            url: str, expected_hash: str, asked: dict[str, Any] = asked
        ) -> dict[Any, Any]:
            asked.update(url=url, expected_hash=expected_hash)
            return {}

        monkeypatch.setattr(openai_public, "load_tiktoken_bpe", fake_load)
        theirs = openai_public.ENCODING_CONSTRUCTORS[name]()
        assert asked["expected_hash"] == spec.sha256
        assert asked["url"].endswith(f"/{name}.tiktoken")
        assert theirs["pat_str"] == spec.pat_str
        assert theirs["special_tokens"] == spec.special_tokens
        raw = gzip.decompress((DATA_DIR / spec.file).read_bytes())
        assert hashlib.sha256(raw).hexdigest() == spec.sha256
    assert (DATA_DIR / "LICENSE").read_text().startswith("MIT License")


def test_a_texts_count_is_kept_and_the_kept_counts_are_bounded(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A history resent with every model call is counted once; the oldest counts go first."""
    from sessions_app.model import tokens as token_counting

    counted: list[str] = []

    def counting_estimate(text: str) -> int:
        counted.append(text)
        return estimate_tokens(text)

    monkeypatch.setattr(token_counting, "estimate_tokens", counting_estimate)
    monkeypatch.setattr(token_counting, "COUNTS_KEPT", 2)
    counter = TokenCounter("chatproject-local")
    texts = [f"{k} " + SAMPLES[1] * 3 for k in range(3)]
    assert counter.text(texts[0]) == counter.text(texts[0]) == estimate_tokens(texts[0])
    assert counted == [texts[0]]
    counter.text(texts[1])
    counter.text(texts[0])  # kept, and now the newest
    counter.text(texts[2])  # pushes out texts[1], the oldest
    assert counted == texts[:3]
    counter.text(texts[0])
    counter.text(texts[1])
    assert counted == [*texts[:3], texts[1]]
    short = "a few words"  # under COUNTS_KEPT_MIN_CHARS: counted each time
    counter.text(short)
    counter.text(short)
    assert counted[-2:] == [short, short]


@pytest.mark.usefixtures("reference_encodings")
@pytest.mark.parametrize(
    ("model", "encoding"),
    [("gpt-4o", "o200k_base"), ("gpt-4o-mini-2024-07-18", "o200k_base"), ("gpt-4", "cl100k_base")],
)
def test_openai_models_count_exactly_like_tiktoken(model: str, encoding: str) -> None:
    counter = TokenCounter(model)
    assert counter.encoding_name == encoding and counter.exact
    reference = tiktoken.get_encoding(encoding)
    for text in SAMPLES:
        assert counter.text(text) == len(reference.encode_ordinary(text)), text
    # Messages as OpenAI's cookbook counts them: 3 per message, 1 more per name, 3 to prime.
    messages = [
        {"role": "system", "content": SAMPLES[1]},
        {"role": "user", "name": "ann", "content": SAMPLES[4]},
    ]
    expected = 3 + sum(
        3 + sum(len(reference.encode_ordinary(v)) for v in m.values()) + ("name" in m)
        for m in messages
    )
    assert counter.messages(messages) == expected


def test_unknown_models_are_estimated() -> None:
    for model in ("chatproject-local", "openai/gpt-4o", "llama-3.1-8b", "text-davinci-003"):
        counter = TokenCounter(model)
        assert counter.encoding_name is None and not counter.exact
        assert counter.text("Hello, world!") == estimate_tokens("Hello, world!") == 6
    # gpt-oss's encoding adds special tokens only: text splits as with o200k_base.
    assert encoding_name_for("gpt-oss-20b") == "o200k_base"


@pytest.mark.usefixtures("reference_encodings")
def test_the_estimate_is_pessimistic_on_ordinary_text() -> None:
    encodings = [tiktoken.get_encoding(name) for name in VENDORED]
    texts = [*SAMPLES, json.dumps(tools_openai_schemas())]
    for text in texts:
        real = max(len(e.encode_ordinary(text)) for e in encodings)
        assert real <= estimate_tokens(text) <= 2 * real + 5, text


def test_tool_calls_and_schemas_cost_tokens() -> None:
    plain = {"role": "assistant", "content": None}
    calling = {
        **plain,
        "tool_calls": [
            {"id": "c1", "type": "function", "function": {"name": "calc", "arguments": "{}"}}
        ],
    }
    assert ESTIMATE.message(calling) > ESTIMATE.message(plain)
    assert ESTIMATE.tools(None) == 0
    assert ESTIMATE.tools(TOOLS) > 12


# --- fitting ---------------------------------------------------------------------------------


def words(rng: random.Random, low: int, high: int) -> str:
    return " ".join(rng.choice(script.VOCABULARY) for _ in range(rng.randint(low, high)))


def random_history(rng: random.Random) -> list[dict[str, Any]]:
    """A system prompt, then turns: a user message and text replies or tool rounds."""
    history: list[dict[str, Any]] = [{"role": "system", "content": words(rng, 3, 30)}]
    calls = 0
    if rng.random() < 0.1:  # a history that starts without a user message
        history.append({"role": "assistant", "content": words(rng, 1, 20)})
    for _ in range(rng.randint(1, 8)):
        history.append({"role": "user", "content": words(rng, 1, 80)})
        for _ in range(rng.randint(0, 4)):
            if rng.random() < 0.5:
                history.append({"role": "assistant", "content": words(rng, 1, 60)})
                continue
            ids = [f"call_{calls + i}" for i in range(rng.randint(1, 3))]
            calls += len(ids)
            history.append(
                {
                    "role": "assistant",
                    "content": words(rng, 0, 10) or None,
                    "tool_calls": [
                        {
                            "id": i,
                            "type": "function",
                            "function": {"name": "calc", "arguments": json.dumps({"x": i})},
                        }
                        for i in ids
                    ],
                }
            )
            rng.shuffle(ids)  # results may come back in any order
            history += [
                {"role": "tool", "tool_call_id": i, "content": words(rng, 0, 150)} for i in ids
            ]
    if rng.random() < 0.2:
        history.append({"role": "developer", "content": "Background operation finished: x"})
    return history


def assert_valid_fit(
    history: list[dict[str, Any]],
    fit: context_window.Fit,
    *,
    budget: int,
    counter: TokenCounter,
    tools: list[dict[str, Any]] | None,
) -> None:
    sent = fit.messages
    assert counter.messages(sent) + counter.tools(tools) == fit.tokens <= budget
    assert sent[0] is history[0]  # the system prompt
    positions = [next(i for i, m in enumerate(history) if m is s) for s in sent]
    assert positions == sorted(set(positions))  # order kept, nothing twice
    newest_user = max(i for i, m in enumerate(history) if m["role"] == "user")
    assert newest_user in positions and positions[-1] == len(history) - 1
    missing = sorted(set(range(len(history))) - set(positions))
    if fit.trimmed:  # every older turn, and a run of blocks after the newest user message
        older, inside = list(range(1, newest_user)), missing[newest_user - 1 :]
        assert missing[: newest_user - 1] == older
        assert inside == list(range(newest_user + 1, newest_user + 1 + len(inside)))
        assert [e.message for e in fit.dropped] == history[1:newest_user]
    else:  # the oldest turns: a prefix of the history
        assert missing == list(range(1, len(missing) + 1))
        assert [e.message for e in fit.dropped] == [history[i] for i in missing]
    # Every tool result follows its call, and every call is answered before anything else.
    for k, message in enumerate(sent):
        if message["role"] == "tool":
            j = k - 1
            while sent[j]["role"] == "tool":
                j -= 1
            assert message["tool_call_id"] in {c["id"] for c in sent[j].get("tool_calls", [])}
        for call in message.get("tool_calls") or []:
            answers = []
            for later in sent[k + 1 :]:
                if later["role"] != "tool":
                    break
                answers.append(later["tool_call_id"])
            assert call["id"] in answers


def minimal_view(history: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The system prompt, the newest user message and the last block: what must be sent."""
    newest_user = max(i for i, m in enumerate(history) if m["role"] == "user")
    last = len(history) - 1
    while history[last]["role"] == "tool":
        last -= 1
    if last <= newest_user:
        return [history[0], *history[newest_user:]]
    return [history[0], history[newest_user], *history[last:]]


def test_randomized_histories_keep_every_rule() -> None:
    rng = random.Random(20260601)
    outcomes = {"all": 0, "turns dropped": 0, "trimmed": 0, "too long": 0}
    for round_ in range(400):
        history = random_history(rng)
        counter = ESTIMATE if round_ % 2 else counter_for("gpt-4o")
        tools = TOOLS if rng.random() < 0.5 else None
        budget = rng.randint(40, 3000)
        try:
            fit = fit_messages(history, tools=tools, budget=budget, counter=counter)
        except ContextTooLong as error:
            outcomes["too long"] += 1
            assert counter.messages(minimal_view(history)) + counter.tools(tools) > budget
            assert error.code == "context_too_long" and error.budget == budget
            continue
        assert_valid_fit(history, fit, budget=budget, counter=counter, tools=tools)
        kind = "trimmed" if fit.trimmed else "turns dropped" if fit.dropped else "all"
        outcomes[kind] += 1
    assert min(outcomes.values()) >= 10, outcomes


def test_a_long_history_is_cut_to_the_budget_by_whole_turns() -> None:
    history: list[dict[str, Any]] = [{"role": "system", "content": "Be brief."}]
    for i in range(50):
        history.append({"role": "user", "content": f"question {i} " + "alpha " * 20})
        history.append({"role": "assistant", "content": f"answer {i} " + "bravo " * 20})
    fit = fit_messages(history, tools=None, budget=600, counter=ESTIMATE)
    assert fit.tokens <= 600 and not fit.trimmed
    assert 2 < len(fit.messages) < 20
    assert fit.messages[1]["role"] == "user"  # starts at a turn
    assert fit.messages[-1] is history[-1]
    assert len(fit.dropped) + len(fit.messages) == len(history)
    # Tool schemas are part of what is sent: with them, less history fits.
    with_tools = fit_messages(history, tools=TOOLS, budget=600, counter=ESTIMATE)
    assert len(with_tools.messages) < len(fit.messages)


def test_a_tool_call_is_never_sent_without_its_results() -> None:
    call = {"id": "c1", "type": "function", "function": {"name": "calc", "arguments": "{}"}}
    history = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "go"},
        {"role": "assistant", "content": None, "tool_calls": [call]},
        {"role": "tool", "tool_call_id": "c1", "content": "result " * 300},
        {"role": "assistant", "content": "done " * 30},
        {"role": "user", "content": "and now?"},
    ]
    for budget in range(20, 800, 7):
        try:
            fit = fit_messages(history, tools=None, budget=budget, counter=ESTIMATE)
        except ContextTooLong:
            continue
        assert_valid_fit(history, fit, budget=budget, counter=ESTIMATE, tools=None)
        assert (history[2] in fit.messages) == (history[3] in fit.messages)


def test_the_newest_turn_loses_its_oldest_tool_rounds_first() -> None:
    history: list[dict[str, Any]] = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "old question"},
        {"role": "assistant", "content": "old answer"},
        {"role": "user", "content": "research this"},
    ]
    for i in range(6):
        call = {"id": f"c{i}", "type": "function", "function": {"name": "calc", "arguments": "{}"}}
        history.append({"role": "assistant", "content": None, "tool_calls": [call]})
        history.append({"role": "tool", "tool_call_id": f"c{i}", "content": "data " * 40})
    fit = fit_messages(history, tools=None, budget=200, counter=ESTIMATE)
    assert fit.trimmed > 0
    assert fit.messages[:2] == [history[0], history[3]]  # the prompt and the user message
    assert fit.messages[-2:] == history[-2:]  # the round the model answers now
    assert_valid_fit(history, fit, budget=200, counter=ESTIMATE, tools=None)


def test_too_long_for_the_budget_is_a_clear_error() -> None:
    history = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "word " * 5000},
    ]
    with pytest.raises(ContextTooLong) as raised:
        fit_messages(history, tools=TOOLS, budget=1000, counter=ESTIMATE)
    error = raised.value
    assert not isinstance(error, llm.ModelError) and error.code == "context_too_long"
    assert error.needed > 1000 and f"{error.needed} tokens" in error.message
    assert "1000" in error.message


# --- settings and the local model ------------------------------------------------------------


def test_a_reply_reserve_as_large_as_the_budget_fails_at_startup() -> None:
    environ = {k: v for k, v in os.environ.items() if k not in {"DATABASE_URL", "REDIS_URL"}}
    environ.update(
        DJANGO_SETTINGS_MODULE="chatproject.settings",
        CHAT_CONTEXT_MAX_TOKENS="4000",
        CHAT_CONTEXT_REPLY_TOKENS="4000",
    )
    result = subprocess.run(
        [sys.executable, "-c", "import django; django.setup()"],
        cwd=ROOT,
        env=environ,
        capture_output=True,
        text=True,
    )
    assert result.returncode != 0
    last = result.stderr.splitlines()[-1]
    assert "ImproperlyConfigured" in last and "CHAT_CONTEXT_REPLY_TOKENS" in last


def test_the_local_model_summarises_deterministically() -> None:
    assert SUMMARY_PROMPT.startswith(script.SUMMARY_REQUEST)
    assert "title" not in SUMMARY_PROMPT.lower()  # the title rule must not answer it
    transcript = context_window.transcript_lines(
        [
            {"role": "user", "content": "/echo first   question here"},
            {"role": "assistant", "content": "first question here"},
        ]
    )
    request = ChatRequest.model_validate(
        {
            "model": "chatproject-local",
            "messages": [
                {"role": "system", "content": SUMMARY_PROMPT},
                {"role": "user", "content": "\n".join(transcript)},
            ],
        }
    )
    plan = script.plan_reply(request)
    assert isinstance(plan, script.TextPlan)
    assert plan.text == "Summary of 2 lines: [user] /echo first; [assistant] first question."
    assert script.plan_reply(request) == plan


# --- the summary in the store ----------------------------------------------------------------


@pytest.mark.django_db
def test_the_summary_is_stored_and_read(owner: Any) -> None:
    state = store.session_create(owner_id=owner.pk)
    assert store.session_context_summary(session_id=state.id) == ("", None)
    before = store.session_get(session_id=state.id)
    store.session_context_summary_set(session_id=state.id, summary="s1", through_sequence=4)
    assert store.session_context_summary(session_id=state.id) == ("s1", 4)
    assert store.session_get(session_id=state.id).messages == before.messages
    with pytest.raises(SessionNotFound):
        store.session_context_summary(session_id=uuid.uuid4())


# --- real turns against the local model ------------------------------------------------------

TURN_WORDS = 30


class ModelCalls:
    """What the turns sent the model: every streamed call and every summary request."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.streamed: list[list[dict[str, Any]]] = []
        self.summaries: list[list[dict[str, Any]]] = []
        stream_chat, complete_text = llm.stream_chat, llm.complete_text

        def recording_stream(
            *, messages: list[dict[str, Any]], tools: list[dict[str, Any]] | None = None
        ) -> Any:
            self.streamed.append(copy.deepcopy(messages))
            return stream_chat(messages=messages, tools=tools)

        async def recording_complete(*, messages: list[dict[str, Any]]) -> tuple[str, Usage | None]:
            if messages[0]["content"] == SUMMARY_PROMPT:
                self.summaries.append(copy.deepcopy(messages))
            return await complete_text(messages=messages)

        monkeypatch.setattr(llm, "stream_chat", recording_stream)
        monkeypatch.setattr(llm, "complete_text", recording_complete)


@pytest.fixture
def small_budget(settings: Any) -> int:
    """A budget with room for about three short turns besides the prompt and the tools."""
    counter = counter_for(settings.CHAT_MODEL)
    prompt = [{"role": "system", "content": settings.CHAT_SYSTEM_PROMPT}]
    fixed = counter.messages(prompt) + counter.tools(tools_openai_schemas())
    settings.CHAT_CONTEXT_REPLY_TOKENS = 100
    settings.CHAT_CONTEXT_MAX_TOKENS = fixed + 100 + 450
    settings.CHAT_USER_MESSAGES_PER_MINUTE = 1000
    return fixed + 450


async def chat(socket: Socket, content: str) -> list[dict[str, Any]]:
    await socket.send(send_frame(content))
    return await socket.until_type("turn_finished")


def echo(i: int) -> str:
    return f"/echo turn{i} " + script.make_words(TURN_WORDS)


def within(messages: list[dict[str, Any]], budget: int) -> bool:
    counter = ESTIMATE
    return counter.messages(messages) + counter.tools(tools_openai_schemas()) <= budget


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("chat_runtime")
async def test_a_long_conversation_sends_the_model_only_what_fits(
    owner: Any, session_id: uuid.UUID, small_budget: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls = ModelCalls(monkeypatch)
    socket = await open_socket(owner, session_id)
    statuses = []
    for i in range(7):
        content = '/tool calculator {"expression": "6*7"}' if i == 3 else echo(i)
        statuses.append((await chat(socket, content))[-1]["status"])
    assert statuses == ["completed"] * 7  # the local model refuses a call split from its result
    stored = await db_messages(session_id)
    assert len(stored) == 16  # every message is still in the database
    last = calls.streamed[-1]
    assert len(last) < len(stored)
    assert last[0]["role"] == "system" and last[1]["role"] == "user"
    assert last[-1]["content"] == echo(6)
    assert all(within(sent, small_budget) for sent in calls.streamed)
    assert calls.summaries == []  # summaries are off by default
    await socket.close()


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("chat_runtime")
async def test_a_message_too_long_for_the_budget_ends_the_turn_with_an_error(
    owner: Any, session_id: uuid.UUID, small_budget: int
) -> None:
    socket = await open_socket(owner, session_id)
    frames = await chat(socket, "/echo " + script.make_words(600))
    errors = [f for f in frames if f["type"] == "error"]
    assert [e["code"] for e in errors] == ["context_too_long"]
    assert str(small_budget) in errors[0]["message"]
    assert frames[-1]["status"] == "failed"
    assert [m[1] for m in await db_messages(session_id)] == ["user"]  # the model was not called
    # The session goes on: a short message is answered.
    assert (await chat(socket, "/echo fine"))[-1]["status"] == "completed"
    await socket.close()


def summary_state(session_id: uuid.UUID) -> Any:
    return database_sync_to_async(store.session_context_summary)(session_id=session_id)


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("chat_runtime")
async def test_the_left_out_part_is_summarised_reused_and_extended(
    owner: Any,
    session_id: uuid.UUID,
    small_budget: int,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    settings.CHAT_CONTEXT_SUMMARY = True
    settings.CHAT_CONTEXT_SUMMARY_MIN_MESSAGES = 2
    calls = ModelCalls(monkeypatch)
    socket = await open_socket(owner, session_id)
    for i in range(6):
        assert (await chat(socket, echo(i)))[-1]["status"] == "completed"
    text, through = await summary_state(session_id)
    assert text.startswith("Summary of ") and "[user] /echo turn" in text
    assert through is not None and through % 2 == 0  # it ends after an answer: a whole turn
    # The next call sends the summary after the prompt, then what follows it.
    last = calls.streamed[-1]
    assert last[1] == {"role": "system", "content": SUMMARY_INTRO + text}
    first_kept = await database_sync_to_async(
        lambda: ChatMessage.objects.get(session_id=session_id, sequence=through + 1).content
    )()
    assert last[2] == {"role": "user", "content": first_kept}
    assert all(within(sent, small_budget) for sent in calls.streamed)

    # Nothing more left out: the stored summary is used again, not regenerated.
    async def no_usage(usage: Usage) -> None:
        pass

    tools = tools_openai_schemas()
    views = []
    for _ in range(2):
        state = await database_sync_to_async(store.session_get)(session_id=session_id)
        made = len(calls.summaries)
        views.append(
            await context_window.session_view(state, tools=tools, notice=None, on_usage=no_usage)
        )
    assert len(calls.summaries) == made and views[0] == views[1]
    settled = await summary_state(session_id)

    # More left out: the summary is extended from the stored one.
    assert (await chat(socket, echo(6)))[-1]["status"] == "completed"
    text2, through2 = await summary_state(session_id)
    assert through2 is not None and through2 > settled[1]
    assert calls.summaries[-1][1]["content"].startswith(f"Earlier summary: {settled[0]}")
    assert "Earlier summary: Summary" in text2
    assert len(await db_messages(session_id)) == 14
    await socket.close()


@pytest.mark.django_db(transaction=True)
@pytest.mark.usefixtures("chat_runtime")
async def test_a_failed_summary_does_not_fail_the_turn(
    owner: Any,
    session_id: uuid.UUID,
    small_budget: int,
    settings: Any,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    settings.CHAT_CONTEXT_SUMMARY = True
    settings.CHAT_CONTEXT_SUMMARY_MIN_MESSAGES = 1
    complete_text = llm.complete_text

    async def failing(*, messages: list[dict[str, Any]]) -> tuple[str, Usage | None]:
        if messages[0]["content"] == SUMMARY_PROMPT:
            raise llm.ModelError("model_unavailable", "The model server failed (HTTP 500).")
        return await complete_text(messages=messages)

    monkeypatch.setattr(llm, "complete_text", failing)
    socket = await open_socket(owner, session_id)
    with caplog.at_level(logging.WARNING, logger="sessions_app.model.context_window"):
        statuses = [(await chat(socket, echo(i)))[-1]["status"] for i in range(6)]
    assert statuses == ["completed"] * 6
    assert await summary_state(session_id) == ("", None)
    assert any("no context summary" in r.getMessage() for r in caplog.records)
    await socket.close()
