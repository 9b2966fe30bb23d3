"""OpenAI chat completions wire format (``POST /v1/chat/completions``), as Aider speaks it.

Aider (through litellm) has no tools: the model edits files by writing them in its *edit
format* inside the plain-text answer, and aider applies them after the reply. So one reply
carries both the edits for ``[[write PATH: TEXT]]`` and the final message. The edit format
is read off aider's system prompt:

- ``whole``: a line with the path, then a fenced block with the whole new content;
- ``diff`` (and ``diff-fenced``): SEARCH/REPLACE blocks; an empty SEARCH creates a file.

``[[malformed edit]]`` in the prompt makes the model answer with an edit aider cannot
parse ("The LLM did not conform to the edit format."), to test how a rejected edit shows.

The result: the aider plugin sets ``answer_block=False``, so specexec's prompt asks for the
result *only* in the result file ("write your result as JSON to the file `F` ... Write it
as a new file with your usual file edits"). The scripted model follows it: the result is
one more file edit, creating F (``.specexec-result.json``, or ``[[result file PATH]]``), in
the edit format aider asked for, then ``Done.``. When the prompt asks for the result at the
end of the answer instead ("also end your final answer with it", the ``answer_block=True``
prompt) or says ``[[json block]]``, the model ends with the fenced ```json block as usual:
in ``whole`` format aider takes every fence for a file listing, so that reply is rejected
(the reason for ``answer_block=False``); ``diff`` ignores other fences.
"""

from __future__ import annotations

import itertools
import re
import time
from typing import Any

from modelserver import INPUT_RE, Directives, Handler, ModelServer, Reply, Request, directives

MODEL_ID = "specexec-scripted"
MALFORMED_RE = re.compile(r"\[\[malformed edit\]\]")
# The final ```json block instead of the result-file edit (what the answer_block=True
# prompt asks), to show how aider treats it.
JSON_BLOCK_RE = re.compile(r"\[\[json block\]\]|also end your final answer with it")
# specexec's prompt names the result file.
PROMPT_RESULT_FILE_RE = re.compile(r"write your result as JSON to the file `(?P<path>[^`\s]+)`")
RESULT_FILE_RE = re.compile(r"\[\[result file (?P<path>[^\]\s]+)\]\]")
DEFAULT_RESULT_FILE = ".specexec-result.json"
_ids = itertools.count(1)


def _text(content: Any) -> str:
    """A message's content: a string or a list of ``{"type": "text", "text": ...}`` parts."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "\n".join(p.get("text", "") for p in content if isinstance(p, dict))
    return ""


def edit_format(messages: list[dict[str, Any]]) -> str:
    """Which edit format aider asked for, from its system prompt."""
    system = "\n".join(_text(m.get("content")) for m in messages if m.get("role") == "system")
    if "SEARCH/REPLACE" in system:
        return "diff"
    if "*** Begin Patch" in system:
        return "patch"
    return "whole"


def _whole(path: str, text: str) -> str:
    body = text if text.endswith("\n") else text + "\n"
    return f"{path}\n```\n{body}```\n"


def _diff(path: str, text: str) -> str:
    body = text if text.endswith("\n") else text + "\n"
    return f"{path}\n```\n<<<<<<< SEARCH\n=======\n{body}>>>>>>> REPLACE\n```\n"


def answer(messages: list[dict[str, Any]]) -> str:
    """The scripted model's whole reply to aider's conversation."""
    # Only the user turns carry the prompt; aider's system prompt has examples of its own.
    user = "\n".join(_text(m.get("content")) for m in messages if m.get("role") == "user")
    d: Directives = directives(user)
    user = INPUT_RE.sub("", user)  # the blockers' directives are not this task's
    fmt = edit_format(messages)
    if MALFORMED_RE.search(user):
        # whole: a fence with no file name before it (and no file in the chat) is a
        # ValueError in aider; diff: a SEARCH text that is not in the file.
        if fmt == "whole":
            return "Here it is:\n\n```\nno file name before this fence\n```\n"
        return "x.txt\n```\n<<<<<<< SEARCH\nnot in the file\n=======\nnew\n>>>>>>> REPLACE\n```\n"
    block = _diff if fmt == "diff" else _whole
    rf = RESULT_FILE_RE.search(user) or PROMPT_RESULT_FILE_RE.search(user)
    result_path = rf["path"] if rf else DEFAULT_RESULT_FILE
    final = d.final_text()
    parts = [block(path, text) for path, text in d.writes]
    if JSON_BLOCK_RE.search(user):
        parts.append(final)  # in whole format this fence is read as a file listing
    else:
        # The result as one more file edit, as the answer_block=False prompt asks.
        parts.append(block(result_path, final.split("```json\n", 1)[1].split("```", 1)[0]))
        parts.append("Done.\n")
    return "\n".join(parts)


def _usage(messages: list[dict[str, Any]], reply: str) -> dict[str, int]:
    # Rough but stable token counts (4 chars a token) so aider prints a Tokens: line.
    sent = sum(len(_text(m.get("content"))) for m in messages) // 4 + 1
    received = len(reply) // 4 + 1
    return {"prompt_tokens": sent, "completion_tokens": received, "total_tokens": sent + received}


def chat_completions(server: ModelServer, req: Request) -> Reply:
    failure = server.injected_failure()
    if failure is not None:
        return failure
    body = req.json()
    messages: list[dict[str, Any]] = body.get("messages") or []
    content = answer(messages)
    usage = _usage(messages, content)
    cid, created, model = f"chatcmpl-{next(_ids)}", int(time.time()), body.get("model", MODEL_ID)
    if not body.get("stream"):
        return Reply(
            body={
                "id": cid,
                "object": "chat.completion",
                "created": created,
                "model": model,
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": content},
                        "finish_reason": "stop",
                    }
                ],
                "usage": usage,
            }
        )

    # Streaming: role chunk, content chunk, stop chunk (+ usage when asked), [DONE].
    def chunk(delta: dict[str, Any], finish: str | None = None) -> dict[str, Any]:
        return {
            "id": cid,
            "object": "chat.completion.chunk",
            "created": created,
            "model": model,
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}],
        }

    events: list[tuple[str | None, Any]] = [
        (None, chunk({"role": "assistant", "content": ""})),
        (None, chunk({"content": content})),
        (None, chunk({}, "stop")),
    ]
    if (body.get("stream_options") or {}).get("include_usage"):
        events.append((None, {**chunk({}), "choices": [], "usage": usage}))
    events.append((None, "[DONE]"))
    return Reply(sse=events)


def models(server: ModelServer, req: Request) -> Reply:
    # litellm/aider may list models; answer with the one scripted model.
    return Reply(
        body={
            "object": "list",
            "data": [{"id": MODEL_ID, "object": "model", "created": 0, "owned_by": "specexec"}],
        }
    )


ROUTES: dict[str, Handler] = {
    "/v1/chat/completions": chat_completions,
    "/chat/completions": chat_completions,  # base URL given without /v1
    "/v1/models": models,
    "/models": models,
}
