"""``search_history``: find what the user said or was told in their own earlier sessions.

Only the calling user's sessions are searched: the owner comes from the ``ToolContext``,
never from the model's arguments, so no prompt can make it read another user's messages.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from sessions_app import store
from sessions_app.infra.db import db_sync_to_async
from sessions_app.schemas import MessageSearchHit
from sessions_app.tools.base import BaseTool, ToolContext


class SearchHistoryArguments(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    query: str = Field(
        min_length=1,
        max_length=200,
        description="Text to look for in message contents (case-insensitive substring).",
    )
    limit: int = Field(default=5, ge=1, le=20, description="Most matches to return, newest first.")


def hit_line(hit: MessageSearchHit) -> str:
    title = f'"{hit.session_title}"' if hit.session_title else "(untitled session)"
    when = hit.created_at.strftime("%Y-%m-%d %H:%M UTC")
    return f"- {when} · {title} · {hit.role}: {hit.snippet}"


class SearchHistory(BaseTool):
    name = "search_history"
    description = (
        "Search the user's own past chat messages (all of their sessions) for a text. "
        "Returns matching messages, newest first, with session title, role and a snippet."
    )
    Arguments = SearchHistoryArguments

    async def run(self, arguments: SearchHistoryArguments, context: ToolContext) -> str:
        # db_sync_to_async (asgiref's sync_to_async plus closing the thread's stale
        # connection): a turn is not a request, so nothing else would ever close it.
        hits = await db_sync_to_async(store.messages_search)(
            owner_id=context.owner_id, query=arguments.query, limit=arguments.limit
        )
        if not hits:
            return f'No matches for "{arguments.query}" in your chat history.'
        noun = "message matches" if len(hits) == 1 else "messages match"
        header = f'{len(hits)} {noun} "{arguments.query}" (newest first):'
        return "\n".join([header, *(hit_line(hit) for hit in hits)])
