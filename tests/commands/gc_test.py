"""`specexec gc`: stale worktrees of dead runs and finished task branches go; live work stays."""

from __future__ import annotations

import json
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from conftest import PY, git, run_cli

from specexec.git import pool as pool_mod
from specexec.git.pool import WorktreePool
from specexec.git.workspace import Workspace, read_owner
from specexec.system import ProcessId

SPEC = "feat"

# A specexec process that creates a task's worktree, then waits for a line on stdin.
OWNER = (
    "import sys\n"
    "from specexec.git.workspace import Workspace\n"
    "ws = Workspace(sys.argv[1])\n"
    "wt = ws.create_worktree(sys.argv[2], sys.argv[3])\n"
    "print(wt.path, flush=True)\n"
    "sys.stdin.readline()\n"
)


@pytest.fixture
def live_owner(repo: Path, ws: Workspace) -> Iterator[subprocess.Popen[str]]:
    proc = subprocess.Popen(
        [PY, "-c", OWNER, str(repo), SPEC, "LIVE"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    proc.stdout.readline()  # the worktree exists
    yield proc
    assert proc.stdin is not None
    proc.stdin.close()
    proc.wait(timeout=60)


def dead_owner_worktree(repo: Path, task_id: str) -> Path:
    """A worktree whose creating process has exited (a crashed run)."""
    proc = subprocess.run(
        [PY, "-c", OWNER, str(repo), SPEC, task_id],
        input="",
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    return Path(proc.stdout.strip())


def worktree_count(repo: Path) -> int:
    return git(repo, "worktree", "list", "--porcelain").count("worktree ")


def test_gc_removes_a_dead_owners_worktree_and_keeps_a_live_one(
    repo: Path, ws: Workspace, live_owner: subprocess.Popen[str]
) -> None:
    dead = dead_owner_worktree(repo, "DEAD")
    owner = read_owner(dead)
    assert owner is not None and owner.pid != live_owner.pid
    assert worktree_count(repo) == 3
    removed = ws.gc()
    assert removed[0] == f"worktree {dead} (owner process {owner.pid} is gone)"
    assert not dead.exists()
    live = ws.worktree_path(SPEC, "LIVE")
    assert (live / "README.md").exists()
    assert worktree_count(repo) == 2
    # DEAD's branch carried no work: it goes too; LIVE's is in use and stays.
    assert "branch specexec/feat@DEAD (no changes)" in removed
    assert git(repo, "rev-parse", "--verify", "-q", "specexec/feat@LIVE", check=False) != ""
    assert ws.gc() == []


def test_gc_removes_a_worktree_once_its_owner_exits(repo: Path, ws: Workspace) -> None:
    proc = subprocess.Popen(
        [PY, "-c", OWNER, str(repo), SPEC, "T1"],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdin is not None
    path = Path(proc.stdout.readline().strip())
    assert ws.gc() == []
    proc.stdin.close()
    proc.wait(timeout=60)
    assert ws.gc()[0].startswith(f"worktree {path} (owner process {proc.pid} is gone)")
    assert worktree_count(repo) == 1


def test_gc_deletes_merged_branches_and_keeps_failed_ones(repo: Path, ws: Workspace) -> None:
    passed = ws.create_worktree(SPEC, "PASS")
    (passed.path / "p.txt").write_text("p\n")
    sha = ws.commit_all(passed, "task PASS")
    assert sha is not None and ws.merge(SPEC, sha, "Merge task PASS").merged
    ws.remove_worktree(passed, delete_branch=False)  # a crash before the branch went
    failed = ws.create_worktree(SPEC, "FAIL")
    (failed.path / "README.md").write_text("conflicting work\n")
    assert ws.commit_all(failed, "task FAIL") is not None
    ws.remove_worktree(failed, delete_branch=False)  # kept for the user to inspect

    assert ws.gc() == ["branch specexec/feat@PASS (merged into specexec/feat)"]
    branches = git(repo, "for-each-ref", "--format=%(refname)", "refs/heads/specexec/")
    assert branches.splitlines() == ["refs/heads/specexec/feat", "refs/heads/specexec/feat@FAIL"]
    bases = git(repo, "for-each-ref", "--format=%(refname)", "refs/specexec/")
    # The kept branch's base and snapshot, and the integration tip specexec last wrote.
    assert bases.splitlines() == [
        "refs/specexec/bases/feat/FAIL",
        "refs/specexec/snapshots/feat/FAIL",
        "refs/specexec/tips/feat",
    ]


def test_gc_keeps_a_task_branch_the_user_checked_out(repo: Path, ws: Workspace) -> None:
    wt = ws.create_worktree(SPEC, "T1")
    ws.remove_worktree(wt, delete_branch=False)
    git(repo, "checkout", "-q", "specexec/feat@T1")
    assert ws.gc() == []
    assert git(repo, "rev-parse", "--abbrev-ref", "HEAD") == "specexec/feat@T1"


def test_gc_command_prints_what_it_removed(repo: Path, ws: Workspace) -> None:
    dead = dead_owner_worktree(repo, "T1")
    (dead / "ro").mkdir()
    (dead / "ro" / "f").write_text("x")
    (dead / "ro").chmod(0o500)
    proc = run_cli("gc", str(repo))
    assert proc.returncode == 0, proc.stderr
    assert f"removed worktree {dead} (owner process" in proc.stdout
    assert "removed branch specexec/feat@T1 (no changes)" in proc.stdout
    assert not dead.exists()
    again = run_cli("gc", cwd=repo)
    assert again.returncode == 0
    assert again.stdout == f"nothing to remove in {repo.resolve()}\n"


def test_gc_command_refuses_a_non_repository(tmp_path: Path) -> None:
    proc = run_cli("gc", str(tmp_path))
    assert proc.returncode == 2
    assert str(tmp_path) in proc.stderr
    assert "Traceback" not in proc.stderr


# --- pool worktrees ----------------------------------------------------------------------

# A process that takes a pool slot, prints its path, and waits.
HOLDER = (
    "import sys\n"
    "from specexec.git.workspace import Workspace\n"
    "from specexec.git.pool import WorktreePool\n"
    "p = WorktreePool(Workspace(sys.argv[1]), int(sys.argv[3]))\n"
    "wt = p.acquire('feat', sys.argv[2])\n"
    "print(wt.path, flush=True)\n"
    "sys.stdin.readline()\n"
)


def hold_slot(repo: Path, task_id: str, size: int) -> tuple[subprocess.Popen[str], Path]:
    proc = subprocess.Popen(
        [PY, "-c", HOLDER, str(repo), task_id, str(size)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    return proc, Path(proc.stdout.readline().strip())


def test_gc_removes_free_and_dead_slots_and_keeps_live_ones(repo: Path, ws: Workspace) -> None:
    with WorktreePool(ws, 3) as pool:
        free = pool.acquire(SPEC, "FREE")
        holder, live = hold_slot(repo, "LIVE", size=3)
        dead_proc, dead = hold_slot(repo, "DEAD", size=3)
        pool.release(free)
    dead_proc.kill()
    dead_proc.wait(timeout=60)
    assert len({free.path, live, dead}) == 3
    try:
        # A dead run's slot no longer holds its task branch; a live one does.
        branches = ws.gc()
        assert "branch specexec/feat@DEAD (no changes)" in branches
        assert not any("LIVE" in b for b in branches)
        removed = pool_mod.gc(ws)
        assert sorted(removed) == sorted(
            [
                f"pool worktree {free.path} (free)",
                f"pool worktree {dead} (owner process {dead_proc.pid} is gone)",
            ]
        )
        assert live.is_dir() and not free.path.exists() and not dead.exists()
        assert pool_mod.gc(ws) == []
        assert run_cli("gc", str(repo)).stdout == f"nothing to remove in {repo.resolve()}\n"
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=60)
    assert pool_mod.gc(ws) == [f"pool worktree {live} (owner process {holder.pid} is gone)"]
    assert git(repo, "worktree", "list", "--porcelain").count("worktree ") == 1
    assert not ws.pool_dir.exists()


def test_gc_command_removes_pool_worktrees(repo: Path, ws: Workspace) -> None:
    with WorktreePool(ws, 2) as pool:
        wt = pool.acquire(SPEC, "T1")
        pool.release(wt, delete_branch=True)
    proc = run_cli("gc", str(repo))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == f"removed pool worktree {wt.path} (free)\n"


def test_gc_removes_the_worktrees_older_versions_kept_in_the_git_dir(
    repo: Path, ws: Workspace
) -> None:
    """Before worktrees moved out of ``.git``: ``.git/specexec/pool/<n>`` and
    ``.git/specexec/worktrees/<spec>/<task>``. A dead owner's and an ownerless one go; a
    live owner's stays."""
    data = repo / ".git" / "specexec"
    base = git(repo, "rev-parse", "HEAD")
    dead = {"pid": 2**22 + 7, "start_time": 1.0, "host": socket.gethostname()}
    slot, fresh, live = data / "pool" / "0", data / "worktrees" / SPEC / "T1", data / "pool" / "1"
    for path in (slot, fresh, live):
        path.parent.mkdir(parents=True, exist_ok=True)
        git(repo, "worktree", "add", "-q", "--detach", str(path), base)
    (data / "pool" / "0.owner").write_text(json.dumps(dead))
    owner = subprocess.Popen(["sleep", "60"])
    try:
        me = ProcessId.of(owner.pid)
        assert me is not None
        (data / "pool" / "1.owner").write_text(json.dumps(me.to_json()))
        proc = run_cli("gc", str(repo))
        assert proc.returncode == 0, proc.stderr
        assert f"worktree {slot} (left by an older specexec)" in proc.stdout
        assert f"worktree {fresh} (left by an older specexec)" in proc.stdout
        listing = git(repo, "worktree", "list", "--porcelain")
        assert str(slot) not in listing and str(fresh) not in listing
        assert str(live) in listing and live.is_dir()  # its owner still runs
        assert not slot.exists() and not fresh.exists() and not (data / "worktrees").exists()
        assert "prunable" not in listing
    finally:
        owner.kill()
        owner.wait()
    proc = run_cli("gc", str(repo))
    assert proc.returncode == 0, proc.stderr
    assert git(repo, "worktree", "list", "--porcelain").count("worktree ") == 1
    assert not (data / "pool").exists()


def test_gc_keeps_a_live_worktree_whose_marker_a_worker_removed(
    repo: Path, ws: Workspace, live_owner: subprocess.Popen[str]
) -> None:
    """Ownership is the run's hold, not the marker a worker can delete or forge."""
    live = ws.worktree_path(SPEC, "LIVE")
    live.with_name("LIVE.owner").unlink()
    assert ws.gc() == [] and (live / "README.md").exists()
    # A marker forged to name a dead process changes nothing either.
    dead = {"pid": 2**22 + 7, "start_time": 1.0, "host": socket.gethostname()}
    live.with_name("LIVE.owner").write_text(json.dumps(dead))
    assert ws.gc() == [] and (live / "README.md").exists()


def test_gc_removes_a_dead_worktree_whose_forged_marker_names_a_live_process(
    repo: Path, ws: Workspace
) -> None:
    dead = dead_owner_worktree(repo, "DEAD")
    sleeper = subprocess.Popen(["sleep", "60"])
    try:
        me = ProcessId.of(sleeper.pid)
        assert me is not None
        dead.with_name("DEAD.owner").write_text(json.dumps(me.to_json()))
        removed = ws.gc()
        assert (
            f"worktree {dead} (no run holds it (its marker names process {sleeper.pid}))" in removed
        )
        assert not dead.exists()
    finally:
        sleeper.kill()
        sleeper.wait()


def test_pool_gc_keeps_a_live_slot_whose_marker_was_removed_and_frees_a_forged_one(
    repo: Path, ws: Workspace
) -> None:
    holder, live = hold_slot(repo, "LIVE", size=2)
    try:
        live.with_name(live.name + ".owner").unlink()
        with WorktreePool(ws, 2) as pool:  # the holder's slot is never handed out
            wt = pool.acquire(SPEC, "MINE")
            assert wt.path != live
            pool.release(wt, delete_branch=True)
        free = wt.path
        sleeper = subprocess.Popen(["sleep", "60"])
        try:
            me = ProcessId.of(sleeper.pid)
            assert me is not None
            free.with_name(free.name + ".owner").write_text(json.dumps(me.to_json()))
            removed = pool_mod.gc(ws)
            assert removed == [
                f"pool worktree {free} (no run holds it; its marker names process {sleeper.pid})"
            ]
            assert live.is_dir()
        finally:
            sleeper.kill()
            sleeper.wait()
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=60)
