"""Everything that refuses the run of a spec folder, checked read-only: ``specexec run``
runs these before its first lock or write (so an exit 2 leaves no trace), and ``specexec
validate`` runs exactly these (so it never says ``ok`` where ``run`` refuses).

Only what a run decides the same way at its start is here; what depends on a lock
(another run, a dead run's leftovers) is checked once the lock is held.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from specexec.errors import InvalidInput
from specexec.git import refs
from specexec.git.repo import find_repo_root, locate
from specexec.git.runner import run as git
from specexec.run.executor import RunOptions
from specexec.tasksfile.bounds import room_problem
from specexec.tasksfile.runlock import SpecNameClaim
from specexec.tasksfile.types import Spec, WorkerConfig
from specexec.workers.invocation import preset_problem
from specexec.workers.resolve import cli_worker, repo_worker, resolve_worker


def needs_git(spec: Spec, opts: RunOptions) -> bool:
    """Some task that may run needs a worktree."""
    return any(
        (opts.isolation or t.isolation) == "worktree" for t in spec.tasks if t.status != "pass"
    )


def uses_worktrees(spec: Spec, opts: RunOptions) -> bool:
    """Some task, passed or not, is a worktree task: the run opens the repository (a dead
    run may have left merged branches behind even when every task passed)."""
    return any((opts.isolation or t.isolation) == "worktree" for t in spec.tasks)


def workers(spec: Spec, opts: RunOptions) -> tuple[dict[str, WorkerConfig | None], list[str]]:
    """The resolved worker of each task, and why each task that may run cannot."""
    override = cli_worker(opts.worker)
    from_repo = repo_worker(find_repo_root(spec.dir))
    resolved: dict[str, WorkerConfig | None] = {}
    problems: list[str] = []
    for t in spec.tasks:
        w = resolve_worker(t, spec, override, from_repo)
        resolved[t.id] = w
        if t.status == "pass":
            continue
        if (p := preset_problem(w, t)) is not None:
            problems.append(f'{spec.tasks_file}: task "{t.id}": {p}')
        elif not opts.allow_commands and (
            w is None or w.command is not None or w.preset in (None, "shell") or t.verify
        ):
            # `verify` (or defaults.verify) is a shell command from the spec folder too.
            what = "its own command" if not t.verify else f"a verify command ({t.verify!r})"
            problems.append(
                f'{spec.tasks_file}: task "{t.id}": runs {what}, which the daemon '
                "only allows with --allow-commands (or [tool.specexec] allow_commands = true)"
            )
    return resolved, problems


def _commit(root: Path, rev: str) -> str | None:
    """The commit ``rev`` names in the repository at ``root`` (read-only), or None."""
    if rev.startswith("-"):
        return None
    res = git(["rev-parse", "-q", "--verify", f"{rev}^{{commit}}"], cwd=root, ok=range(256))
    return res.text if res.returncode == 0 and res.text else None


def repo_problems(spec: Spec, opts: RunOptions) -> list[str]:
    """The repository the run needs: there, with a working tree, and with a commit to start
    the integration branch from (when it does not exist yet)."""
    root = find_repo_root(spec.dir)
    if root is None:
        if needs_git(spec, opts):
            return [
                f"{spec.dir}: not inside a git repository; tasks need one for their worktrees "
                "(or use --isolation none for tasks that change nothing)"
            ]
        return []
    if not uses_worktrees(spec, opts):
        return []
    try:
        top = locate(root).root
    except InvalidInput as e:
        return list(e.problems)
    branch = refs.integration_branch(spec.name)
    if _commit(top, refs.heads(branch)) is not None:
        return []  # base_ref only decides where a missing integration branch starts
    if spec.base_ref is None:
        if _commit(top, "HEAD") is None:
            return [
                f"repository has no commits: {top} (HEAD names no commit to start {branch} "
                "from; commit something first)"
            ]
        return []
    if _commit(top, spec.base_ref) is None:
        return [
            f"{spec.tasks_file}: field base_ref: {spec.base_ref!r} does not name a commit in "
            f"{top} (the integration branch {branch} would start there)"
        ]
    return []


def problems(spec: Spec, opts: RunOptions) -> list[str]:
    """Every reason the run of ``spec`` would be refused at its start (read-only)."""
    found = workers(spec, opts)[1]
    found += repo_problems(spec, opts)
    if (p := room_problem(spec, opts.jobs)) is not None:
        found.append(p)
    return found


def refuse(specs: Sequence[Spec], opts: RunOptions) -> None:
    """Raise ``InvalidInput`` with every problem of every spec folder, if there is one."""
    found = [p for spec in specs for p in problems(spec, opts)]
    if found:
        raise InvalidInput(f"{len(found)} problem(s) refuse the run", found)


def name_claims(specs: Sequence[Spec], opts: RunOptions) -> list[SpecNameClaim]:
    """The spec name claim of each folder that runs into an integration branch (not
    taken yet: ``check()`` refuses a name another folder's run holds, read-only)."""
    claims = []
    for spec in specs:
        root = find_repo_root(spec.dir)
        if root is not None and uses_worktrees(spec, opts):
            common = locate(root).common_dir
            claims.append(SpecNameClaim(spec.dir, spec.name, common))
    return claims
