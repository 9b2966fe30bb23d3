"""Issue 17 with shell workers: every failure class, waits that do not use up retries,
the circuit breaker, adaptive concurrency, the resource guard, budgets, on_conflict."""

from __future__ import annotations

import json
import shlex
import signal
import subprocess
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
from conftest import PY, git, read_tasks, run_cli, task, wait_for, write_spec

from specexec.run import fleet
from specexec.tasksfile.types import Task, WorkerConfig
from specexec.workers import claude, codex


def run_json(spec: Path) -> dict[str, Any]:
    doc: dict[str, Any] = json.loads(
        next((spec / ".specexec" / "runs").glob("*/run.json")).read_text()
    )
    return doc


def events(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.startswith("{")]


def at(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def once_then(marker_dir: Path, first: str, then: str = "exit 0") -> str:
    """A command that runs ``first`` on its first call (per task) and ``then`` after."""
    m = shlex.quote(str(marker_dir)) + '/"$SPECEXEC_TASK_ID"'
    return f"if [ -e {m} ]; then {then}; else touch {m}; {first}; fi"


def spec_of(repo: Path, tasks: list[dict[str, Any]], **top: Any) -> Path:
    d: Path = write_spec(repo / "specs" / "fleet", tasks, **top)
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "spec")
    return d


# --------------------------------------------------------------------------- pure parts


def test_backoff_is_exponential_with_jitter_and_honours_a_stated_wait() -> None:
    assert fleet.backoff(1, 7.5) == 7.5
    assert fleet.backoff(3, None, base=2, cap=300, rand=lambda: 0.0) == 4.0  # half of 8
    assert fleet.backoff(3, None, base=2, cap=300, rand=lambda: 1.0) == 8.0
    assert fleet.backoff(20, None, base=2, cap=300, rand=lambda: 1.0) == 300.0


class Clock:
    """A clock the test sets (epoch seconds), for ``Concurrency(clock=...)``."""

    def __init__(self, now: float = 100.0) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now


def grow_until_it_changes(c: fleet.Concurrency, worker: str = "w") -> tuple[int, int | None]:
    """(successes it took, the new limit or None if it never changed within 100)."""
    for n in range(1, 101):
        new = c.grow(worker)
        if new is not None:
            return n, new
    return 100, None


def test_concurrency_halves_once_per_burst_and_grows_one_per_window() -> None:
    clock = Clock()
    c = fleet.Concurrency(8, clock=clock)
    assert c.limit("w") == 8
    assert c.lower("w", 99.0, "rate_limit") == 4
    # The rest of the burst: attempts that started before the decrease.
    assert c.lower("w", 99.5, "rate_limit") is None
    assert c.lower("w", 100.0 - 1e-6, "overloaded") is None
    assert c.limit("w") == 4
    # One step per whole window of successes at the current limit, up to --jobs.
    steps = [grow_until_it_changes(c) for _ in range(4)]
    assert steps == [(4, 5), (5, 6), (6, 7), (7, 8)]
    assert grow_until_it_changes(c) == (100, None)
    assert c.limit("w") == 8
    assert [(e["limit"], e["why"]) for e in c.log] == [
        (8, "start"),
        (4, "rate_limit"),
        (5, "success"),
        (6, "success"),
        (7, "success"),
        (8, "success"),
    ]
    assert c.limits == {"w": 8}


def test_concurrency_halves_again_while_failures_outpace_successes_never_below_1() -> None:
    clock = Clock()
    c = fleet.Concurrency(8, clock=clock)
    got = []
    for _ in range(5):  # each attempt started after the last decrease, none succeeded
        clock.now += 1
        got.append(c.lower("w", clock.now - 0.5, "rate_limit"))
    assert got == [4, 2, 1, None, None]
    assert c.limit("w") == 1
    assert c.grow("w") == 2  # a window at 1 is one success
    one = fleet.Concurrency(1, clock=clock)
    assert one.lower("w", 0.0, "overloaded") is None and one.limit("w") == 1
    assert one.log == []


def test_a_sporadic_rate_limit_among_successes_holds_the_limit() -> None:
    clock = Clock()
    c = fleet.Concurrency(8, clock=clock)
    assert c.lower("w", 0.0, "rate_limit") == 4
    assert grow_until_it_changes(c) == (4, 5)  # 4 successes since the decrease
    clock.now += 10
    # At least twice as many successes as failures since the decrease: it holds.
    assert c.lower("w", clock.now - 1, "rate_limit") is None
    assert c.lower("w", clock.now - 1, "rate_limit") is None
    assert c.limit("w") == 5
    assert c.lower("w", clock.now - 1, "rate_limit") == 2  # 3 failures to 4 successes
    # The count starts again from the decrease: the next failure halves again.
    clock.now += 10
    assert c.lower("w", clock.now - 1, "rate_limit") == 1


def test_the_successes_that_excuse_a_rate_limit_are_bounded() -> None:
    """Many successes at --jobs do not make a later overload tolerated for long: at most
    the last two windows of successes count."""
    clock = Clock()
    c = fleet.Concurrency(4, clock=clock)
    for _ in range(1000):
        assert c.grow("w") is None  # at --jobs already
    held = 0
    while c.lower("w", clock.now - 1, "overloaded") is None:
        held += 1
    assert held == 4  # 2 windows of 4 successes excuse 4 failures: the 5th halves
    assert c.limit("w") == 2


def test_fixed_concurrency_never_changes() -> None:
    c = fleet.Concurrency(8, fixed=True)
    for i in range(20):
        assert c.lower("w", float(i), "rate_limit") is None
    for _ in range(20):
        assert c.grow("w") is None
    assert c.limit("w") == 8 and c.limits == {"w": 8}
    assert c.log == []


def test_workers_have_limits_of_their_own() -> None:
    c = fleet.Concurrency(6, clock=Clock())
    assert c.lower("a", 0.0, "rate_limit") == 3
    assert c.limit("b") == 6
    assert c.lower("b", 0.0, "overloaded") == 3  # a's decrease is not b's burst
    assert grow_until_it_changes(c, "a") == (3, 4)
    assert c.limits == {"a": 4, "b": 3}


def test_the_guard_reads_memory_now_and_cpu_over_a_window() -> None:
    cpu = iter([0.0, 95.0, 99.0, 10.0, 10.0, 10.0, 10.0, 10.0])
    g = fleet.ResourceGuard(
        85, 90, window_s=3, every_s=1, memory=lambda: 50.0, cpu=lambda: next(cpu)
    )
    g.sample(0)
    assert g.busy() is None  # the first CPU reading covers nothing
    g.sample(1)
    g.sample(2)
    assert g.busy() is not None and "CPU" in (g.busy() or "")
    g.sample(2.5)  # too soon: not sampled
    for t in (3, 4, 5, 6):
        g.sample(t)
    assert g.busy() is None
    hot = fleet.ResourceGuard(85, 90, memory=lambda: 90.0, cpu=lambda: 0.0)
    hot.sample(0)
    assert "memory 90%" in (hot.busy() or "")


def test_worker_identity() -> None:
    t = Task("a", "s", command="make")
    assert fleet.worker_id(t, None) == "shell make"
    assert fleet.worker_id(t, WorkerConfig(preset="claude", args=("--model", "x"))) == "claude"
    assert fleet.worker_id(t, WorkerConfig(preset="claude", command="./w.sh")) == "command ./w.sh"
    assert fleet.token_count({"input": 10, "output": 5, "cache_read": 100}) == 15


def test_plugins_classify_their_cli_errors() -> None:
    def result(status: int | None, text: str) -> str:
        obj = {"type": "result", "subtype": "success", "is_error": True, "result": text}
        return json.dumps(obj | {"api_error_status": status})

    cases = {
        429: "rate_limit",
        401: "auth",
        403: "auth",
        500: "overloaded",
        529: "overloaded",
    }
    for status, cls in cases.items():
        env = claude.unwrap(result(status, "API Error"))
        assert env is not None and env.error_class == cls, status
    env = claude.unwrap(result(None, "Claude AI usage limit reached|9999999999"))
    assert env is not None and env.error_class == "rate_limit"
    assert env.retry_after_s is not None and env.retry_after_s > 1e9 - 2e9  # until the reset
    ok = claude.unwrap(json.dumps({"type": "result", "subtype": "success", "result": "x"}))
    assert ok is not None and ok.error_class is None

    def failed(message: str) -> str:
        return "\n".join(
            json.dumps(e)
            for e in (
                {"type": "thread.started"},
                {"type": "error", "message": message},
                {"type": "turn.failed", "error": {"message": message}},
            )
        )

    for message, cls in (
        ("unexpected status 401 Unauthorized: injected 401, url: http://h/v1", "auth"),
        ("exceeded retry limit, last status: 429 Too Many Requests", "rate_limit"),
        (
            "We\u2019re currently experiencing high demand, which may cause temporary errors.",
            "overloaded",
        ),
        ("Missing environment variable: `KEY`.", "auth"),
    ):
        env = codex.unwrap(failed(message))
        assert env is not None and env.error_class == cls, message


# --------------------------------------------------------------------------- classes


def test_every_class_a_shell_worker_can_show(repo: Path, tmp_path: Path) -> None:
    noexec = tmp_path / "noexec.sh"
    noexec.write_text("#!/bin/sh\nexit 0\n")
    noexec.chmod(0o644)
    slow = f"{PY} -c 'import time; time.sleep(30)'"
    tasks = [
        task("missing", command="specexec-no-such-program-xyz", isolation="none"),
        task("noexec", command=shlex.quote(str(noexec)), isolation="none"),
        task("failed", command="echo something broke; exit 3", isolation="none"),
        # Numbers and "Permission denied" in a shell's output are no API's words.
        task(
            "tests",
            command="echo 'rm: x: Permission denied'; echo '1 failed, 512 passed'; exit 1",
            isolation="none",
        ),
        task(
            "reported", command='echo \'{"status": "fail", "blocker": "nope"}\'', isolation="none"
        ),
        task("slow", command=slow, isolation="none", timeout_minutes=0.02),
        task("nochange", command="true", files=["n.txt"], expect_changes=True),
        task("verify", command="echo v > v.txt", files=["v.txt"], verify="false"),
    ]
    d = spec_of(repo, tasks)
    proc = run_cli("run", str(d), "--retries", "0", "--jobs", "4", "--json", cwd=repo)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    by_id = read_tasks(d)
    want = {
        "missing": "not_found",
        "noexec": "not_found",
        "failed": "worker_failed",
        "tests": "worker_failed",
        "reported": "agent_error",
        "slow": "timeout",
        "nochange": "no_change",
        "verify": "verify_failed",
    }
    assert {t: by_id[t].get("error_class") for t in want} == want, {
        t: by_id[t].get("blocker") for t in want
    }
    assert all(by_id[t]["status"] == "fail" for t in want)
    assert "127" in by_id["missing"]["blocker"] and "126" in by_id["noexec"]["blocker"]
    finished = {e["task"]: e for e in events(proc.stdout) if e["event"] == "task_finished"}
    assert {t: finished[t]["error_class"] for t in want} == want
    records = {r["task"]: r for r in run_json(d)["records"]}
    assert {t: records[t]["error_class"] for t in want} == want
    assert run_json(d)["error_classes"]["not_found"] == 2


def test_a_rate_limit_is_waited_out_without_using_a_retry(repo: Path, tmp_path: Path) -> None:
    marks = tmp_path / "marks"
    marks.mkdir()
    cmd = once_then(marks, "echo 'HTTP 429 Too Many Requests (retry-after: 0.5)' >&2; exit 1")
    busy = once_then(marks, "echo '503 Service Unavailable, retry after 300ms'; exit 1")
    d = spec_of(
        repo,
        [task("A", command=cmd, isolation="none"), task("B", command=busy, isolation="none")],
    )
    proc = run_cli("run", str(d), "--retries", "0", "--json", cwd=repo)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    by_id = read_tasks(d)
    assert by_id["A"]["status"] == by_id["B"]["status"] == "pass"
    assert by_id["A"]["attempts"] == 2 and "error_class" not in by_id["A"]
    evs = events(proc.stdout)
    waits = {e["task"]: e for e in evs if e["event"] == "task_waiting"}
    assert waits["A"]["error_class"] == "rate_limit" and waits["A"]["seconds"] == 0.5
    assert waits["B"]["error_class"] == "overloaded" and waits["B"]["seconds"] == 0.3
    for tid, w in waits.items():
        again = [e for e in evs if e["event"] == "task_started" and e["task"] == tid][1]
        assert at(again["time"]) >= at(w["resume_at"]) - 0.01  # the wait was honoured
    records = {r["task"]: r for r in run_json(d)["records"]}
    assert records["A"]["retried"] == 0 and records["A"]["waits"] == 1
    assert run_json(d)["workers"]["retried"] == 0


def test_a_wait_past_max_wait_minutes_fails_with_the_class(repo: Path) -> None:
    cmd = "echo 'rate limit exceeded, retry-after: 60'; exit 1"
    d = spec_of(
        repo, [task("A", command=cmd, isolation="none")], defaults={"max_wait_minutes": 0.5}
    )
    proc = run_cli("run", str(d), "--json", cwd=repo)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    a = read_tasks(d)["A"]
    assert a["status"] == "fail" and a["error_class"] == "rate_limit"
    assert "gave up" in a["blocker"] and "max_wait_minutes" in a["blocker"]
    assert a["attempts"] == 1  # not retried either: waiting was the answer, and it is spent


def test_ctrl_c_during_a_wait_stops_at_once(repo: Path) -> None:
    cmd = "echo '429 Too Many Requests retry-after: 600'; exit 1"
    d = spec_of(repo, [task("A", command=cmd, isolation="none")])
    proc = subprocess.Popen(
        [PY, "-m", "specexec", "run", str(d), "--json"],
        cwd=repo,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    for line in proc.stdout:
        if '"task_waiting"' in line:
            break

    # While it waits (tasks.json is written coalesced, a moment after the event).
    def waiting() -> str | None:
        out = run_cli("status", str(d), cwd=repo).stdout
        return out if "waiting until" in out else None

    shown: str = wait_for(waiting, 20, "status to show the wait") or ""
    assert "UTC" in shown and "concurrency shell" in shown, shown
    proc.send_signal(signal.SIGINT)
    code = proc.wait(timeout=20)
    assert code == 130, proc.stderr.read() if proc.stderr else ""
    a = read_tasks(d)["A"]
    assert a["status"] == "pending" and "waiting_until" not in a


def test_auth_stops_the_worker_and_leaves_its_tasks_pending(repo: Path, tmp_path: Path) -> None:
    worker = tmp_path / "agent.sh"
    worker.write_text("#!/bin/sh\necho 'Error: 401 Unauthorized: invalid API key' >&2\nexit 1\n")
    worker.chmod(0o755)
    other = task("other", command="echo ok", isolation="none")
    tasks = [task(t, isolation="none", worker={"command": str(worker)}) for t in "ABC"]
    d = spec_of(repo, [*tasks, other])
    proc = run_cli("run", str(d), "--jobs", "1", "--json", cwd=repo)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    by_id = read_tasks(d)
    assert by_id["A"]["status"] == "fail" and by_id["A"]["error_class"] == "auth"
    assert by_id["A"]["attempts"] == 1  # not retried
    assert by_id["B"]["status"] == by_id["C"]["status"] == "pending"
    assert by_id["other"]["status"] == "pass"  # another worker goes on
    m = run_json(d)
    assert m["tasks"]["pending"] == 2
    assert any("auth" in why for why in m["stopped_workers"].values())
    summary = run_cli("run", str(d), "--jobs", "1", cwd=repo)  # the summary names it
    assert "stopped: worker command" in summary.stdout and "auth" in summary.stdout


def burst_spec(repo: Path, tmp_path: Path) -> tuple[Path, Path]:
    """A spec whose tasks A-D all get a 429 at once on their first attempt (each waits
    until all four have started), then pass; E-G, after them, pass at once."""
    marks = tmp_path / "marks"
    marks.mkdir()
    gate = tmp_path / "gate"
    gate.mkdir()
    g = shlex.quote(str(gate))
    first = (
        f'touch {g}/"$SPECEXEC_TASK_ID"; '
        f'while [ "$(ls {g} | wc -l)" -lt 4 ]; do sleep 0.05; done; '
        "echo '429 rate limited, retry-after: 0.2'; exit 1"
    )
    script = tmp_path / "agent.sh"
    script.write_text(
        "#!/bin/sh\n"
        'case "$SPECEXEC_TASK_ID" in E|F|G) exit 0 ;; esac\n' + once_then(marks, first) + "\n"
    )
    script.chmod(0o755)
    burst = [task(t, isolation="none") for t in "ABCD"]
    after = [task(t, isolation="none", blocked_by=list("ABCD")) for t in "EFG"]
    return spec_of(repo, [*burst, *after]), script


def test_concurrency_halves_on_rate_limits_and_grows_back(repo: Path, tmp_path: Path) -> None:
    d, script = burst_spec(repo, tmp_path)
    proc = run_cli("run", str(d), "--jobs", "4", "--worker", str(script), "--json", cwd=repo)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    m = run_json(d)
    limits = [(e["limit"], e["why"]) for e in m["concurrency"]]
    # Halved once for the burst of four, not four times; then one step per window of
    # successes: two at 2 (A-D's second attempts), three at 3 (the other two, then E).
    assert limits == [(4, "start"), (2, "rate_limit"), (3, "success"), (4, "success")]
    assert m["workers"]["retried"] == 0 and m["waits"] == 4
    shown = [e for e in events(proc.stdout) if e["event"] == "concurrency"]
    assert [e["limit"] for e in shown] == [2, 3, 4]


def test_fixed_concurrency_waits_out_rate_limits_at_jobs(repo: Path, tmp_path: Path) -> None:
    d, script = burst_spec(repo, tmp_path)
    proc = run_cli(
        "run",
        str(d),
        "--jobs",
        "4",
        "--worker",
        str(script),
        "--json",
        "--fixed-concurrency",
        cwd=repo,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    m = run_json(d)
    assert m["concurrency"] == []  # the limit never moved
    assert m["waits"] == 4 and m["workers"]["retried"] == 0  # still waited out, not retried
    assert {t["status"] for t in read_tasks(d).values()} == {"pass"}
    assert not [e for e in events(proc.stdout) if e["event"] == "concurrency"]


# --------------------------------------------------------------------------- guard, budget


def test_the_resource_guard_holds_starts_while_memory_is_above_it(repo: Path) -> None:
    tasks = [task(t, command="echo ok", isolation="none") for t in "ABC"]
    d = spec_of(repo, tasks)
    proc = run_cli("run", str(d), "--jobs", "3", "--max-memory-percent", "0.1", "--json", cwd=repo)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    evs = events(proc.stdout)
    kinds = [
        e["event"] for e in evs if e["event"] in ("task_started", "resource_wait", "resource_ok")
    ]
    # One starts (nothing runs), the guard holds the others, then each starts in turn.
    starts = [i for i, k in enumerate(kinds) if k == "task_started"]
    assert len(starts) == 3 and kinds.index("resource_wait") < starts[1]
    assert kinds.index("resource_ok", kinds.index("resource_wait")) < starts[2]
    wait = next(e for e in evs if e["event"] == "resource_wait")
    assert "memory" in wait["reason"] and "--max-memory-percent 0.1" in wait["reason"]
    m = run_json(d)
    assert m["max_concurrent"] == 1
    assert m["resource_waits"] and "memory" in m["resource_waits"][0]["why"]


CLAUDE_RESULT = {
    "type": "result",
    "subtype": "success",
    "is_error": False,
    "result": 'Done.\n\n```json\n{"status": "pass"}\n```\n',
    "total_cost_usd": 0.03,
    "usage": {"input_tokens": 1000, "output_tokens": 100},
}


def test_the_cost_budget_stops_starting_tasks(repo: Path, tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    out.write_text(json.dumps(CLAUDE_RESULT) + "\n")
    worker = {"command": f"cat {shlex.quote(str(out))}", "preset": "claude"}
    d = spec_of(repo, [task(t, isolation="none") for t in "ABCD"], worker=worker)
    proc = run_cli("run", str(d), "--max-cost", "0.05", "--jobs", "1", cwd=repo)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    statuses = [t["status"] for t in read_tasks(d).values()]
    assert statuses.count("pass") <= 2 and statuses.count("pending") >= 2
    assert set(statuses) == {"pass", "pending"}
    assert "budget reached" in proc.stdout and "--max-cost $0.05" in proc.stdout
    m = run_json(d)
    assert m["cost_usd"] == pytest.approx(0.06) and m["budget_reached"]
    assert m["tokens"] == {"input": 2000, "output": 200}
    passed = [t for t in read_tasks(d).values() if t["status"] == "pass"]
    assert all(t["cost_usd"] == 0.03 and t["tokens"]["output"] == 100 for t in passed)
    shown = run_cli("status", str(d), cwd=repo).stdout
    assert "$0.0300 1100 tok" in shown and "recorded cost: $0.0600 2200 tok" in shown, shown


def test_the_token_budget_of_tasks_json(repo: Path, tmp_path: Path) -> None:
    out = tmp_path / "result.json"
    out.write_text(json.dumps(CLAUDE_RESULT) + "\n")
    worker = {"command": f"cat {shlex.quote(str(out))}", "preset": "claude"}
    d = spec_of(
        repo,
        [task(t, isolation="none") for t in "ABC"],
        worker=worker,
        defaults={"max_tokens": 1000},
    )
    proc = run_cli("run", str(d), "--jobs", "1", cwd=repo)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    statuses = sorted(t["status"] for t in read_tasks(d).values())
    assert statuses == ["pass", "pending", "pending"]
    assert "defaults.max_tokens 1000" in proc.stdout


# --------------------------------------------------------------------------- on_conflict


def both_started(tmp_path: Path, me: str, other: str, text: str) -> str:
    """Write ``text`` to shared.txt once both tasks have started (from the same base)."""
    g = shlex.quote(str(tmp_path))
    return (
        f"touch {g}/{me}.started; "
        f"while [ ! -e {g}/{other}.started ]; do sleep 0.05; done; "
        f"echo {text} > shared.txt"
    )


@pytest.mark.parametrize("on_conflict", ["fail", "rerun"])
def test_a_merge_conflict_fails_or_reruns_from_the_new_tip(
    repo: Path, tmp_path: Path, on_conflict: str
) -> None:
    (repo / "shared.txt").write_text("base\n")
    tasks = [
        task("A", command=both_started(tmp_path, "A", "B", "from-a"), files=["a/"]),
        task("B", command=both_started(tmp_path, "B", "A", "from-b"), files=["b/"]),
    ]
    d = spec_of(repo, tasks, defaults={"on_conflict": on_conflict})
    proc = run_cli("run", str(d), "--jobs", "2", "--retries", "0", cwd=repo)
    by_id = read_tasks(d)
    if on_conflict == "fail":
        assert proc.returncode == 1, proc.stdout + proc.stderr
        failed = [t for t in by_id.values() if t["status"] == "fail"]
        assert len(failed) == 1 and failed[0]["error_class"] == "merge_conflict"
        return
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert all(t["status"] == "pass" for t in by_id.values())
    rerun = next(t for t in by_id.values() if t["attempts"] == 2)
    # The first attempt's branch is kept; the rerun was told what conflicted.
    kept = f"specexec/fleet@{rerun['id']}-conflict1"
    assert git(repo, "branch", "--list", kept).strip()
    prompt = next((d / ".specexec" / "runs").glob(f"*/{rerun['id']}.prompt.md")).read_text()
    assert "Merge Conflict Last Time" in prompt and "- shared.txt" in prompt
    winner = "from-b" if rerun["id"] == "B" else "from-a"
    assert git(repo, "show", "specexec/fleet:shared.txt").strip() == winner


def test_the_live_view_shows_limits_spend_and_held_starts() -> None:
    from rich.console import Console

    from specexec.run.live import LiveState

    s = LiveState()
    s.apply("run_started", {"pending": 2, "jobs": 4}, 0.0)
    s.apply("concurrency", {"worker": "claude", "limit": 2, "why": "rate_limit"}, 0.1)
    s.apply("resource_wait", {"reason": "memory 90% > --max-memory-percent 85"}, 0.2)
    s.apply(
        "task_finished",
        {"spec": "s", "task": "A", "status": "pass", "total_cost_usd": 0.03, "total_tokens": 1100},
        0.3,
    )
    console = Console(width=200, record=True)
    console.print(s.render(1.0, None))
    text = console.export_text()
    assert "claude: 2 of 4 at once" in text and "$0.0300, 1100 tokens" in text
    assert "no new task starts: memory 90%" in text
    s.apply("concurrency", {"worker": "claude", "limit": 4, "why": "success"}, 0.4)
    s.apply("resource_ok", {"seconds": 1.0}, 0.5)
    console = Console(width=200, record=True)
    console.print(s.render(1.0, None))
    text = console.export_text()
    assert "at once" not in text and "no new task starts" not in text
