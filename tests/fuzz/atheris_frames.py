"""Coverage-guided fuzzing (atheris, libFuzzer) of the websocket frame parser and of the JSON
API's body validation (docs/reliability.md#fuzzing).

    python tests/fuzz/atheris_frames.py -runs=20000                  # frames (the default)
    python tests/fuzz/atheris_frames.py -max_total_time=300 -print_final_stats=1
    python tests/fuzz/atheris_frames.py --target=api-body -runs=20000 [--allow-known-bugs]

Every input is tried as a frame against ``tests/fuzz/oracle.py`` (``check_frame``: only
``Refused`` with the code the protocol prescribes, or a valid frame that round-trips) at two
size limits; with ``--target=api-body``, as a request body of each JSON endpoint through
``sessions_app.transport.api._body`` (only ``ApiInputError`` may come out). Any other exception is a
crash: libFuzzer stops, prints the traceback and writes the input to ``crash-<sha1>`` (see
``-artifact_prefix=``). Replay one with ``python tests/fuzz/atheris_frames.py crash-…``.
``--allow-known-bugs`` lets the API bugs already pinned in ``tests/fuzz/test_fuzz_api.py``
(KNOWN BUGS) through, reporting the first hit of each on stderr, so a bounded run can pass
until they are fixed.

``sessions_app.transport.client_frames`` and ``sessions_app.transport.api`` are instrumented
for coverage (pydantic's core is compiled; the JSON decoder is C). The corpus starts from
``tests/fuzz/corpus/<target>``
plus frames generated here, copied to a temporary directory unless a directory is given, so a
run never writes into the repository. Defaults unless given: ``-dict=tests/fuzz/corpus/json.dict``
and ``-max_len=16384``.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile
from pathlib import Path
from types import SimpleNamespace
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("DJANGO_SETTINGS_MODULE", "chatproject.settings")

import atheris  # noqa: E402

# protocol needs no Django: import it instrumented before django.setup() imports the app.
with atheris.instrument_imports(include=["sessions_app.transport.client_frames"]):
    from sessions_app.transport import client_frames  # noqa: F401

import django  # noqa: E402

django.setup()

with atheris.instrument_imports(include=["sessions_app.transport.api"]):
    from sessions_app.transport import api

from sessions_app.schemas import MessageSendIn, SessionCreateIn, SessionRenameIn  # noqa: E402
from tests.fuzz.oracle import check_frame  # noqa: E402

SIZE_LIMITS = (256 * 1024, 64)
BODY_SCHEMAS = (SessionCreateIn, SessionRenameIn, MessageSendIn)

SEED_FRAMES: list[Any] = [
    {"type": "send", "content": "hello there", "client_message_id": "c-plain-1"},
    {"type": "send", "content": "é😀\u200f\u0301", "client_message_id": "A.b_c:d-9"},
    {"type": "cancel"},
    {"type": "resume", "last_seq": None},
    {"type": "resume", "last_seq": 303},
    {"type": "ping", "id": "p-1"},
    {"type": "ping"},
    {"type": "ping", "extra": 1},
    {"type": "dance"},
    [1, 2],
]
SEED_BODIES: list[Any] = [
    {"title": "Plans"},
    {},
    {"content": "hi", "client_message_id": "m-1"},
    {"title": 5},
]


def decode(data: bytes) -> str:
    """Bytes as a websocket text frame could hold them, and then some: invalid UTF-8 becomes
    lone surrogates (which only a test can put into a frame)."""
    try:
        return data.decode("utf-8", "surrogatepass")
    except UnicodeDecodeError:
        return data.decode("utf-8", "surrogateescape")


def fuzz_frame(data: bytes) -> None:
    text = decode(data)
    for max_bytes in SIZE_LIMITS:
        check_frame(text, max_bytes)


ALLOW_KNOWN_BUGS = "--allow-known-bugs" in sys.argv
KNOWN_BUGS_SEEN: set[str] = set()


def known_api_bug(exc: Exception) -> str | None:
    """test_fuzz_api.py's KNOWN BUGS that ``_body`` shows: JSON nested too deeply, and
    integers over Python's 4300-digit conversion limit, both escape as a 500."""
    if isinstance(exc, RecursionError):
        return "deep-json-500"
    if type(exc) is ValueError and "integer string conversion" in str(exc):
        return "long-integer-500"
    return None


def fuzz_api_body(data: bytes) -> None:
    for schema in BODY_SCHEMAS:
        request = SimpleNamespace(content_type="application/json", body=data)
        try:
            api._body(request, schema)  # type: ignore[arg-type]
        except api.ApiInputError as exc:
            assert exc.status in (400, 415) and exc.code in ("invalid_json", "invalid_input")
        except (RecursionError, ValueError) as exc:
            bug = known_api_bug(exc)
            if not (ALLOW_KNOWN_BUGS and bug):
                raise
            if bug not in KNOWN_BUGS_SEEN:
                KNOWN_BUGS_SEEN.add(bug)
                print(f"known bug hit (allowed): {bug}", file=sys.stderr)


TARGETS = {"frames": (fuzz_frame, SEED_FRAMES), "api-body": (fuzz_api_body, SEED_BODIES)}


def seed_directory(target: str) -> str:
    """A fresh corpus directory: the committed seeds and the generated ones."""
    directory = tempfile.mkdtemp(prefix=f"atheris-{target}-")
    committed = ROOT / "tests" / "fuzz" / "corpus" / target
    for path in committed.glob("*") if committed.is_dir() else []:
        shutil.copy(path, directory)
    for number, seed in enumerate(TARGETS[target][1]):
        Path(directory, f"generated-{number}").write_bytes(json.dumps(seed).encode())
    return directory


def main() -> None:
    args = [arg for arg in sys.argv if not arg.startswith("--")]
    target = next((a.split("=", 1)[1] for a in sys.argv if a.startswith("--target=")), "frames")
    if target not in TARGETS:
        sys.exit(f"unknown --target={target}; use one of {', '.join(TARGETS)}")
    positional = [arg for arg in args[1:] if not arg.startswith("-")]
    if not positional:  # no corpus or crash file given: start from the seeds
        args.append(seed_directory(target))
        print(f"corpus: {args[-1]}", file=sys.stderr)
    if not any(arg.startswith("-dict=") for arg in args):
        args.append(f"-dict={ROOT / 'tests' / 'fuzz' / 'corpus' / 'json.dict'}")
    if not any(arg.startswith("-max_len=") for arg in args):
        args.append("-max_len=16384")
    atheris.Setup(args, TARGETS[target][0])
    atheris.Fuzz()


if __name__ == "__main__":
    main()
