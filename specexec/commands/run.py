"""`specexec run SPEC_DIR...`: run the pending tasks of one or more spec folders."""

from __future__ import annotations

from collections.abc import Sequence

from specexec.run.executor import RunOptions
from specexec.run.session import run_specs

__all__ = ["RunOptions", "run"]


def run(spec_dirs: Sequence[str], opts: RunOptions) -> int:
    """The exit code of running ``spec_dirs`` (see specexec.run.session)."""
    return run_specs(spec_dirs, opts)
