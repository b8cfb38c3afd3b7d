"""Token counting for the context window (``sessions_app.model.context_window``).

``tiktoken`` counts when ``CHAT_MODEL`` names an OpenAI model whose encoding ships in
``tokenizer_data/`` (cl100k_base, o200k_base, gzipped, with tiktoken's MIT licence: tiktoken
would download them, and servers may have no internet); any other model gets a pessimistic
estimate (``estimate_tokens``). Messages are counted the way OpenAI's cookbook does.
"""

from __future__ import annotations

import base64
import gzip
import hashlib
import json
import logging
import math
import re
import threading
from collections import OrderedDict
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import tiktoken
from tiktoken_ext.openai_public import (  # type: ignore[import-untyped]
    ENDOFPROMPT,
    ENDOFTEXT,
    FIM_MIDDLE,
    FIM_PREFIX,
    FIM_SUFFIX,
)

logger = logging.getLogger(__name__)

DATA_DIR = Path(__file__).resolve().with_name("tokenizer_data")

# OpenAI's cookbook ("How to count tokens with tiktoken"): every message costs 3 tokens of
# framing (+1 with a name) and every reply is primed with 3 more. A tool call costs its id,
# name and arguments plus 3; the tool schemas are counted as their compact JSON (usually
# more than the model's own rendering of them), plus the cookbook's 12 of framing.
TOKENS_PER_MESSAGE = 3
TOKENS_PER_NAME = 1
TOKENS_PER_TOOL_CALL = 3
TOKENS_REPLY_PRIMING = 3
TOKENS_TOOLS_FRAMING = 12
# Counts kept per counter, by a digest of the text: a session's history and the tool
# schemas are counted again for every model call, and each count is linear in the text.
COUNTS_KEPT = 20_000
# Shorter texts are counted each time: cheaper than their digest and lookup.
COUNTS_KEPT_MIN_CHARS = 64


@dataclass(frozen=True)
class _Vendored:
    file: str
    sha256: str  # of the uncompressed file: tiktoken_ext/openai_public.py's expected_hash
    pat_str: str
    special_tokens: dict[str, int]


# The split patterns live inside tiktoken_ext.openai_public's constructor functions (which
# download their files), not at module level: copied from tiktoken 0.14; a test checks them.
_CL100K_PATTERN = (
    r"""'(?i:[sdmt]|ll|ve|re)|[^\r\n\p{L}\p{N}]?+\p{L}++|\p{N}{1,3}+| ?[^\s\p{L}\p{N}]++[\r\n]*+|"""
    r"""\s++$|\s*[\r\n]|\s+(?!\S)|\s"""
)
_O200K_PATTERN = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)
VENDORED = {
    "cl100k_base": _Vendored(
        "cl100k_base.tiktoken.gz",
        "223921b76ee99bde995b7ff738513eef100fb51d18c93597a113bcffe865b2a7",
        _CL100K_PATTERN,
        {
            ENDOFTEXT: 100257,
            FIM_PREFIX: 100258,
            FIM_MIDDLE: 100259,
            FIM_SUFFIX: 100260,
            ENDOFPROMPT: 100276,
        },
    ),
    "o200k_base": _Vendored(
        "o200k_base.tiktoken.gz",
        "446a9538cb6c348e3516120d7c08b09f57c36495e2acfffe59a5bf8b0cfb1a2d",
        _O200K_PATTERN,
        {ENDOFTEXT: 199999, ENDOFPROMPT: 200018},
    ),
}
# Encodings that split ordinary text exactly like a vendored one (they add special tokens only).
SAME_RANKS = {"o200k_harmony": "o200k_base"}

_load_lock = threading.Lock()
_loaded: dict[str, tiktoken.Encoding | None] = {}


def encoding_get(name: str) -> tiktoken.Encoding | None:
    """The vendored encoding ``name``, loaded once per process (o200k takes about a second);
    ``None`` when its file is missing or damaged (then the estimate counts)."""
    if name in _loaded:
        return _loaded[name]
    with _load_lock:
        if name not in _loaded:
            try:
                _loaded[name] = _encoding_load(name)
            except Exception:
                logger.error("cannot load the %s tokenizer; estimating tokens", name, exc_info=True)
                _loaded[name] = None
        return _loaded[name]


def _encoding_load(name: str) -> tiktoken.Encoding:
    spec = VENDORED[name]
    raw = gzip.decompress((DATA_DIR / spec.file).read_bytes())
    if hashlib.sha256(raw).hexdigest() != spec.sha256:
        raise ValueError(f"{spec.file} does not have the expected sha256")
    ranks = {
        base64.b64decode(token): int(rank)
        for token, rank in (line.split() for line in raw.splitlines() if line)
    }
    return tiktoken.Encoding(
        name=name, pat_str=spec.pat_str, mergeable_ranks=ranks, special_tokens=spec.special_tokens
    )


def encoding_name_for(model: str) -> str | None:
    """The vendored encoding tiktoken uses for ``model``, or ``None`` (unknown model, or an
    encoding we do not ship)."""
    try:
        name = tiktoken.encoding_name_for_model(model)
    except KeyError:
        return None
    name = SAME_RANKS.get(name, name)
    spec = VENDORED.get(name)
    return name if spec is not None and (DATA_DIR / spec.file).exists() else None


# ASCII letters split at case changes, digit runs, whitespace runs, ASCII symbol runs, and
# runs of other characters.
_PIECE = re.compile(
    r"([A-Z]?[a-z]+|[A-Z]+(?![a-z]))|([0-9]+)|(\s+)|([\x21-\x2f\x3a-\x40\x5b-\x60\x7b-\x7e]+)"
    r"|([^\x00-\x7f]+)"
)


def estimate_tokens(text: str) -> int:
    """A pessimistic token count for models without a known tokenizer: a letter run (split at
    case changes) costs 1 per 4 letters, a digit run 1 per 3, a whitespace run 1 per 4 after
    its first character, a symbol run 2 per 3 symbols, and each other character 1, 1.5 or 3
    by its UTF-8 length (2, 3, 4 bytes). Against cl100k_base and o200k_base it is 1.1-1.8
    times the real count on prose, code, JSON, tool schemas, CJK, Cyrillic, Indic and emoji,
    about equal on digits, hex and UUIDs, and below it (about 0.8) only on random base64."""
    total = 0.0
    for match in _PIECE.finditer(text):
        letters, digits, space, symbols, other = match.groups()
        if letters:
            total += math.ceil(len(letters) / 4)
        elif digits:
            total += math.ceil(len(digits) / 3)
        elif space:
            total += (len(space) - 1) / 4
        elif symbols:
            total += math.ceil(len(symbols) * 2 / 3)
        else:
            for char in other:
                code = ord(char)
                total += 1 if code < 0x800 else 1.5 if code < 0x10000 else 3
    return math.ceil(total)


class TokenCounter:
    """Counts what a chat-completions call sends, for one model name.

    A text's count is kept (the last ``COUNTS_KEPT`` texts, by a 128-bit digest), so the
    history a model call resends costs a digest per message rather than a count: without
    it, each turn of a long session spent time in proportion to everything said before.
    Thread-safe: sessions are fitted in worker threads."""

    def __init__(self, model: str) -> None:
        self.model = model
        self.encoding_name = encoding_name_for(model)
        self._kept: OrderedDict[bytes, int] = OrderedDict()
        self._kept_lock = threading.Lock()

    @property
    def exact(self) -> bool:
        return self.encoding_name is not None and encoding_get(self.encoding_name) is not None

    def text(self, text: str) -> int:
        if len(text) < COUNTS_KEPT_MIN_CHARS:
            return self._count(text) if text else 0
        key = hashlib.blake2b(text.encode(errors="surrogatepass"), digest_size=16).digest()
        with self._kept_lock:
            kept = self._kept.get(key)
            if kept is not None:
                self._kept.move_to_end(key)
                return kept
        count = self._count(text)
        with self._kept_lock:
            self._kept[key] = count
            if len(self._kept) > COUNTS_KEPT:
                self._kept.popitem(last=False)
        return count

    def _count(self, text: str) -> int:
        encoding = encoding_get(self.encoding_name) if self.encoding_name else None
        if encoding is None:
            return estimate_tokens(text)
        return len(encoding.encode_ordinary(text))

    def message(self, message: dict[str, Any]) -> int:
        total = TOKENS_PER_MESSAGE
        for key, value in message.items():
            if value is None:
                continue
            if key == "tool_calls":
                for call in value:
                    function = call.get("function") or {}
                    total += TOKENS_PER_TOOL_CALL + self.text(str(call.get("id", "")))
                    total += self.text(str(function.get("name", "")))
                    total += self.text(str(function.get("arguments", "")))
            elif isinstance(value, str):
                total += self.text(value) + (TOKENS_PER_NAME if key == "name" else 0)
            elif key == "content" and isinstance(value, list):
                for part in value:
                    text = part.get("text") if isinstance(part, dict) else None
                    total += self.text(text if isinstance(text, str) else json.dumps(part))
            else:  # function_call and anything else: its JSON
                total += self.text(json.dumps(value, separators=(",", ":")))
        return total

    def messages(self, messages: list[dict[str, Any]]) -> int:
        return TOKENS_REPLY_PRIMING + sum(self.message(m) for m in messages)

    def tools(self, tools: list[dict[str, Any]] | None) -> int:
        if not tools:
            return 0
        return TOKENS_TOOLS_FRAMING + self.text(json.dumps(tools, separators=(",", ":")))


@lru_cache(maxsize=16)
def counter_for(model: str) -> TokenCounter:
    return TokenCounter(model)
