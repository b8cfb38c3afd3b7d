"""Serve the local model with daphne, standalone: ``python -m sessions_app.local_model``.

``manage.py local_model`` calls ``serve`` too. Once the socket listens, one line
``local model listening on http://HOST:PORT/v1`` goes to stdout (flushed), which is what
tests and scripts wait for; ``--port 0`` picks a free port and the line names it.
"""

from __future__ import annotations

# daphne.server installs Twisted's asyncio reactor on import, so it must come before anything
# that imports twisted.internet.reactor.
import daphne.server  # type: ignore[import-untyped]  # isort: skip

import argparse
import sys
from collections.abc import Sequence
from typing import TextIO

from daphne.endpoints import build_endpoint_description_strings  # type: ignore[import-untyped]

from sessions_app.local_model.server import ConfigError, LocalModelApp, LocalModelConfig

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8001
READY_PREFIX = "local model listening on"


class ServeError(RuntimeError):
    """The server could not start (for example: the port is taken)."""


def serve(*, host: str, port: int, config: LocalModelConfig, out: TextIO = sys.stdout) -> None:
    """Listen on ``host:port`` and serve until SIGINT/SIGTERM. Blocks."""
    endpoints = build_endpoint_description_strings(host=host, port=port)
    server: daphne.server.Server

    def announce() -> None:
        for bound_host, bound_port in server.listening_addresses:
            shown = f"[{bound_host}]" if ":" in bound_host else bound_host
            print(f"{READY_PREFIX} http://{shown}:{bound_port}/v1", file=out, flush=True)

    server = daphne.server.Server(
        application=LocalModelApp(config),
        endpoints=endpoints,
        signal_handlers=True,
        ready_callable=announce,
        server_name="chatproject-local-model",
    )
    server.run()
    if not server.listening_addresses:
        raise ServeError(f"could not listen on {host}:{port} (is the port already in use?)")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The options shared by ``python -m sessions_app.local_model`` and ``manage.py``."""
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"default {DEFAULT_HOST}")
    parser.add_argument(
        "--port", type=int, default=DEFAULT_PORT, help=f"default {DEFAULT_PORT}; 0 picks one"
    )
    parser.add_argument(
        "--word-delay-ms",
        type=int,
        default=None,
        help="pause before each streamed piece (default: $LOCAL_MODEL_WORD_DELAY_MS or 30)",
    )
    parser.add_argument(
        "--api-key",
        default=None,
        help="require this Bearer token (default: $LOCAL_MODEL_API_KEY; unset: accept any)",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m sessions_app.local_model",
        description="The offline, scripted, OpenAI-compatible model (docs/local-model.md).",
    )
    add_arguments(parser)
    options = parser.parse_args(argv)
    try:
        config = LocalModelConfig.from_env(
            word_delay_ms=options.word_delay_ms, api_key=options.api_key
        )
        serve(host=options.host, port=options.port, config=config)
    except (ConfigError, ServeError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    return 0
