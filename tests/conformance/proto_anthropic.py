"""Anthropic Messages API (``POST /v1/messages``) for the scripted model: Claude Code.

The first turn of a request that advertises a file-writing tool (one whose input schema has
``file_path`` and ``content``: Claude Code's ``Write``) answers with one ``tool_use`` per
``[[write]]`` directive; once the conversation holds ``tool_result`` blocks, it answers with
the final text. Requests without tools (title / summary / quota side calls with the small
model) get plain text, so they never trigger a tool call. Streaming requests get the SSE
event sequence the SDK expects; non-streaming ones get one message object.
"""

from __future__ import annotations

import json
import re
import uuid
from typing import Any

from modelserver import Directives, Handler, ModelServer, Reply, Request, directives

# Claude Code's system prompt names its working directory ("Primary working directory: /x");
# the Write tool wants an absolute ``file_path``, so relative directive paths join onto it.
_CWD_RE = re.compile(r"(?:Primary working directory|Working directory): (?P<cwd>/[^\n`]*)")


def _user_text(body: dict[str, Any]) -> str:
    """The text of user turns only: the system prompt and tool schemas hold no directives,
    and a ``[[...]]`` in them must never be taken for one."""
    parts: list[str] = []
    for msg in body.get("messages") or []:
        if msg.get("role") != "user":
            continue
        content = msg.get("content")
        if isinstance(content, str):
            parts.append(content)
            continue
        for block in content or []:
            if block.get("type") == "text":
                parts.append(str(block.get("text", "")))
    return "\n".join(parts)


def _system_text(body: dict[str, Any]) -> str:
    system = body.get("system")
    if isinstance(system, str):
        return system
    return "\n".join(str(b.get("text", "")) for b in system or [] if isinstance(b, dict))


def _has_tool_result(body: dict[str, Any]) -> bool:
    msgs = body.get("messages") or []
    last = msgs[-1] if msgs else {}
    content = last.get("content")
    return isinstance(content, list) and any(b.get("type") == "tool_result" for b in content)


def _write_tool(body: dict[str, Any]) -> str | None:
    """The advertised tool that writes a whole file (name read from the request)."""
    for tool in body.get("tools") or []:
        props = (tool.get("input_schema") or {}).get("properties") or {}
        if "file_path" in props and "content" in props:
            return str(tool["name"])
    return None


def _cwd(body: dict[str, Any]) -> str | None:
    m = _CWD_RE.search(_system_text(body)) or _CWD_RE.search(_user_text(body))
    return m["cwd"].strip() if m else None


def _absolute(path: str, cwd: str | None) -> str:
    if path.startswith("/") or cwd is None:
        return path
    return cwd.rstrip("/") + "/" + path


def _blocks(body: dict[str, Any]) -> tuple[list[dict[str, Any]], str]:
    """The assistant content blocks for this turn and its stop reason."""
    d: Directives = directives(_user_text(body))
    tool = _write_tool(body)
    if not body.get("tools"):
        # A side call (session title, summary, quota probe): short text, never a tool call.
        return [{"type": "text", "text": _side_text(body)}], "end_turn"
    if d.writes and tool and not _has_tool_result(body):
        cwd = _cwd(body)
        return [
            {
                "type": "tool_use",
                "id": "toolu_" + uuid.uuid4().hex[:24],
                "name": tool,
                "input": {"file_path": _absolute(path, cwd), "content": text},
            }
            for path, text in d.writes
        ], "tool_use"
    return [{"type": "text", "text": d.final_text()}], "end_turn"


def _side_text(body: dict[str, Any]) -> str:
    """Text for a tool-less side call. The session-title call asks for JSON through
    ``output_config.format`` (a json_schema with a required ``title``): fill each required
    string property so the CLI parses it instead of logging a bad title."""
    fmt = (body.get("output_config") or {}).get("format") or {}
    if fmt.get("type") != "json_schema":
        return "Scripted task"
    schema = fmt.get("schema") or {}
    props = schema.get("properties") or {}
    return json.dumps({k: "Scripted task" for k in schema.get("required") or props})


def _usage(body: dict[str, Any], out_tokens: int) -> dict[str, int]:
    # Rough but stable numbers so token accounting in the CLI's result can be asserted.
    return {
        "input_tokens": max(1, len(json.dumps(body.get("messages") or [])) // 4),
        "output_tokens": out_tokens,
        "cache_creation_input_tokens": 0,
        "cache_read_input_tokens": 0,
    }


def _sse(message: dict[str, Any], blocks: list[dict[str, Any]], stop: str) -> list[Any]:
    """The event sequence of one streamed message (text as one delta, tool input as one
    ``input_json_delta``: the SDK accumulates partial JSON and parses it at block stop)."""
    start = {**message, "content": [], "stop_reason": None}
    start["usage"] = {**message["usage"], "output_tokens": 1}
    events: list[tuple[str | None, Any]] = [
        ("message_start", {"type": "message_start", "message": start})
    ]
    for i, block in enumerate(blocks):
        if block["type"] == "text":
            head: dict[str, Any] = {"type": "text", "text": ""}
            delta: dict[str, Any] = {"type": "text_delta", "text": block["text"]}
        else:
            head = {**block, "input": {}}
            delta = {"type": "input_json_delta", "partial_json": json.dumps(block["input"])}
        events += [
            (
                "content_block_start",
                {"type": "content_block_start", "index": i, "content_block": head},
            ),
            ("content_block_delta", {"type": "content_block_delta", "index": i, "delta": delta}),
            ("content_block_stop", {"type": "content_block_stop", "index": i}),
        ]
    events += [
        (
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop, "stop_sequence": None},
                "usage": {"output_tokens": message["usage"]["output_tokens"]},
            },
        ),
        ("message_stop", {"type": "message_stop"}),
    ]
    return events


def _error(reply: Reply) -> Reply:
    """An injected failure in the Anthropic error shape (the SDK reads ``error.type``)."""
    kinds = {401: "authentication_error", 403: "permission_error", 429: "rate_limit_error"}
    kind = kinds.get(reply.status, "overloaded_error" if reply.status == 529 else "api_error")
    body = reply.body
    if not (isinstance(body, dict) and "type" in body):
        message = body.get("error", {}).get("message") if isinstance(body, dict) else None
        body = {
            "type": "error",
            "error": {"type": kind, "message": message or f"injected HTTP {reply.status}"},
        }
    # x-should-retry: false is NOT sent: the CLI's own retry policy is what is tested.
    return Reply(reply.status, body, headers=dict(reply.headers))


def messages(server: ModelServer, req: Request) -> Reply:
    failure = server.injected_failure()
    if failure is not None:
        return _error(failure)
    body = req.json()
    blocks, stop = _blocks(body)
    out_tokens = max(1, len(json.dumps(blocks)) // 4)
    msg_id = "msg_" + uuid.uuid4().hex[:24]
    message = {
        "id": msg_id,
        "type": "message",
        "role": "assistant",
        "model": body.get("model") or "claude-scripted",
        "content": blocks,
        "stop_reason": stop,
        "stop_sequence": None,
        "usage": _usage(body, out_tokens),
    }
    if body.get("stream"):
        return Reply(sse=_sse(message, blocks, stop), headers={"request-id": msg_id})
    return Reply(body=message, headers={"request-id": msg_id})


def count_tokens(server: ModelServer, req: Request) -> Reply:
    body = req.json()
    return Reply(body={"input_tokens": max(1, len(json.dumps(body)) // 4)})


def models(server: ModelServer, req: Request) -> Reply:
    # Listed so a model lookup (gateway discovery, /model) finds something, not a 404.
    data = [
        {"type": "model", "id": m, "display_name": m, "created_at": "2025-01-01T00:00:00Z"}
        for m in ("claude-sonnet-4-5", "claude-haiku-4-5", "claude-opus-4-1")
    ]
    return Reply(
        body={"data": data, "has_more": False, "first_id": data[0]["id"], "last_id": data[-1]["id"]}
    )


ROUTES: dict[str, Handler] = {
    "/v1/messages/count_tokens": count_tokens,
    "/v1/messages": messages,
    "/v1/models": models,
}
