"""``specexec gc [REPO]``: remove stale worktrees and finished task branches."""

from __future__ import annotations

from pathlib import Path

from specexec.errors import EXIT_OK
from specexec.workspace import Workspace


def gc(repo: str | None) -> int:
    """Clean the repository at ``repo`` (default: the current directory); print what went."""
    ws = Workspace(Path(repo) if repo else Path.cwd())
    removed = ws.gc()
    for line in removed:
        print(f"removed {line}")
    if not removed:
        print(f"nothing to remove in {ws.root}")
    return EXIT_OK
