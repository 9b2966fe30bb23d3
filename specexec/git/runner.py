"""The one way specexec runs git: a clean environment, fixed options, errors as GitError.

GitPython is not used here on purpose: with an explicit path it still takes
GIT_COMMON_DIR, GIT_WORK_TREE and GIT_OBJECT_DIRECTORY from ``os.environ`` (and passes
GIT_INDEX_FILE to its subprocesses), so from inside another repository's git hook it
reads and writes the wrong repository. Plain ``git`` with ``clean_env()`` does not.
"""

from __future__ import annotations

import os
import shlex
import subprocess
from collections.abc import Collection, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from specexec.errors import GitError
from specexec.git.env import clean_env

# Applied to every command: no automatic gc/maintenance while worktrees are being made,
# none of the user's hooks (a specexec post-checkout/post-commit hook would recurse), no
# signing prompts, no fsmonitor daemon spawned per worktree, raw (unquoted) paths.
OPTIONS: tuple[str, ...] = (
    "-c", "gc.auto=0",
    "-c", "maintenance.auto=false",
    "-c", "core.hooksPath=/dev/null",
    "-c", "commit.gpgSign=false",
    "-c", "core.fsmonitor=false",
    "-c", "core.quotePath=false",
)  # fmt: skip

ZERO_SHA = "0" * 40


@dataclass(frozen=True, slots=True)
class GitResult:
    returncode: int
    stdout: bytes
    stderr: str

    @property
    def text(self) -> str:
        """stdout decoded (undecodable bytes kept as surrogates), stripped."""
        return os.fsdecode(self.stdout).strip()

    def fields(self) -> list[str]:
        """NUL-separated stdout (``-z`` output), without empty trailing fields."""
        return [os.fsdecode(f) for f in self.stdout.split(b"\0") if f]


def git_env(extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """The environment of every git command: no hook's repository variables, C locale."""
    env = clean_env()
    env.update(
        LC_ALL="C",
        LANGUAGE="C",
        GIT_TERMINAL_PROMPT="0",
        # Our read-only commands must never take the index lock of anyone's worktree.
        GIT_OPTIONAL_LOCKS="0",
    )
    if extra:
        env.update(extra)
    return env


def run(
    args: Sequence[str],
    *,
    cwd: Path,
    git_dir: Path | None = None,
    work_tree: Path | None = None,
    input: bytes | None = None,
    env: Mapping[str, str] | None = None,
    ok: Collection[int] = (0,),
    as_user: bool = False,
) -> GitResult:
    """Run ``git ARGS``; raise GitError (command, directory, stderr) unless the exit is ``ok``.

    ``git_dir``/``work_tree`` are passed explicitly so that nothing in ``cwd`` (say, a
    ``.git`` file a worker rewrote) decides which repository is used. ``as_user``: without
    ``OPTIONS``, as the user's own git would run (the hooks run it so: ``core.hooksPath``).
    """
    cmd = ["git"] if as_user else ["git", *OPTIONS]
    if git_dir is not None:
        cmd.append(f"--git-dir={git_dir}")
    if work_tree is not None:
        cmd.append(f"--work-tree={work_tree}")
    cmd.extend(args)
    try:
        proc = subprocess.run(
            cmd,
            cwd=cwd,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            env=git_env(env),
            check=False,
        )
    except OSError as exc:
        raise GitError(f"cannot run git {shlex.join(args)} in {cwd}: {exc}") from exc
    stderr = proc.stderr.decode("utf-8", "replace")
    if proc.returncode not in ok:
        raise GitError(
            f"git {shlex.join(args)} failed (exit {proc.returncode}) in {cwd}: "
            f"{stderr.strip() or '(no message)'}"
        )
    return GitResult(proc.returncode, proc.stdout, stderr)
