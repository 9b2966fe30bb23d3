"""A scripted model on 127.0.0.1 that the real agent CLIs talk to.

The "model" is driven by directives in the prompt text the CLI sends (specexec puts the
task's summary in the prompt), so one server serves many parallel tasks:

- ``[[write PATH: TEXT]]`` - first turn: call the CLI's own file-writing tool to write TEXT
  (``\\n`` escapes allowed) to PATH (relative to the CLI's working directory). When the
  conversation already holds that tool call's result, answer with the final message.
- ``[[status fail: REASON]]`` - the final message reports ``fail`` with that blocker
  (default: ``pass``).
- no ``[[write]]``: answer with the final message at once.

The final message ends with a fenced ```json {"status": ...}``` block, as specexec's prompt
asks. Server-wide failure modes (``ModelServer.fail_with``): answer every model call with
an HTTP status (401, 429 with retry-after, 500...) instead.

Each wire format is one module beside this one (``proto_*.py``) exposing
``ROUTES: dict[str, Handler]``: a path prefix -> ``handler(server, request) -> Reply``.
"""

from __future__ import annotations

import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

WRITE_RE = re.compile(r"\[\[write (?P<path>[^:\]\s]+): (?P<text>.*?)\]\]", re.S)
INPUT_RE = re.compile(r"<input>.*?</input>", re.S)
STATUS_RE = re.compile(r"\[\[status (?P<status>pass|fail|blocked)(?:: (?P<reason>.*?))?\]\]", re.S)


@dataclass(frozen=True)
class Directives:
    writes: tuple[tuple[str, str], ...]
    status: str = "pass"
    reason: str | None = None

    def final_text(self) -> str:
        result: dict[str, Any] = {"status": self.status}
        if self.reason:
            result["blocker"] = self.reason
        if self.writes and self.status == "pass":
            result["files_created"] = [p for p, _ in self.writes]
        return "Done.\n\n```json\n" + json.dumps(result) + "\n```\n"


def directives(text: str) -> Directives:
    """What the prompt inside ``text`` (a whole request body) asks the model to do."""
    # The blockers' summaries in specexec's <input> block are their directives, not ours.
    text = INPUT_RE.sub("", text)
    writes = tuple((m["path"], m["text"].replace("\\n", "\n")) for m in WRITE_RE.finditer(text))
    # Deduplicate: the prompt may appear more than once in a request (history, system).
    writes = tuple(dict.fromkeys(writes))
    st = STATUS_RE.search(text)
    if st is None:
        return Directives(writes)
    return Directives(writes, st["status"], st["reason"])


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes
    at: float = field(default_factory=time.monotonic)  # when it arrived (retry timing)

    def json(self) -> Any:
        return json.loads(self.body or b"{}")


@dataclass
class Reply:
    status: int = 200
    body: Any = None  # JSON-encodable, sent as application/json
    sse: list[tuple[str | None, Any]] | None = None  # (event name, data) pairs
    headers: dict[str, str] = field(default_factory=dict)
    raw: bytes | None = None  # sent as is (content type from headers)


Handler = Callable[["ModelServer", Request], Reply]


class ModelServer:
    """``with ModelServer(routes) as srv: srv.url`` - a threaded HTTP server on 127.0.0.1."""

    def __init__(self, routes: dict[str, Handler]) -> None:
        self.routes = routes
        self.requests: list[Request] = []
        self.fail_with: Reply | None = None  # every model call answers this instead
        self.fail_first: int = 0  # only the first N model calls fail (then succeed)
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._make_handler())
        self._httpd.daemon_threads = True
        self._thread = threading.Thread(target=self._httpd.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def __enter__(self) -> ModelServer:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def injected_failure(self) -> Reply | None:
        """The failure to answer this model call with, if any (counts ``fail_first``)."""
        with self._lock:
            if self.fail_with is None:
                return None
            if self.fail_first:
                self.fail_first -= 1
                if self.fail_first == 0:
                    reply, self.fail_with = self.fail_with, None
                    return reply
            return self.fail_with

    def _route(self, req: Request) -> Reply:
        with self._lock:
            self.requests.append(req)
        for prefix, handler in sorted(self.routes.items(), key=lambda kv: -len(kv[0])):
            if req.path.split("?", 1)[0].startswith(prefix):
                return handler(self, req)
        return Reply(404, {"error": {"message": f"no route for {req.path}"}})

    def _make_handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class _H(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, fmt: str, *args: Any) -> None:
                pass

            def _serve(self) -> None:
                length = int(self.headers.get("content-length") or 0)
                body = self.rfile.read(length) if length else b""
                req = Request(self.command, self.path, dict(self.headers.items()), body)
                try:
                    reply = server._route(req)
                except Exception as exc:  # a bug in a handler must show, not hang the CLI
                    reply = Reply(500, {"error": {"message": f"model server bug: {exc!r}"}})
                self._send(reply)

            def _send(self, reply: Reply) -> None:
                if reply.sse is not None:
                    payload = b"".join(_sse(reply.sse))
                    ctype = "text/event-stream"
                elif reply.raw is not None:
                    payload, ctype = reply.raw, "application/octet-stream"
                else:
                    payload = json.dumps(reply.body if reply.body is not None else {}).encode()
                    ctype = "application/json"
                self.send_response(reply.status)
                headers = {"content-type": ctype, **reply.headers}
                for k, v in headers.items():
                    self.send_header(k, v)
                self.send_header("content-length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = _serve

        return _H


def _sse(events: list[tuple[str | None, Any]]) -> Iterator[bytes]:
    for name, data in events:
        text = data if isinstance(data, str) else json.dumps(data)
        if name:
            yield f"event: {name}\n".encode()
        yield f"data: {text}\n\n".encode()
