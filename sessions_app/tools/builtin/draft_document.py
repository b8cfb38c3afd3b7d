"""``draft_document``: a multi-section Markdown document written section by section by the
configured model. The built-in example of a long-running tool.

Section titles are derived deterministically from the number of sections rather than asked of
the model: an outline in free text would have to be parsed and could come back with the wrong
count, and the same arguments then always give the same structure, which makes a retry after
a crash (``retry_safe``) produce a comparable document.
"""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict, Field

from sessions_app.tools.base import BaseTool, ToolContext

SECTION_SYSTEM_PROMPT = "You write one section of a document. Reply with the section text only."
# Middle sections, in order, between an opening and a closing one.
MIDDLE_TITLES = (
    "Background",
    "Key ideas",
    "Practical considerations",
    "Examples",
    "Challenges",
    "Outlook",
)
MAX_SECTIONS = len(MIDDLE_TITLES) + 2


def section_titles(count: int) -> list[str]:
    """``Overview`` alone; otherwise ``Introduction``, middle titles, ``Conclusion``."""
    if count == 1:
        return ["Overview"]
    return ["Introduction", *MIDDLE_TITLES[: count - 2], "Conclusion"]


class DraftDocumentArguments(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    topic: str = Field(min_length=1, max_length=300, description="What the document is about.")
    sections: int = Field(
        default=3, ge=1, le=MAX_SECTIONS, description="Number of sections to write."
    )


class DraftDocument(BaseTool):
    name = "draft_document"
    description = (
        "Write a multi-section Markdown document about a topic. Takes a while: the result "
        "arrives later as this tool's result."
    )
    Arguments = DraftDocumentArguments
    is_long_running = True
    # Only model calls, no side effects: starting over after a crash is harmless.
    retry_safe = True

    async def run(self, arguments: DraftDocumentArguments, context: ToolContext) -> str:
        topic = arguments.topic
        titles = section_titles(arguments.sections)
        count = len(titles)
        await context.progress(0.0, f"Planning {count} section(s) about {topic}")
        parts = [f"# {topic[:1].upper()}{topic[1:]}"]
        for number, title in enumerate(titles, start=1):
            # The user prompt starts with "Write": the local scripted model answers such
            # messages with a paragraph (docs/local-model.md).
            text = await context.complete(
                [
                    {"role": "system", "content": SECTION_SYSTEM_PROMPT},
                    {
                        "role": "user",
                        "content": (
                            f'Write the section {number} of {count}, titled "{title}", '
                            f"of a document about {topic}."
                        ),
                    },
                ]
            )
            parts.append(f"## {title}\n\n{text.strip()}")
            await context.progress(number / count, f"Writing section {number} of {count}")
        return "\n\n".join(parts) + "\n"
