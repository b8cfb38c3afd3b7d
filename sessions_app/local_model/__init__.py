"""The local scripted model: an offline, deterministic, OpenAI-compatible chat API.

The project's LLM client uses it when no real model is configured, and every test talks to
it over real HTTP, so the real client code path is what gets tested. See docs/local-model.md.

- ``script``: which reply a request gets (pure);
- ``shapes``: the request and response JSON;
- ``server``: the ASGI application (``LocalModelApp``): checks and routing;
- ``reply``: sending one reply, streamed and paced, or as one JSON body;
- ``serve``: running it under daphne (``python -m sessions_app.local_model``,
  ``manage.py local_model``).
"""

from __future__ import annotations

from sessions_app.local_model.server import LocalModelApp, LocalModelConfig
from sessions_app.local_model.shapes import MODEL_ID

__all__ = ["MODEL_ID", "LocalModelApp", "LocalModelConfig"]
