"""Sparse checkouts of a task's worktree.

Done with plumbing (read-tree + the worktree's own info/sparse-checkout) rather than
`git sparse-checkout set`, which would switch on extensions.worktreeConfig in the
user's shared .git/config. The skip-worktree bits it leaves in the index keep the
worker's own `git status` quiet about the files that are not there.
"""

from __future__ import annotations

import contextlib
from collections.abc import Sequence
from pathlib import Path

from specexec.tasksfile.types import Task

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
