"""`specexec hooks`: real repositories, real `git commit`/`merge`/`checkout`, the installed
scripts run by git itself, background runs checked by their effect on tasks.json."""

from __future__ import annotations

import os
import shlex
import shutil
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
from conftest import git, init_repo, read_tasks, run_cli, task, wait_for, write_spec

from specexec.git.hooks import HOOK_TYPES, MARKER, ORIG_SUFFIX

ROOT = Path(__file__).resolve().parents[2]


def all_pass(spec_dir: Path) -> bool:
    try:
        tasks = read_tasks(spec_dir)
    except (OSError, ValueError):
        return False
    return bool(tasks) and all(t["status"] == "pass" for t in tasks.values())


def commit(repo: Path, message: str, *extra: str) -> tuple[subprocess.CompletedProcess[str], float]:
    """`git commit` as a user runs it (hooks on); returns the result and its wall time."""
    t0 = time.monotonic()
    proc = subprocess.run(
        ["git", "commit", "-q", "-m", message, *extra],
        cwd=repo,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    return proc, time.monotonic() - t0


def slow_spec(spec_dir: Path, rec: Path, gate: Path | None = None) -> Path:
    """A spec whose one task records the GIT_* variables it sees and, given a ``gate``,
    does not finish before that file exists (for at most 120 s)."""
    env_file = shlex.quote(str(rec / f"{spec_dir.name}.env"))
    wait = ""
    if gate is not None:
        g = shlex.quote(str(gate))
        wait = f"i=0; while [ ! -e {g} ] && [ $i -lt 1200 ]; do sleep 0.1; i=$((i+1)); done; "
    cmd = f"env | grep '^GIT_' > {env_file}; {wait}echo done > result.txt"
    return write_spec(spec_dir, [task("T1", command=cmd, files=["result.txt"])])


def cyclic_spec(spec_dir: Path) -> Path:
    return write_spec(
        spec_dir,
        [
            task("T1", command="true", blocked_by=["T2"]),
            task("T2", command="true", blocked_by=["T1"]),
        ],
    )


def mode_and_bytes(path: Path) -> tuple[int, bytes]:
    return stat.S_IMODE(path.stat().st_mode), path.read_bytes()


def test_post_commit_runs_the_new_spec_in_the_background(repo: Path, tmp_path: Path) -> None:
    rec = tmp_path / "rec"
    rec.mkdir()
    hooks_dir = repo / ".git" / "hooks"
    existing = hooks_dir / "post-commit"
    existing.write_text(
        f'#!/bin/sh\necho "original hook ran" >> {shlex.quote(str(rec / "orig"))}\n'
    )
    existing.chmod(0o750)
    before = mode_and_bytes(existing)

    # The hooks that run spec folders (pre-commit validation is timed in its own test).
    run_hooks = ["--hook", "post-commit", "--hook", "post-merge", "--hook", "post-checkout"]
    out = run_cli("hooks", "install", "--repo", str(repo), *run_hooks)
    assert out.returncode == 0, out.stderr
    assert "previous hook runs first" in out.stdout
    again = run_cli("hooks", "install", "--repo", str(repo), *run_hooks)  # idempotent
    assert again.stdout.count("already installed") == 3, again.stdout
    assert mode_and_bytes(hooks_dir / f"post-commit{ORIG_SUFFIX}") == before
    assert MARKER in (hooks_dir / "post-commit").read_text()
    assert sys.executable in (hooks_dir / "post-commit").read_text()

    gate = rec / "gate"
    spec = slow_spec(repo / "specs" / "new", rec, gate)
    git(repo, "add", "-A")
    # The task cannot finish before the gate opens, and the gate opens only once git
    # commit has returned: git did not wait for the run (else it times out).
    proc, took = commit(repo, "add a spec folder")
    assert proc.returncode == 0, proc.stderr
    print(f"git commit with the post-* hooks installed: {took:.2f}s")
    assert not all_pass(spec)  # still running
    assert "running specs/new in the background" in proc.stderr
    gate.touch()
    wait_for(lambda: all_pass(spec), 60, "the spec to pass")
    assert (rec / "orig").read_text() == "original hook ran\n"
    assert (rec / "new.env").read_text() == ""  # no GIT_DIR/GIT_INDEX_FILE leaked
    assert (
        "post-commit: specexec run --wait" in (repo / ".git" / "specexec" / "hooks.log").read_text()
    )

    # A commit that touches no tasks.json starts nothing.
    (repo / "README.md").write_text("changed\n")
    git(repo, "add", "README.md")
    proc, _ = commit(repo, "no spec")
    assert proc.returncode == 0 and "background" not in proc.stderr

    out = run_cli("hooks", "uninstall", "--repo", str(repo))
    assert out.returncode == 0, out.stderr
    assert mode_and_bytes(existing) == before
    assert sorted(p.name for p in hooks_dir.iterdir() if not p.name.endswith(".sample")) == [
        "post-commit"
    ]
    assert not any(h in HOOK_TYPES for h in os.listdir(hooks_dir) if h != "post-commit")


def test_root_commit_and_core_hooks_path(tmp_path: Path) -> None:
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.email", "t@example.com")
    git(repo, "config", "user.name", "T")
    git(repo, "config", "core.hooksPath", ".githooks")
    out = run_cli("hooks", "install", "--repo", str(repo), "--hook", "post-commit")
    assert out.returncode == 0, out.stderr
    assert (repo / ".githooks" / "post-commit").is_file()
    assert not (repo / ".git" / "hooks" / "post-commit").exists()
    rec = tmp_path / "rec"
    rec.mkdir()
    spec = slow_spec(repo / "s1", rec)
    git(repo, "add", "s1")
    proc, _ = commit(repo, "root commit with a spec")  # no HEAD~1: the root commit's files
    assert proc.returncode == 0, proc.stderr
    wait_for(lambda: all_pass(spec), 60, "the spec to pass")
    out = run_cli("hooks", "uninstall", "--repo", str(repo))
    assert not (repo / ".githooks" / "post-commit").exists()


def test_post_merge_and_post_checkout_run_the_changed_specs(repo: Path, tmp_path: Path) -> None:
    rec = tmp_path / "rec"
    rec.mkdir()
    assert (
        run_cli(
            "hooks",
            "install",
            "--repo",
            str(repo),
            "--hook",
            "post-merge",
            "--hook",
            "post-checkout",
        ).returncode
        == 0
    )
    git(repo, "checkout", "-q", "-b", "feature")
    merged = slow_spec(repo / "specs" / "merged", rec)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "spec on a branch")
    git(repo, "checkout", "-q", "main")  # the spec folder goes away: nothing to run
    assert not merged.exists()
    git(repo, "merge", "-q", "--no-edit", "feature")  # post-merge: ORIG_HEAD..HEAD
    wait_for(lambda: all_pass(merged), 60, "the merged spec to pass")

    git(repo, "checkout", "-q", "--", ".")  # drop the run's status edits
    git(repo, "checkout", "-q", "-b", "other")  # the same commit: nothing to run
    checked = slow_spec(repo / "specs" / "checked", rec)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "another spec")
    git(repo, "checkout", "-q", "main")  # the spec folder goes away: nothing to run
    git(repo, "checkout", "-q", "other")  # post-checkout: main..other
    wait_for(lambda: all_pass(checked), 60, "the checked-out spec to pass")
    log = (repo / ".git" / "specexec" / "hooks.log").read_text()
    starts = [line for line in log.splitlines() if ": specexec run --wait " in line]
    assert len(starts) == 2, log
    assert "post-merge" in starts[0] and "post-checkout" in starts[1]


def test_pre_commit_validates_the_staged_content(repo: Path) -> None:
    assert run_cli("hooks", "install", "--repo", str(repo), "--hook", "pre-commit").returncode == 0
    spec = cyclic_spec(repo / "specs" / "loop")
    git(repo, "add", "-A")
    proc, took = commit(repo, "cyclic")
    print(f"git commit refused by the pre-commit validation: {took:.2f}s")
    assert proc.returncode != 0
    assert "commit refused" in proc.stderr
    assert "T1 -> T2 -> T1" in proc.stderr or "T2 -> T1 -> T2" in proc.stderr
    assert "specs/loop/tasks.json" in proc.stderr

    # Fixed in the working tree but not staged: the index is what gets committed.
    write_spec(spec, [task("T1", command="true"), task("T2", command="true", blocked_by=["T1"])])
    proc, _ = commit(repo, "still cyclic in the index")
    assert proc.returncode != 0 and "T1" in proc.stderr
    git(repo, "add", "-A")
    proc, _ = commit(repo, "fixed")
    assert proc.returncode == 0, proc.stderr

    # `git commit -a` stages into a temporary index (GIT_INDEX_FILE): that is checked.
    cyclic_spec(spec)
    proc, _ = commit(repo, "cyclic again", "-a")
    assert proc.returncode != 0 and "commit refused" in proc.stderr
    # Broken in the working tree only, valid when staged: accepted.
    git(repo, "checkout", "--", ".")
    (spec / "tasks.json").write_text("{ not json")
    (repo / "README.md").write_text("x\n")
    git(repo, "add", "README.md")
    proc, _ = commit(repo, "unrelated")
    assert proc.returncode == 0, proc.stderr


def test_existing_pre_commit_hook_runs_first_and_can_refuse(repo: Path, tmp_path: Path) -> None:
    hooks_dir = repo / ".git" / "hooks"
    flag = tmp_path / "refuse"
    existing = hooks_dir / "pre-commit"
    existing.write_text(f'#!/bin/sh\nif [ -e {flag} ]; then echo "lint failed" >&2; exit 3; fi\n')
    existing.chmod(0o755)
    before = mode_and_bytes(existing)
    assert run_cli("hooks", "install", "--repo", str(repo)).returncode == 0
    flag.touch()
    write_spec(repo / "specs" / "ok", [task("T1", command="true")])
    git(repo, "add", "-A")
    proc, _ = commit(repo, "refused by the old hook")
    assert proc.returncode != 0 and "lint failed" in proc.stderr
    flag.unlink()
    cyclic_spec(repo / "specs" / "ok")
    git(repo, "add", "-A")
    proc, _ = commit(repo, "refused by specexec")
    assert proc.returncode != 0 and "commit refused" in proc.stderr
    assert run_cli("hooks", "uninstall", "--repo", str(repo)).returncode == 0
    assert mode_and_bytes(existing) == before
    assert not any(p.name.endswith(ORIG_SUFFIX) for p in hooks_dir.iterdir())


def test_hooks_usage_errors(repo: Path, tmp_path: Path) -> None:
    out = run_cli("hooks", "install", "--repo", str(repo), "--hook", "pre-push")
    assert out.returncode == 2 and "unknown hook type pre-push" in out.stderr
    out = run_cli("hooks", "install", "--repo", str(tmp_path / "nowhere"))
    assert out.returncode == 2
    (tmp_path / "plain").mkdir()
    out = run_cli("hooks", "install", "--repo", str(tmp_path / "plain"))
    assert out.returncode == 2 and "git" in out.stderr.lower()


@pytest.mark.slow
def test_pre_commit_framework_specexec_validate(tmp_path: Path) -> None:
    """The real pre-commit framework installs this project as a hook repository
    from .pre-commit-hooks.yaml and runs `specexec-validate` on the staged tasks.json."""
    src = tmp_path / "specexec-src"
    shutil.copytree(
        ROOT,
        src,
        ignore=shutil.ignore_patterns(
            ".git", "__pycache__", "*_cache", ".venv", "*.egg-info", "bench"
        ),
    )
    git(src, "init", "-q", "-b", "main")
    git(src, "config", "user.email", "t@example.com")
    git(src, "config", "user.name", "T")
    git(src, "add", "-A")
    git(src, "commit", "-q", "-m", "specexec source")
    rev = git(src, "rev-parse", "HEAD")

    # pre-commit is a test dependency (pyproject's test extra), installed beside pytest.
    pre_commit = Path(sys.executable).with_name("pre-commit")
    assert pre_commit.exists(), "pip install -e '.[test]' installs pre-commit"
    env = {**os.environ, "PRE_COMMIT_HOME": str(tmp_path / "pc-home")}

    repo = init_repo(tmp_path / "repo")
    (repo / ".pre-commit-config.yaml").write_text(
        f"repos:\n  - repo: {src}\n    rev: {rev}\n    hooks:\n      - id: specexec-validate\n"
    )
    inst = subprocess.run(
        [str(pre_commit), "install"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        check=False,
    )
    assert inst.returncode == 0, inst.stderr
    cyclic_spec(repo / "specs" / "loop")
    git(repo, "add", "-A")
    bad = subprocess.run(
        ["git", "commit", "-m", "cyclic"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    output = bad.stdout + bad.stderr
    assert bad.returncode != 0, output
    assert "specexec validate" in output and "Failed" in output
    assert "T1 -> T2 -> T1" in output or "T2 -> T1 -> T2" in output

    write_spec(
        repo / "specs" / "loop",
        [task("T1", command="true"), task("T2", command="true", blocked_by=["T1"])],
    )
    git(repo, "add", "-A")
    good = subprocess.run(
        ["git", "commit", "-m", "valid"],
        cwd=repo,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert good.returncode == 0, good.stdout + good.stderr
    assert "Passed" in good.stdout + good.stderr


def test_a_hook_whose_python_is_gone_does_not_block_commits(repo: Path, tmp_path: Path) -> None:
    from specexec.git.hooks import install

    install(repo, ["pre-commit", "post-commit"], python=str(tmp_path / "gone" / "python"))
    cyclic_spec(repo / "specs" / "loop")
    git(repo, "add", "-A")
    proc, _ = commit(repo, "no specexec to run")
    assert proc.returncode == 0, proc.stderr
    assert "no longer exists" in proc.stderr and "specexec hooks install" in proc.stderr
