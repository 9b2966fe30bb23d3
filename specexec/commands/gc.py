"""``specexec gc [REPO]``: remove stale worktrees, idle pool worktrees, the worktrees older
versions left in the git dir, and finished task branches."""

from __future__ import annotations

from pathlib import Path

from specexec.errors import EXIT_OK
from specexec.git import pool
from specexec.git.workspace import Workspace


def gc(repo: str | None) -> int:
    """Clean the repository at ``repo`` (default: the current directory); print what went."""
    ws = Workspace(Path(repo) if repo else Path.cwd())
    # Pool slots first: a slot a dead run left on a task branch no longer holds it.
    removed = pool.gc(ws) + ws.gc()
    for line in removed:
        print(f"removed {line}")
    if not removed:
        print(f"nothing to remove in {ws.root}")
    return EXIT_OK
