"""The worktree pool: whatever a worker leaves behind, the next task gets a tree identical
to a fresh checkout; crashes, concurrency, the bound, and whole runs with the pool."""

from __future__ import annotations

import hashlib
import os
import shutil
import stat
import subprocess
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    PY,
    git,
    init_repo,
    read_tasks,
    run_cli,
    skip_unless_nobody_can_run_specexec,
    task,
    write_spec,
)

from specexec.errors import GitError
from specexec.git.pool import WorktreePool
from specexec.git.workspace import Workspace, Worktree, checkout_patterns, read_owner
from specexec.tasksfile.types import Task

SPEC = "feat"
IGNORES = "*.log\nbuild/\n.venv/\n"
# Run as root, chmod does not stop git; the modes are still compared with a fresh checkout.
ROOT = os.geteuid() == 0


# --- helpers -------------------------------------------------------------------------


def sh(cwd: Path, script: str) -> None:
    """A worker's shell commands (failures are part of the scenario: not checked)."""
    subprocess.run(["sh", "-c", script], cwd=cwd, capture_output=True, check=False)


def make_repo(path: Path) -> Path:
    """Two commits on main, an executable, a symlink, ignore rules, and a branch `side`
    whose README conflicts with main's. The user has a stash entry of their own."""
    repo = init_repo(
        path,
        {
            "README.md": "hello\n",
            "src/a.py": "a = 1\n",
            "src/b.py": "#!/bin/sh\necho b\n",
            "docs/guide.md": "guide\n",
            ".gitignore": IGNORES,
        },
    )
    git(repo, "branch", "side")
    (repo / "src" / "b.py").chmod(0o755)
    (repo / "link").symlink_to("src/a.py")
    (repo / "README.md").write_text("main\n")
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "second")
    git(repo, "checkout", "-q", "side")
    (repo / "README.md").write_text("side\n")
    git(repo, "commit", "-q", "-am", "side")
    git(repo, "checkout", "-q", "main")
    (repo / "README.md").write_text("the user's own work in progress\n")
    git(repo, "stash", "-q")
    return repo


def file_state(root: Path) -> dict[str, tuple[str, int, str]]:
    """path -> (kind, permission bits, content hash or link target), ``.git`` aside."""
    out: dict[str, tuple[str, int, str]] = {}
    for cur, dirs, files in os.walk(root):
        rel_dir = os.path.relpath(cur, root)
        if rel_dir == ".":
            rel_dir = ""
        for name in [*dirs, *files]:
            rel = os.path.join(rel_dir, name)
            if rel == ".git":
                continue
            p = os.path.join(cur, name)
            st = os.lstat(p)
            mode = stat.S_IMODE(st.st_mode)
            if stat.S_ISLNK(st.st_mode):
                out[rel] = ("link", 0, os.readlink(p))
            elif stat.S_ISDIR(st.st_mode):
                out[rel] = ("dir", mode, "")
            else:
                try:
                    digest = hashlib.sha256(Path(p).read_bytes()).hexdigest()
                except PermissionError:
                    digest = "(unreadable)"
                out[rel] = ("file", mode, digest)
        dirs[:] = [d for d in dirs if not (rel_dir == "" and d == ".git")]
    return out


def tree_state(wt: Path) -> dict[str, Any]:
    """What a task could notice in a worktree: the index (with its skip-worktree and
    assume-unchanged tags), every file that is not ignored (kind, mode, content), the
    ignored files, the status, the commit, and per-worktree git state files."""
    status = git(wt, "status", "--porcelain", "--untracked-files=all")
    listed = git(wt, "ls-files", "--others", "--ignored", "--exclude-standard", "--directory")
    dirs = [d for d in listed.splitlines() if d.endswith("/")]
    ignored = sorted(
        i for i in listed.splitlines() if not any(i.startswith(d) and i != d for d in dirs)
    )
    files = {
        p: v
        for p, v in file_state(wt).items()
        if not any(p == i.rstrip("/") or p.startswith(i.rstrip("/") + "/") for i in ignored)
    }
    git_dir = Path(git(wt, "rev-parse", "--absolute-git-dir"))
    benign = {"HEAD", "commondir", "gitdir", "index", "logs", "ORIG_HEAD"}
    return {
        "index": git(wt, "ls-files", "-s", "-v"),
        "files": files,
        "ignored": ignored,
        "status": status.splitlines(),
        "head": git(wt, "rev-parse", "HEAD"),
        "git state": sorted(set(os.listdir(git_dir)) - benign),
    }


def fresh_state(repo: Path, commit: str, tmp: Path, sparse: tuple[str, ...] | None = None) -> Any:
    """The state of a fresh ``git worktree add`` of ``commit`` (sparse: with those patterns)."""
    path = tmp / f"fresh-{time.monotonic_ns()}"
    if sparse is None:
        git(repo, "worktree", "add", "-q", "--detach", str(path), commit)
    else:
        git(repo, "worktree", "add", "-q", "--no-checkout", "--detach", str(path), commit)
        admin = Path(git(path, "rev-parse", "--absolute-git-dir"))
        (admin / "info").mkdir()
        (admin / "info" / "sparse-checkout").write_text("".join(p + "\n" for p in sparse))
        git(
            path,
            *("-c", "core.sparseCheckout=true", "-c", "core.sparseCheckoutCone=false"),
            *("read-tree", "--reset", "-u", "HEAD"),
        )
    try:
        state = tree_state(path)
        state["git state"] = [s for s in state["git state"] if s != "info"]
        return state
    finally:
        git(repo, "worktree", "remove", "--force", str(path))


def assert_like_fresh(
    repo: Path,
    wt: Worktree,
    tmp: Path,
    *,
    ignored: list[str] | None = None,
    sparse: tuple[str, ...] | None = None,
) -> None:
    got = tree_state(wt.path)
    want = fresh_state(repo, wt.base, tmp, sparse)
    got_ignored = got.pop("ignored")
    want.pop("ignored")
    if sparse is not None:
        got["git state"] = [s for s in got["git state"] if s != "info"]
    assert got == want
    assert got_ignored == (ignored or [])
    assert git(wt.path, "symbolic-ref", "HEAD") == f"refs/heads/{wt.branch}"
    assert git(repo, "rev-parse", wt.branch) == wt.base


def user_stashes(repo: Path) -> str:
    return git(repo, "stash", "list", "--format=%H %gs")


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    return make_repo(tmp_path / "repo")


@pytest.fixture
def pool(ws: Workspace) -> Iterator[WorktreePool]:
    with WorktreePool(ws, 1) as p:
        yield p


# A process that takes a pool slot, prints its path, and waits (to be SIGKILLed).
HOLDER = (
    "import sys\n"
    "from specexec.git.workspace import Workspace\n"
    "from specexec.git.pool import WorktreePool\n"
    "p = WorktreePool(Workspace(sys.argv[1]), int(sys.argv[3]))\n"
    "wt = p.acquire('feat', sys.argv[2])\n"
    "print(wt.path, flush=True)\n"
    "sys.stdin.readline()\n"
)


def hold_slot(repo: Path, task_id: str, size: int = 1) -> tuple[subprocess.Popen[str], Path]:
    proc = subprocess.Popen(
        [PY, "-c", HOLDER, str(repo), task_id, str(size)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    line = proc.stdout.readline().strip()
    assert line, "the holder process could not take a slot"
    return proc, Path(line)


# --- what workers leave behind -----------------------------------------------------------

DIRTY = {
    "untracked files and dirs, a nested repository": (
        "mkdir -p new/deep emptydir && echo x > new/deep/f.txt && echo y > top.txt"
        " && git init -q nested && echo n > nested/n.txt && echo extra > src/extra.py"
    ),
    "only an empty directory": "mkdir -p empty/deeper",
    "a directory holding only ignored files": "mkdir -p logs && echo l > logs/x.log",
    "staged, unstaged and deleted changes": (
        "echo changed > README.md && echo s > staged.txt && git add README.md staged.txt"
        " && git rm -q docs/guide.md && echo unstaged >> src/a.py"
    ),
    "stashes (with untracked files, with a message)": (
        "echo stash-me >> README.md && echo u > u.txt && git stash push -u -q"
        " && echo again >> src/a.py && git stash push -q -m mine"
    ),
    "a stash made on a detached HEAD": "git checkout -q --detach && echo d >> README.md && git stash -q",
    "a half-finished merge": "git merge side",
    "a half-finished rebase": ("echo mine > README.md && git commit -qam mine && git rebase side"),
    "a half-finished cherry-pick": (
        "echo mine > README.md && git commit -qam mine && git cherry-pick side"
    ),
    "a bisect": "git bisect start HEAD HEAD~1",
    "a detached HEAD on another commit": "git checkout -q --detach HEAD~1 && echo x > x.txt",
    "another branch checked out": "git checkout -q -b worker-branch && echo w > w.txt",
    "read-only files and directories": (
        "chmod 444 README.md && chmod 000 docs/guide.md && chmod 555 src"
        " && mkdir -p ro/d && echo x > ro/d/f && chmod 000 ro/d/f && chmod 500 ro/d ro"
    ),
    "executable bits flipped, a file turned into a symlink": (
        "chmod +x README.md && chmod -x src/b.py && rm docs/guide.md"
        " && ln -s ../README.md docs/guide.md && rm link && echo not-a-link > link"
    ),
    "a directory replaced by a file and a file by a directory": (
        "rm -r src && echo file > src && rm docs/guide.md && mkdir docs/guide.md"
        " && echo in > docs/guide.md/x"
    ),
    "lock files of a killed git command, a locked worktree": (
        'git worktree lock --reason test "$PWD"'
        ' && touch "$(git rev-parse --git-dir)/index.lock" "$(git rev-parse --git-dir)/HEAD.lock"'
    ),
    "assume-unchanged and skip-worktree bits": (
        "git update-index --assume-unchanged README.md && echo hidden > README.md"
        " && git update-index --skip-worktree docs/guide.md && rm docs/guide.md"
    ),
    "a rewritten .git file": "rm .git && echo 'gitdir: /nonexistent' > .git",
    "everything deleted": "rm -rf ./* ./.gitignore ./.git",
    "a corrupt index": 'echo garbage > "$(git rev-parse --git-dir)/index"',
}


@pytest.mark.parametrize("scenario", list(DIRTY))
def test_next_task_gets_a_fresh_tree_after_a_worker_leaves(
    scenario: str, repo: Path, ws: Workspace, pool: WorktreePool, tmp_path: Path
) -> None:
    stashes = user_stashes(repo)
    config = (repo / ".git" / "config").read_text()
    wt1 = pool.acquire(SPEC, "T1")
    sh(wt1.path, DIRTY[scenario])
    pool.release(wt1)  # what an interrupted task does: no commit
    wt2 = pool.acquire(SPEC, "T2")
    assert wt2.path == wt1.path  # the same slot, reused
    assert pool.stats["created"] == 1
    # Restored in place; only an index git cannot read makes the slot be built again.
    assert pool.stats["rebuilt"] == (scenario == "a corrupt index")
    ignored = ["logs/"] if "ignored" in scenario else []  # kept, as ignored files are
    assert_like_fresh(repo, wt2, tmp_path, ignored=ignored)
    assert user_stashes(repo) == stashes  # the worker's stash entries are gone, the user's kept
    assert (repo / ".git" / "config").read_text() == config
    # The tree works: the next task's change is committed and merged as usual.
    (wt2.path / "t2.txt").write_text("t2\n")
    assert ws.changed_files(wt2) == ["t2.txt"]
    sha = ws.commit_all(wt2, "task T2")
    assert sha is not None and ws.merge(SPEC, sha, "Merge task T2").merged
    assert git(repo, "show", "specexec/feat:t2.txt") == "t2"
    pool.release(wt2, delete_branch=False)


AS_NOBODY = """
import os, sys
from pathlib import Path
sys.path[:0] = [sys.argv[2], os.path.dirname(sys.argv[2])]
import pool_test as t
from specexec.git.pool import WorktreePool
from specexec.git.workspace import Workspace

base = Path(sys.argv[1])
repo = t.make_repo(base / "repo")
ws = Workspace(repo)
ws.ensure_integration_branch("feat", None)
with WorktreePool(ws, 1) as pool:
    wt1 = pool.acquire("feat", "T1")
    t.sh(wt1.path, t.DIRTY["read-only files and directories"])
    pool.release(wt1)
    wt2 = pool.acquire("feat", "T2")
    assert wt2.path == wt1.path and pool.stats["rebuilt"] == 0, pool.stats
    t.assert_like_fresh(repo, wt2, base)
    # A failed task's unreadable files still reach its branch.
    t.sh(wt2.path, "echo x > new.txt && chmod 000 new.txt && mkdir d && echo y > d/f && chmod 500 d")
    assert pool.keep_failed(wt2, "failed") is None
    assert t.git(repo, "show", "specexec/feat@T2:new.txt") == "x"
    wt3 = pool.acquire("feat", "T3")
    assert wt3.path == wt1.path and pool.stats["rebuilt"] == 0, pool.stats
    t.assert_like_fresh(repo, wt3, base)
    pool.release(wt3)
print("OK")
"""


def test_read_only_leftovers_for_a_user_that_chmod_does_stop(tmp_path: Path) -> None:
    """As root nothing is read-only to git; as an ordinary user it is. Run as nobody."""
    skip_unless_nobody_can_run_specexec()
    base = Path(tempfile.mkdtemp(prefix="specexec-nobody-"))
    try:
        os.chown(base, 65534, 65534)
        proc = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
             PY, "-c", AS_NOBODY, str(base), str(Path(__file__).parent)],
            capture_output=True, text=True, timeout=300, check=False,
            env={**os.environ, "HOME": str(base), "SPECEXEC_WORKTREE_DIR": str(base / "wt")},
        )  # fmt: skip
        assert proc.stdout.strip().endswith("OK"), proc.stdout + proc.stderr
    finally:
        subprocess.run(["chmod", "-R", "u+rwx", str(base)], check=False)
        shutil.rmtree(base, ignore_errors=True)


@pytest.mark.parametrize(
    "scenario",
    ["stashes (with untracked files, with a message)", "a half-finished rebase", "a corrupt index"],
)
def test_a_slot_of_a_killed_run_is_recovered_clean(
    scenario: str, repo: Path, ws: Workspace, tmp_path: Path
) -> None:
    stashes = user_stashes(repo)
    holder, path = hold_slot(repo, "T1")
    try:
        with WorktreePool(ws, 1) as busy:  # in use by a live process: never handed out
            wt = busy.acquire(SPEC, "T9")
            assert not busy.owns(wt) and wt.path == ws.worktree_path(SPEC, "T9")
            busy.release(wt, delete_branch=True)
        sh(path, DIRTY[scenario])
    finally:
        holder.kill()
        holder.wait(timeout=60)
    with WorktreePool(ws, 1) as p:
        wt = p.acquire(SPEC, "T2")
        assert wt.path == path
        assert_like_fresh(repo, wt, tmp_path)
        assert user_stashes(repo) == stashes
        p.release(wt, delete_branch=True)


def test_a_slot_that_cannot_be_restored_is_recreated(
    repo: Path, ws: Workspace, pool: WorktreePool, tmp_path: Path
) -> None:
    wt1 = pool.acquire(SPEC, "T1")
    sh(wt1.path, DIRTY["a corrupt index"])
    pool.release(wt1)
    wt2 = pool.acquire(SPEC, "T2")
    assert pool.stats["rebuilt"] == 1
    assert_like_fresh(repo, wt2, tmp_path)
    pool.release(wt2)
    # The slot's directory gone (a user's rm -rf): created again at the same place.
    subprocess.run(["rm", "-rf", str(wt2.path)], check=True)
    wt3 = pool.acquire(SPEC, "T3")
    assert wt3.path == wt2.path and pool.stats["created"] == 2
    assert_like_fresh(repo, wt3, tmp_path)
    assert git(repo, "worktree", "list", "--porcelain").count("worktree ") == 2


def test_submodule_changes_do_not_reach_the_next_task(tmp_path: Path) -> None:
    sub = init_repo(tmp_path / "subrepo", {"s.txt": "s1\n"})
    repo = init_repo(tmp_path / "super", {"README.md": "super\n"})
    git(repo, "-c", "protocol.file.allow=always", "submodule", "add", "-q", str(sub), "sub")
    git(repo, "commit", "-q", "-m", "add submodule")
    ws = Workspace(repo)
    ws.ensure_integration_branch(SPEC, None)
    with WorktreePool(ws, 1) as pool:
        wt1 = pool.acquire(SPEC, "T1")
        assert list((wt1.path / "sub").iterdir()) == []
        sh(
            wt1.path,
            "git -c protocol.file.allow=always submodule update --init -q"
            " && cd sub && echo changed > s.txt && echo new > n.txt"
            " && git -c user.name=W -c user.email=w@x commit -qam inner && cd .."
            " && git add sub",
        )
        assert (wt1.path / "sub" / "n.txt").exists()
        pool.release(wt1)
        wt2 = pool.acquire(SPEC, "T2")
        assert_like_fresh(repo, wt2, tmp_path)
        assert list((wt2.path / "sub").iterdir()) == []
        pool.release(wt2)


def test_ignored_files_are_kept_unless_clean_ignored(
    repo: Path, ws: Workspace, tmp_path: Path
) -> None:
    made = "mkdir -p build .venv/lib && echo o > build/out.o && echo v > .venv/lib/x && echo l > debug.log"
    with WorktreePool(ws, 1) as pool:
        wt1 = pool.acquire(SPEC, "T1")
        sh(wt1.path, made + " && echo untracked > u.txt")
        pool.release(wt1)
        wt2 = pool.acquire(SPEC, "T2")
        # Dependency folders and build caches survive; the untracked file does not.
        assert_like_fresh(repo, wt2, tmp_path, ignored=[".venv/", "build/", "debug.log"])
        assert (wt2.path / ".venv" / "lib" / "x").read_text() == "v\n"
        pool.release(wt2)
    with WorktreePool(ws, 1, clean_ignored=True) as pool:
        wt3 = pool.acquire(SPEC, "T3")
        assert_like_fresh(repo, wt3, tmp_path, ignored=[])
        sh(wt3.path, made)
        pool.release(wt3)
        wt4 = pool.acquire(SPEC, "T4")
        assert_like_fresh(repo, wt4, tmp_path, ignored=[])
        pool.release(wt4)


def test_sparse_then_full_then_sparse(repo: Path, ws: Workspace, tmp_path: Path) -> None:
    sparse_task = Task("S", "sparse", relevant_files=("src/",), checkout="sparse",
                       sparse_paths=("docs/*.md",))  # fmt: skip
    patterns = checkout_patterns(sparse_task)
    assert patterns == ("/src/", "/docs/*.md")
    config = (repo / ".git" / "config").read_text()
    with WorktreePool(ws, 1) as pool:
        wt1 = pool.acquire(SPEC, "S1", sparse=patterns)
        assert_like_fresh(repo, wt1, tmp_path, sparse=patterns)
        assert sorted(os.listdir(wt1.path)) == [".git", "docs", "src"]
        assert git(wt1.path, "status", "--porcelain") == ""
        # The worker writes inside and outside the sparse paths; both are its changes.
        sh(wt1.path, "echo new > src/new.py && echo top > README.md && echo l > x.log")
        assert ws.changed_files(wt1) == ["README.md", "src/new.py"]
        sha = ws.commit_all(wt1, "task S1")
        assert sha is not None
        assert git(repo, "show", f"{sha}:README.md") == "top"
        assert git(repo, "show", f"{sha}:src/b.py").startswith("#!/bin/sh")  # not deleted
        assert ws.merge(SPEC, sha, "Merge task S1").merged
        pool.release(wt1, delete_branch=False)
        # A full task in the same slot gets every file.
        wt2 = pool.acquire(SPEC, "F2")
        assert wt2.path == wt1.path
        assert_like_fresh(repo, wt2, tmp_path, ignored=["x.log"])
        pool.release(wt2)
        wt3 = pool.acquire(SPEC, "S3", sparse=patterns)
        assert_like_fresh(repo, wt3, tmp_path, ignored=["x.log"], sparse=patterns)
        pool.release(wt3)
    assert (repo / ".git" / "config").read_text() == config  # no extensions.worktreeConfig


# --- failed tasks, the bound, concurrency ------------------------------------------------


def test_a_failed_tasks_state_goes_to_its_branch_and_the_slot_is_reused(
    repo: Path, ws: Workspace, pool: WorktreePool, tmp_path: Path
) -> None:
    wt = pool.acquire(SPEC, "T1")
    sh(wt.path, "echo half > README.md && echo new > wip.txt && echo l > debug.log")
    assert pool.keep_failed(wt, "T1: state of failed attempt 1 (not merged)") is None
    assert git(repo, "show", "specexec/feat@T1:wip.txt") == "new"
    assert git(repo, "log", "-1", "--format=%s", "specexec/feat@T1") == (
        "T1: state of failed attempt 1 (not merged)"
    )
    assert not ws.is_merged(SPEC, "T1")
    # gc keeps the branch (unmerged work) and removes the idle slot.
    assert "specexec/feat@T1" in git(repo, "branch", "--list", "specexec/*")
    wt2 = pool.acquire(SPEC, "T2")
    assert wt2.path == wt.path
    assert_like_fresh(repo, wt2, tmp_path, ignored=["debug.log"])
    pool.release(wt2)


def test_a_failed_state_that_cannot_be_committed_parks_the_slot(
    repo: Path, ws: Workspace, pool: WorktreePool
) -> None:
    wt = pool.acquire(SPEC, "T1")
    # A nested repository without a commit cannot be snapshotted (a corrupt index can:
    # the snapshot never reads the worktree's index for content).
    sh(wt.path, "git init -q nested && echo n > nested/n.txt && echo x > x.txt")
    assert pool.keep_failed(wt, "failed") == wt.path
    assert (wt.path / "x.txt").exists()  # kept for inspection until the run ends
    other = pool.acquire(SPEC, "T2")  # the only slot is parked: a fresh worktree instead
    assert other.path == ws.worktree_path(SPEC, "T2") and pool.stats["overflow"] == 1
    pool.release(other, delete_branch=True)
    assert not other.path.exists()
    pool.close()
    again = pool.acquire(SPEC, "T3")  # the next run reclaims it
    assert again.path == wt.path
    pool.release(again)


def test_the_pool_never_grows_past_its_size(repo: Path, ws: Workspace) -> None:
    with WorktreePool(ws, 3) as pool:
        held = [pool.acquire(SPEC, f"T{i}") for i in range(5)]
        slots = sorted(str(w.path) for w in held if pool.owns(w))
        assert slots == [str(ws.pool_dir / str(n)) for n in range(3)]
        assert pool.stats["overflow"] == 2
        for w in held:
            pool.release(w, delete_branch=True)
    # Fresh overflow worktrees are gone; the three slots stay for the next run.
    assert git(repo, "worktree", "list", "--porcelain").count("worktree ") == 4
    # A run with fewer jobs trims the idle slots beyond its bound.
    with WorktreePool(ws, 1) as small:
        assert sorted(p.name for p in ws.pool_dir.iterdir()) == ["0"]
        wt = small.acquire(SPEC, "T9")
        assert wt.path == ws.pool_dir / "0"
        small.release(wt)
    assert git(repo, "worktree", "list", "--porcelain").count("worktree ") == 2


def test_threads_acquiring_at_once_get_distinct_slots(repo: Path, ws: Workspace) -> None:
    n = 4
    barrier = threading.Barrier(n)
    got: list[Worktree] = []
    errors: list[str] = []
    with WorktreePool(ws, n) as pool:

        def one(i: int) -> None:
            try:
                barrier.wait()
                for round_ in range(3):
                    wt = pool.acquire(SPEC, f"T{i}-{round_}")
                    got.append(wt)
                    (wt.path / f"t{i}-{round_}.txt").write_text(f"{i}\n")
                    sha = ws.commit_all(wt, f"task {i}")
                    assert sha is not None and ws.merge(SPEC, sha, f"Merge {i}").merged
                    pool.release(wt)
            except Exception as exc:  # collected and asserted below
                errors.append(repr(exc))

        threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    assert errors == []
    assert {w.path for w in got} <= {ws.pool_dir / str(i) for i in range(n)}
    assert pool.stats["overflow"] == 0
    tip = git(repo, "rev-parse", "specexec/feat")
    for i in range(n):
        for round_ in range(3):
            assert git(repo, "show", f"{tip}:t{i}-{round_}.txt") == str(i)


def test_a_branch_the_user_checked_out_is_not_moved(
    repo: Path, ws: Workspace, pool: WorktreePool
) -> None:
    wt = pool.acquire(SPEC, "T1")
    pool.release(wt)
    user_wt = repo.parent / "inspect"
    git(repo, "worktree", "add", "-q", str(user_wt), "specexec/feat@T1")
    with pytest.raises(GitError, match="is checked out"):
        pool.acquire(SPEC, "T1")
    assert read_owner(wt.path) is None  # the slot was given back
    assert pool.acquire(SPEC, "T2").path == wt.path


# --- whole runs ----------------------------------------------------------------------------


def _worktree_paths(repo: Path) -> list[str]:
    out = git(repo, "worktree", "list", "--porcelain")
    return [line[len("worktree ") :] for line in out.splitlines() if line.startswith("worktree ")]


def _pool_paths(repo: Path, paths: list[str] | None = None) -> list[str]:
    pool_dir = Workspace(repo).pool_dir
    return [p for p in (paths or _worktree_paths(repo)) if Path(p).parent == pool_dir]


def test_a_pooled_run_reuses_worktrees_and_keeps_dependencies(tmp_path: Path) -> None:
    repo = init_repo(tmp_path / "repo", {"README.md": "hi\n", ".gitignore": ".venv/\n"})
    # Each task checks it sees no other task's leftovers, then leaves some behind.
    probe = (
        'test -z "$(git status --porcelain --untracked-files=all)" || exit 3; '
        'test "$(git symbolic-ref --short HEAD)" = specexec/s@{id} || exit 4; '
        "ls .venv/installed >> .venv/seen 2>/dev/null; mkdir -p .venv && touch .venv/installed; "
        "echo junk > junk.txt; git stash -u -q; echo {id} > {id}.txt"
    )
    tasks = [
        task(f"T{i}", files=[f"T{i}.txt"], blocked_by=[f"T{i - 2}"] if i >= 2 else [],
             command=probe.format(id=f"T{i}"))
        for i in range(6)
    ]  # fmt: skip
    spec = write_spec(repo / "specs" / "s", tasks)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "spec")
    proc = run_cli("run", str(spec), "--jobs", "2", cwd=repo)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert all(t["status"] == "pass" for t in read_tasks(spec).values())
    pool_paths = _pool_paths(repo)
    assert 1 <= len(pool_paths) <= 2  # at most --jobs, kept for the next run
    # Later tasks found the first tasks' ignored dependency folder.
    seen = sum((Path(p) / ".venv" / "seen").exists() for p in pool_paths)
    assert seen >= 1
    assert git(repo, "stash", "list") == ""
    for i in range(6):
        assert git(repo, "show", f"specexec/s:T{i}.txt") == f"T{i}"
    # --clean-ignored: the next run's tasks see no .venv at all.
    tasks2 = [task("C", files=["C.txt"], command="test ! -e .venv && echo c > C.txt")]
    spec2 = write_spec(repo / "specs" / "c", tasks2)
    proc = run_cli("run", str(spec2), "--jobs", "2", "--clean-ignored", cwd=repo)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_a_stash_pushed_while_a_tasks_stash_is_dropped_is_kept(
    repo: Path, ws: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    # git drops a stash entry by index: a worker that stashes between our read of the
    # list and the drop shifts the index (the flake of the pooled run above under -n 2).
    user = user_stashes(repo)
    with WorktreePool(ws, 2) as pool:
        wt1, wt2 = pool.acquire(SPEC, "T1"), pool.acquire(SPEC, "T2")
        sh(wt1.path, "echo one >> README.md && git stash -q")
        real = ws.git
        pushed: list[tuple[str, ...]] = []

        def racing(*args: str, **kw: Any) -> Any:
            if args[:2] == ("stash", "drop") and not pushed:
                sh(wt2.path, "echo two >> README.md && git stash -q")  # T2's worker, meanwhile
                pushed.append(args)
            return real(*args, **kw)

        monkeypatch.setattr(ws, "git", racing)
        pool.release(wt1)
        assert pushed
        left = user_stashes(repo)
        assert f"WIP on specexec/{SPEC}@T2:" in left and "@T1:" not in left, left
        pool.release(wt2)
    assert user_stashes(repo) == user


def test_no_pool_uses_a_fresh_worktree_per_task(tmp_path: Path) -> None:
    repo = init_repo(tmp_path / "repo")
    here = 'pwd > "$SPECEXEC_SPEC_DIR/.specexec/{id}.where"; echo {id} > {id}.txt'
    tasks = [task(f"T{i}", files=[f"T{i}.txt"], command=here.format(id=f"T{i}")) for i in range(2)]
    spec = write_spec(repo / "specs" / "s", tasks)
    proc = run_cli("run", str(spec), "--jobs", "2", "--no-pool", cwd=repo)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    wheres = {(spec / ".specexec" / f"T{i}.where").read_text().strip() for i in range(2)}
    assert all(Path(w).parent == Workspace(repo).worktrees_dir / "s" for w in wheres), wheres
    assert _worktree_paths(repo) == [str(repo.resolve())]


def test_a_sparse_task_in_a_run(tmp_path: Path) -> None:
    repo = init_repo(
        tmp_path / "repo", {"README.md": "hi\n", "src/a.py": "a\n", "docs/d.md": "d\n"}
    )
    tasks = [
        task("S", files=["src/"], checkout="sparse",
             command="test ! -e README.md && test ! -e docs && test -e src/a.py && echo s > src/s.py"),
        task("F", files=["F.txt"], blocked_by=["S"],
             command="test -e README.md && test -e docs/d.md && test -e src/s.py && echo f > F.txt"),
    ]  # fmt: skip
    spec = write_spec(repo / "specs" / "s", tasks)
    proc = run_cli("run", str(spec), "--jobs", "1", cwd=repo)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert git(repo, "show", "specexec/s:src/s.py") == "s"


# --- dead runs (the SIGKILL trials are in tests/reliability/chaos_test.py) -------------


def test_a_dead_runs_slot_is_not_taken_while_a_process_still_works_in_it(
    repo: Path, ws: Workspace
) -> None:
    holder, path = hold_slot(repo, "T1")
    straggler = subprocess.Popen(["sleep", "60"], cwd=path)  # a worker the dead run left
    holder.kill()
    holder.wait(timeout=60)
    try:
        with WorktreePool(ws, 1) as pool:
            wt = pool.acquire(SPEC, "T2")
            assert not pool.owns(wt)  # a fresh worktree instead
            pool.release(wt, delete_branch=True)
    finally:
        straggler.kill()
        straggler.wait(timeout=60)
    with WorktreePool(ws, 1) as pool:
        wt = pool.acquire(SPEC, "T3")
        assert wt.path == path
        pool.release(wt)


def test_two_pools_of_one_process_never_hand_out_the_same_slot(ws: Workspace) -> None:
    # The daemon runs several spec folders of one repository in one process, each run with
    # its own pool: a slot one of them holds is not free for the other.
    with WorktreePool(ws, 2) as first, WorktreePool(Workspace(ws.root), 2) as second:
        a = first.acquire(SPEC, "T1")
        b = second.acquire(SPEC, "T2")
        assert a.path != b.path
        c = second.acquire(SPEC, "T3")  # the second pool's other slot, or a fresh worktree
        assert c.path not in (a.path, b.path)
        for pool, wt in ((first, a), (second, b), (second, c)):
            pool.release(wt, delete_branch=True)
