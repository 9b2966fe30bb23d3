"""`specexec hooks install|uninstall` and `specexec hook-run TYPE` (what the hooks call)."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from specexec.errors import EXIT_OK, EXIT_TASK_FAILED, InvalidInput, SpecexecError
from specexec.git import hooks as git_hooks


def hooks(action: str, *, repo: str = ".", hook_types: Sequence[str] | None = None) -> int:
    try:
        if action == "install":
            lines = git_hooks.install(repo, hook_types)
        elif action == "uninstall":
            lines = git_hooks.uninstall(repo, hook_types)
        else:
            raise InvalidInput(f"unknown action {action!r} (use install or uninstall)")
    except OSError as e:  # a read-only or foreign hooks folder: say so, no traceback
        raise SpecexecError(f"cannot {action} the hooks: {e}") from None
    for line in lines:
        print(line)
    return EXIT_OK


def hook_run(hook_type: str, hook_args: Sequence[str]) -> int:
    """Run by an installed hook. A post-* hook never fails the git command that ran it;
    pre-commit fails (1) when the staged tasks.json files have problems."""
    try:
        return git_hooks.run_hook(hook_type, hook_args)
    except (SpecexecError, OSError) as e:
        print(f"specexec {hook_type} hook: {e}", file=sys.stderr)
        if isinstance(e, InvalidInput):
            for p in e.problems[1:]:
                print(f"  {p}", file=sys.stderr)
        return EXIT_TASK_FAILED if hook_type == "pre-commit" else EXIT_OK
