"""OpenAI Responses API (``POST /v1/responses``, ``stream: true``) for the Codex CLI.

Codex 0.171 sends its tools in two places: the classic top-level ``tools`` list and, for
its default model (code mode), an ``additional_tools`` input item whose ``functions``
namespace holds one freeform ``exec`` tool (JavaScript run in a V8 isolate) that reaches
the real tools as ``tools.apply_patch(...)``, ``tools.exec_command(...)``. The scripted
model writes files with ``apply_patch`` (``*** Begin Patch`` format) either directly, when
the request advertises it as a tool, or through ``exec``.

Codex first tries a WebSocket upgrade (``GET /v1/responses``) for the built-in ``openai``
provider; we answer 426 so it falls back to HTTP/SSE. A custom provider with
``supports_websockets = false`` never sends that GET.
"""

from __future__ import annotations

import itertools
import json
from typing import Any

from modelserver import Directives, Handler, ModelServer, Reply, Request, directives

CALL_PREFIX = "call_specexec_"
# Token usage each model call reports, so tests can check how the CLI sums it.
USAGE: dict[str, Any] = {
    "input_tokens": 1000,
    "input_tokens_details": {"cached_tokens": 200},
    "output_tokens": 50,
    "output_tokens_details": {"reasoning_tokens": 10},
    "total_tokens": 1050,
}
_ids = itertools.count(1)


def _user_text(body: dict[str, Any]) -> str:
    """Only user messages: the directives must come from the prompt, not from tool docs."""
    parts: list[str] = []
    for item in body.get("input") or []:
        if item.get("type") == "message" and item.get("role") == "user":
            for c in item.get("content") or []:
                if isinstance(c, dict) and isinstance(c.get("text"), str):
                    parts.append(c["text"])
    return "\n".join(parts)


def _tools(body: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """name -> tool spec, from ``tools`` and ``additional_tools`` items, namespaces flattened."""
    found: dict[str, dict[str, Any]] = {}

    def walk(tools: list[dict[str, Any]]) -> None:
        for t in tools:
            if t.get("type") == "namespace":
                walk(t.get("tools") or [])
            elif t.get("name"):
                found.setdefault(t["name"], t)

    walk(body.get("tools") or [])
    for item in body.get("input") or []:
        if item.get("type") == "additional_tools":
            walk(item.get("tools") or [])
    return found


def _our_outputs(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        item
        for item in body.get("input") or []
        if item.get("type") in ("function_call_output", "custom_tool_call_output")
        and str(item.get("call_id", "")).startswith(CALL_PREFIX)
    ]


def patch_text(writes: tuple[tuple[str, str], ...]) -> str:
    lines = ["*** Begin Patch"]
    for path, text in writes:
        lines.append(f"*** Add File: {path}")
        lines += ["+" + line for line in text.split("\n")]
    lines.append("*** End Patch")
    return "\n".join(lines) + "\n"


def _tool_call(body: dict[str, Any], d: Directives) -> dict[str, Any] | None:
    """The output item that asks Codex to write ``d.writes`` with its own tool."""
    tools = _tools(body)
    call_id = f"{CALL_PREFIX}{next(_ids)}"
    patch = patch_text(d.writes)
    ap = tools.get("apply_patch")
    if ap is not None and ap.get("type") == "custom":
        return {
            "type": "custom_tool_call",
            "call_id": call_id,
            "name": "apply_patch",
            "input": patch,
        }
    if ap is not None and ap.get("type") == "function":
        return {
            "type": "function_call",
            "call_id": call_id,
            "name": "apply_patch",
            "arguments": json.dumps({"input": patch}),
        }
    if "exec" in tools:  # code mode: the patch goes through the JavaScript tool
        js = (
            f"const r = await tools.apply_patch({json.dumps(patch)});\n"
            "text(typeof r === 'string' ? r : JSON.stringify(r));\n"
        )
        return {"type": "custom_tool_call", "call_id": call_id, "name": "exec", "input": js}
    if "exec_command" in tools:  # models without apply_patch (unknown to Codex): the shell,
        # where Codex intercepts an ``apply_patch`` heredoc as its patch tool
        cmd = f"apply_patch <<'SPECEXEC_EOF'\n{patch}SPECEXEC_EOF\n"
        return {
            "type": "function_call",
            "call_id": call_id,
            "name": "exec_command",
            "arguments": json.dumps({"cmd": cmd}),
        }
    return None


def _message(text: str) -> dict[str, Any]:
    return {
        "type": "message",
        "id": f"msg_{next(_ids)}",
        "role": "assistant",
        "status": "completed",
        "content": [{"type": "output_text", "text": text, "annotations": []}],
    }


def _stream(item: dict[str, Any]) -> Reply:
    rid = f"resp_{next(_ids)}"
    events: list[tuple[str | None, Any]] = [
        ("response.created", {"type": "response.created", "response": {"id": rid}}),
        (
            "response.output_item.added",
            {"type": "response.output_item.added", "output_index": 0, "item": item},
        ),
    ]
    if item["type"] == "message":
        events.append(
            (
                "response.output_text.delta",
                {
                    "type": "response.output_text.delta",
                    "item_id": item["id"],
                    "output_index": 0,
                    "content_index": 0,
                    "delta": item["content"][0]["text"],
                },
            )
        )
    events += [
        (
            "response.output_item.done",
            {"type": "response.output_item.done", "output_index": 0, "item": item},
        ),
        (
            "response.completed",
            {
                "type": "response.completed",
                "response": {"id": rid, "status": "completed", "output": [item], "usage": USAGE},
            },
        ),
    ]
    return Reply(sse=events)


def responses(server: ModelServer, req: Request) -> Reply:
    if req.method == "GET":
        # WebSocket upgrade attempt: 426 makes Codex use HTTP/SSE (see module docstring).
        return Reply(426, {"error": {"message": "websockets not supported"}})
    failure = server.injected_failure()
    if failure is not None:
        return failure
    body = req.json()
    d = directives(_user_text(body))
    if d.writes and not _our_outputs(body):
        item = _tool_call(body, d)
        if item is not None:
            return _stream(item)
    return _stream(_message(d.final_text()))


def models(server: ModelServer, req: Request) -> Reply:
    # Model discovery: an empty list keeps Codex on its bundled catalog.
    return Reply(body={"object": "list", "data": []})


ROUTES: dict[str, Handler] = {
    "/v1/responses": responses,
    "/v1/models": models,
}
