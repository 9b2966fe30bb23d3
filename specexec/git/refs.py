"""specexec's ref names, and reading or pointing a worktree's HEAD without git.

Integration branch ``specexec/<spec>``; task branch ``specexec/<spec>@<task>``
(``specexec/<spec>/<task>`` cannot exist next to ``specexec/<spec>``: a ref cannot be a
file and a directory at once); ``refs/specexec/bases/<spec>/<task>`` records the commit a
task branch started from; ``refs/specexec/snapshots/<spec>/<task>`` the snapshot commit
specexec made of the task's files to merge (``is_merged`` asks whether *that* commit is
reachable, so that a worker's resets never make a task look merged);
``refs/specexec/tips/<spec>`` the integration tip specexec last wrote (merges
compare-and-swap against it, so a branch moved back by someone else is detected and what
it dropped stays reachable).
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from specexec.errors import InvalidInput

BASES = "refs/specexec/bases"
SNAPSHOTS = "refs/specexec/snapshots"
TIPS = "refs/specexec/tips"
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,63}")
_PART = r"([A-Za-z0-9][A-Za-z0-9._-]*)"
TASK_REF = re.compile(rf"refs/heads/specexec/{_PART}@{_PART}")
BASE_REF = re.compile(rf"refs/specexec/bases/{_PART}/{_PART}")
SNAPSHOT_REF = re.compile(rf"refs/specexec/snapshots/{_PART}/{_PART}")
INTEGRATION_REF = re.compile(rf"refs/heads/specexec/{_PART}")
SHA = re.compile(r"[0-9a-f]{40,64}")


def check_name(kind: str, value: str) -> str:
    """``value`` if it can be one component of a branch name and a directory name."""
    if not _NAME.fullmatch(value) or ".." in value or value.endswith((".lock", ".")):
        raise InvalidInput(
            f"{kind} {value!r} cannot name a git branch: use 1-64 letters, digits, '.', '_' "
            "or '-', starting with a letter or digit, without '..' or a trailing '.lock' or '.'"
        )
    return value


def integration_branch(spec: str) -> str:
    return integration(check_name("spec", spec))


def task_branch(spec: str, task_id: str) -> str:
    return task(check_name("spec", spec), check_name("task id", task_id))


# Unchecked forms, for names read back from git (gc must handle whatever is there).
def integration(spec: str) -> str:
    return f"specexec/{spec}"


def task(spec: str, task_id: str) -> str:
    return f"specexec/{spec}@{task_id}"


def heads(branch: str) -> str:
    return f"refs/heads/{branch}"


def base_ref(spec: str, task_id: str) -> str:
    return f"{BASES}/{spec}/{task_id}"


def snapshot_ref(spec: str, task_id: str) -> str:
    return f"{SNAPSHOTS}/{spec}/{task_id}"


def tip_ref(spec: str) -> str:
    return f"{TIPS}/{spec}"


def read_text(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8", errors="surrogateescape").strip()
    except OSError:
        return ""


def branches_in(git_dir: Path) -> set[str]:
    """The branch refs one worktree (its git dir) holds, as git's find_shared_symref sees them."""
    found: set[str] = set()
    head = read_text(git_dir / "HEAD")
    if head.startswith("ref: "):
        found.add(head[len("ref: ") :].strip())
    for name in ("rebase-merge/head-name", "rebase-apply/head-name"):
        ref = read_text(git_dir / name)
        if ref.startswith("refs/"):
            found.add(ref)
    bisect = read_text(git_dir / "BISECT_START")
    if bisect and not SHA.fullmatch(bisect):
        found.add(heads(bisect))
    return found


def set_head(admin: Path, target: str) -> None:
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
