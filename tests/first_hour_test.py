"""The small things a newcomer meets in the first hour (issue 16, item 8): one warning
per problem, "did you mean" for near misses, JSON errors that name the likely cause and
show the line, and one form of path in the pre-commit hook's output."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
from conftest import git, run_cli, task, write_spec

from specexec.errors import InvalidInput
from specexec.tasksfile import jsonio
from specexec.workers.resolve import cli_worker


def test_plan_warns_once_about_a_task_without_files(repo: Path) -> None:
    d = write_spec(repo / "specs" / "s", [task("T1", command="true")])
    proc = run_cli("plan", str(d))
    assert proc.returncode == 0, proc.stderr
    out = proc.stdout + proc.stderr
    assert out.count("warning") == 1 and "relevant_files" in out, out


def test_unknown_blocker_suggests_the_near_miss(repo: Path) -> None:
    d = write_spec(
        repo / "specs" / "s",
        [
            task("fmt-attr", files=["a"], command="true"),
            task("lint", files=["b"], command="true", blocked_by=["fmt-atr"]),
        ],
    )
    proc = run_cli("validate", str(d))
    assert proc.returncode == 2
    assert 'unknown task "fmt-atr" (did you mean "fmt-attr"?)' in proc.stdout + proc.stderr


def test_unknown_preset_suggests_the_near_miss(repo: Path) -> None:
    d = write_spec(repo / "specs" / "s", [task("T1", files=["a"])], worker="cluade")
    proc = run_cli("validate", str(d))
    assert proc.returncode == 2
    assert "unknown preset 'cluade' (did you mean \"claude\"?)" in proc.stdout + proc.stderr
    # `--worker` takes a command too: a one-word near miss that is no command is a typo.
    with pytest.raises(InvalidInput, match='did you mean "codex"'):
        cli_worker("codx")
    assert cli_worker("sh -c true") is not None and cli_worker("true") is not None


@pytest.mark.parametrize(
    ("text", "cause", "line"),
    [
        (
            '{\n  "tasks": [\n    {"id": "T1"},\n  ]\n}',
            "a trailing comma at line 3",
            '{"id": "T1"},',
        ),
        ('{\n  "version": 1,\n}', "a trailing comma at line 2", '"version": 1,'),
        ('{\n  "version": 1\n  "tasks": []\n}', "a missing comma after line 2", '"version": 1'),
        ("{\n  version: 1\n}", "an unquoted key", "version: 1"),
        ("{\n  'version': 1\n}", "single quotes", "'version': 1"),
    ],
)
def test_invalid_json_names_the_likely_cause_and_shows_the_line(
    text: str, cause: str, line: str
) -> None:
    with pytest.raises(InvalidInput) as e:
        jsonio.loads(text, source="specs/x/tasks.json")
    message = str(e.value)
    assert message.startswith("specs/x/tasks.json:"), message
    assert f"; likely {cause}" in message and message.endswith(f": {line}"), message


def test_pre_commit_names_every_file_relative_to_the_top(repo: Path) -> None:
    assert run_cli("hooks", "install", "--repo", str(repo), "--hook", "pre-commit").returncode == 0
    write_spec(repo / "specs" / "a", [task("T1", files=["a"], command="true", blocked_by=["T9"])])
    (repo / "specs" / "b").mkdir()
    (repo / "specs" / "b" / "tasks.json").write_text('{"tasks": [],}\n')
    git(repo, "add", "-A")
    proc = subprocess.run(
        ["git", "commit", "-q", "-m", "x"], cwd=repo, capture_output=True, text=True, check=False
    )
    assert proc.returncode != 0 and "commit refused" in proc.stderr
    problems = [line.strip() for line in proc.stderr.splitlines()[1:]]
    assert len(problems) == 2, proc.stderr
    assert problems[0].startswith("specs/a/tasks.json: "), problems
    assert problems[1].startswith("specs/b/tasks.json:1:"), problems
    assert str(repo) not in proc.stderr
