from __future__ import annotations

import json
import os
from pathlib import Path

from conftest import PY, git, init_repo, read_tasks, run_cli

TEMPLATES = ("shell", "agent", "mixed")
FAKE_AGENTS = Path(__file__).parent.parent / "fake_agents"


def test_init_each_template_then_validate_and_plan(tmp_path: Path) -> None:
    # In a repository: `validate` checks what `run` needs, and worktree tasks need one.
    init_repo(tmp_path)
    # The old names are aliases: scripts and notes written against them keep working.
    for name in (*TEMPLATES, "minimal", "feature"):
        d = tmp_path / "specs" / f"my-{name}"
        proc = run_cli("init", str(d), "--template", name)
        assert proc.returncode == 0, proc.stderr
        doc = json.loads((d / "tasks.json").read_text())
        assert doc["spec"] == f"my-{name}"
        assert json.loads((d / "tasks.schema.json").read_text())["title"] == "specexec tasks.json"
        valid = run_cli("validate", str(d))
        assert valid.returncode == 0, valid.stdout + valid.stderr
        # A newcomer's first look is warning-free (analysis tasks have no files on purpose).
        assert "warning" not in valid.stdout + valid.stderr
        planned = run_cli("plan", str(d))
        assert planned.returncode == 0, planned.stderr
        assert "warning" not in planned.stdout + planned.stderr
        as_json = json.loads(run_cli("plan", str(d), "--format", "json").stdout)
        assert as_json["warnings"] == []


def test_list_works_alone_and_describes_each_template(tmp_path: Path) -> None:
    proc = run_cli("init", "--list", cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert [line.split()[0] for line in lines[:3]] == list(TEMPLATES)
    for line in lines[:3]:
        assert len(line.split(None, 1)[1]) > 20, line  # a one-line description
    missing = run_cli("init", cwd=tmp_path)
    assert missing.returncode == 2 and "--list" in missing.stderr


def test_shell_template_runs_green_in_any_repository(tmp_path: Path) -> None:
    repo = init_repo(tmp_path / "repo")
    assert run_cli("init", "specs/hello", cwd=repo).returncode == 0  # shell is the default
    proc = run_cli("run", "specs/hello", cwd=repo)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert {t["status"] for t in read_tasks(repo / "specs" / "hello").values()} == {"pass"}
    assert "HELLO FROM SPECEXEC" in git(repo, "show", "specexec/hello:hello/greeting.txt")
    index = git(repo, "show", "specexec/hello:hello/index.md")
    assert "- greeting.txt" in index and "- authors.txt" in index
    assert git(repo, "status", "--porcelain") == "?? specs/"  # the checkout is untouched


def test_mixed_template_feeds_the_analysis_into_the_merge_step(tmp_path: Path) -> None:
    repo = init_repo(tmp_path / "repo", {"a.py": "# TODO: one\n", "b.py": "x = 1  # FIXME\n"})
    assert run_cli("init", "specs/mix", "--template", "mixed", cwd=repo).returncode == 0
    # The last task is an agent: the tests' fake `claude` CLI stands in for it.
    path = f"{FAKE_AGENTS}{os.pathsep}{os.path.dirname(PY)}{os.pathsep}{os.environ['PATH']}"
    proc = run_cli("run", "specs/mix", cwd=repo, env={"PATH": path})
    assert proc.returncode == 0, proc.stdout + proc.stderr
    health = json.loads(git(repo, "show", "specexec/mix:reports/health.json"))
    merged = {i["metric"]: i["value"] for i in health["merged"]["items"]}
    assert health["merged"]["strategy"] == "union"
    assert merged == {"tracked_files": 2, "todo_markers": 2, "recent_commits": 1}


def test_agent_template_says_how_to_switch_agents(tmp_path: Path) -> None:
    proc = run_cli("init", str(tmp_path / "a"), "--template", "agent")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "a" / "tasks.json").read_text())["worker"] == "claude"
    assert "codex" in proc.stdout and "--worker" in proc.stdout


def test_feature_template_is_realistic(tmp_path: Path) -> None:
    d = tmp_path / "add-auth"
    assert run_cli("init", str(d), "--template", "feature").returncode == 0
    assert (d / "context-summary.json").exists()
    assert (d / "worker_prompt.md.j2").exists()
    plan = json.loads(run_cli("plan", str(d), "--format", "json").stdout)
    assert len(plan["execution_strategy"]["waves"]) >= 3
    assert len(json.loads((d / "tasks.json").read_text())["tasks"]) >= 8
    assert plan["conflicts"], "the feature template shows a file conflict"


def test_init_refuses_to_overwrite_and_unknown_template(tmp_path: Path) -> None:
    d = tmp_path / "s"
    assert run_cli("init", str(d)).returncode == 0
    before = (d / "tasks.json").read_bytes()
    proc = run_cli("init", str(d))
    assert proc.returncode == 2 and "already exists" in proc.stderr
    assert (d / "tasks.json").read_bytes() == before
    proc = run_cli("init", str(tmp_path / "t"), "--template", "nope")
    assert proc.returncode == 2 and "shell" in proc.stderr
    proc = run_cli("init", str(tmp_path / "t"), "--template", "mixd")
    assert proc.returncode == 2 and 'did you mean "mixed"' in proc.stderr
