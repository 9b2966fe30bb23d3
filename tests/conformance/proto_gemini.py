"""Gemini API (``generativelanguage`` v1beta) wire format, as Gemini CLI speaks it.

Gemini CLI 0.61 (``GOOGLE_GEMINI_BASE_URL`` = our server, auth type ``gemini-api-key``,
key in ``x-goog-api-key``) calls:

- ``POST /v1beta/models/<model>:generateContent`` - side calls asking for JSON
  (``generationConfig.responseJsonSchema``), e.g. the model router's complexity classifier
  when the model is "auto": answered with an object that fits the schema;
- ``POST /v1beta/models/<model>:streamGenerateContent?alt=sse`` - the chat turns (request
  has ``tools[].functionDeclarations``), answered as one SSE ``data:`` event;
- ``:countTokens`` and ``GET /v1beta/models`` are not called in these runs; answered anyway.

A function call is ``candidates[0].content.parts[] = {"functionCall": {"name", "args"}}``;
its result comes back in the next request as a ``{"functionResponse": {...}}`` part.
When a write was refused (``functionResponse.response.error``) the final answer reports
``fail`` with that error, unless the prompt holds an explicit ``[[status pass]]``: then it
claims ``pass`` anyway, as a careless model might.
"""

from __future__ import annotations

import json
import re
from dataclasses import replace
from typing import Any

from modelserver import STATUS_RE, Handler, ModelServer, Reply, Request, directives

# The CLI's file-writing tool (advertised in tools[].functionDeclarations) and its args.
WRITE_TOOL = "write_file"


def _response(parts: list[dict[str, Any]], model: str, prompt_tokens: int = 100) -> dict[str, Any]:
    # The CLI keys its stats.models by the model it asked for (echoed in modelVersion).
    return {
        "candidates": [
            {"content": {"role": "model", "parts": parts}, "finishReason": "STOP", "index": 0}
        ],
        # Half the prompt "cached" and a few thought tokens, so the tests can tell apart
        # the CLI's stats fields (prompt = input + cached; total = prompt + candidates +
        # thoughts).
        "usageMetadata": {
            "promptTokenCount": prompt_tokens,
            "cachedContentTokenCount": prompt_tokens // 2,
            "candidatesTokenCount": 10,
            "thoughtsTokenCount": 5,
            "totalTokenCount": prompt_tokens + 15,
        },
        "modelVersion": model,
    }


def _tool_names(body: dict[str, Any]) -> set[str]:
    return {
        decl.get("name", "")
        for tool in body.get("tools") or []
        for decl in tool.get("functionDeclarations") or []
    }


def _user_texts(body: dict[str, Any]) -> str:
    """The decoded text parts of the conversation (not the system instruction, not JSON
    escaped, so a ``\\n`` typed in the prompt stays a directive escape)."""
    return "\n".join(
        part["text"]
        for content in body.get("contents") or []
        if content.get("role", "user") == "user"
        for part in content.get("parts") or []
        if isinstance(part.get("text"), str)
    )


def _answered_calls(body: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        part["functionResponse"]
        for content in body.get("contents") or []
        for part in content.get("parts") or []
        if "functionResponse" in part
    ]


# Answers for the fields of known JSON side calls; any other field gets a typed default.
SIDE_ANSWERS: dict[str, Any] = {
    "complexity_score": 10,  # the model router's classifier: "simple task"
    "model_choice": "flash",  # the older router classifier
    "next_speaker": "user",  # the "should the model speak again?" check: no
}


def _from_schema(schema: dict[str, Any], name: str = "") -> Any:
    """A value that validates against ``schema`` (OpenAPI-ish, types in any case)."""
    if name in SIDE_ANSWERS:
        return SIDE_ANSWERS[name]
    if schema.get("enum"):
        return schema["enum"][0]
    kind = str(schema.get("type", "string")).lower()
    if kind == "object":
        props = schema.get("properties") or {}
        return {k: _from_schema(v, k) for k, v in props.items()}
    return {"integer": 1, "number": 1, "boolean": False, "array": []}.get(kind, "ok")


def _json_side_call(body: dict[str, Any], model: str) -> dict[str, Any] | None:
    """Side calls asking for JSON output (router, next-speaker check...): a valid answer."""
    config = body.get("generationConfig") or {}
    schema = config.get("responseJsonSchema") or config.get("responseSchema")
    if config.get("responseMimeType") != "application/json" and schema is None:
        return None
    answer = _from_schema(schema or {"type": "object"})
    return _response([{"text": json.dumps(answer)}], model)


def _turn(body: dict[str, Any], model: str) -> dict[str, Any]:
    side = _json_side_call(body, model)
    if side is not None:
        return side
    tokens = max(1, len(json.dumps(body)) // 4)
    if not _tool_names(body):  # e.g. a summary side call: plain text, no directives
        return _response([{"text": "Summary."}], model, tokens)
    texts = _user_texts(body)
    d = directives(texts)
    answered = _answered_calls(body)
    if d.writes and not answered:
        parts = [
            {"functionCall": {"name": WRITE_TOOL, "args": {"file_path": p, "content": c}}}
            for p, c in d.writes
        ]
        return _response(parts, model, tokens)
    errors = [a["response"]["error"] for a in answered if "error" in (a.get("response") or {})]
    # The CLI refused a write (e.g. outside the workspace): say so, as a model would, unless
    # the prompt holds an explicit [[status pass]]: a model that claims success anyway.
    # (Not in specexec's <input> block: the blockers' summaries are not this task's.)
    explicit = STATUS_RE.search(re.sub(r"<input>.*?</input>", "", texts, flags=re.S))
    if errors and not (explicit and explicit["status"] == "pass"):
        d = replace(d, status="fail", reason=errors[0])
    return _response([{"text": d.final_text()}], model, tokens)


def generate(server: ModelServer, req: Request) -> Reply:
    """``/v1beta/models/<model>:<method>``."""
    path = req.path.split("?", 1)[0]
    model, _, method = path.rsplit("/", 1)[-1].partition(":")
    if method == "countTokens":  # not a model call: never fails
        return Reply(body={"totalTokens": max(1, len(req.body) // 4)})
    failure = server.injected_failure()
    if failure is not None:
        return failure
    reply = _turn(req.json(), model)
    if method == "streamGenerateContent":
        return Reply(sse=[(None, reply)])
    return Reply(body=reply)


def models(server: ModelServer, req: Request) -> Reply:
    if ":" in req.path.split("?", 1)[0]:
        return generate(server, req)
    names = ["gemini-2.5-pro", "gemini-2.5-flash", "gemini-2.5-flash-lite"]
    return Reply(body={"models": [{"name": f"models/{n}"} for n in names]})


ROUTES: dict[str, Handler] = {
    "/v1beta/models": models,
}
