"""Worktrees, task branches and merges of one repository (``Workspace``).

Layout::

    <common>/specexec/git.lock                     the repository lock (never deleted)
    <worktree root>/tasks/<spec>/<task>            a task's fresh worktree (``--no-pool``)
    <worktree root>/tasks/<spec>/<task>.owner      {"pid", "start_time", "host"} + the task
    <worktree root>/pool/<n>                       a pooled worktree (``specexec.git.pool``)
    <worktree root>/pool/<n>.owner                 its owner while in use, + the task

The worktree root (``repo.worktree_root``) is outside the git dir and outside the user's
working tree, by default ``~/.cache/specexec/worktrees/<repo>-<id>``; each worktree's
``.git`` file points back at its admin dir ``<common>/worktrees/<id>``. Older versions
kept worktrees under ``<common>/specexec/{pool,worktrees}/``; ``gc`` removes those.

Refs: see ``specexec.git.refs``. Every git metadata change (worktree add/remove, branch
create/delete, ref updates) runs under the repository lock (``owners.repo_lock``). Slow
work (checking files out, deleting a worktree's files, ``git add``) runs outside it: it
only touches one task's worktree.
"""

from __future__ import annotations

import contextlib
import functools
import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from specexec.errors import Busy, GitError, InvalidInput
from specexec.git import refs
from specexec.git.files import rmtree
from specexec.git.owners import (
    Owner,
    marked_name,
    marker_file,
    owner_alive,
    read_marker,
    read_owner,
    remove_marker,
    repo_lock,
    write_marker,
)
from specexec.git.refs import (
    BASE_REF,
    BASES,
    INTEGRATION_REF,
    TASK_REF,
    check_name,
    integration_branch,
    task_branch,
)
from specexec.git.repo import locate, worktree_root
from specexec.git.runner import ZERO_SHA, GitResult, run
from specexec.git.sparse import (
    PARALLEL_CHECKOUT,
    SPARSE_OPTIONS,
    checkout_patterns,
    is_sparse,
    set_sparse,
)

# Names other modules import from here.
__all__ = [
    "BASES",
    "MergeResult",
    "Owner",
    "StaleWorktree",
    "Workspace",
    "Worktree",
    "check_name",
    "checkout_patterns",
    "integration_branch",
    "owner_alive",
    "read_marker",
    "read_owner",
    "task_branch",
]

# The reflog message of `git stash` / `git stash push -m`: "WIP on <branch>: ..." / "On <branch>: ...".
_STASH_MSG = re.compile(r"(?:WIP on|On) (.+?): ")
_DROPPED = re.compile(r"Dropped stash@\{\d+\} \(([0-9a-f]+)\)")
# What _resolve reads in process (every other name goes to git).
_IN_PROCESS_REFS = ("refs/heads/", f"{BASES}/")
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


# --- the workspace -------------------------------------------------------------------


class Workspace:
    """The git side of specexec for one repository, safe to share between threads."""

    def __init__(self, path: Path | str) -> None:
        dirs = locate(path)
        self.git_dir = dirs.git_dir
        self.common_dir = dirs.common_dir
        self.root = dirs.root
        self.data_dir = self.common_dir / "specexec"  # the lock, hook logs
        # Where older versions kept worktrees: only gc still looks there.
        self.legacy_dirs = (self.data_dir / "pool", self.data_dir / "worktrees")
        self._lock = repo_lock(self.common_dir)
        self._identity: dict[str, str] | None = None

    def __repr__(self) -> str:
        return f"Workspace({str(self.root)!r})"

    @functools.cached_property
    def worktree_root(self) -> Path:
        """This repository's directory of worktrees (resolved when first needed, so that
        a run without worktrees never refuses a misconfigured one)."""
        return worktree_root(self.root, self.common_dir)

    @property
    def pool_dir(self) -> Path:
        """The pool's slots: ``<worktree root>/pool/<n>``."""
        return self.worktree_root / "pool"

    @property
    def worktrees_dir(self) -> Path:
        """Fresh (``--no-pool``) worktrees: ``<worktree root>/tasks/<spec>/<task>``."""
        return self.worktree_root / "tasks"

    def owns_path(self, path: Path) -> bool:
        """Is ``path`` a worktree of specexec's (this layout's or an older one's)?"""
        return any(d in path.parents for d in (self.worktree_root, *self.legacy_dirs))

    # -- plumbing (for the pool and the rest of git/) --

    def locked(self) -> contextlib.AbstractContextManager[None]:
        """Hold the repository lock (reentrant): every metadata change runs under it."""
        return self._lock.hold()

    def git(self, *args: str, **kw: Any) -> GitResult:
        """git in the main repository (``runner.run`` keywords)."""
        return run(args, cwd=self.root, git_dir=self.git_dir, **kw)

    def add_worktree(self, path: Path, base: str, branch: str) -> Path:
        """Register a worktree at ``path`` detached at ``base``, its HEAD on ``branch``,
        without checking anything out (lock held); its admin dir."""
        # --no-checkout: the checkout is the slow part, done later, unlocked.
        self.git("worktree", "add", "-q", "--no-checkout", "--detach", str(path), base)
        admin = self.worktree_admin(path)
        refs.set_head(admin, refs.heads(branch))
        return admin

    def worktree_admin(self, wt_path: Path) -> Path:
        admin = self.admin_dir(wt_path)
        if admin is None:
            raise GitError(f"{wt_path} is not a worktree of {self.root}")
        return admin

    @staticmethod
    def worktree_git(admin: Path, wt_path: Path, *args: str, **kw: Any) -> GitResult:
        # Explicit --git-dir/--work-tree: a worker may have rewritten the worktree's .git.
        if is_sparse(admin):
            args = (*SPARSE_OPTIONS, *args)
        return run(args, cwd=wt_path, git_dir=admin, work_tree=wt_path, **kw)

    def _resolve(self, *names: str) -> list[str | None]:
        """Commit shas of ``names`` (None where missing).

        Branch and base refs are read in process with GitPython (~40 us against ~1.4 ms
        for a fork, under the repository lock: ``bench/gitpython.py``). They always name
        a commit (git refuses anything else on a branch; base refs are written here), so
        reading the ref is the ``^{commit}`` answer. Anything else: one git call.
        """
        reader = self._ref_reader
        if reader is not None and all(n.startswith(_IN_PROCESS_REFS) for n in names):
            with contextlib.suppress(Exception):  # whatever GitPython trips on, git answers
                return [reader(n) for n in names]
        data = "".join(f"{n}^{{commit}}\n" for n in names).encode()
        res = self.git("cat-file", "--batch-check=%(objectname)", input=data)
        out = os.fsdecode(res.stdout).splitlines()
        return [None if line.endswith(" missing") else line for line in out]

    @functools.cached_property
    def _ref_reader(self) -> Callable[[str], str | None] | None:
        """GitPython's in-process ref lookup for this repository, or None where it cannot
        be trusted: a reftable repository (GitPython reads files refs only), or one it
        locates differently from git (GIT_COMMON_DIR & co. in os.environ, which it reads
        even when given a path: a hook's variables would point it at another repository).
        Only files are read: nothing here starts git."""
        if (self.common_dir / "reftable").exists():
            return None
        try:
            import git  # GitPython: 50 ms to import, paid only by runs that use worktrees

            repo = git.Repo(self.git_dir)
            same = (
                Path(repo.git_dir).resolve() == self.git_dir
                and Path(repo.common_dir).resolve() == self.common_dir
            )
        except Exception:
            return None
        if not same:
            return None
        deref = git.SymbolicReference.dereference_recursive

        def read(name: str) -> str | None:
            try:
                return deref(repo, name)
            except ValueError:  # no such ref
                return None

        return read

    def _verify(self, rev: str) -> str | None:
        res = self.git("rev-parse", "-q", "--verify", f"{rev}^{{commit}}", ok=(0, 1))
        return res.text if res.returncode == 0 else None

    def _is_ancestor(self, older: str, newer: str) -> bool:
        res = self.git("merge-base", "--is-ancestor", older, newer, ok=(0, 1))
        return res.returncode == 0

    def _identity_env(self) -> dict[str, str]:
        """Author and committer as git would pick them; never missing."""
        if self._identity is None:
            res = self.git(
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
        return self.git(*args, input=message.encode(), env=self._identity_env()).text

    def admin_dir(self, wt_path: Path) -> Path | None:
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

    def registered_worktrees(self) -> dict[Path, Path]:
        """Worktree path -> admin dir, for every linked worktree git knows (no git call)."""
        found: dict[Path, Path] = {}
        with contextlib.suppress(FileNotFoundError):
            for admin in (self.common_dir / "worktrees").iterdir():
                try:
                    recorded = (admin / "gitdir").read_text(encoding="utf-8").strip()
                except OSError:
                    continue
                found[Path(recorded).parent] = admin
        return found

    def _registered(self) -> dict[Path, Path]:
        """Worktree path -> admin dir, for every fresh worktree of ours."""
        return {
            path.resolve(): admin
            for path, admin in self.registered_worktrees().items()
            if path.resolve().parent.parent == self.worktrees_dir
        }

    def _checked_out(self) -> set[str]:
        """Branches checked out, or being rebased or bisected, in any worktree.

        Read from the files git itself reads for this (HEAD, rebase-*/head-name,
        BISECT_START): no git call, since it runs several times per task. A pool slot
        that no live process owns does not count: whoever takes it next switches it to
        another branch before anything else.
        """
        busy = refs.branches_in(self.common_dir)
        for path, admin in self.registered_worktrees().items():
            if not self._idle_slot(path):
                busy |= refs.branches_in(admin)
        return busy

    def _idle_slot(self, path: Path) -> bool:
        if path.parent not in (self.pool_dir, self.legacy_dirs[0]):
            return False
        owner = read_owner(path)
        return owner is None or not owner_alive(owner)

    def worktree_path(self, spec: str, task_id: str) -> Path:
        return self.worktrees_dir / check_name("spec", spec) / check_name("task id", task_id)

    # -- the integration branch --

    def ensure_integration_branch(self, spec: str, base_ref: str | None = None) -> str:
        """Create ``specexec/<spec>`` from ``base_ref`` (default HEAD) if missing; its tip."""
        ref = refs.heads(integration_branch(spec))
        with self.locked():
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
            self.git("update-ref", "-m", "specexec: integration branch", ref, start, ZERO_SHA)
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
        with self.locked():
            base = self.require_integration_tip(spec)
            self._clear_stale(path)
            path.parent.mkdir(parents=True, exist_ok=True)
            # The owner marker comes first so that gc never sees an ownerless new worktree.
            write_marker(path, self.task_record(spec, task_id, base))
            try:
                branch = self.start_task_branch(spec, task_id, base)
                # --no-checkout: the checkout is the slow part and is done below, unlocked.
                admin = self.add_worktree(path, base, branch)
            except GitError:
                self.drop_worktree(path)
                raise
        wt = Worktree(path=path, branch=branch, base=base, spec=spec, task_id=task_id)
        try:
            self._checkout(admin, path, sparse)
        except BaseException:
            self.remove_worktree(wt, delete_branch=True)
            raise
        return wt

    def require_integration_tip(self, spec: str) -> str:
        integration = integration_branch(spec)
        (base,) = self._resolve(refs.heads(integration))
        if base is None:
            raise GitError(
                f"integration branch {integration} does not exist in {self.root} "
                "(call ensure_integration_branch first)"
            )
        return base

    def start_task_branch(self, spec: str, task_id: str, base: str) -> str:
        """Point the task's branch and base ref at ``base`` (lock held); the branch name.

        Refused while the branch is checked out somewhere (say, the user inspects a
        failed task there): moving it would leave that worktree behind its HEAD.
        """
        branch = task_branch(spec, task_id)
        if refs.heads(branch) in self._checked_out():
            raise GitError(
                f"branch {branch} is checked out in a worktree of {self.root}; "
                "switch that worktree to another branch to run the task again"
            )
        lines = (
            f"update {refs.heads(branch)} {base}\nupdate {refs.base_ref(spec, task_id)} {base}\n"
        )
        self.git("update-ref", "-m", "specexec: start task", "--stdin", input=lines.encode())
        return branch

    def _checkout(self, admin: Path, path: Path, sparse: Sequence[str] | None) -> None:
        """Make index and files match HEAD (only what ``sparse`` names, if given)."""
        set_sparse(admin, sparse)
        self.worktree_git(admin, path, *PARALLEL_CHECKOUT, "read-tree", "--reset", "-u", "HEAD")

    def _clear_stale(self, path: Path) -> None:
        """Remove a dead run's worktree at ``path``; refuse one a live process owns."""
        owner_file = marker_file(path)
        if not (path.exists() or owner_file.exists() or self.admin_dir(path)):
            return
        owner = read_owner(path)
        if owner is not None and owner.pid != os.getpid() and owner_alive(owner):
            raise Busy(f"worktree {path} is in use by process {owner.pid}")
        self.drop_worktree(path)

    def drop_worktree(self, path: Path) -> None:
        """Delete a worktree's files, its admin dir and its marker (lock held)."""
        admin = self.admin_dir(path)
        self.drop_task_stashes(path, admin)
        rmtree(path)
        if admin is not None:
            rmtree(admin)
        remove_marker(path)

    def remove_worktree(
        self, wt: Worktree | tuple[str, str], *, delete_branch: bool = False
    ) -> None:
        """Remove a task's worktree (if any); delete its branch too when asked."""
        spec, task_id = (wt.spec, wt.task_id) if isinstance(wt, Worktree) else wt
        path = self.worktree_path(spec, task_id)
        # Deleting the files is the slow part and touches only this worktree: no lock.
        rmtree(path)
        with self.locked():
            self.drop_worktree(path)
            if delete_branch:
                self.delete_task_branches([(spec, task_id)])

    def delete_branch(self, branch: str) -> bool:
        """Delete a task branch (``specexec/<spec>@<task>``) unless it is checked out.

        True if it is gone. Other branches are refused: specexec deletes only its own.
        """
        m = TASK_REF.fullmatch(refs.heads(branch.removeprefix("refs/heads/")))
        if m is None:
            raise InvalidInput(f"{branch!r} is not a specexec task branch")
        with self.locked():
            return bool(self.delete_task_branches([(m[1], m[2])]))

    def delete_task_branches(
        self, tasks: Sequence[tuple[str, str]], orphan_bases: Sequence[tuple[str, str]] = ()
    ) -> list[tuple[str, str]]:
        """Delete task branches (and base refs), except branches checked out somewhere."""
        busy = self._checked_out()
        lines: list[str] = []
        deleted: list[tuple[str, str]] = []
        for spec, task_id in tasks:
            ref = refs.heads(refs.task(spec, task_id))
            if ref not in busy:
                lines += [f"delete {ref}\n", f"delete {refs.base_ref(spec, task_id)}\n"]
                deleted.append((spec, task_id))
        lines += [f"delete {refs.base_ref(spec, task_id)}\n" for spec, task_id in orphan_bases]
        if lines:
            self.git("update-ref", "--stdin", input="".join(lines).encode())
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
            self._drop_stash(sha)
        return drop

    def _drop_stash(self, sha: str) -> None:
        """Drop the stash entry ``sha``. git drops by index only, and a worker (or the user)
        may push an entry between our read of the list and the drop, shifting the index:
        check what was dropped and put back an entry that was not ours."""
        for _ in range(5):
            now = [s for s, _msg in self._stash_log()]
            if sha not in now:
                return
            out = self.git("stash", "drop", f"stash@{{{now.index(sha)}}}").text
            dropped = _DROPPED.search(out)
            if dropped is None or dropped[1] == sha:
                return
            subject = self.git("log", "-1", "--format=%s", dropped[1]).text
            self.git("stash", "store", "-q", "-m", subject, dropped[1])

    def _heads_outside(self) -> set[str]:
        """Where the worktrees outside specexec stand with a detached HEAD (a user's
        stash made there says "(no branch)" too)."""
        res = self.git("worktree", "list", "--porcelain", "-z")
        heads: set[str] = set()
        path: Path | None = None
        head = ""
        for f in [*res.fields(), "worktree "]:
            if f.startswith("worktree "):
                path, head = Path(f[len("worktree ") :]), ""
            elif f.startswith("HEAD "):
                head = f[len("HEAD ") :]
            elif f == "detached" and path is not None and not self.owns_path(path):
                heads.add(head)
        return heads

    # -- a worktree's changes --

    def remove_untracked(self, wt: Worktree, pathspecs: Sequence[str]) -> None:
        """Delete the untracked (and ignored) files matching ``pathspecs`` from the
        worktree: what a worker wrote for itself, never its change. Files tracked at the
        base stay."""
        if pathspecs:
            admin = self.worktree_admin(wt.path)
            # A worker may have staged them (aider `git add`s the files it creates): back to
            # the base's index entry first, so that only untracked copies are left to clean.
            self.worktree_git(admin, wt.path, "reset", "-q", wt.base, "--", *pathspecs)
            self.worktree_git(admin, wt.path, "clean", "-f", "-d", "-x", "-q", "--", *pathspecs)

    def changed_files(self, wt: Worktree) -> list[str]:
        """Every path changed since ``wt.base``: committed, staged, unstaged, untracked, deleted."""
        admin = self.worktree_admin(wt.path)
        diff_args = ("diff", "--name-only", "-z", "--no-renames", "--no-ext-diff", wt.base, "--")
        diff = self.worktree_git(admin, wt.path, *diff_args)
        untracked = self.worktree_git(
            admin, wt.path, "ls-files", "-z", "--others", "--exclude-standard"
        )
        return sorted(set(diff.fields()) | set(untracked.fields()))

    def commit_all(self, wt: Worktree, message: str) -> str | None:
        """Commit everything in the worktree; the task branch's new tip, or None if no change.

        Commits the worker made itself are kept (they are the new commit's ancestors).
        """
        admin = self.worktree_admin(wt.path)
        # Left by a worker killed in the middle of a git command; the worker is gone now.
        (admin / "index.lock").unlink(missing_ok=True)
        # --sparse: files a worker made outside a sparse checkout are its changes too.
        self.worktree_git(admin, wt.path, "add", "-A", *(("--sparse",) if is_sparse(admin) else ()))
        tree = self.worktree_git(admin, wt.path, "write-tree").text
        query = f"{wt.base}^{{tree}}\nHEAD^{{commit}}\nHEAD^{{tree}}\n".encode()
        res = self.worktree_git(
            admin, wt.path, "cat-file", "--batch-check=%(objectname)", input=query
        )
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
        ref = refs.heads(wt.branch)
        head_file = refs.read_text(admin / "HEAD")
        sym = head_file[len("ref: ") :] if head_file.startswith("ref: ") else ""
        if sym != ref or new != head:
            with self.locked():
                if sym != ref:  # the worker switched branches: bring HEAD back
                    refs.set_head(admin, ref)
                self.git("update-ref", "-m", f"specexec: {message}", ref, new)
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
        ref = refs.heads(branch)
        with self.locked():
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
                mb = self.git("merge-base", old, task_commit, ok=(0, 1)).text
                if mb == task_commit:
                    return MergeResult(True, old)  # already merged: nothing to do
                if mb == old:
                    new = task_commit
                else:
                    mt = ("merge-tree", "--write-tree", "-z", "--name-only", old, task_commit)
                    res = self.git(*mt, ok=(0, 1))
                    tree, conflicts = _parse_merge_tree(res.stdout)
                    if res.returncode == 1:
                        return MergeResult(False, None, conflicts or ("(unknown path)",))
                    new = self._commit_tree(tree, (old, task_commit), message)
                # Compare-and-swap: fails if anyone (even outside specexec) moved the branch.
                cas = self.git(
                    "update-ref", "-m", f"specexec: {message}", ref, new, old, ok=range(256)
                )
                if cas.returncode == 0:
                    return MergeResult(True, new)
                why = cas.stderr.strip()
        raise GitError(f"could not update {branch} to merge {task_commit}: {why}")

    def is_merged(self, spec: str, task_id: str) -> bool:
        """Did this task's branch get work merged into the integration branch?"""
        tip, base, integ = self._resolve(
            refs.heads(task_branch(spec, task_id)),
            refs.base_ref(spec, task_id),
            refs.heads(integration_branch(spec)),
        )
        if tip is None or base is None or integ is None or tip == base:
            return False
        return self._is_ancestor(tip, integ)

    def integration_tip(self, spec: str) -> str | None:
        """The commit the integration branch points at, or None if it does not exist."""
        return self._resolve(refs.heads(integration_branch(spec)))[0]

    def task_branches(self, spec: str) -> set[str]:
        """Ids of the tasks of ``spec`` that have a branch or a worktree (one git call)."""
        ids: set[str] = set()
        for ref in self._refs():
            m = TASK_REF.fullmatch(ref)
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
                        elif name := marked_name(entry.name):  # a marker, or its temp file
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
        with self.locked():
            removed += self._gc_legacy()
            for st in self.stale_worktrees():
                self.drop_worktree(st.path)
                removed.append(f"worktree {st.path} ({st.reason})")
            with contextlib.suppress(OSError):
                for spec_dir in self.worktrees_dir.iterdir():
                    with contextlib.suppress(OSError):
                        spec_dir.rmdir()  # only if empty
            tips: dict[tuple[str, str], str] = {}
            bases: dict[tuple[str, str], str] = {}
            integ: dict[str, str] = {}
            for ref, sha in self._refs().items():
                if m := TASK_REF.fullmatch(ref):
                    tips[(m[1], m[2])] = sha
                elif m := BASE_REF.fullmatch(ref):
                    bases[(m[1], m[2])] = sha
                elif m := INTEGRATION_REF.fullmatch(ref):
                    integ[m[1]] = sha
            reasons: dict[tuple[str, str], str] = {}
            for key, tip in sorted(tips.items()):
                base, spec_tip = bases.get(key), integ.get(key[0])
                if base == tip:
                    reasons[key] = "no changes"
                elif base is not None and spec_tip is not None and self._is_ancestor(tip, spec_tip):
                    reasons[key] = f"merged into {refs.integration(key[0])}"
            # Base refs whose branch is already gone are dropped too (not listed).
            orphans = [k for k in bases if k not in tips]
            for spec, task_id in self.delete_task_branches(sorted(reasons), orphans):
                removed.append(f"branch {refs.task(spec, task_id)} ({reasons[(spec, task_id)]})")
            for d in (self.worktrees_dir, self.worktree_root):
                with contextlib.suppress(OSError):
                    d.rmdir()  # only if empty
        return removed

    def _gc_legacy(self) -> list[str]:
        """Remove the worktrees older versions kept in the git dir (lock held), except
        those a live process owns: ``<common>/specexec/pool/<n>`` and
        ``<common>/specexec/worktrees/<spec>/<task>``."""
        pool, fresh = self.legacy_dirs
        found: set[Path] = set()
        for path in self.registered_worktrees():
            if path.parent == pool or path.parent.parent == fresh:
                found.add(path)
        for top, depth in ((pool, 1), (fresh, 2)):
            with contextlib.suppress(OSError):
                for entry in top.glob("/".join("*" * depth)):
                    if entry.is_dir() and not entry.is_symlink():
                        found.add(entry)
                    elif name := marked_name(entry.name):
                        found.add(entry.with_name(name))
        removed: list[str] = []
        for path in sorted(found):
            owner = read_owner(path)
            if owner is not None and owner_alive(owner):
                continue
            self.drop_task_stashes(path, self.admin_dir(path))
            # --force twice: also a locked worktree, or one with changes.
            self.git("worktree", "remove", "--force", "--force", str(path), ok=range(256))
            rmtree(path)
            remove_marker(path)
            removed.append(f"worktree {path} (left by an older specexec)")
        if removed:
            self.git("worktree", "prune")
        for d in (*(p for p in fresh.glob("*") if p.is_dir()), pool, fresh):
            with contextlib.suppress(OSError):
                d.rmdir()  # only if empty
        return removed

    def _refs(self) -> Mapping[str, str]:
        res = self.git(
            "for-each-ref", "--format=%(objectname) %(refname)", "refs/heads/specexec/", BASES
        )
        out: dict[str, str] = {}
        for line in res.text.splitlines():
            sha, _, ref = line.partition(" ")
            out[ref] = sha
        return out


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
