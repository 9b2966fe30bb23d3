"""specexec: execute spec folders of tasks in parallel git worktrees."""

from __future__ import annotations

__version__ = "0.1.0"
