"""The git layer on real repositories: worktrees, commits, merges, isolation from the user."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import threading
from pathlib import Path

import pytest
from conftest import PY, git, init_repo

from specexec.errors import Busy, GitError, InvalidInput
from specexec.git.workspace import (
    MergeResult,
    Workspace,
    Worktree,
    checkout_patterns,
    integration_branch,
    task_branch,
)
from specexec.tasksfile.types import Task

SPEC = "feat"


# --- helpers -------------------------------------------------------------------------


def write(root: Path, files: dict[str, str]) -> None:
    for rel, text in files.items():
        f = root / rel
        f.parent.mkdir(parents=True, exist_ok=True)
        f.write_text(text)


def run_task(ws: Workspace, task_id: str, files: dict[str, str]) -> tuple[Worktree, str]:
    """A worker that writes ``files``; returns the worktree and the committed sha."""
    wt = ws.create_worktree(SPEC, task_id)
    write(wt.path, files)
    sha = ws.commit_all(wt, f"task {task_id}")
    assert sha is not None
    return wt, sha


def show(repo: Path, rev: str, path: str) -> str:
    return git(repo, "show", f"{rev}:{path}")


def snapshot(repo: Path) -> dict[str, str]:
    """Hashes of everything of the user's that specexec must never touch."""
    dot = repo / ".git"
    snap = {
        # The index's content; its stat cache is refreshed by `git status` itself (below),
        # so the raw bytes can change under a slow machine's clock without anyone's write.
        ".git/index": git(repo, "ls-files", "--stage", "-v"),
        ".git/HEAD": (dot / "HEAD").read_text(),
        ".git/config": (dot / "config").read_text(),
        "HEAD sha": git(repo, "rev-parse", "HEAD"),
        "status": git(repo, "status", "--porcelain", "--untracked-files=all", "--ignored"),
    }
    for root, dirs, files in os.walk(repo):
        dirs[:] = [d for d in dirs if not (root == str(repo) and d == ".git")]
        for name in files:
            p = Path(root, name)
            snap[str(p.relative_to(repo))] = hashlib.sha256(p.read_bytes()).hexdigest()
    return snap


def merge_heads(repo: Path) -> list[Path]:
    """Every MERGE_HEAD in the common dir and in every worktree's git dir."""
    return sorted((repo / ".git").rglob("MERGE_HEAD"))


def task_branches(repo: Path) -> list[str]:
    out = git(repo, "for-each-ref", "--format=%(refname:short)", "refs/heads/specexec/")
    return [b for b in out.splitlines() if "@" in b]


# --- discovery and the integration branch ----------------------------------------------


def test_discovers_the_repository_from_a_subdirectory(repo: Path) -> None:
    (repo / "src" / "deep").mkdir(parents=True)
    w = Workspace(repo / "src" / "deep")
    assert w.root == repo.resolve()
    assert w.common_dir == (repo / ".git").resolve()


def test_refuses_a_bare_repository_and_a_plain_directory(tmp_path: Path) -> None:
    git(tmp_path, "init", "-q", "--bare", "bare.git")
    with pytest.raises(InvalidInput, match=r"bare\.git is a bare git repository"):
        Workspace(tmp_path / "bare.git")
    (tmp_path / "plain").mkdir()
    with pytest.raises(InvalidInput, match=r"plain is not inside a git working tree"):
        Workspace(tmp_path / "plain")
    with pytest.raises(InvalidInput, match="no such file"):
        Workspace(tmp_path / "missing")


def test_integration_branch_starts_at_head_or_base_ref_and_is_kept(repo: Path) -> None:
    first = git(repo, "rev-parse", "HEAD")
    write(repo, {"b.txt": "b\n"})
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "second")
    w = Workspace(repo)
    assert w.ensure_integration_branch("a", None) == git(repo, "rev-parse", "HEAD")
    assert w.ensure_integration_branch("b", first) == first
    # An existing integration branch is returned as it is.
    assert w.ensure_integration_branch("b", "main") == first
    assert git(repo, "rev-parse", "specexec/b") == first
    assert git(repo, "rev-parse", "--abbrev-ref", "HEAD") == "main"


def test_integration_branch_errors_name_the_problem(tmp_path: Path, repo: Path) -> None:
    with pytest.raises(InvalidInput, match=r"base_ref 'nope' .* does not name a commit"):
        Workspace(repo).ensure_integration_branch("a", "nope")
    empty = tmp_path / "empty"
    git(tmp_path, "init", "-q", "empty")
    with pytest.raises(InvalidInput, match="repository has no commits"):
        Workspace(empty).ensure_integration_branch("a", None)
    with pytest.raises(InvalidInput, match="cannot name a git branch"):
        Workspace(repo).ensure_integration_branch("has space", None)


def test_branch_names() -> None:
    assert integration_branch("feat") == "specexec/feat"
    assert task_branch("feat", "T1") == "specexec/feat@T1"
    with pytest.raises(InvalidInput):
        task_branch("feat", "../x")


# --- worktrees -------------------------------------------------------------------------


def test_worktree_is_outside_the_work_tree_and_never_in_status(ws: Workspace, repo: Path) -> None:
    before = snapshot(repo)
    wt = ws.create_worktree(SPEC, "T1")
    assert wt.path == ws.worktrees_dir / SPEC / "T1"
    assert repo.resolve() not in wt.path.parents  # neither in the working tree nor in .git
    assert wt.branch == "specexec/feat@T1"
    assert wt.base == git(repo, "rev-parse", "specexec/feat")
    assert (wt.path / "README.md").read_text() == "hello\n"
    assert git(wt.path, "status", "--porcelain") == ""  # fully checked out, index in sync
    write(wt.path, {"new.txt": "x\n", "README.md": "changed\n"})
    assert git(repo, "status", "--porcelain", "--untracked-files=all") == ""
    assert snapshot(repo) == before
    assert git(repo, "config", "--get", "branch.specexec/feat@T1.remote", check=False) == ""


def test_16_worktrees_created_at_the_same_moment_all_succeed(ws: Workspace, repo: Path) -> None:
    n = 16
    barrier = threading.Barrier(n)
    errors: list[str] = []
    done: list[str] = []

    def one(i: int) -> None:
        try:
            barrier.wait()
            wt = ws.create_worktree(SPEC, f"T{i}")
            write(wt.path, {f"out/t{i}.txt": f"{i}\n"})
            sha = ws.commit_all(wt, f"task {i}")
            assert sha is not None
            result = ws.merge(SPEC, sha, f"Merge task T{i}")
            assert result.merged, result
            ws.remove_worktree(wt, delete_branch=False)
            done.append(wt.task_id)
        except Exception as exc:  # collected and asserted below
            errors.append(repr(exc))

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not any("could not lock config file" in e for e in errors), errors
    assert errors == []
    assert len(done) == n
    tip = git(repo, "rev-parse", "specexec/feat")
    for i in range(n):
        assert show(repo, tip, f"out/t{i}.txt") == str(i)
        assert ws.is_merged(SPEC, f"T{i}")
    # Passed tasks' branches are merged: gc removes them; only the main worktree is left.
    ws.gc()
    assert git(repo, "worktree", "list", "--porcelain").count("worktree ") == 1
    assert task_branches(repo) == []
    assert git(repo, "status", "--porcelain") == ""


def test_a_dead_runs_worktree_is_replaced_and_a_live_one_refused(ws: Workspace, repo: Path) -> None:
    code = (
        "import sys\n"
        "from specexec.git.workspace import Workspace\n"
        "ws = Workspace(sys.argv[1])\n"
        "wt = ws.create_worktree('feat', 'T1')\n"
        "open(wt.path / 'leftover.txt', 'w').write('x')\n"
        "print('ready', flush=True)\n"
        "sys.stdin.readline()\n"
    )
    live = subprocess.Popen(
        [PY, "-c", code, str(repo)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert live.stdout is not None and live.stdout.readline() == "ready\n"
        with pytest.raises(Busy, match=f"in use by process {live.pid}"):
            ws.create_worktree(SPEC, "T1")
    finally:
        assert live.stdin is not None
        live.stdin.close()
        live.wait(timeout=60)
    # Its owner is gone now: the next run of the task starts from a clean worktree.
    wt = ws.create_worktree(SPEC, "T1")
    assert not (wt.path / "leftover.txt").exists()
    assert git(repo, "worktree", "list", "--porcelain").count("worktree ") == 2


def test_remove_worktree_with_read_only_files_and_dirs(ws: Workspace, repo: Path) -> None:
    wt = ws.create_worktree(SPEC, "T1")
    write(wt.path, {"ro/deep/f.txt": "x\n"})
    (wt.path / "ro" / "deep" / "f.txt").chmod(stat.S_IRUSR)
    (wt.path / "ro" / "deep").chmod(stat.S_IRUSR | stat.S_IXUSR)
    (wt.path / "ro").chmod(stat.S_IRUSR | stat.S_IXUSR)
    ws.remove_worktree(wt, delete_branch=False)
    assert not wt.path.exists()
    assert git(repo, "worktree", "list", "--porcelain").count("worktree ") == 1
    assert task_branches(repo) == ["specexec/feat@T1"]  # kept unless asked
    ws.remove_worktree((SPEC, "T1"), delete_branch=True)  # idempotent for the worktree
    assert task_branches(repo) == []


# --- what the worker changed -------------------------------------------------------------


def test_changed_files_sees_every_kind_of_change(tmp_path: Path) -> None:
    repo = init_repo(
        tmp_path / "repo",
        {
            "keep.txt": "k\n",
            "commit.txt": "c\n",
            "stage.txt": "s\n",
            "edit.txt": "e\n",
            "gone.txt": "g\n",
            ".gitignore": "*.log\n",
        },
    )
    ws = Workspace(repo)
    ws.ensure_integration_branch(SPEC, None)
    wt = ws.create_worktree(SPEC, "T1")
    assert ws.changed_files(wt) == []
    assert ws.commit_all(wt, "nothing") is None
    # The worker commits one change itself, stages one, edits one, deletes one, adds files.
    write(wt.path, {"commit.txt": "c2\n"})
    git(wt.path, "commit", "-q", "-am", "worker's own commit")
    write(wt.path, {"stage.txt": "s2\n", "new dir/ünï.txt": "u\n", "debug.log": "ignored\n"})
    git(wt.path, "add", "stage.txt")
    write(wt.path, {"edit.txt": "e2\n"})
    (wt.path / "gone.txt").unlink()
    assert ws.changed_files(wt) == [
        "commit.txt",
        "edit.txt",
        "gone.txt",
        "new dir/ünï.txt",
        "stage.txt",
    ]
    sha = ws.commit_all(wt, "task T1")
    assert sha is not None
    # One snapshot of the files on the base (the worker's own commit is not kept: its
    # HEAD never decides what is merged); everything in it; worktree clean.
    assert git(repo, "log", "--format=%s", f"{wt.base}..{sha}").splitlines() == ["task T1"]
    assert git(repo, "rev-parse", f"{sha}^@") == wt.base
    assert git(repo, "rev-parse", wt.branch) == sha
    assert git(
        repo, "-c", "core.quotePath=false", "diff", "--name-only", wt.base, sha
    ).splitlines() == [
        "commit.txt",
        "edit.txt",
        "gone.txt",
        "new dir/ünï.txt",
        "stage.txt",
    ]
    assert git(wt.path, "status", "--porcelain") == ""
    assert ws.commit_all(wt, "again") == sha  # nothing new: the same tip


def test_commit_all_when_changes_net_to_nothing(ws: Workspace) -> None:
    wt = ws.create_worktree(SPEC, "T1")
    write(wt.path, {"README.md": "changed\n"})
    write(wt.path, {"README.md": "hello\n"})
    assert ws.changed_files(wt) == []
    assert ws.commit_all(wt, "task") is None


def test_commit_all_without_identity_and_without_running_hooks(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    home = tmp_path / "home"
    home.mkdir()
    for var, value in {
        "HOME": str(home),
        "XDG_CONFIG_HOME": str(home / ".config"),
        "GIT_CONFIG_NOSYSTEM": "1",
        "EMAIL": "",
    }.items():
        monkeypatch.setenv(var, value)
    repo = tmp_path / "repo"
    git(tmp_path, "init", "-q", "-b", "main", "repo")
    write(repo, {"a.txt": "a\n"})
    git(repo, "add", "-A")
    git(repo, "-c", "user.name=U", "-c", "user.email=u@x", "commit", "-q", "-m", "init")
    # Hooks that would fail (or leave a trace) if specexec's own git commands ran them.
    hooks = repo / ".git" / "hooks"
    for hook in (
        "pre-commit",
        "commit-msg",
        "post-commit",
        "post-checkout",
        "reference-transaction",
    ):
        (hooks / hook).write_text(f"#!/bin/sh\necho {hook} >> '{tmp_path}/hooks.txt'\nexit 1\n")
        (hooks / hook).chmod(0o755)
    ws = Workspace(repo)
    ws.ensure_integration_branch(SPEC, None)
    wt = ws.create_worktree(SPEC, "T1")
    write(wt.path, {"b.txt": "b\n"})
    sha = ws.commit_all(wt, "task T1")
    assert sha is not None
    assert git(repo, "log", "-1", "--format=%an <%ae>|%cn <%ce>", sha) == (
        "specexec <specexec@localhost>|specexec <specexec@localhost>"
    )
    assert ws.merge(SPEC, sha, "merge").merged
    ws.remove_worktree(wt, delete_branch=True)
    assert not (tmp_path / "hooks.txt").exists()


def test_commit_all_uses_the_repositorys_identity(ws: Workspace, repo: Path) -> None:
    wt = ws.create_worktree(SPEC, "T1")
    write(wt.path, {"b.txt": "b\n"})
    sha = ws.commit_all(wt, "task T1")
    assert git(repo, "log", "-1", "--format=%an <%ae>", str(sha)) == "Test <test@example.com>"


def test_a_worker_that_rewrites_dot_git_or_switches_branch_cannot_misdirect_us(
    ws: Workspace, repo: Path
) -> None:
    wt = ws.create_worktree(SPEC, "T1")
    git(wt.path, "checkout", "-q", "-b", "elsewhere")
    write(wt.path, {"x.txt": "x\n"})
    (wt.path / ".git").write_text(f"gitdir: {repo / '.git'}\n")  # now points at the main repo
    assert ws.changed_files(wt) == ["x.txt"]
    sha = ws.commit_all(wt, "task T1")
    assert sha is not None
    assert git(repo, "rev-parse", "specexec/feat@T1") == sha
    assert git(repo, "rev-parse", "--abbrev-ref", "HEAD") == "main"
    assert git(repo, "status", "--porcelain") == ""


# --- merging -----------------------------------------------------------------------------


def test_disjoint_tasks_both_land(ws: Workspace, repo: Path) -> None:
    wt1, c1 = run_task(ws, "T1", {"a.txt": "from T1\n"})
    wt2, c2 = run_task(ws, "T2", {"b.txt": "from T2\n"})
    first = ws.merge(SPEC, c1, "Merge task T1")
    assert first == MergeResult(True, c1, ())  # fast-forward: the tip was T1's base
    second = ws.merge(SPEC, c2, "Merge task T2")
    assert second.merged and second.commit is not None and second.conflicts == ()
    tip = git(repo, "rev-parse", "specexec/feat")
    assert tip == second.commit
    assert git(repo, "rev-parse", f"{tip}^1", f"{tip}^2").splitlines() == [c1, c2]
    assert git(repo, "log", "-1", "--format=%s", tip) == "Merge task T2"
    assert show(repo, tip, "a.txt") == "from T1"
    assert show(repo, tip, "b.txt") == "from T2"
    assert ws.is_merged(SPEC, "T1") and ws.is_merged(SPEC, "T2")
    # Merging again is a no-op (exactly once).
    assert ws.merge(SPEC, c2, "again") == MergeResult(True, tip, ())
    assert git(repo, "rev-parse", "specexec/feat") == tip
    for wt in (wt1, wt2):
        ws.remove_worktree(wt, delete_branch=True)


@pytest.mark.parametrize("user_change", [False, True])
def test_conflict_is_reported_and_nothing_of_the_users_changes(
    ws: Workspace, repo: Path, user_change: bool
) -> None:
    write(repo, {"README.md": "hello\n", "extra.txt": "1\n2\n3\n"})
    if user_change:
        # The user is in the middle of work: staged, unstaged and untracked changes.
        write(repo, {"staged.txt": "s\n"})
        git(repo, "add", "staged.txt")
        write(repo, {"README.md": "user edit\n", "untracked.txt": "u\n"})
    before = snapshot(repo)
    _wt1, c1 = run_task(ws, "T1", {"README.md": "T1 line\n"})
    _wt2, c2 = run_task(ws, "T2", {"README.md": "T2 line\n"})
    assert ws.merge(SPEC, c1, "Merge task T1").merged
    tip = git(repo, "rev-parse", "specexec/feat")
    result = ws.merge(SPEC, c2, "Merge task T2")
    assert result == MergeResult(False, None, ("README.md",))
    assert git(repo, "rev-parse", "specexec/feat") == tip
    assert show(repo, "specexec/feat", "README.md") == "T1 line"
    assert git(repo, "rev-parse", "specexec/feat@T2") == c2  # kept for the user
    assert not ws.is_merged(SPEC, "T2")
    assert merge_heads(repo) == []
    assert snapshot(repo) == before


def test_merge_retries_when_the_branch_moves_under_it(ws: Workspace, repo: Path) -> None:
    _wt1, c1 = run_task(ws, "T1", {"a.txt": "a\n"})
    _wt2, c2 = run_task(ws, "T2", {"b.txt": "b\n"})
    # Someone else (another process) moves the integration branch between two merges.
    git(repo, "update-ref", "refs/heads/specexec/feat", c1)
    result = ws.merge(SPEC, c2, "Merge task T2")
    assert result.merged
    assert git(repo, "rev-parse", "specexec/feat^1") == c1


def test_merge_refuses_a_checked_out_integration_branch(ws: Workspace, repo: Path) -> None:
    _wt, c1 = run_task(ws, "T1", {"a.txt": "a\n"})
    git(repo, "checkout", "-q", "specexec/feat")
    before = snapshot(repo)
    with pytest.raises(Exception, match="checked out"):
        ws.merge(SPEC, c1, "Merge task T1")
    assert snapshot(repo) == before


def test_is_merged_needs_work_on_the_branch(ws: Workspace, repo: Path) -> None:
    assert not ws.is_merged(SPEC, "T1")  # no branch
    wt = ws.create_worktree(SPEC, "T1")
    _wt2, c2 = run_task(ws, "T2", {"b.txt": "b\n"})
    ws.merge(SPEC, c2, "Merge task T2")
    # T1's branch is an ancestor of the integration branch, but it carries no work.
    assert not ws.is_merged(SPEC, "T1")
    write(wt.path, {"a.txt": "a\n"})
    c1 = ws.commit_all(wt, "task T1")
    assert c1 is not None and not ws.is_merged(SPEC, "T1")
    ws.merge(SPEC, c1, "Merge task T1")
    assert ws.is_merged(SPEC, "T1")


# --- running inside another repository's git hook ----------------------------------------


def test_inside_a_hook_of_another_repository(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    a = init_repo(tmp_path / "A")
    b = init_repo(tmp_path / "B", {"b.txt": "b\n"})
    before_b = snapshot(b)
    before_a = snapshot(a)
    monkeypatch.setenv("GIT_DIR", str(b / ".git"))
    monkeypatch.setenv("GIT_INDEX_FILE", str(b / ".git" / "index"))
    monkeypatch.setenv("GIT_WORK_TREE", str(b))
    ws = Workspace(a)
    ws.ensure_integration_branch(SPEC, None)
    wt = ws.create_worktree(SPEC, "T1")
    write(wt.path, {"new.txt": "made in A\n"})
    assert ws.changed_files(wt) == ["new.txt"]
    sha = ws.commit_all(wt, "task T1")
    assert sha is not None
    assert ws.merge(SPEC, sha, "Merge task T1").merged
    ws.remove_worktree(wt, delete_branch=True)
    assert ws.gc() == []
    monkeypatch.undo()
    assert snapshot(b) == before_b
    assert git(b, "for-each-ref", "refs/heads/specexec/") == ""
    assert show(a, "specexec/feat", "new.txt") == "made in A"
    assert snapshot(a) == before_a


# --- cost ----------------------------------------------------------------------------------


def _shell_task(repo: Path, i: int) -> None:
    script = f"""set -e
g() {{ git -c gc.auto=0 -c core.hooksPath=/dev/null "$@"; }}
wt=$(pwd)/.git/sh-wt-{i}
g worktree add -q --no-track -b sh/{i} "$wt" specexec/shell
echo {i} > "$wt/sh{i}.txt"
g -C "$wt" add -A
g -C "$wt" commit -q -m "task {i}"
c=$(g rev-parse sh/{i})
old=$(g rev-parse specexec/shell)
tree=$(g merge-tree --write-tree "$old" "$c")
m=$(g commit-tree "$tree" -p "$old" -p "$c" -m merge)
g update-ref refs/heads/specexec/shell "$m" "$old"
g worktree remove --force "$wt"
g branch -q -D sh/{i}
"""
    subprocess.run(["sh", "-c", script], cwd=repo, check=True, capture_output=True)


@pytest.mark.slow
def test_tasks_on_a_2000_file_repository_merge_into_a_moving_tip(tmp_path: Path) -> None:
    """The lifecycle bench/git_cost.py times, checked for what it leaves: every task's
    change on the integration branch, one merge into a moved tip, no worktree left."""
    files = {f"pkg{i % 40}/mod{i}.py": f"x = {i}\n" * 20 for i in range(2000)}
    repo = init_repo(tmp_path / "big", files)
    ws = Workspace(repo)
    ws.ensure_integration_branch(SPEC, None)
    # Keep the integration tip away from each task's base so every merge is a real one.
    _wt0, c0 = run_task(ws, "T0", {"zero.txt": "0\n"})
    for i in range(1, 4):
        wt = ws.create_worktree(SPEC, f"T{i}")
        write(wt.path, {f"t{i}.txt": f"{i}\n"})
        sha = ws.commit_all(wt, f"task {i}")
        assert sha is not None and ws.merge(SPEC, sha, f"Merge task T{i}").merged
        ws.remove_worktree(wt, delete_branch=True)
        if i == 1:  # one merge into a moved tip
            assert ws.merge(SPEC, c0, "Merge task T0").merged
    for name, text in {"t1.txt": "1", "t2.txt": "2", "t3.txt": "3", "zero.txt": "0"}.items():
        assert show(repo, f"specexec/{SPEC}", name) == text
    assert show(repo, f"specexec/{SPEC}", "pkg7/mod1007.py") == ("x = 1007\n" * 20).strip()
    assert git(repo, "worktree", "list", "--porcelain").count("worktree ") == 2  # T0's kept


def test_shell_script_baseline_is_the_same_work(tmp_path: Path) -> None:
    repo = init_repo(tmp_path / "r")
    Workspace(repo).ensure_integration_branch("shell", None)
    _shell_task(repo, 1)
    assert show(repo, "specexec/shell", "sh1.txt") == "1"
    assert git(repo, "worktree", "list", "--porcelain").count("worktree ") == 1


# --- sparse checkouts, stashes, branches held elsewhere -------------------------------------


def test_sparse_worktree_checks_out_only_its_paths(tmp_path: Path) -> None:
    repo = init_repo(
        tmp_path / "repo",
        {"README.md": "r\n", "src/a.py": "a\n", "src/sub/b.py": "b\n", "docs/d.md": "d\n",
         "docs/e.txt": "e\n"},
    )  # fmt: skip
    config = (repo / ".git" / "config").read_text()
    ws = Workspace(repo)
    ws.ensure_integration_branch(SPEC, None)
    patterns = checkout_patterns(
        Task("T1", "t", relevant_files=("src/",), checkout="sparse", sparse_paths=("docs/*.md",))
    )
    assert checkout_patterns(Task("T2", "t", relevant_files=("src/",))) is None
    wt = ws.create_worktree(SPEC, "T1", sparse=patterns)
    found = sorted(str(p.relative_to(wt.path)) for p in wt.path.rglob("*") if p.is_file())
    assert found == [".git", "docs/d.md", "src/a.py", "src/sub/b.py"]
    assert git(wt.path, "status", "--porcelain") == ""  # the missing files are not "deleted"
    # A change outside the sparse paths is still the task's change.
    write(wt.path, {"src/new.py": "n\n", "README.md": "changed\n"})
    assert ws.changed_files(wt) == ["README.md", "src/new.py"]
    sha = ws.commit_all(wt, "task T1")
    assert sha is not None
    assert git(repo, "diff", "--name-only", wt.base, sha).splitlines() == [
        "README.md",
        "src/new.py",
    ]
    # The user's configuration is untouched (no extensions.worktreeConfig).
    assert (repo / ".git" / "config").read_text() == config
    ws.remove_worktree(wt, delete_branch=False)


def test_a_tasks_stash_entries_go_with_its_worktree_and_the_users_stay(
    ws: Workspace, repo: Path
) -> None:
    write(repo, {"README.md": "user's work\n"})
    git(repo, "stash", "-q")  # the user's stash from before the task
    before = git(repo, "stash", "list", "--format=%H")
    wt = ws.create_worktree(SPEC, "T1")
    write(wt.path, {"README.md": "worker\n", "u.txt": "u\n"})
    git(wt.path, "stash", "-u", "-q")
    git(wt.path, "checkout", "-q", "--detach")
    write(wt.path, {"README.md": "detached worker\n"})
    git(wt.path, "stash", "-q")
    write(repo, {"README.md": "more user work, during the task\n"})
    git(repo, "stash", "-q")
    during = git(repo, "stash", "list", "--format=%H").splitlines()[0]
    assert len(git(repo, "stash", "list").splitlines()) == 4
    ws.remove_worktree(wt, delete_branch=True)
    assert git(repo, "stash", "list", "--format=%H").splitlines() == [during, before]


def test_a_task_branch_held_in_another_worktree_is_not_moved(ws: Workspace, repo: Path) -> None:
    wt = ws.create_worktree(SPEC, "T1")
    ws.remove_worktree(wt, delete_branch=False)
    other = repo.parent / "mine"
    git(repo, "worktree", "add", "-q", str(other), "specexec/feat@T1")
    with pytest.raises(GitError, match="specexec/feat@T1 is checked out"):
        ws.create_worktree(SPEC, "T1")
    assert not ws.delete_branch("specexec/feat@T1")
    # Bisecting from the branch holds it even on a detached HEAD, as git itself sees it.
    git(other, "bisect", "start", "HEAD")
    git(other, "checkout", "-q", "--detach", "HEAD")
    assert not ws.delete_branch("specexec/feat@T1")
    assert (
        "checked out"
        in subprocess.run(
            ["git", "branch", "-D", "specexec/feat@T1"], cwd=repo, capture_output=True, text=True
        ).stderr
    )
    git(other, "bisect", "reset")
    git(other, "checkout", "-q", "--detach")
    assert ws.delete_branch("specexec/feat@T1")
