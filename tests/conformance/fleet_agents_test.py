"""Issue 17 with the real agent CLIs (claude, codex) against the scripted model server:
rate limits are waited out (no retry used, concurrency lowered then restored), and a 401
stops the worker after its first task.

The CLIs' own retries are off (``CLAUDE_CODE_MAX_RETRIES=0``; the codex test config has
``request_max_retries = stream_max_retries = 0``), so the 429 reaches specexec: that is
what a CLI prints once its own retries are spent.
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

import proto_anthropic
import proto_openai_responses
import pytest
from claude_test import claude_env
from codex_test import specexec_env as codex_env
from modelserver import ModelServer, Reply
from support import (
    conf_task,
    require_cli,
    run_specexec,
    spec_repo,
    tasks_by_id,
    three_tasks,
)

pytestmark = pytest.mark.timeout(240)
TIMEOUT = 180.0
AGENTS = ["claude", "codex"]


@pytest.fixture(params=AGENTS)
def agent(request: pytest.FixtureRequest) -> str:
    name: str = request.param
    require_cli(name)
    return name


@pytest.fixture
def server(agent: str) -> Iterator[ModelServer]:
    routes = proto_anthropic.ROUTES if agent == "claude" else proto_openai_responses.ROUTES
    with ModelServer(routes) as srv:
        yield srv


def env_for(agent: str, server: ModelServer, tmp_path: Path) -> dict[str, str]:
    if agent == "claude":
        return claude_env(server, tmp_path, CLAUDE_CODE_MAX_RETRIES="0")
    return codex_env(tmp_path, server)


def run(
    agent: str, server: ModelServer, tmp_path: Path, tasks: list[dict[str, object]], *args: str
) -> tuple[Path, subprocess.CompletedProcess[str]]:
    repo = spec_repo(tmp_path, tasks, worker=agent)
    env = env_for(agent, server, tmp_path)
    return repo, run_specexec(repo, env, "--json", *args, timeout=TIMEOUT)


def run_json(repo: Path) -> dict[str, Any]:
    runs = repo / "specs" / "conf" / ".specexec" / "runs"
    doc: dict[str, Any] = json.loads(next(runs.glob("*/run.json")).read_text())
    return doc


def events(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def at(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def why(proc: subprocess.CompletedProcess[str], repo: Path) -> str:
    return (
        f"exit {proc.returncode}\n{proc.stdout[-4000:]}\n{proc.stderr[-2000:]}\n{tasks_by_id(repo)}"
    )


def test_429s_are_waited_out_and_concurrency_comes_back(
    agent: str, server: ModelServer, tmp_path: Path
) -> None:
    # The first two model calls (A's and B's first, side by side at --jobs 2) get a 429.
    server.fail_with = Reply(
        429,
        {"type": "error", "error": {"type": "rate_limit_error", "message": "slow down"}},
        headers={"retry-after": "1"},
    )
    server.fail_first = 2
    repo, proc = run(agent, server, tmp_path, three_tasks(agent), "--retries", "0")
    assert proc.returncode == 0, why(proc, repo)
    tasks = tasks_by_id(repo)
    assert {t["status"] for t in tasks.values()} == {"pass"}, why(proc, repo)
    m = run_json(repo)
    assert m["workers"]["retried"] == 0  # --retries 0, and no attempt was counted
    assert m["waits"] >= 1
    records = {r["task"]: r for r in m["records"]}
    assert all(r["retried"] == 0 and r["error_class"] is None for r in records.values())
    evs = events(proc.stdout)
    assert not [e for e in evs if e["event"] == "task_retry"]
    waits = [e for e in evs if e["event"] == "task_waiting"]
    assert waits and all(w["error_class"] == "rate_limit" for w in waits), waits
    for w in waits:  # each task started again only once its wait was over
        later = [
            e
            for e in evs
            if e["event"] == "task_started" and e["task"] == w["task"] and e["time"] > w["time"]
        ]
        assert later and at(later[0]["time"]) >= at(w["resume_at"]) - 0.01, (w, later)
    # --jobs 2 halved to 1 by the burst, back to 2 after a success.
    limits = [(c["limit"], c["why"]) for c in m["concurrency"] if c["worker"] == agent]
    assert limits[0] == (2, "start") and (1, "rate_limit") in limits, limits
    assert limits[-1] == (2, "success"), limits
    assert limits.index((1, "rate_limit")) < len(limits) - 1


def test_a_401_stops_the_worker_after_its_first_task(
    agent: str, server: ModelServer, tmp_path: Path
) -> None:
    server.fail_with = Reply(401, {"error": {"message": "invalid x-api-key"}})
    tasks = [conf_task(t, [f"{t}.txt"], f"[[write {t}.txt: {t}]]") for t in "ABC"]
    repo, proc = run(agent, server, tmp_path, tasks, "--jobs", "1")
    assert proc.returncode == 1, why(proc, repo)
    by_id = tasks_by_id(repo)
    first = [t for t in by_id.values() if t.get("status") == "fail"]
    assert len(first) == 1, why(proc, repo)
    assert first[0]["error_class"] == "auth" and first[0]["attempts"] == 1
    assert sorted(str(t.get("status", "pending")) for t in by_id.values()) == [
        "fail",
        "pending",
        "pending",
    ]
    # One model call in all: no retry by specexec, none by the CLI, no other task started.
    assert sum(r.method == "POST" for r in server.requests) == 1
    m = run_json(repo)
    assert m["tasks"]["pending"] == 2 and m["workers"]["retried"] == 0
    assert any("auth" in w for w in m["stopped_workers"].values())
    finished = [e for e in events(proc.stdout) if e["event"] == "task_finished"]
    assert [e["error_class"] for e in finished] == ["auth"]
