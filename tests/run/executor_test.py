"""`specexec run` end to end: real repositories, real worktrees, real worker processes."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
from pathlib import Path

import pytest
from conftest import PY, git, read_tasks, run_cli, task, write_spec

from specexec.plan.planner import make_plan
from specexec.tasksfile.schema import load_spec


def timed(log: Path, seconds: float, extra: str = "") -> str:
    """A shell command recording start and end times to ``log`` (outside the repo)."""
    q = shlex.quote(str(log))
    cmd = (
        f'echo "$SPECEXEC_TASK_ID start $(date +%s.%N)" >> {q}; sleep {seconds}; '
        f'echo "$SPECEXEC_TASK_ID end $(date +%s.%N)" >> {q}'
    )
    return f"{cmd}; {extra}" if extra else cmd


def intervals(log: Path) -> dict[str, tuple[float, float]]:
    starts: dict[str, float] = {}
    out: dict[str, tuple[float, float]] = {}
    for line in log.read_text().splitlines():
        tid, what, when = line.split()
        if what == "start":
            starts[tid] = float(when)
        else:
            out[tid] = (starts[tid], float(when))
    return out


def max_overlap(spans: dict[str, tuple[float, float]]) -> int:
    edges = sorted([(s, 1) for s, _ in spans.values()] + [(e, -1) for _, e in spans.values()])
    level = peak = 0
    for _, d in edges:
        level += d
        peak = max(peak, level)
    return peak


def subjects(repo: Path, branch: str) -> list[str]:
    return git(repo, "log", "--no-merges", "--format=%s", branch).splitlines()


@pytest.mark.slow
def test_dag_respects_blockers_conflicts_jobs_and_matches_the_plan(
    repo: Path, tmp_path: Path
) -> None:
    log = tmp_path / "times.log"
    durations = {"A": 2.0, "B": 1.0, "C": 1.5, "D": 1.0, "E": 2.0, "F": 1.0, "G": 1.0}
    shape = {
        "A": ([], ["a.txt"]),
        "B": ([], ["b.txt"]),
        "C": ([], ["shared.txt"]),
        "D": (["B"], ["shared.txt"]),
        "E": (["A"], ["e.txt"]),
        "F": (["B", "C"], ["f.txt"]),
        "G": (["E", "F"], ["g.txt"]),
    }
    tasks = [
        task(
            t,
            blocked_by=deps,
            files=files,
            command=timed(log, durations[t]),
            estimated_minutes=durations[t] / 60,
            isolation="none",
        )
        for t, (deps, files) in shape.items()
    ]
    d = write_spec(repo / "specs" / "dag", tasks)
    proc = run_cli("run", str(d), "--jobs", "2")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    spans = intervals(log)
    assert set(spans) == set(durations)
    for t, (deps, _) in shape.items():
        for b in deps:
            assert spans[t][0] >= spans[b][1], f"{t} started before its blocker {b} ended"
    c, dd = spans["C"], spans["D"]
    assert c[1] <= dd[0] or dd[1] <= c[0], "C and D share shared.txt but overlapped"
    assert max_overlap(spans) <= 2
    makespan = max(e for _, e in spans.values()) - min(s for s, _ in spans.values())
    estimate = make_plan(load_spec(d)[0].tasks, 2).eager_minutes * 60
    print(f"measured makespan {makespan:.2f}s, plan's eager estimate {estimate:.2f}s")
    assert makespan <= estimate * 1.10 + 1.0


@pytest.mark.slow
def test_eager_beats_waves_on_a_barrier_dag(repo: Path, tmp_path: Path) -> None:
    def spec(name: str, log: Path) -> Path:
        return write_spec(
            repo / "specs" / name,
            [
                task(
                    "A",
                    files=["a"],
                    command=timed(log, 3.0),
                    estimated_minutes=0.05,
                    isolation="none",
                ),
                task(
                    "B",
                    files=["b"],
                    command=timed(log, 0.3),
                    estimated_minutes=0.005,
                    isolation="none",
                ),
                task("C", blocked_by=["A"], files=["c"], command=timed(log, 0.3), isolation="none"),
                task("D", blocked_by=["B"], files=["d"], command=timed(log, 3.0), isolation="none"),
            ],
        )

    took = {}
    for mode in ("eager", "waves"):
        log = tmp_path / f"{mode}.log"
        proc = run_cli("run", str(spec(mode, log)), "--jobs", "2", "--schedule", mode)
        assert proc.returncode == 0, proc.stderr
        spans = intervals(log)
        took[mode] = max(e for _, e in spans.values()) - min(s for s, _ in spans.values())
    print(f"eager {took['eager']:.2f}s, waves {took['waves']:.2f}s")
    assert took["eager"] <= 0.8 * took["waves"]


def test_failure_blocks_dependents_then_retry_failed_finishes(repo: Path) -> None:
    d = write_spec(
        repo / "specs" / "f",
        [
            task("ok", files=["ok.txt"], command="echo ok > ok.txt"),
            task("bad", files=["bad.txt"], command="echo oops >&2; exit 3", max_retries=0),
            task(
                "after", blocked_by=["bad"], files=["after.txt"], command="echo after > after.txt"
            ),
            task(
                "later", blocked_by=["after"], files=["later.txt"], command="echo later > later.txt"
            ),
        ],
    )
    proc = run_cli("run", str(d))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    tasks = read_tasks(d)
    assert tasks["ok"]["status"] == "pass"
    assert tasks["bad"]["status"] == "fail" and "3" in tasks["bad"]["blocker"]
    assert tasks["after"]["status"] == "blocked" and "bad" in tasks["after"]["blocker"]
    assert tasks["later"]["status"] == "blocked" and "after" in tasks["later"]["blocker"]
    assert "blocked" in proc.stdout and "passed" in proc.stdout

    # Fix the command by hand, then retry only what failed.
    doc = json.loads((d / "tasks.json").read_text())
    doc["tasks"][1]["command"] = "echo fixed > bad.txt"
    (d / "tasks.json").write_text(json.dumps(doc, indent=2) + "\n")
    proc = run_cli("run", str(d), "--retry-failed", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    started = [
        json.loads(line)["task"]
        for line in proc.stdout.splitlines()
        if json.loads(line)["event"] == "task_started"
    ]
    assert sorted(started) == ["after", "bad", "later"]
    assert all(t["status"] == "pass" for t in read_tasks(d).values())
    subs = subjects(repo, "specexec/f")
    for tid in ("ok", "bad", "after", "later"):
        assert sum(s.startswith(f"{tid}:") for s in subs) == 1, subs


def test_conflicting_changes_fail_without_losing_work(repo: Path) -> None:
    # Two tasks that declare different files but both rewrite README.md: the second to
    # merge conflicts; nothing is overwritten and its branch is kept.
    before = {p: (repo / p).read_bytes() for p in ("README.md",)}
    head = git(repo, "rev-parse", "HEAD")
    d = write_spec(
        repo / "specs" / "c",
        [
            task("one", files=["one"], command="echo one > README.md"),
            task("two", files=["two"], command="echo two > README.md", max_retries=0),
        ],
    )
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "spec")
    proc = run_cli("run", str(d), "--jobs", "2")
    assert proc.returncode == 1
    tasks = read_tasks(d)
    statuses = sorted(t["status"] for t in tasks.values())
    assert statuses == ["fail", "pass"]
    loser = next(t for t in tasks.values() if t["status"] == "fail")
    assert "merge conflict in README.md" in loser["blocker"]
    assert git(repo, "rev-parse", "--verify", loser["branch"])  # kept
    winner = next(t for t in tasks.values() if t["status"] == "pass")
    assert git(repo, "show", "specexec/c:README.md") == winner["id"]
    assert git(repo, "rev-parse", "HEAD~1") == head
    assert (repo / "README.md").read_bytes() == before["README.md"]
    assert not list(repo.joinpath(".git").rglob("MERGE_HEAD"))
    # Both changed a file they did not declare: recorded, a warning only (the loser
    # failed on the conflict, not on its scope).
    assert loser["scope_violations"] == ["README.md"]
    assert winner["scope_violations"] == ["README.md"]


def test_strict_scope_fails_changes_outside_relevant_files(repo: Path) -> None:
    d = write_spec(
        repo / "specs" / "s",
        [
            task(
                "T1",
                files=["docs/"],
                command="mkdir -p docs src && echo a > docs/a && echo b > src/b",
                max_retries=0,
            ),
        ],
    )
    proc = run_cli("run", str(d), "--strict-scope")
    assert proc.returncode == 1
    t = read_tasks(d)["T1"]
    assert t["status"] == "fail" and "src/b" in t["blocker"]
    assert t["scope_violations"] == ["src/b"]


def test_verify_failure_and_timeout_retry_with_longer_timeout(repo: Path) -> None:
    d = write_spec(
        repo / "specs" / "v",
        [
            task(
                "V", files=["v"], command="echo v > v", verify="test -f nonexistent", max_retries=0
            ),
            # First attempt times out (0.02 min = 1.2 s); the retry gets 1.5x and the command
            # (which only sleeps on the first attempt) passes.
            task(
                "T",
                files=["t"],
                timeout_minutes=0.02,
                max_retries=1,
                command='if [ "$SPECEXEC_ATTEMPT" = 1 ]; then sleep 30; fi; echo t > t',
            ),
        ],
    )
    proc = run_cli("run", str(d), "--json")
    tasks = read_tasks(d)
    assert tasks["V"]["status"] == "fail" and "verify failed" in tasks["V"]["blocker"]
    assert tasks["T"]["status"] == "pass" and tasks["T"]["attempts"] == 2, proc.stdout
    retry = [json.loads(x) for x in proc.stdout.splitlines() if '"task_retry"' in x]
    assert retry and "timed out" in retry[0]["reason"]


def test_second_run_is_busy(repo: Path) -> None:
    d = write_spec(repo / "specs" / "b", [task("T", files=["t"], command="sleep 30")])
    first = subprocess.Popen(
        [PY, "-m", "specexec", "run", str(d), "--json"], stdout=subprocess.PIPE, text=True
    )
    try:
        assert first.stdout is not None
        for line in first.stdout:  # wait until the first run really runs
            if '"task_started"' in line:
                break
        proc = run_cli("run", str(d), timeout=10)
        assert proc.returncode == 75, proc.stderr
        assert "pid" in proc.stderr
    finally:
        first.terminate()
        first.wait(timeout=30)
    assert first.returncode == 130
    assert read_tasks(d)["T"]["status"] == "pending"


def test_a_report_that_cannot_be_written_costs_only_the_report(repo: Path) -> None:
    # The worker puts a directory where run.json goes (what a full disk does to the last
    # writes of a run): the run says so in one line, and the tasks' states are kept.
    block = 'mkdir "$(dirname "$SPECEXEC_PROMPT_FILE")/run.json"'
    d = write_spec(repo / "specs" / "r", [task("T", files=["t"], command=block)])
    proc = run_cli("run", str(d), "--isolation", "none")
    assert proc.returncode == 0, proc.stderr
    assert "cannot write the run report" in proc.stderr
    assert "Traceback" not in proc.stderr
    assert read_tasks(d)["T"]["status"] == "pass"


def test_pipe_output_is_plain_and_json_is_json(repo: Path) -> None:
    d = write_spec(
        repo / "specs" / "p",
        [
            task("T1", files=["a"], command="printf '\\033[31mred\\n'; echo a > a"),
            task(
                "T2", blocked_by=["T1"], files=["b"], command="echo bad >&2; exit 1", max_retries=0
            ),
        ],
    )
    proc = run_cli("run", str(d))
    assert proc.returncode == 1
    assert not re.search(r"[\x00-\x08\x0b-\x1f\x7f]", proc.stdout), repr(proc.stdout)
    assert "pass   p/T1" in proc.stdout and "fail   p/T2" in proc.stdout
    assert (
        "speedup" in proc.stdout and "review: git log --oneline --graph specexec/p" in proc.stdout
    )
    run_cli("reset", str(d))
    proc = run_cli("run", str(d), "--json")
    events = [json.loads(line) for line in proc.stdout.splitlines()]
    kinds = [e["event"] for e in events]
    assert kinds[0] == "run_started" and kinds[-1] == "run_finished"
    assert {"task_started", "task_finished"} <= set(kinds)


def test_dry_run_changes_nothing_and_explains(repo: Path) -> None:
    d = write_spec(
        repo / "specs" / "dry",
        [
            task("T1", files=["x"], command="true"),
            task("T2", blocked_by=["T1"], files=["y"], command="true"),
            task("T3", files=["x"], command="true"),
        ],
    )
    before = (d / "tasks.json").read_bytes()
    proc = run_cli("run", str(d), "--dry-run", "--jobs", "1")
    assert proc.returncode == 0, proc.stderr
    assert "waits for T1" in proc.stdout
    assert (d / "tasks.json").read_bytes() == before
    assert not (d / ".specexec").exists()
    assert git(repo, "branch", "--list", "specexec/*") == ""


def test_merge_strategy_hands_blockers_data_to_the_task(repo: Path) -> None:
    emit = "printf '%s' '{}' > \"$SPECEXEC_RESULT_FILE\""
    d = write_spec(
        repo / "specs" / "m",
        [
            task("r1", files=["r1"], command=emit.format('{"status":"pass","data":["x","y"]}')),
            task("r2", files=["r2"], command=emit.format('{"status":"pass","data":["y","z"]}')),
            task(
                "sum",
                blocked_by=["r1", "r2"],
                files=["out.json"],
                merge={"strategy": "intersection"},
                command='cp "$SPECEXEC_INPUTS_FILE" out.json',
            ),
        ],
    )
    assert run_cli("run", str(d)).returncode == 0
    inputs = json.loads(git(repo, "show", "specexec/m:out.json"))
    assert inputs["merged"] == {"strategy": "intersection", "items": ["y"]}
    assert [b["id"] for b in inputs["blockers"]] == ["r1", "r2"]
    prompt = next((d / ".specexec" / "runs").glob("*/sum.prompt.md")).read_text()
    assert '<result id="r1"' in prompt and '<result id="r2"' in prompt


def test_fake_agent_cli_end_to_end(repo: Path, tmp_path: Path) -> None:
    fake = Path(__file__).parents[1] / "fake_agents"
    d = write_spec(repo / "specs" / "agent", [task("T1", files=["src/"])], worker="claude")
    env = {
        "PATH": f"{fake}{os.pathsep}{os.path.dirname(PY)}{os.pathsep}{os.environ['PATH']}",
        "FAKE_AGENT_STATUS": "pass",
    }
    proc = run_cli("run", str(d), env=env)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    t = read_tasks(d)["T1"]
    assert t["result"]["status"] == "pass"
    run_json = json.loads(next((d / ".specexec" / "runs").glob("*/run.json")).read_text())
    assert run_json["cost_usd"] is not None and run_json["cost_usd"] > 0


def test_two_specs_share_one_pool(repo: Path, tmp_path: Path) -> None:
    log = tmp_path / "times.log"
    dirs = [
        write_spec(
            repo / "specs" / name,
            [
                task(f"{name}{i}", files=[f"{name}{i}"], command=timed(log, 0.5), isolation="none")
                for i in range(3)
            ],
        )
        for name in ("p", "q")
    ]
    proc = run_cli("run", *map(str, dirs), "--jobs", "3")
    assert proc.returncode == 0, proc.stderr
    spans = intervals(log)
    assert len(spans) == 6 and max_overlap(spans) <= 3


def test_a_running_worker_finds_its_start_already_in_the_event_log(
    repo: Path, tmp_path: Path
) -> None:
    """`status` and the daemon read the event log: a task whose worker runs is already
    recorded as started, with its attempt, at its first attempt and at a retry."""
    seen = tmp_path / "seen.txt"
    check = (
        f'{PY} -c "import json, os, sys; '
        "ev = [json.loads(x) for x in open(os.environ['SPECEXEC_SPEC_DIR'] + "
        "'/.specexec/events.jsonl')]; "
        "me, n = os.environ['SPECEXEC_TASK_ID'], int(os.environ['SPECEXEC_ATTEMPT']); "
        "found = any(e.get('task') == me and e.get('to') == 'in_progress' "
        "and e.get('attempt') == n for e in ev); "
        f"open({str(seen)!r}, 'a').write(f'{{me}} {{n}} {{found}}\\n'); "
        'sys.exit(0 if n == 2 else 3)"'
    )
    tasks = [task(t, files=[f"{t}.txt"], command=check, isolation="none") for t in "AB"]
    for t in tasks:
        t["max_retries"] = 1  # attempt 1 fails on purpose: the retry is checked too
    d = write_spec(repo / "specs" / "ev", tasks)
    proc = run_cli("run", str(d), "--jobs", "2", cwd=repo)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert sorted(seen.read_text().splitlines()) == [
        "A 1 True",
        "A 2 True",
        "B 1 True",
        "B 2 True",
    ]
