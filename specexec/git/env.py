"""A clean environment for git and workers.

A git hook runs with GIT_DIR, GIT_INDEX_FILE, GIT_WORK_TREE and friends set for *its*
repository; anything specexec starts from there would otherwise act on that repository.
"""

from __future__ import annotations

import functools
import os
import subprocess
from collections.abc import Mapping

# What `git rev-parse --local-env-vars` printed on git 2.39, used if git cannot be asked.
_FALLBACK = (
    "GIT_ALTERNATE_OBJECT_DIRECTORIES",
    "GIT_CONFIG",
    "GIT_CONFIG_PARAMETERS",
    "GIT_CONFIG_COUNT",
    "GIT_OBJECT_DIRECTORY",
    "GIT_DIR",
    "GIT_WORK_TREE",
    "GIT_IMPLICIT_WORK_TREE",
    "GIT_GRAFT_FILE",
    "GIT_INDEX_FILE",
    "GIT_NO_REPLACE_OBJECTS",
    "GIT_REPLACE_REF_BASE",
    "GIT_PREFIX",
    "GIT_INTERNAL_SUPER_PREFIX",
    "GIT_SHALLOW_FILE",
    "GIT_COMMON_DIR",
)
# Not "local" to git, but a hook's values would still redirect or alter our git calls.
_EXTRA = (
    "GIT_INDEX_VERSION",
    "GIT_QUARANTINE_PATH",
    "GIT_EDITOR",
    "GIT_REFLOG_ACTION",
    # A hook exports the commit's dates: our own commits must not all carry them.
    "GIT_AUTHOR_DATE",
    "GIT_COMMITTER_DATE",
)


@functools.cache
def local_env_vars() -> frozenset[str]:
    """The variables git itself says are local to a repository, plus a few more."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "--local-env-vars"],
            capture_output=True,
            text=True,
            check=True,
            env={k: v for k, v in os.environ.items() if not k.startswith("GIT_")},
        ).stdout.split()
    except (OSError, subprocess.CalledProcessError):
        out = list(_FALLBACK)
    return frozenset(out) | frozenset(_FALLBACK) | frozenset(_EXTRA)


def clean_env(env: Mapping[str, str] | None = None) -> dict[str, str]:
    """``env`` (default: os.environ) without git's repository-local variables."""
    source = os.environ if env is None else env
    drop = local_env_vars()
    return {k: v for k, v in source.items() if k not in drop}
