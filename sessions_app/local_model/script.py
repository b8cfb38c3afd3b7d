"""The fixed script of the local model: which reply a request gets. Pure, no I/O.

Everything here is a function of the request alone, so the same request always plans the
same reply, ids included; the server only adds pacing and the ``created`` timestamp. The rules,
in the order they are tried, are documented with examples in ``docs/local-model.md``.
"""

from __future__ import annotations

import hashlib
import json
import re
from typing import Literal

from pydantic import BaseModel

from sessions_app.local_model.shapes import ChatRequest, RequestMessage, Usage

MAX_WORDS = 20_000
DEFAULT_WORDS = 50
DEFAULT_DROP_WORDS = 5
DEFAULT_TIMEOUT_SECONDS = 300.0
MAX_TIMEOUT_SECONDS = 3600.0
DEFAULT_RETRY_AFTER_SECONDS = 1.0
QUOTE_LIMIT = 200
TOOL_RESULT_LIMIT = 500
TITLE_WORDS = 6
ARGUMENT_FRAGMENT_CHARS = 8
ERROR_KINDS = ("rate_limit", "server", "bad_request", "timeout", "drop", "stream")

# Fixed vocabulary for /words: word i is VOCABULARY[(7 * i + 3) % 32], so `/words 10` is a
# prefix of `/words 20` and a cancelled stream can be checked against the full one.
_VOCABULARY_TEXT = (
    "alpha bravo charlie delta echo foxtrot golf hotel india juliet kilo lima mike november "
    "oscar papa quebec romeo sierra tango uniform victor whiskey xray yankee zulu amber "
    "birch cedar dune ember fern"
)
VOCABULARY = tuple(_VOCABULARY_TEXT.split())

PARAGRAPH_TEMPLATES = (
    "This draft begins with {w}, the point the request puts first.",
    "A clear account of {w} helps every reader follow the argument.",
    "Next, the text considers how {w} shapes the rest of the work.",
    "Practical examples show where {w} matters most in daily use.",
    "Some readers will question {w}, so the draft answers them directly.",
    "The evidence about {w} is summarised in plain and careful language.",
    "Finally, {w} connects the earlier sections into one coherent whole.",
    "Each claim about {w} is kept short, specific and easy to check.",
)
PARAGRAPH_MIN_WORDS = 40
PARAGRAPH_TOPICS = 6
_STOPWORDS_TEXT = (
    "about above after again also been before being below between both could does doing down "
    "during each from further have having here into just more most only other over please "
    "same should some such than that their them then there these they this those through "
    "under until very what when where which while with would write your yours"
)
STOPWORDS = frozenset(_STOPWORDS_TEXT.split())

# The notice the app sends when a long-running tool finished (sessions_app.operations.service).
OPERATION_FINISHED = "Background operation finished:"
# The context window's summary request starts its system message with this
# (sessions_app.model.context_window.SUMMARY_PROMPT).
SUMMARY_REQUEST = "Conversation summary request."
SUMMARY_LINE_WORDS = 3
CALL_ID = re.compile(r"tool call (\S+?)[.,;]?(?:\s|$)")
TITLE_TRIGGER = re.compile(r"\btitle", re.IGNORECASE)
WRITE_TRIGGER = re.compile(r"^write\b", re.IGNORECASE)
TOKEN = re.compile(r"\w+|[^\w\s]")
PIECE = re.compile(r"^\s+|\S+\s*")
TRAILING_PUNCTUATION = ".,;:!?…\"'"


# --- plans --------------------------------------------------------------------------------


class PlannedToolCall(BaseModel):
    id: str
    name: str
    arguments: str


class TextPlan(BaseModel):
    """Answer with ``text``, streamed piece by piece (see ``split_text``)."""

    kind: Literal["text"] = "text"
    text: str


class ToolCallsPlan(BaseModel):
    """Answer with one or more (parallel) tool calls; finish_reason ``tool_calls``."""

    kind: Literal["tool_calls"] = "tool_calls"
    calls: list[PlannedToolCall]


class ErrorPlan(BaseModel):
    """Refuse with an HTTP error and an OpenAI error body."""

    kind: Literal["error"] = "error"
    status: int
    error_type: str
    code: str | None
    message: str
    retry_after_seconds: float | None = None


class TimeoutPlan(BaseModel):
    """Send nothing for ``seconds`` (or until the client gives up), then answer ``text``."""

    kind: Literal["timeout"] = "timeout"
    seconds: float
    text: str


class DropPlan(BaseModel):
    """Stream ``text`` (a few words), then break the connection without finishing."""

    kind: Literal["drop"] = "drop"
    text: str


class StreamErrorPlan(BaseModel):
    """Stream ``text`` (a few words), then an error event in the stream, then end it."""

    kind: Literal["stream_error"] = "stream_error"
    text: str
    error_type: str = "server_error"
    message: str = "The server had an error while streaming the reply (scripted by /error stream)."


Plan = TextPlan | ToolCallsPlan | ErrorPlan | TimeoutPlan | DropPlan | StreamErrorPlan


# --- ids and token counts -----------------------------------------------------------------


def conversation_digest(request: ChatRequest) -> str:
    """A hex sha256 of the messages: the seed of every id and of the `Write` paragraph."""
    messages = [m.model_dump(mode="json", exclude_none=True) for m in request.messages]
    canonical = json.dumps(messages, sort_keys=True, separators=(",", ":"), ensure_ascii=False)
    return hashlib.sha256(canonical.encode()).hexdigest()


def completion_id(request: ChatRequest) -> str:
    return "chatcmpl-" + conversation_digest(request)[:29]


def tool_call_id(digest: str, index: int) -> str:
    return "call_" + hashlib.sha256(f"{digest}:{index}".encode()).hexdigest()[:24]


def count_tokens(text: str) -> int:
    """The documented estimate: each run of word characters and each other symbol is one."""
    return len(TOKEN.findall(text))


def prompt_tokens(request: ChatRequest) -> int:
    """3 per message plus the tokens of its text, name, and tool call names and arguments."""
    total = 0
    for message in request.messages:
        total += 3 + count_tokens(message.text) + count_tokens(message.name or "")
        for call in message.tool_calls or []:
            total += count_tokens(call.function.name) + count_tokens(call.function.arguments)
    return total


def completion_tokens(plan: Plan) -> int:
    if isinstance(plan, ToolCallsPlan):
        return sum(count_tokens(c.name) + count_tokens(c.arguments) for c in plan.calls)
    if isinstance(plan, TextPlan | TimeoutPlan | DropPlan | StreamErrorPlan):
        return count_tokens(plan.text)
    return 0


def usage_for(request: ChatRequest, plan: Plan) -> Usage:
    prompt = prompt_tokens(request)
    completion = completion_tokens(plan)
    return Usage(
        prompt_tokens=prompt, completion_tokens=completion, total_tokens=prompt + completion
    )


# --- stream pieces ------------------------------------------------------------------------


def split_text(text: str) -> list[str]:
    """Stream pieces: leading whitespace alone, then each word with its following whitespace.

    The pieces concatenate back to ``text`` exactly, newlines and all.
    """
    return PIECE.findall(text)


def split_arguments(arguments: str) -> list[str]:
    """Argument fragments of at most ``ARGUMENT_FRAGMENT_CHARS``, as OpenAI streams them."""
    size = ARGUMENT_FRAGMENT_CHARS
    return [arguments[start : start + size] for start in range(0, len(arguments), size)]


# --- the script ---------------------------------------------------------------------------


def plan_reply(request: ChatRequest) -> Plan:
    """Decide the reply. Rules are tried in order: title, summary, /loop, tool results, user
    commands."""
    messages = request.messages
    last = messages[-1]
    last_user = _last_user(messages)
    digest = conversation_digest(request)

    if messages[0].role == "system" and TITLE_TRIGGER.search(messages[0].text):
        return TextPlan(text=make_title(last_user.text if last_user else ""))

    if messages[0].role == "system" and messages[0].text.startswith(SUMMARY_REQUEST):
        return TextPlan(text=make_summary(last_user.text if last_user else ""))

    if last_user is not None:
        loop = _parse_command(last_user.text)
        if loop is not None and loop[0] == "/loop":
            call = _parse_call(loop[1])
            if call is not None:
                name, arguments = call
                call_id = tool_call_id(digest, 0)
                return ToolCallsPlan(
                    calls=[PlannedToolCall(id=call_id, name=name, arguments=arguments)]
                )

    if last.role in ("tool", "function"):
        return TextPlan(text=tool_results_text(messages))

    if last.role in ("developer", "system") and last.text.startswith(OPERATION_FINISHED):
        return TextPlan(text=operation_result_text(messages, last.text))

    if last.role != "user":
        return TextPlan(text=default_reply(last_user.text if last_user else ""))
    return _plan_user_message(last.text, digest)


def _plan_user_message(text: str, digest: str) -> Plan:
    command = _parse_command(text)
    if command is None:
        if WRITE_TRIGGER.match(text.lstrip()):
            return TextPlan(text=make_paragraph(text.strip(), digest))
        return TextPlan(text=default_reply(text))
    name, rest = command
    if name == "/tool":
        calls = [_parse_call(line.strip()[len("/tool") :]) for line in _tool_lines(text)]
        planned = [
            PlannedToolCall(id=tool_call_id(digest, index), name=call[0], arguments=call[1])
            for index, call in enumerate(c for c in calls if c is not None)
        ]
        if planned:
            return ToolCallsPlan(calls=planned)
    elif name == "/echo":
        return TextPlan(text=rest)
    elif name == "/words":
        count = rest.split()[0] if rest.split() else ""
        return TextPlan(text=make_words(_int_or(count, DEFAULT_WORDS)))
    elif name == "/error":
        return plan_error(rest.split())
    return TextPlan(text=default_reply(text))


def _last_user(messages: list[RequestMessage]) -> RequestMessage | None:
    return next((m for m in reversed(messages) if m.role == "user"), None)


def _parse_command(text: str) -> tuple[str, str] | None:
    """``("/echo", rest)`` when the text starts with a slash command.

    ``rest`` is everything after the command word and the single space or newline that ends
    it, kept verbatim (so ``/echo`` can reply with exact whitespace).
    """
    stripped = text.lstrip()
    match = re.match(r"(/[a-z_]+)(?:[ \t]|\r?\n|$)", stripped)
    if match is None:
        return None
    return match.group(1), stripped[match.end() :]


def _tool_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if re.match(r"\s*/tool(\s|$)", line)]


def _parse_call(rest: str) -> tuple[str, str] | None:
    """``(name, arguments)`` from ``"<name> <json-args>"``; missing args become ``{}``."""
    parts = rest.strip().split(None, 1)
    if not parts:
        return None
    arguments = parts[1].strip() if len(parts) > 1 else "{}"
    return parts[0], arguments


def _int_or(value: str, default: int) -> int:
    try:
        return int(value)
    except ValueError:
        return default


def _float_or(value: str, default: float) -> float:
    try:
        number = float(value)
    except ValueError:
        return default
    return number if number == number and number >= 0 else default  # NaN or negative


def make_words(count: int) -> str:
    count = max(0, min(count, MAX_WORDS))
    return " ".join(VOCABULARY[(7 * index + 3) % len(VOCABULARY)] for index in range(count))


def plan_error(arguments: list[str]) -> Plan:
    """``/error <kind> [number]``: the failure modes a client must survive."""
    kind = arguments[0] if arguments else ""
    number = arguments[1] if len(arguments) > 1 else ""
    if kind == "rate_limit":
        seconds = min(_float_or(number, DEFAULT_RETRY_AFTER_SECONDS), 60.0)
        return ErrorPlan(
            status=429,
            error_type="requests",
            code="rate_limit_exceeded",
            message=(
                "Rate limit reached for chatproject-local (scripted by /error rate_limit). "
                f"Please try again in {seconds:g}s."
            ),
            retry_after_seconds=seconds,
        )
    if kind == "server":
        return ErrorPlan(
            status=500,
            error_type="server_error",
            code=None,
            message="The server had an error while processing your request (scripted by "
            "/error server). Sorry about that!",
        )
    if kind == "bad_request":
        return ErrorPlan(
            status=400,
            error_type="invalid_request_error",
            code=None,
            message="Bad request (scripted by /error bad_request).",
        )
    if kind == "timeout":
        seconds = min(_float_or(number, DEFAULT_TIMEOUT_SECONDS), MAX_TIMEOUT_SECONDS)
        return TimeoutPlan(seconds=seconds, text=f"Waited {seconds:g} seconds (/error timeout).")
    if kind == "drop":
        return DropPlan(text=make_words(max(1, _int_or(number, DEFAULT_DROP_WORDS))))
    if kind == "stream":
        return StreamErrorPlan(text=make_words(max(1, _int_or(number, DEFAULT_DROP_WORDS))))
    kinds = ", ".join(ERROR_KINDS)
    return TextPlan(text=f'Unknown /error kind "{kind}". Kinds: {kinds}.')


def tool_results_text(messages: list[RequestMessage]) -> str:
    """``Tool results: name → content; name → content.`` for the results since the last
    assistant message, each named after the call it answers."""
    start = max((i for i, m in enumerate(messages) if m.role == "assistant"), default=-1)
    names: dict[str, str] = {}
    if start >= 0:
        for call in messages[start].tool_calls or []:
            names[call.id] = call.function.name
    parts = []
    for message in messages[start + 1 :]:
        if message.role not in ("tool", "function"):
            continue
        name = names.get(message.tool_call_id or "") or message.name or "tool"
        parts.append(f"{name} → {_shorten(message.text, TOOL_RESULT_LIMIT).rstrip('.')}")
    return "Tool results: " + "; ".join(parts) + "."


def operation_result_text(messages: list[RequestMessage], notice: str) -> str:
    """``Background result: name → content.`` for the tool call the notice names."""
    match = CALL_ID.search(notice)
    call_id = match.group(1) if match else ""
    names = {
        call.id: call.function.name
        for message in messages
        if message.role == "assistant"
        for call in message.tool_calls or []
    }
    for message in reversed(messages):
        if message.role == "tool" and message.tool_call_id == call_id:
            name = names.get(call_id) or message.name or "tool"
            result = _shorten(message.text, TOOL_RESULT_LIMIT).rstrip(".")
            return f"Background result: {name} → {result}."
    return "A background operation finished, but I cannot find its result."


def make_title(text: str) -> str:
    """Up to six words of ``text`` without a leading slash command or trailing punctuation."""
    words = text.split()
    if words and words[0].startswith("/"):
        words = words[1:]
    title = " ".join(words[:TITLE_WORDS]).rstrip(TRAILING_PUNCTUATION).strip()
    return title or "New chat"


def make_summary(transcript: str) -> str:
    """``Summary of N lines: w1 w2 w3; …``: the first three words of each non-empty line."""
    lines = [line.split() for line in transcript.splitlines() if line.strip()]
    heads = "; ".join(" ".join(words[:SUMMARY_LINE_WORDS]) for words in lines)
    return f"Summary of {len(lines)} lines: {heads}."


def make_paragraph(text: str, digest: str) -> str:
    """A 40-80 word paragraph naming the message's main words, in a digest-seeded order."""
    topics = main_words(text) or ["the topic"]
    sentences: list[str] = []
    word_count = 0
    index = 0
    while index < len(topics) or word_count < PARAGRAPH_MIN_WORDS:
        seed = hashlib.sha256(f"{digest}:{index}".encode()).digest()[0]
        sentence = PARAGRAPH_TEMPLATES[seed % len(PARAGRAPH_TEMPLATES)].format(
            w=topics[index % len(topics)]
        )
        sentences.append(sentence)
        word_count += len(sentence.split())
        index += 1
    return " ".join(sentences)


def main_words(text: str) -> list[str]:
    """Distinct words of four letters or more after the leading ``Write``, minus filler."""
    body = WRITE_TRIGGER.sub("", text.strip(), count=1)
    seen: set[str] = set()
    words: list[str] = []
    for word in re.findall(r"[^\W\d_][\w'-]*", body):
        key = word.lower()
        if len(key) < 4 or key in STOPWORDS or key in seen:
            continue
        seen.add(key)
        words.append(word)
    return words[:PARAGRAPH_TOPICS]


def default_reply(text: str) -> str:
    quote = _shorten(text.strip(), QUOTE_LIMIT)
    return (
        f'You said: "{quote}". I am the offline demo model (no real LLM): I follow a fixed '
        "script. Try /tool current_time {}, /echo <text>, /words 50, or a message starting "
        'with "Write". See docs/local-model.md for every command.'
    )


def _shorten(text: str, limit: int) -> str:
    return text if len(text) <= limit else text[: limit - 1] + "…"
