"""One attempt, judged from facts specexec checks itself: the result file in the worktree,
the files the worker really changed, what is never the task's change."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

from conftest import git, read_tasks, run_cli, task, write_spec

CLAUDE_RESULT = {
    "type": "result",
    "subtype": "success",
    "is_error": False,
    "result": 'Done.\n```json\n{"status": "pass"}\n```',
    "total_cost_usd": 0.01,
    "usage": {"input_tokens": 10, "output_tokens": 2},
}
DENIED = [{"tool_name": "Write", "tool_use_id": "t1", "tool_input": {"file_path": "/x/.git/a"}}]


def claude_printing(**extra: object) -> dict[str, str]:
    """A worker read as Claude Code's output that prints one result object."""
    text = json.dumps({**CLAUDE_RESULT, **extra})
    return {"preset": "claude", "command": f"printf '%s\\n' {shlex.quote(text)}"}


def branch_files(repo: Path, branch: str) -> set[str]:
    return set(git(repo, "ls-tree", "-r", "--name-only", branch).splitlines())


def test_a_result_printed_without_a_newline_is_still_read(repo: Path) -> None:
    d = write_spec(
        repo / "specs" / "s",
        [
            task(
                "T1",
                files=["bad.txt"],
                command='echo x > bad.txt; printf \'{"status": "fail", "blocker": "tests fail"}\'',
                max_retries=0,
            )
        ],
    )
    proc = run_cli("run", str(d))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    t = read_tasks(d)["T1"]
    assert t["status"] == "fail" and t["blocker"] == "tests fail"
    assert "bad.txt" not in branch_files(repo, "specexec/s")


def test_an_agent_that_reports_pass_but_changed_nothing_fails(repo: Path) -> None:
    worker = claude_printing()
    d = write_spec(
        repo / "specs" / "s",
        [
            task("T1", files=["a.txt"], worker=worker, max_retries=0),
            task("T2", files=["b.txt"], worker=worker, expect_changes=False),
            task(
                "T3",
                files=["c.txt"],
                worker=claude_printing(permission_denials=DENIED),
                max_retries=0,
            ),
        ],
    )
    proc = run_cli("run", str(d))
    tasks = read_tasks(d)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert tasks["T1"]["status"] == "fail"
    assert tasks["T1"]["blocker"] == "the worker reported pass but changed no file"
    assert tasks["T2"]["status"] == "pass"  # the task says no change is expected
    # A denied edit is named, and never a pass.
    assert tasks["T3"]["status"] == "fail" and "Write /x/.git/a" in tasks["T3"]["blocker"]
    assert tasks["T3"]["result"]["denials"] == ["Write /x/.git/a"]


def test_a_shell_task_may_change_nothing_unless_it_expects_changes(repo: Path) -> None:
    d = write_spec(
        repo / "specs" / "s",
        [
            task("check", command="true"),
            task("build", command="true", expect_changes=True, max_retries=0),
        ],
    )
    proc = run_cli("run", str(d))
    tasks = read_tasks(d)
    assert proc.returncode == 1
    assert tasks["check"]["status"] == "pass"
    assert tasks["build"]["status"] == "fail"
    assert "changed no file" in tasks["build"]["blocker"]


def test_the_result_file_lives_in_the_worktree_and_is_never_committed(repo: Path) -> None:
    script = (
        'case "$SPECEXEC_RESULT_FILE" in "$SPECEXEC_WORKTREE"/*) ;; *) exit 9 ;; esac; '
        "echo a > a.txt; "
        'printf \'{"status": "pass", "notes": "from the file"}\' > "$SPECEXEC_RESULT_FILE"'
    )
    d = write_spec(repo / "specs" / "s", [task("T1", files=["a.txt"], command=script)])
    proc = run_cli("run", str(d))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    t = read_tasks(d)["T1"]
    assert t["result"]["notes"] == "from the file" and t["result"]["source"] == "result_file"
    assert t["files_changed"] == ["a.txt"] and t["scope_violations"] == []
    files = branch_files(repo, "specexec/s")
    assert "a.txt" in files and ".specexec-result.json" not in files
    kept = next((d / ".specexec" / "runs").glob("*/T1.result.json"))
    assert json.loads(kept.read_text())["notes"] == "from the file"


def test_files_an_agent_writes_for_itself_are_never_the_change(repo: Path) -> None:
    # Aider's own files, even staged (aider `git add`s what it creates), beside a real edit.
    script = (
        "echo a > a.txt && echo chat > .aider.chat.history.md && mkdir -p .aider.tags.cache.v4"
        " && echo db > .aider.tags.cache.v4/cache.db && git add -A"
        " && echo 'Tokens: 1k sent, 20 received. Cost: $0.01 message, $0.01 session.'"
    )
    worker = {"preset": "aider", "command": script}
    d = write_spec(repo / "specs" / "s", [task("T1", files=["a.txt"], worker=worker)])
    proc = run_cli("run", str(d))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    t = read_tasks(d)["T1"]
    assert t["files_changed"] == ["a.txt"] and t["scope_violations"] == []
    assert t["result"]["tokens"] == {"input": 1000, "output": 20}
    files = branch_files(repo, "specexec/s")
    assert "a.txt" in files and not any(f.startswith(".aider") for f in files), files


def test_an_aider_api_error_with_exit_0_is_a_failure(repo: Path) -> None:
    script = (
        "echo 'litellm.AuthenticationError: AuthenticationError: OpenAIException - "
        "Incorrect API key provided'; exit 0"
    )
    worker = {"preset": "aider", "command": script}
    d = write_spec(
        repo / "specs" / "s", [task("T1", files=["a.txt"], worker=worker, max_retries=0)]
    )
    proc = run_cli("run", str(d))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    t = read_tasks(d)["T1"]
    assert t["status"] == "fail"
    assert "litellm.AuthenticationError" in t["blocker"]


def test_a_timed_out_agents_own_files_are_not_on_its_kept_branch(repo: Path) -> None:
    script = "echo a > a.txt && echo chat > .aider.chat.history.md && git add -A && sleep 60"
    worker = {"preset": "aider", "command": script}
    d = write_spec(
        repo / "specs" / "s",
        [task("T1", files=["a.txt"], worker=worker, timeout_minutes=0.02, max_retries=0)],
    )
    proc = run_cli("run", str(d))
    assert proc.returncode == 1, proc.stdout + proc.stderr
    t = read_tasks(d)["T1"]
    assert t["status"] == "fail" and "timed out" in t["blocker"]
    kept = branch_files(repo, t["branch"])
    assert "a.txt" in kept and not any(f.startswith(".aider") for f in kept), kept
