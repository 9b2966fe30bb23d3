"""Issue 17 with the real Gemini and Aider CLIs through ``specexec run``: a rate limit is
waited out without using up ``max_retries``, a 401 stops the worker (the circuit breaker).

Both CLIs retry a 429 themselves (FINDINGS_gemini.md, FINDINGS_aider.md), so the server's
failures are sized to what each does:

- Gemini with ``general.maxAttempts: 1`` and a pinned model makes one request per model
  call and exits 173 on the first 429, with the API's RetryInfo delay in its error
  ("Suggested retry after 2s."): specexec waits that long and runs the task again. The HTTP
  ``retry-after`` header, also sent, is ignored by the CLI.
- Aider retries a 429 after 0.25 s on its own (hard-coded, about a minute in all): a 429 on
  the first calls is absorbed by aider and the task passes on its first attempt. The
  specexec-level wait with aider needs aider's whole minute of retries in vain: the slow
  test.
"""

from __future__ import annotations

import json
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import proto_gemini
import proto_openai_chat
import pytest
from modelserver import Handler, ModelServer, Reply, Request
from support import conf_task, require_cli, run_specexec, spec_repo, tasks_by_id, three_tasks

TIMEOUT = 240.0
pytestmark = pytest.mark.timeout(TIMEOUT + 60)

PINNED_MODEL = "gemini-2.5-flash"
RETRY_DELAY_S = 2.0


def describe(proc: subprocess.CompletedProcess[str], repo: Path) -> str:
    return (
        f"exit {proc.returncode}\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}\n"
        f"{json.dumps(tasks_by_id(repo), indent=1)[-4000:]}"
    )


def run_json(repo: Path) -> dict[str, Any]:
    runs = sorted((repo / "specs" / "conf" / ".specexec" / "runs").glob("*/run.json"))
    assert runs, "no run.json"
    doc: dict[str, Any] = json.loads(runs[-1].read_text())
    return doc


def events(repo: Path, kind: str) -> list[dict[str, Any]]:
    path = repo / "specs" / "conf" / ".specexec" / "events.jsonl"
    lines = [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
    return [e for e in lines if e.get("kind", e.get("event")) == kind]


def first_call_of_each_fails(
    routes: dict[str, Handler], reply: Reply, task_ids: str, is_model_call: Callable[[str], bool]
) -> dict[str, Handler]:
    """``routes`` whose handlers answer ``reply`` to the first model call of each task in
    ``task_ids`` (found by its summary, "Task A."), whatever the order the calls come in
    (``fail_first`` counts calls: a slow start of one CLI would move the failures)."""
    failed: set[str] = set()
    lock = threading.Lock()

    def wrap(handler: Handler) -> Handler:
        def handle(server: ModelServer, req: Request) -> Reply:
            if is_model_call(req.path):
                text = req.body.decode(errors="replace")
                with lock:
                    for t in task_ids:
                        if t not in failed and f"Task {t}." in text:
                            failed.add(t)
                            return reply
            return handler(server, req)

        return handle

    return {prefix: wrap(h) for prefix, h in routes.items()}


def independent_tasks(agent: str) -> list[dict[str, object]]:
    return [conf_task(t, [f"{agent}_{t}.txt"], f"[[write {agent}_{t}.txt: {t}]]") for t in "ABC"]


def assert_stopped_after_the_first(
    repo: Path, proc: subprocess.CompletedProcess[str], worker: str
) -> None:
    """A 401 at --jobs 1: the first task fails ``auth`` after one attempt, no other task
    of the worker starts, the run says why."""
    assert proc.returncode == 1, describe(proc, repo)
    got = tasks_by_id(repo)
    assert got["A"]["status"] == "fail", describe(proc, repo)
    assert got["A"]["error_class"] == "auth", got["A"]
    assert got["A"]["attempts"] == 1, got["A"]  # --retries 2 allowed more
    # Never started: still pending (tasks.json leaves the status out), with the reason.
    assert got["B"].get("status", "pending") == "pending", got["B"]
    assert got["C"].get("status", "pending") == "pending", got["C"]
    assert worker in run_json(repo)["stopped_workers"], run_json(repo)
    assert "auth" in proc.stdout + proc.stderr


# --------------------------------------------------------------------------- gemini


@pytest.fixture
def gemini_server() -> Iterator[ModelServer]:
    require_cli("gemini")
    with ModelServer(proto_gemini.ROUTES) as srv:
        yield srv


def gemini_model_call(path: str) -> bool:
    return ":" in path.split("?", 1)[0] and ":countTokens" not in path


def gemini_env(server: ModelServer, tmp_path: Path) -> dict[str, str]:
    from gemini_test import gemini_env as env_of

    # One request per model call: the CLI's own retries (10 tries, 5-30 s) would hide the
    # 429 from specexec.
    return env_of(server, tmp_path, {"maxAttempts": 1}, GEMINI_MODEL=PINNED_MODEL)


def google_429() -> Reply:
    """A Gemini API quota error with its RetryInfo detail, as the API sends it."""
    body = {
        "error": {
            "code": 429,
            "message": "Quota exceeded for metric: generate_content_requests, limit: 10",
            "status": "RESOURCE_EXHAUSTED",
            "details": [
                {
                    "@type": "type.googleapis.com/google.rpc.RetryInfo",
                    "retryDelay": f"{RETRY_DELAY_S:g}s",
                }
            ],
        }
    }
    return Reply(429, body, headers={"retry-after": f"{RETRY_DELAY_S:g}"})


def test_gemini_rate_limit_is_waited_out_without_using_retries(
    gemini_server: ModelServer, tmp_path: Path
) -> None:
    # A and B start together; the first model call of each gets the 429.
    gemini_server.routes = first_call_of_each_fails(
        proto_gemini.ROUTES, google_429(), "AB", gemini_model_call
    )
    repo = spec_repo(tmp_path, three_tasks("gemini"), worker="gemini")
    proc = run_specexec(
        repo, gemini_env(gemini_server, tmp_path), "--retries", "0", timeout=TIMEOUT
    )
    assert proc.returncode == 0, describe(proc, repo)
    got = tasks_by_id(repo)
    records = {r["task"]: r for r in run_json(repo)["records"]}
    for task_id, task in got.items():
        # --retries 0: a failure counted against max_retries would have failed it.
        assert task["status"] == "pass", (task_id, describe(proc, repo))
        assert "error_class" not in task and "waiting_until" not in task, task
        # Every run of the CLI is in "attempts"; the waited-out ones are the waits.
        assert task["attempts"] == 1 + records[task_id]["waits"], (task, records[task_id])
    assert records["A"]["waits"] == records["B"]["waits"] == 1, records
    assert records["C"]["waits"] == 0, records
    waits = events(repo, "task_waiting")
    assert {e["task"] for e in waits} == {"A", "B"}, waits
    for e in waits:
        assert e["error_class"] == "rate_limit"
        # The wait the API stated (RetryInfo), not specexec's own backoff.
        assert e["seconds"] == pytest.approx(RETRY_DELAY_S), e
    # Each task's next call came after the stated delay (gemini's own start-up adds to it).
    for task_id in "AB":
        calls = [r.at for r in gemini_server.requests if f"Task {task_id}.".encode() in r.body]
        assert len(calls) >= 3 and calls[1] - calls[0] >= RETRY_DELAY_S, calls
    # Concurrency: 2, halved to 1 by the rate limit, back to 2 after a success.
    limits = [c["limit"] for c in run_json(repo)["concurrency"] if c["worker"] == "gemini"]
    assert limits[0] == 2 and 1 in limits and limits[-1] == 2, limits
    assert limits.index(1) < len(limits) - 1


def test_gemini_401_stops_the_worker_after_the_first_task(
    gemini_server: ModelServer, tmp_path: Path
) -> None:
    gemini_server.fail_with = Reply(
        401, {"error": {"code": 401, "message": "API key not valid.", "status": "UNAUTHENTICATED"}}
    )
    repo = spec_repo(tmp_path, independent_tasks("gemini"), worker="gemini")
    env = gemini_env(gemini_server, tmp_path)
    proc = run_specexec(repo, env, "--jobs", "1", "--retries", "2", timeout=TIMEOUT)
    assert_stopped_after_the_first(repo, proc, "gemini")
    assert len(gemini_server.requests) == 1  # neither the CLI nor specexec retried


# --------------------------------------------------------------------------- aider


@pytest.fixture
def aider_server() -> Iterator[ModelServer]:
    require_cli("aider")
    with ModelServer(proto_openai_chat.ROUTES) as srv:
        yield srv


def aider_env(server: ModelServer, tmp_path: Path) -> dict[str, str]:
    from aider_test import specexec_env

    return specexec_env(tmp_path, server)


def openai_429() -> Reply:
    body = {
        "error": {
            "message": "Rate limit reached for requests. Please try again in 1s.",
            "type": "requests",
            "code": "rate_limit_exceeded",
        }
    }
    return Reply(429, body, headers={"retry-after": "1"})


def test_aider_absorbs_a_short_rate_limit_itself(aider_server: ModelServer, tmp_path: Path) -> None:
    aider_server.routes = first_call_of_each_fails(
        proto_openai_chat.ROUTES, openai_429(), "AB", lambda path: "chat/completions" in path
    )
    repo = spec_repo(tmp_path, three_tasks("aider"), worker="aider")
    proc = run_specexec(repo, aider_env(aider_server, tmp_path), "--retries", "0", timeout=TIMEOUT)
    assert proc.returncode == 0, describe(proc, repo)
    for task_id, task in tasks_by_id(repo).items():
        assert task["status"] == "pass", (task_id, describe(proc, repo))
        assert task["attempts"] == 1 and "error_class" not in task, task
    assert not events(repo, "task_waiting")  # aider's own retry, 0.25 s later
    assert len(aider_server.requests) == 5  # 3 tasks + the 2 retried calls


def test_aider_401_stops_the_worker_after_the_first_task(
    aider_server: ModelServer, tmp_path: Path
) -> None:
    aider_server.fail_with = Reply(401, {"error": {"message": "invalid api key", "type": "auth"}})
    repo = spec_repo(tmp_path, independent_tasks("aider"), worker="aider")
    env = aider_env(aider_server, tmp_path)
    proc = run_specexec(repo, env, "--jobs", "1", "--retries", "2", timeout=TIMEOUT)
    assert_stopped_after_the_first(repo, proc, "aider")
    assert len(aider_server.requests) == 1


@pytest.mark.slow
def test_aider_rate_limit_past_its_own_retries_is_waited_out_by_specexec(
    aider_server: ModelServer, tmp_path: Path
) -> None:
    # Aider tries 9 times over about 64 s (max_retries: 0 in the test HOME: one request a
    # try), then gives up with exit 0; specexec reads the final RateLimitError and the
    # provider's "try again in 1s", waits, and the second run of the task passes.
    aider_server.fail_with = openai_429()
    aider_server.fail_first = 9
    tasks = [conf_task("A", ["aider_A.txt"], "[[write aider_A.txt: A]]")]
    repo = spec_repo(tmp_path, tasks, worker="aider")
    proc = run_specexec(repo, aider_env(aider_server, tmp_path), "--retries", "0", timeout=TIMEOUT)
    assert proc.returncode == 0, describe(proc, repo)
    task = tasks_by_id(repo)["A"]
    # --retries 0: passed, so the waited-out run did not count (attempts counts both runs).
    assert task["status"] == "pass" and task["attempts"] == 2, task
    assert run_json(repo)["records"][0]["waits"] == 1
    waits = events(repo, "task_waiting")
    assert len(waits) == 1 and waits[0]["error_class"] == "rate_limit", waits
    assert waits[0]["seconds"] == pytest.approx(1.0), waits
    assert len(aider_server.requests) == 10
