"""Worktrees, task branches and merges: the one module that changes git state.

Layout, all inside the repository's git common dir so that it never shows up in the
user's ``git status``::

    <common>/specexec/git.lock                        the repository lock (never deleted)
    <common>/specexec/worktrees/<spec>/<task>         a task's fresh worktree (``--no-pool``)
    <common>/specexec/worktrees/<spec>/<task>.owner   {"pid", "start_time", "host"}
    <common>/specexec/pool/<n>                        a pooled worktree (``specexec.git.pool``)
    <common>/specexec/pool/<n>.owner                  its owner while in use, + the task

Refs: integration branch ``specexec/<spec>``; task branch ``specexec/<spec>@<task>``
(``specexec/<spec>/<task>`` cannot exist next to ``specexec/<spec>``: a ref cannot be a
file and a directory at once); ``refs/specexec/bases/<spec>/<task>`` records the commit a
task branch started from, so that ``is_merged`` still works after a crash.

Every git metadata change (worktree add/remove, branch create/delete, ref updates) runs
under one lock per repository: a threading lock (the executor calls from worker threads)
around a file lock (other specexec processes). Slow work (checking files out, deleting a
worktree's files, ``git add``) runs outside it: it only touches one task's worktree.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import socket
import stat
import threading
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import filelock
import psutil

from specexec.errors import Busy, GitError, InvalidInput
from specexec.git.runner import ZERO_SHA, GitResult, run
from specexec.tasksfile.types import Task

LOCK_TIMEOUT = 300.0  # seconds; git metadata operations take milliseconds
BASES = "refs/specexec/bases"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_PART = r"([A-Za-z0-9][A-Za-z0-9._-]*)"
_TASK_REF = re.compile(rf"refs/heads/specexec/{_PART}@{_PART}")
_BASE_REF = re.compile(rf"refs/specexec/bases/{_PART}/{_PART}")
_INTEGRATION_REF = re.compile(rf"refs/heads/specexec/{_PART}")
# The reflog message of `git stash` / `git stash push -m`: "WIP on <branch>: ..." / "On <branch>: ...".
_STASH_MSG = re.compile(r"(?:WIP on|On) (.+?): ")
_FALLBACK_NAME = "specexec"
_FALLBACK_EMAIL = "specexec@localhost"


@dataclass(frozen=True, slots=True)
class Worktree:
    path: Path
    branch: str  # short name: specexec/<spec>@<task>
    base: str  # sha of the integration tip it was created from
    spec: str
    task_id: str


@dataclass(frozen=True, slots=True)
class MergeResult:
    merged: bool
    commit: str | None  # the integration branch's new tip (None on conflict)
    conflicts: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class StaleWorktree:
    path: Path
    spec: str
    task_id: str
    reason: str


@dataclass(frozen=True, slots=True)
class Owner:
    pid: int
    start_time: float
    host: str


# --- names ---------------------------------------------------------------------------


def check_name(kind: str, value: str) -> str:
    """``value`` if it can be one component of a branch name and a directory name."""
    if not _NAME.fullmatch(value) or ".." in value or value.endswith((".lock", ".")):
        raise InvalidInput(
            f"{kind} {value!r} cannot name a git branch: use 1-64 letters, digits, '.', '_' "
            "or '-', starting with a letter or digit, without '..' or a trailing '.lock' or '.'"
        )
    return value


def integration_branch(spec: str) -> str:
    return _integration(check_name("spec", spec))


def task_branch(spec: str, task_id: str) -> str:
    return _task(check_name("spec", spec), check_name("task id", task_id))


# Unchecked forms, for names read back from git (gc must handle whatever is there).
def _integration(spec: str) -> str:
    return f"specexec/{spec}"


def _task(spec: str, task_id: str) -> str:
    return f"specexec/{spec}@{task_id}"


def _heads(branch: str) -> str:
    return f"refs/heads/{branch}"


def _base_ref(spec: str, task_id: str) -> str:
    return f"{BASES}/{spec}/{task_id}"


# --- the repository lock -------------------------------------------------------------


class _RepoLock:
    """Threads queue on the RLock (prompt wake-up); the holder then takes the file lock."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._thread = threading.RLock()
        self._file = filelock.FileLock(
            path, timeout=LOCK_TIMEOUT, thread_local=False, preserve_lock_file=True
        )

    @contextlib.contextmanager
    def hold(self) -> Iterator[None]:
        if not self._thread.acquire(timeout=LOCK_TIMEOUT):
            raise Busy(f"timed out waiting for the repository lock {self.path}")
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            try:
                self._file.acquire()
            except filelock.Timeout as exc:
                raise Busy(f"another process holds the repository lock {self.path}") from exc
            try:
                yield
            finally:
                self._file.release()
        finally:
            self._thread.release()


_LOCKS: dict[Path, _RepoLock] = {}
_LOCKS_GUARD = threading.Lock()


def _repo_lock(common_dir: Path) -> _RepoLock:
    path = common_dir / "specexec" / "git.lock"
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(path, _RepoLock(path))


# --- owner markers -------------------------------------------------------------------


def _owner_file(path: Path) -> Path:
    return path.with_name(path.name + ".owner")


def _this_process() -> Owner:
    me = psutil.Process(os.getpid())
    return Owner(os.getpid(), float(me.create_time()), socket.gethostname())


def read_owner(worktree_path: Path) -> Owner | None:
    """The owner recorded beside a worktree, or None if missing or unreadable."""
    try:
        raw: Any = json.loads(_owner_file(worktree_path).read_text(encoding="utf-8"))
        return Owner(int(raw["pid"]), float(raw["start_time"]), str(raw["host"]))
    except (OSError, ValueError, KeyError, TypeError):
        return None


def owner_alive(owner: Owner) -> bool:
    """Is the owner process still running (same pid *and* same start time)?"""
    if owner.host != socket.gethostname():
        return True  # another machine's process: we cannot tell, so keep its work
    try:
        proc = psutil.Process(owner.pid)
        started = float(proc.create_time())
        zombie = proc.status() == psutil.STATUS_ZOMBIE
    except psutil.NoSuchProcess:
        return False
    except psutil.AccessDenied:
        return True
    # A reused pid has another start time; 1 s absorbs clock-tick rounding.
    return not zombie and abs(started - owner.start_time) < 1.0


def read_marker(worktree_path: Path) -> dict[str, Any] | None:
    """The whole owner record beside a worktree (the pool keeps its task there too)."""
    try:
        raw: Any = json.loads(_owner_file(worktree_path).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return raw if isinstance(raw, dict) else None


def _write_owner(worktree_path: Path, extra: Mapping[str, Any] | None = None) -> None:
    """Record this process as the owner (atomically: a crash leaves the old record)."""
    me = _this_process()
    target = _owner_file(worktree_path)
    tmp = target.with_name(target.name + ".tmp")
    doc = {**(extra or {}), "pid": me.pid, "start_time": me.start_time, "host": me.host}
    tmp.write_text(json.dumps(doc) + "\n", encoding="utf-8")
    os.replace(tmp, target)


# --- files ---------------------------------------------------------------------------


def _add_mode(path: str | bytes | Path, bits: int) -> None:
    mode = os.lstat(path).st_mode
    if mode & bits != bits and not stat.S_ISLNK(mode):
        os.chmod(path, stat.S_IMODE(mode) | bits)


def _make_writable(top: Path, *, files: bool = False) -> None:
    """Give the owner rwx on every directory under ``top`` (and rw on files if asked)."""
    # Top-down, so each directory is opened up before os.walk enters it.
    _add_mode(top, 0o700)
    for root, dirs, names in os.walk(top):
        for d in dirs:
            with contextlib.suppress(FileNotFoundError):
                _add_mode(os.path.join(root, d), 0o700)
        if files:
            for name in names:
                with contextlib.suppress(FileNotFoundError):
                    _add_mode(os.path.join(root, name), 0o600)


def _rmtree(path: Path) -> None:
    """Delete ``path`` (never following a symlink), even if a worker made dirs read-only."""
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
        return
    if not path.exists():
        return
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        return
    except OSError:
        _make_writable(path)
        shutil.rmtree(path)


# --- the workspace -------------------------------------------------------------------


class Workspace:
    """The git side of specexec for one repository, safe to share between threads."""

    def __init__(self, path: Path | str) -> None:
        start = Path(path).expanduser().absolute()
        if not start.exists():
            raise InvalidInput(f"{start}: no such file or directory")
        cwd = start if start.is_dir() else start.parent
        res = run(
            [
                "rev-parse",
                "--is-bare-repository",
                "--path-format=absolute",
                "--git-dir",
                "--git-common-dir",
                "--show-toplevel",
            ],
            cwd=cwd,
            ok=range(256),
        )
        lines = os.fsdecode(res.stdout).splitlines()
        if lines[:1] == ["true"]:
            raise InvalidInput(f"{start} is a bare git repository; specexec needs a working tree")
        if res.returncode != 0 or len(lines) != 4:
            why = res.stderr.strip().splitlines()[-1:] or ["unknown error"]
            raise InvalidInput(f"{start} is not inside a git working tree ({why[0]})")
        self.git_dir = Path(lines[1]).resolve()
        self.common_dir = Path(lines[2]).resolve()
        self.root = Path(lines[3]).resolve()
        self.data_dir = self.common_dir / "specexec"
        self.worktrees_dir = self.data_dir / "worktrees"
        self.pool_dir = self.data_dir / "pool"
        self._lock = _repo_lock(self.common_dir)
        self._identity: dict[str, str] | None = None

    def __repr__(self) -> str:
        return f"Workspace({str(self.root)!r})"

    # -- plumbing --

    def _git(self, *args: str, **kw: Any) -> GitResult:
        return run(args, cwd=self.root, git_dir=self.git_dir, **kw)

    def _wt_admin(self, wt_path: Path) -> Path:
        admin = self._admin_dir(wt_path)
        if admin is None:
            raise GitError(f"{wt_path} is not a worktree of {self.root}")
        return admin

    @staticmethod
    def _wt_git(admin: Path, wt_path: Path, *args: str, **kw: Any) -> GitResult:
        # Explicit --git-dir/--work-tree: a worker may have rewritten the worktree's .git.
        if is_sparse(admin):
            args = (*SPARSE_OPTIONS, *args)
        return run(args, cwd=wt_path, git_dir=admin, work_tree=wt_path, **kw)

    def _resolve(self, *names: str) -> list[str | None]:
        """Commit shas of ``names`` (None where missing), in one git call."""
        data = "".join(f"{n}^{{commit}}\n" for n in names).encode()
        res = self._git("cat-file", "--batch-check=%(objectname)", input=data)
        out = os.fsdecode(res.stdout).splitlines()
        return [None if line.endswith(" missing") else line for line in out]

    def _verify(self, rev: str) -> str | None:
        res = self._git("rev-parse", "-q", "--verify", f"{rev}^{{commit}}", ok=(0, 1))
        return res.text if res.returncode == 0 else None

    def _is_ancestor(self, older: str, newer: str) -> bool:
        res = self._git("merge-base", "--is-ancestor", older, newer, ok=(0, 1))
        return res.returncode == 0

    def _identity_env(self) -> dict[str, str]:
        """Author and committer as git would pick them; never missing."""
        if self._identity is None:
            res = self._git(
                "config", "--get-regexp", r"^(user|author|committer)\.(name|email)$", ok=(0, 1)
            )
            cfg: dict[str, str] = {}
            for line in res.text.splitlines():
                key, _, value = line.partition(" ")
                if value.strip():
                    cfg[key] = value.strip()
            env: dict[str, str] = {}
            for role in ("author", "committer"):
                for field, fallback in (("name", _FALLBACK_NAME), ("email", _FALLBACK_EMAIL)):
                    var = f"GIT_{role.upper()}_{field.upper()}"
                    env[var] = (
                        os.environ.get(var)
                        or cfg.get(f"{role}.{field}")
                        or cfg.get(f"user.{field}")
                        or fallback
                    )
            self._identity = env
        return self._identity

    def _commit_tree(self, tree: str, parents: tuple[str, ...], message: str) -> str:
        args = ["commit-tree", "--no-gpg-sign", tree]
        for p in parents:
            args += ["-p", p]
        return self._git(*args, input=message.encode(), env=self._identity_env()).text

    def _admin_dir(self, wt_path: Path) -> Path | None:
        """``<common>/worktrees/<id>`` of the worktree at ``wt_path``, if git knows it."""
        target = (wt_path / ".git").resolve()
        try:
            entries = list((self.common_dir / "worktrees").iterdir())
        except FileNotFoundError:
            return None
        for admin in entries:
            try:
                recorded = (admin / "gitdir").read_text(encoding="utf-8").strip()
            except OSError:
                continue
            if Path(recorded).resolve() == target:
                return admin
        return None

    def _registered(self) -> dict[Path, Path]:
        """Worktree path -> admin dir, for every worktree under our worktrees dir."""
        found: dict[Path, Path] = {}
        with contextlib.suppress(FileNotFoundError):
            for admin in (self.common_dir / "worktrees").iterdir():
                try:
                    recorded = (admin / "gitdir").read_text(encoding="utf-8").strip()
                except OSError:
                    continue
                path = Path(recorded).resolve().parent
                if path.parent.parent == self.worktrees_dir:
                    found[path] = admin
        return found

    def _checked_out(self) -> set[str]:
        """Branches checked out, or being rebased or bisected, in any worktree.

        Read from the files git itself reads for this (HEAD, rebase-*/head-name,
        BISECT_START): no git call, since it runs several times per task. A pool slot
        that no live process owns does not count: whoever takes it next switches it to
        another branch before anything else.
        """
        busy = _branches_in(self.common_dir)
        with contextlib.suppress(FileNotFoundError):
            for admin in (self.common_dir / "worktrees").iterdir():
                try:
                    path = Path((admin / "gitdir").read_text(encoding="utf-8").strip()).parent
                except OSError:
                    continue
                if not self._idle_slot(path):
                    busy |= _branches_in(admin)
        return busy

    def _idle_slot(self, path: Path) -> bool:
        if path.parent != self.pool_dir:
            return False
        owner = read_owner(path)
        return owner is None or not owner_alive(owner)

    def worktree_path(self, spec: str, task_id: str) -> Path:
        return self.worktrees_dir / check_name("spec", spec) / check_name("task id", task_id)

    # -- the integration branch --

    def ensure_integration_branch(self, spec: str, base_ref: str | None = None) -> str:
        """Create ``specexec/<spec>`` from ``base_ref`` (default HEAD) if missing; its tip."""
        ref = _heads(integration_branch(spec))
        with self._lock.hold():
            (tip,) = self._resolve(ref)
            if tip is not None:
                return tip
            if base_ref is None:
                start = self._verify("HEAD")
                if start is None:
                    raise InvalidInput(
                        f"repository has no commits: {self.root} (HEAD names no commit to "
                        f"start {integration_branch(spec)} from; commit something first)"
                    )
            else:
                start = None if base_ref.startswith("-") else self._verify(base_ref)
                if start is None:
                    raise InvalidInput(
                        f"base_ref {base_ref!r} of spec {spec!r} does not name a commit "
                        f"in {self.root}"
                    )
            self._git("update-ref", "-m", "specexec: integration branch", ref, start, ZERO_SHA)
            return start

    # -- worktrees --

    def create_worktree(
        self, spec: str, task_id: str, *, sparse: Sequence[str] | None = None
    ) -> Worktree:
        """A new worktree on ``specexec/<spec>@<task>`` from the integration tip.

        ``sparse``: check out only what these patterns name (see ``checkout_patterns``);
        None checks out every file.
        """
        path = self.worktree_path(spec, task_id)
        with self._lock.hold():
            base = self._integration_tip(spec)
            self._clear_stale(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            # The owner marker comes first so that gc never sees an ownerless new worktree.
            _write_owner(path, self.task_record(spec, task_id, base))
            try:
                branch = self._start_task_branch(spec, task_id, base)
                # --no-checkout: the checkout is the slow part and is done below, unlocked.
                self._git("worktree", "add", "-q", "--no-checkout", "--detach", str(path), base)
                admin = self._wt_admin(path)
                _set_head(admin, _heads(branch))
            except GitError:
                self._drop(path)
                raise
        wt = Worktree(path=path, branch=branch, base=base, spec=spec, task_id=task_id)
        try:
            self._checkout(admin, path, sparse)
        except BaseException:
            self.remove_worktree(wt, delete_branch=True)
            raise
        return wt

    def _integration_tip(self, spec: str) -> str:
        integration = integration_branch(spec)
        (base,) = self._resolve(_heads(integration))
        if base is None:
            raise GitError(
                f"integration branch {integration} does not exist in {self.root} "
                "(call ensure_integration_branch first)"
            )
        return base

    def _start_task_branch(self, spec: str, task_id: str, base: str) -> str:
        """Point the task's branch and base ref at ``base`` (lock held); the branch name.

        Refused while the branch is checked out somewhere (say, the user inspects a
        failed task there): moving it would leave that worktree behind its HEAD.
        """
        branch = task_branch(spec, task_id)
        if _heads(branch) in self._checked_out():
            raise GitError(
                f"branch {branch} is checked out in a worktree of {self.root}; "
                "switch that worktree to another branch to run the task again"
            )
        lines = f"update {_heads(branch)} {base}\nupdate {_base_ref(spec, task_id)} {base}\n"
        self._git("update-ref", "-m", "specexec: start task", "--stdin", input=lines.encode())
        return branch

    def _checkout(self, admin: Path, path: Path, sparse: Sequence[str] | None) -> None:
        """Make index and files match HEAD (only what ``sparse`` names, if given)."""
        set_sparse(admin, sparse)
        self._wt_git(admin, path, *PARALLEL_CHECKOUT, "read-tree", "--reset", "-u", "HEAD")

    def _clear_stale(self, path: Path) -> None:
        """Remove a dead run's worktree at ``path``; refuse one a live process owns."""
        owner_file = _owner_file(path)
        if not (path.exists() or owner_file.exists() or self._admin_dir(path)):
            return
        owner = read_owner(path)
        if owner is not None and owner.pid != os.getpid() and owner_alive(owner):
            raise Busy(f"worktree {path} is in use by process {owner.pid}")
        self._drop(path)

    def _drop(self, path: Path) -> None:
        """Delete a worktree's files, its admin dir and its marker (lock held)."""
        admin = self._admin_dir(path)
        self.drop_task_stashes(path, admin)
        _rmtree(path)
        if admin is not None:
            _rmtree(admin)
        owner_file = _owner_file(path)
        owner_file.unlink(missing_ok=True)
        owner_file.with_name(owner_file.name + ".tmp").unlink(missing_ok=True)

    def remove_worktree(
        self, wt: Worktree | tuple[str, str], *, delete_branch: bool = False
    ) -> None:
        """Remove a task's worktree (if any); delete its branch too when asked."""
        spec, task_id = (wt.spec, wt.task_id) if isinstance(wt, Worktree) else wt
        path = self.worktree_path(spec, task_id)
        # Deleting the files is the slow part and touches only this worktree: no lock.
        _rmtree(path)
        with self._lock.hold():
            self._drop(path)
            if delete_branch:
                self._delete_branches([(spec, task_id)])

    def delete_branch(self, branch: str) -> bool:
        """Delete a task branch (``specexec/<spec>@<task>``) unless it is checked out.

        True if it is gone. Other branches are refused: specexec deletes only its own.
        """
        m = _TASK_REF.fullmatch(_heads(branch.removeprefix("refs/heads/")))
        if m is None:
            raise InvalidInput(f"{branch!r} is not a specexec task branch")
        with self._lock.hold():
            return bool(self._delete_branches([(m[1], m[2])]))

    def _delete_branches(
        self, tasks: Sequence[tuple[str, str]], orphan_bases: Sequence[tuple[str, str]] = ()
    ) -> list[tuple[str, str]]:
        """Delete task branches (and base refs), except branches checked out somewhere."""
        busy = self._checked_out()
        lines: list[str] = []
        deleted: list[tuple[str, str]] = []
        for spec, task_id in tasks:
            ref = _heads(_task(spec, task_id))
            if ref not in busy:
                lines += [f"delete {ref}\n", f"delete {_base_ref(spec, task_id)}\n"]
                deleted.append((spec, task_id))
        lines += [f"delete {_base_ref(spec, task_id)}\n" for spec, task_id in orphan_bases]
        if lines:
            self._git("update-ref", "--stdin", input="".join(lines).encode())
        return deleted

    # -- stashes --
    # refs/stash is shared by every worktree: a worker's `git stash` lands in the user's
    # stash list. The owner record of a task's worktree keeps the stash entries that
    # existed when the task started; entries the task added are dropped when its
    # worktree is released, removed or reclaimed from a dead run.

    def task_record(self, spec: str, task_id: str, base: str) -> dict[str, Any]:
        """What the owner marker of a task's worktree records besides the owner."""
        return {
            "spec": spec,
            "task": task_id,
            "branch": task_branch(spec, task_id),
            "base": base,
            "stash": [sha for sha, _msg in self._stash_log()],
        }

    def _stash_log(self) -> list[tuple[str, str]]:
        """(stash commit, message) of ``stash@{n}``, newest first; read without git."""
        try:
            data = (self.common_dir / "logs" / "refs" / "stash").read_bytes()
        except OSError:
            return []
        out: list[tuple[str, str]] = []
        for line in os.fsdecode(data).splitlines():
            head, _, msg = line.partition("\t")
            fields = head.split(" ", 2)
            if len(fields) >= 2:
                out.append((fields[1], msg))
        out.reverse()
        return out

    def drop_task_stashes(self, path: Path, admin: Path | None) -> list[str]:
        """Drop the stash entries the task of the worktree at ``path`` made (lock held).

        An entry is the task's if it is new since the task started and was made on the
        task's branch, or on a detached HEAD at a commit of the worktree's history where
        no worktree outside specexec stands detached. The dropped shas.
        """
        record = read_marker(path)
        if record is None or not isinstance(record.get("stash"), list):
            return []
        before = {str(s) for s in record["stash"]}
        branch = str(record.get("branch", ""))
        entries = self._stash_log()
        fresh = [(sha, m) for sha, msg in entries
                 if sha not in before and (m := _STASH_MSG.match(msg)) is not None]  # fmt: skip
        if not fresh:
            return []
        outside: set[str] | None = None
        head: str | None = None
        drop: list[str] = []
        for sha, m in fresh:
            if m[1] == branch:
                drop.append(sha)
            elif m[1] == "(no branch)" and admin is not None:
                if outside is None:
                    outside = self._heads_outside()
                    res = run(["rev-parse", "-q", "--verify", "HEAD"], cwd=self.root,
                              git_dir=admin, ok=(0, 1))  # fmt: skip
                    head = res.text or None
                parent = self._verify(f"{sha}^1")
                if (
                    parent is not None
                    and head is not None
                    and parent not in outside
                    and self._is_ancestor(parent, head)
                ):
                    drop.append(sha)
        for sha in drop:
            # Found again by sha: the user may stash or drop meanwhile (git takes no lock of ours).
            now = [s for s, _msg in self._stash_log()]
            if sha in now:
                self._git("stash", "drop", "-q", f"stash@{{{now.index(sha)}}}")
        return drop

    def _heads_outside(self) -> set[str]:
        """Where the worktrees outside specexec stand with a detached HEAD (a user's
        stash made there says "(no branch)" too)."""
        res = self._git("worktree", "list", "--porcelain", "-z")
        heads: set[str] = set()
        path: Path | None = None
        head = ""
        for f in [*res.fields(), "worktree "]:
            if f.startswith("worktree "):
                path, head = Path(f[len("worktree ") :]), ""
            elif f.startswith("HEAD "):
                head = f[len("HEAD ") :]
            elif f == "detached" and path is not None and self.data_dir not in path.parents:
                heads.add(head)
        return heads

    # -- a worktree's changes --

    def changed_files(self, wt: Worktree) -> list[str]:
        """Every path changed since ``wt.base``: committed, staged, unstaged, untracked, deleted."""
        admin = self._wt_admin(wt.path)
        diff_args = ("diff", "--name-only", "-z", "--no-renames", "--no-ext-diff", wt.base, "--")
        diff = self._wt_git(admin, wt.path, *diff_args)
        untracked = self._wt_git(admin, wt.path, "ls-files", "-z", "--others", "--exclude-standard")
        return sorted(set(diff.fields()) | set(untracked.fields()))

    def commit_all(self, wt: Worktree, message: str) -> str | None:
        """Commit everything in the worktree; the task branch's new tip, or None if no change.

        Commits the worker made itself are kept (they are the new commit's ancestors).
        """
        admin = self._wt_admin(wt.path)
        # Left by a worker killed in the middle of a git command; the worker is gone now.
        (admin / "index.lock").unlink(missing_ok=True)
        # --sparse: files a worker made outside a sparse checkout are its changes too.
        self._wt_git(admin, wt.path, "add", "-A", *(("--sparse",) if is_sparse(admin) else ()))
        tree = self._wt_git(admin, wt.path, "write-tree").text
        query = f"{wt.base}^{{tree}}\nHEAD^{{commit}}\nHEAD^{{tree}}\n".encode()
        res = self._wt_git(admin, wt.path, "cat-file", "--batch-check=%(objectname)", input=query)
        base_tree, head, head_tree = (
            None if line.endswith(" missing") else line
            for line in os.fsdecode(res.stdout).splitlines()
        )
        if tree == base_tree:
            return None
        if head is not None and tree == head_tree:
            new = head  # the worker committed everything itself
        else:
            new = self._commit_tree(tree, (head or wt.base,), message)
        ref = _heads(wt.branch)
        head_file = _read(admin / "HEAD")
        sym = head_file[len("ref: ") :] if head_file.startswith("ref: ") else ""
        if sym != ref or new != head:
            with self._lock.hold():
                if sym != ref:  # the worker switched branches: bring HEAD back
                    _set_head(admin, ref)
                self._git("update-ref", "-m", f"specexec: {message}", ref, new)
        return new

    # -- merging --

    def merge(self, spec: str, task_commit: str, message: str) -> MergeResult:
        """Merge ``task_commit`` into ``specexec/<spec>`` without touching any working tree.

        Fast-forwards when the integration tip is an ancestor of the task commit (the
        usual case when the tip has not moved since the task's worktree was created);
        otherwise ``merge-tree --write-tree`` + ``commit-tree`` make a merge commit. The
        branch moves with a compare-and-swap ``update-ref``, retried if someone else
        moved it in between. On conflict nothing is written.
        """
        branch = integration_branch(spec)
        ref = _heads(branch)
        with self._lock.hold():
            if ref in self._checked_out():
                # Moving a checked-out branch would leave that worktree's index and files
                # behind its HEAD (what `git fetch` refuses to do too).
                raise GitError(
                    f"cannot merge into {branch}: it is checked out in a worktree of "
                    f"{self.root}; switch that worktree to another branch"
                )
            why = ""
            for _attempt in range(20):
                (old,) = self._resolve(ref)
                if old is None:
                    raise GitError(f"integration branch {branch} does not exist in {self.root}")
                mb = self._git("merge-base", old, task_commit, ok=(0, 1)).text
                if mb == task_commit:
                    return MergeResult(True, old)  # already merged: nothing to do
                if mb == old:
                    new = task_commit
                else:
                    mt = ("merge-tree", "--write-tree", "-z", "--name-only", old, task_commit)
                    res = self._git(*mt, ok=(0, 1))
                    tree, conflicts = _parse_merge_tree(res.stdout)
                    if res.returncode == 1:
                        return MergeResult(False, None, conflicts or ("(unknown path)",))
                    new = self._commit_tree(tree, (old, task_commit), message)
                # Compare-and-swap: fails if anyone (even outside specexec) moved the branch.
                cas = self._git(
                    "update-ref", "-m", f"specexec: {message}", ref, new, old, ok=range(256)
                )
                if cas.returncode == 0:
                    return MergeResult(True, new)
                why = cas.stderr.strip()
        raise GitError(f"could not update {branch} to merge {task_commit}: {why}")

    def is_merged(self, spec: str, task_id: str) -> bool:
        """Did this task's branch get work merged into the integration branch?"""
        tip, base, integ = self._resolve(
            _heads(task_branch(spec, task_id)),
            _base_ref(spec, task_id),
            _heads(integration_branch(spec)),
        )
        if tip is None or base is None or integ is None or tip == base:
            return False
        return self._is_ancestor(tip, integ)

    def integration_tip(self, spec: str) -> str | None:
        """The commit the integration branch points at, or None if it does not exist."""
        return self._verify(_heads(integration_branch(spec)))

    def task_branches(self, spec: str) -> set[str]:
        """Ids of the tasks of ``spec`` that have a branch or a worktree (one git call)."""
        ids: set[str] = set()
        for ref in self._refs():
            m = _TASK_REF.fullmatch(ref)
            if m is not None and m[1] == spec:
                ids.add(m[2])
        spec_dir = self.worktrees_dir / spec
        if spec_dir.is_dir():
            ids.update(p.name for p in spec_dir.iterdir() if p.is_dir())
        return ids

    # -- garbage collection --

    def stale_worktrees(self) -> list[StaleWorktree]:
        """Our worktrees that no live process owns (or half-removed leftovers)."""
        paths: set[Path] = set(self._registered())
        with contextlib.suppress(FileNotFoundError):
            for spec_dir in self.worktrees_dir.iterdir():
                if spec_dir.is_dir() and not spec_dir.is_symlink():
                    for entry in spec_dir.iterdir():
                        if entry.is_dir() and not entry.is_symlink():
                            paths.add(entry)
                        else:  # an owner marker (or its temporary file)
                            name = entry.name.removesuffix(".tmp").removesuffix(".owner")
                            paths.add(spec_dir / name)
        stale: list[StaleWorktree] = []
        for path in sorted(paths):
            owner = read_owner(path)
            if owner is None:
                reason = "no owner record"
            elif not owner_alive(owner):
                reason = f"owner process {owner.pid} is gone"
            else:
                continue
            stale.append(StaleWorktree(path, path.parent.name, path.name, reason))
        return stale

    def gc(self) -> list[str]:
        """Remove stale worktrees, and task branches that are merged or hold no work.

        Branches with unmerged work (failed tasks) are kept. Returns what was removed.
        """
        removed: list[str] = []
        with self._lock.hold():
            for st in self.stale_worktrees():
                self._drop(st.path)
                removed.append(f"worktree {st.path} ({st.reason})")
            with contextlib.suppress(OSError):
                for spec_dir in self.worktrees_dir.iterdir():
                    with contextlib.suppress(OSError):
                        spec_dir.rmdir()  # only if empty
            tips: dict[tuple[str, str], str] = {}
            bases: dict[tuple[str, str], str] = {}
            integ: dict[str, str] = {}
            for ref, sha in self._refs().items():
                if m := _TASK_REF.fullmatch(ref):
                    tips[(m[1], m[2])] = sha
                elif m := _BASE_REF.fullmatch(ref):
                    bases[(m[1], m[2])] = sha
                elif m := _INTEGRATION_REF.fullmatch(ref):
                    integ[m[1]] = sha
            reasons: dict[tuple[str, str], str] = {}
            for key, tip in sorted(tips.items()):
                base, spec_tip = bases.get(key), integ.get(key[0])
                if base == tip:
                    reasons[key] = "no changes"
                elif base is not None and spec_tip is not None and self._is_ancestor(tip, spec_tip):
                    reasons[key] = f"merged into {_integration(key[0])}"
            # Base refs whose branch is already gone are dropped too (not listed).
            orphans = [k for k in bases if k not in tips]
            for spec, task_id in self._delete_branches(sorted(reasons), orphans):
                removed.append(f"branch {_task(spec, task_id)} ({reasons[(spec, task_id)]})")
        return removed

    def _refs(self) -> Mapping[str, str]:
        res = self._git(
            "for-each-ref", "--format=%(objectname) %(refname)", "refs/heads/specexec/", BASES
        )
        out: dict[str, str] = {}
        for line in res.text.splitlines():
            sha, _, ref = line.partition(" ")
            out[ref] = sha
        return out


# --- sparse checkouts ---------------------------------------------------------------------
# Done with plumbing (read-tree + the worktree's own info/sparse-checkout) rather than
# `git sparse-checkout set`, which would switch on extensions.worktreeConfig in the
# user's shared .git/config. The skip-worktree bits it leaves in the index keep the
# worker's own `git status` quiet about the files that are not there.

SPARSE_OPTIONS: tuple[str, ...] = (
    "-c", "core.sparseCheckout=true",
    "-c", "core.sparseCheckoutCone=false",
)  # fmt: skip
PARALLEL_CHECKOUT: tuple[str, ...] = ("-c", "checkout.workers=0")  # one per core (git >= 2.32)


def checkout_patterns(task: Task) -> tuple[str, ...] | None:
    """The sparse-checkout patterns of a ``checkout: sparse`` task, None for a full one.

    Its ``relevant_files`` and ``sparse_paths``, anchored at the top: ``src/`` is the
    directory and everything in it, ``src/*.py`` the matching files (``*`` never
    crosses ``/``), ``src/**`` everything beneath, as in ``relevant_files``.
    """
    if task.checkout != "sparse":
        return None
    out: dict[str, None] = {}
    for p in (*task.relevant_files, *task.sparse_paths):
        p = p.strip("/") + ("/" if p.endswith("/") else "")
        if p and p != "/":
            # A trailing space would be stripped from a gitignore-style pattern.
            out["/" + (p[:-1] + "\\ " if p.endswith(" ") else p)] = None
    return tuple(out)


def sparse_file(admin: Path) -> Path:
    return admin / "info" / "sparse-checkout"


def is_sparse(admin: Path) -> bool:
    return sparse_file(admin).is_file()


def set_sparse(admin: Path, patterns: Sequence[str] | None) -> None:
    """Make the worktree of ``admin`` sparse with ``patterns``, or full (None)."""
    f = sparse_file(admin)
    if patterns is None:
        f.unlink(missing_ok=True)
        with contextlib.suppress(OSError):
            f.parent.rmdir()  # if empty: a fresh worktree has no info/
        return
    f.parent.mkdir(exist_ok=True)
    f.write_text("".join(p + "\n" for p in patterns), encoding="utf-8")


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="surrogateescape").strip()
    except OSError:
        return ""


def _branches_in(git_dir: Path) -> set[str]:
    """The branch refs one worktree (its git dir) holds, as git's find_shared_symref sees them."""
    found: set[str] = set()
    head = _read(git_dir / "HEAD")
    if head.startswith("ref: "):
        found.add(head[len("ref: ") :].strip())
    for name in ("rebase-merge/head-name", "rebase-apply/head-name"):
        ref = _read(git_dir / name)
        if ref.startswith("refs/"):
            found.add(ref)
    bisect = _read(git_dir / "BISECT_START")
    if bisect and not re.fullmatch(r"[0-9a-f]{40,64}", bisect):
        found.add(_heads(bisect))
    return found


def _set_head(admin: Path, target: str) -> None:
    """Point a worktree's HEAD at a ref (``refs/...``) or detach it at a sha.

    Written the way git writes it (HEAD.lock, then rename) so that a git command in
    that worktree sees the old or the new HEAD, never half of one.
    """
    text = f"ref: {target}\n" if target.startswith("refs/") else f"{target}\n"
    lock = admin / "HEAD.lock"
    lock.unlink(missing_ok=True)  # left by a killed worker: the worktree is ours now
    fd = os.open(lock, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o644)
    with os.fdopen(fd, "w", encoding="ascii") as f:
        f.write(text)
    os.replace(lock, admin / "HEAD")


def _parse_merge_tree(stdout: bytes) -> tuple[str, tuple[str, ...]]:
    """``merge-tree --write-tree -z --name-only``: tree NUL paths... NUL NUL messages."""
    fields = stdout.split(b"\0")
    tree = fields[0].decode("ascii").strip()
    conflicts: list[str] = []
    for f in fields[1:]:
        if not f:
            break
        conflicts.append(os.fsdecode(f))
    return tree, tuple(conflicts)
