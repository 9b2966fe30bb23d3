"""specexec's git hooks (DESIGN §6): install/uninstall them, and what each one does.

- post-commit, post-merge, post-checkout: find the spec folders whose tasks.json the
  commit range changed and run them in the background (``specexec run --wait``, in its
  own session, output to ``<git-common-dir>/specexec/hooks.log``), so git returns at once.
- pre-commit: validate the *staged* tasks.json files (their content in the index) and
  fail the commit with the problems.

A hook is a small sh script calling the Python that installed it, so it works from a
virtualenv. A hook that was there before is renamed ``<hook>.specexec-orig``, runs first
(same arguments and stdin; for pre-commit its failure stops the commit) and is put back
exactly by ``uninstall``. Hooks go where git looks for them (``core.hooksPath``
respected). specexec's own git commands run with ``core.hooksPath=/dev/null``, so its
commits and worktrees never trigger these hooks.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Final

from specexec.errors import InvalidInput
from specexec.git import runner as git
from specexec.git.env import clean_env
from specexec.git.repo import locate
from specexec.system import atomic_write
from specexec.tasksfile.types import CONTEXT_FILE, TASKS_FILE

HOOK_TYPES: Final = ("pre-commit", "post-commit", "post-merge", "post-checkout")
MARKER: Final = "# specexec-hook"
ORIG_SUFFIX: Final = ".specexec-orig"
LOG_NAME: Final = "hooks.log"


@dataclass(frozen=True, slots=True)
class Repo:
    top: Path  # the working tree's top level
    common_dir: Path  # <git-common-dir>
    hooks_dir: Path  # where git runs hooks from (core.hooksPath respected)


# What git tells a hook about its repository; passed on to the hook's own git commands
# (absolute: a hook may change directory), never to the background run.
_REPO_VARS: Final = ("GIT_DIR", "GIT_WORK_TREE", "GIT_COMMON_DIR", "GIT_INDEX_FILE")


# What git sets for its hooks beyond the repository variables: a background run must not
# inherit them (GIT_AUTHOR_DATE would date every commit of the run at this commit).
_HOOK_ONLY_VARS: Final = (
    "GIT_AUTHOR_NAME",
    "GIT_AUTHOR_EMAIL",
    "GIT_AUTHOR_DATE",
    "GIT_COMMITTER_DATE",
    "GIT_EXEC_PATH",
    "GIT_PREFIX",
    "GIT_REFLOG_ACTION",
)


def background_env() -> dict[str, str]:
    """The environment of a run started from a hook: none of the hook's git variables."""
    env = clean_env()
    for k in _HOOK_ONLY_VARS:
        env.pop(k, None)
    return env


def hook_git_env() -> dict[str, str]:
    return {k: os.path.abspath(os.environ[k]) for k in _REPO_VARS if os.environ.get(k)}


def find_repo(where: str | os.PathLike[str], env: dict[str, str] | None = None) -> Repo:
    """The repository at ``where``, as the user's git sees it (``core.hooksPath``)."""
    if not Path(where).is_dir():
        raise InvalidInput(f"{where}: no such directory")
    dirs = locate(Path(where), env)
    return Repo(top=dirs.root, common_dir=dirs.common_dir, hooks_dir=dirs.hooks_dir)


# -- install / uninstall -----------------------------------------------------------------


def hook_script(hook_type: str, python: str) -> str:
    """The script git runs: the previous hook first, then ``python -m specexec hook-run``."""
    py = shlex.quote(python)
    stop_on_orig = (
        '[ "$status" -ne 0 ] && exit "$status"  # the previous hook refused the commit\n'
        if hook_type == "pre-commit"
        else ""
    )
    return f"""#!/bin/sh
{MARKER}: {hook_type} (installed by `specexec hooks install`; `specexec hooks uninstall` removes it)
# A hook that was here before is kept as {hook_type}{ORIG_SUFFIX} and runs first.
status=0
if [ -x "$0{ORIG_SUFFIX}" ]; then
    "$0{ORIG_SUFFIX}" "$@" || status=$?
fi
{stop_on_orig}if [ -x {py} ]; then
    # -P: the repository being committed to must not shadow the installed specexec.
    {py} -P -m specexec hook-run {hook_type} "$@"
    rc=$?
    [ "$status" -eq 0 ] && status=$rc
else
    echo "specexec hook: "{py}" no longer exists; skipped (run: specexec hooks install)" >&2
fi
exit "$status"
"""


def is_ours(path: Path) -> bool:
    try:
        with path.open("rb") as f:
            head = f.read(512)
    except OSError:
        return False
    return MARKER.encode() in head


def _write_executable(path: Path, text: str) -> None:
    atomic_write(path, text, mode=0o755)


def check_types(hook_types: Sequence[str] | None) -> tuple[str, ...]:
    if not hook_types:
        return HOOK_TYPES
    unknown = [h for h in hook_types if h not in HOOK_TYPES]
    if unknown:
        raise InvalidInput(
            f"unknown hook type {', '.join(unknown)}; choose from {', '.join(HOOK_TYPES)}"
        )
    return tuple(dict.fromkeys(hook_types))


def install(
    where: str | os.PathLike[str],
    hook_types: Sequence[str] | None = None,
    *,
    python: str = sys.executable,
) -> list[str]:
    """Install the hooks; one line per hook saying what was done. Idempotent."""
    repo = find_repo(where)
    repo.hooks_dir.mkdir(parents=True, exist_ok=True)
    done = []
    for hook in check_types(hook_types):
        path = repo.hooks_dir / hook
        orig = repo.hooks_dir / (hook + ORIG_SUFFIX)
        script = hook_script(hook, python)
        if path.is_symlink() or path.exists():
            if is_ours(path) and not path.is_symlink():
                if path.read_text(encoding="utf-8") == script:
                    done.append(f"{hook}: already installed ({path})")
                    continue
                _write_executable(path, script)
                done.append(f"{hook}: updated ({path})")
                continue
            if orig.exists() or orig.is_symlink():
                raise InvalidInput(
                    f"{path}: a hook is there and {orig.name} too; move one of them away first"
                )
            os.rename(path, orig)  # kept exactly (content, mode, symlink) to restore later
            _write_executable(path, script)
            done.append(f"{hook}: installed ({path}); the previous hook runs first: {orig.name}")
            continue
        _write_executable(path, script)
        done.append(f"{hook}: installed ({path})")
    return done


def uninstall(where: str | os.PathLike[str], hook_types: Sequence[str] | None = None) -> list[str]:
    """Remove specexec's hooks, putting back the hooks they replaced."""
    repo = find_repo(where)
    done = []
    for hook in check_types(hook_types):
        path = repo.hooks_dir / hook
        orig = repo.hooks_dir / (hook + ORIG_SUFFIX)
        if not (path.exists() or path.is_symlink()):
            if orig.exists() or orig.is_symlink():
                os.rename(orig, path)
                done.append(f"{hook}: restored the previous hook ({path})")
            continue
        if not is_ours(path) or path.is_symlink():
            done.append(f"{hook}: not specexec's hook; left alone ({path})")
            continue
        path.unlink()
        if orig.exists() or orig.is_symlink():
            os.rename(orig, path)
            done.append(f"{hook}: removed; the previous hook is back ({path})")
        else:
            done.append(f"{hook}: removed ({path})")
    return done


# -- what the hooks do -------------------------------------------------------------------


def _is_tasks_file(rel: str) -> bool:
    parts = rel.split("/")
    return parts[-1] == TASKS_FILE and not any(p.startswith(".") for p in parts[:-1])


def _changed(top: Path, old: str, new: str, env: dict[str, str]) -> list[str]:
    """Paths added, copied, modified or renamed between two commits (``old`` may be
    None-like "" for a root commit)."""
    if old:
        args = ["diff", "--name-only", "-z", "--no-renames", "--diff-filter=ACMR", old, new]
    else:
        args = ["diff-tree", "--root", "-r", "--name-only", "-z", "--diff-filter=ACMR", new]
    return git.run(args, cwd=top, env=env).fields()


def _resolves(top: Path, rev: str, env: dict[str, str]) -> bool:
    proc = git.run(["rev-parse", "--verify", "-q", rev + "^{commit}"], cwd=top, env=env, ok=(0, 1))
    return proc.returncode == 0


def commit_range(
    top: Path, hook_type: str, args: Sequence[str], env: dict[str, str]
) -> tuple[str, str] | None:
    """The (old, new) range a hook looks at; old "" = the root commit; None = nothing."""
    if hook_type == "post-commit":
        return ("HEAD~1" if _resolves(top, "HEAD~1", env) else "", "HEAD")
    if hook_type == "post-merge":
        return ("ORIG_HEAD", "HEAD") if _resolves(top, "ORIG_HEAD", env) else None
    if hook_type == "post-checkout":
        # $3 == 1: a branch checkout (not a file checkout). A null old commit is a clone or
        # `git worktree add`: not a change of anyone's spec folder.
        if len(args) < 3 or args[2] != "1" or args[0] == git.ZERO_SHA or args[0] == args[1]:
            return None
        return (args[0], args[1])
    return None


def _has_work(tasks_file: Path) -> bool:
    """Whether a spec folder has something to run; an unreadable file counts (the run
    logs why). Plain json on purpose: the hook must return fast."""
    try:
        doc = json.loads(tasks_file.read_bytes())
        return any(t.get("status", "pending") in ("pending", "in_progress") for t in doc["tasks"])
    except (OSError, ValueError, KeyError, TypeError, AttributeError):
        return tasks_file.exists()


def changed_spec_dirs(
    top: Path, hook_type: str, args: Sequence[str], env: dict[str, str] | None = None
) -> list[Path]:
    env = env or {}
    rng = commit_range(top, hook_type, args, env)
    if rng is None:
        return []
    dirs = []
    for rel in _changed(top, *rng, env):
        if _is_tasks_file(rel):
            d = top / rel[: -len(TASKS_FILE)]
            if _has_work(d / TASKS_FILE):
                dirs.append(d.resolve())
    return sorted(set(dirs))


def start_background_run(repo: Repo, spec_dirs: Sequence[Path], hook_type: str) -> int:
    """``specexec run --wait SPEC...`` detached from git: own session, no terminal, output
    to the hooks log. Returns its pid."""
    log_dir = repo.common_dir / "specexec"
    log_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, "-P", "-m", "specexec", "run", "--wait", *map(str, spec_dirs)]
    with (log_dir / LOG_NAME).open("ab") as log:
        stamp = time.strftime("%Y-%m-%d %H:%M:%S")
        log.write(f"{stamp} {hook_type}: {shlex.join(cmd[3:])}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            cmd,
            cwd=repo.top,
            env=background_env(),  # the hook's GIT_DIR, GIT_INDEX_FILE, ... must not leak
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
        )
    return proc.pid


def staged_problems(top: Path, env: dict[str, str] | None = None) -> list[str]:
    """Every problem of the staged tasks.json files, read from the index (the one git
    names in GIT_INDEX_FILE: `git commit -a` and `git commit PATH` use a temporary one)."""
    env = env or {}
    staged = git.run(
        ["diff", "--cached", "--name-only", "-z", "--diff-filter=ACMR"], cwd=top, env=env
    ).fields()
    files = [rel for rel in staged if _is_tasks_file(rel)]
    if not files:
        return []
    # Imported only now: validation is not needed by commits that stage no tasks.json.
    from specexec.tasksfile import jsonio
    from specexec.tasksfile.schema import validate_document

    problems: list[str] = []
    for rel in files:
        file = top / rel
        try:
            data = git.run(["show", f":{rel}"], cwd=top, env=env).stdout
            raw = jsonio.loads(data, source=rel)
            ctx_rel = rel[: -len(TASKS_FILE)] + CONTEXT_FILE
            ctx_data = git.run(["show", f":{ctx_rel}"], cwd=top, env=env, ok=(0, 128)).stdout
            context = jsonio.loads(ctx_data, source=ctx_rel) if ctx_data else {}
            validate_document(
                raw,
                file=file,
                repo_root=top,
                context=context if isinstance(context, dict) else {},
            )
        except InvalidInput as e:
            # One form of path on screen: relative to the top, as git shows them (and as
            # the JSON errors above already are); validation names the absolute file.
            absolute = str(file)
            problems.extend(
                rel + p[len(absolute) :] if p.startswith(absolute) else p for p in e.problems
            )
    return problems


def run_hook(hook_type: str, args: Sequence[str], cwd: str | os.PathLike[str] = ".") -> int:
    """What an installed hook does; its exit code."""
    if hook_type not in HOOK_TYPES:
        raise InvalidInput(f"unknown hook type {hook_type!r}")
    env = hook_git_env()
    repo = find_repo(cwd, env)
    if hook_type == "pre-commit":
        problems = staged_problems(repo.top, env)
        if problems:
            print(
                f"specexec: the staged {TASKS_FILE} files have {len(problems)} problem(s); "
                "commit refused:",
                file=sys.stderr,
            )
            for p in problems:
                print(f"  {p}", file=sys.stderr)
            return 1
        return 0
    dirs = changed_spec_dirs(repo.top, hook_type, args, env)
    if dirs:
        pid = start_background_run(repo, dirs, hook_type)
        names = ", ".join(os.path.relpath(d, repo.top) for d in dirs)
        log = repo.common_dir / "specexec" / LOG_NAME
        shown = log.relative_to(repo.top) if log.is_relative_to(repo.top) else log
        print(
            f"specexec: running {names} in the background (pid {pid}; log: {shown})",
            file=sys.stderr,
        )
    return 0
