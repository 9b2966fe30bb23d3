"""Finding a repository, and where its worktrees live.

- ``find_repo_root``: the top of the working tree that holds a path, read from the file
  system (no git, no GitPython: it runs at the start of every command).
- ``locate``: what git itself says about that repository (git dir, common dir, top level,
  hooks dir), in one ``git rev-parse``.
- ``worktree_root``: the directory of a repository's task worktrees and pool slots, outside
  the git dir and outside the user's working tree.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path

from specexec.errors import InvalidInput
from specexec.git.runner import run

WORKTREE_DIR_ENV = "SPECEXEC_WORKTREE_DIR"


def find_repo_root(start: Path) -> Path | None:
    """The nearest enclosing directory holding ``.git`` (a worktree has a .git file)."""
    for d in (start, *start.parents):
        if (d / ".git").exists():
            return d
    return None


@dataclass(frozen=True, slots=True)
class RepoDirs:
    root: Path  # the working tree's top level
    git_dir: Path  # this worktree's git dir
    common_dir: Path  # the repository's git common dir
    hooks_dir: Path  # where git runs hooks from (core.hooksPath respected)


def locate(start: Path | str, env: dict[str, str] | None = None) -> RepoDirs:
    """The repository whose working tree holds ``start``; InvalidInput if there is none
    (or only a bare one). ``env``: a hook's GIT_DIR & co. (absolute), else none of them."""
    start = Path(start).expanduser().absolute()
    if not start.exists():
        raise InvalidInput(f"{start}: no such file or directory")
    cwd = start if start.is_dir() else start.parent
    res = run(
        [
            "rev-parse",
            "--is-bare-repository",
            "--path-format=absolute",
            "--git-dir",
            "--git-common-dir",
            "--show-toplevel",
            "--git-path",
            "hooks",
        ],
        cwd=cwd,
        env=env,
        as_user=True,  # the hooks dir as the user's config says, not specexec's /dev/null
        ok=range(256),
    )
    lines = os.fsdecode(res.stdout).splitlines()
    if lines[:1] == ["true"]:
        raise InvalidInput(f"{start} is a bare git repository; specexec needs a working tree")
    if res.returncode != 0 or len(lines) != 5:
        why = res.stderr.strip().splitlines()[-1:] or ["unknown error"]
        raise InvalidInput(f"{start} is not inside a git working tree ({why[0]})")
    return RepoDirs(
        root=Path(lines[3]).resolve(),
        git_dir=Path(lines[1]).resolve(),
        common_dir=Path(lines[2]).resolve(),
        hooks_dir=(cwd / os.path.expanduser(lines[4])).resolve(),
    )


# --- where worktrees live ------------------------------------------------------------------


def repo_worktree_dir(root: Path) -> str | None:
    """``worktree_dir = "..."`` of ``[tool.specexec]`` in ``<root>/pyproject.toml``.

    Read here rather than through ``workers.resolve.repo_config``: git/ must not depend
    on workers/ (and a bare ``tomllib`` read costs no pydantic import)."""
    path = root / "pyproject.toml"
    if not path.is_file():
        return None
    import tomllib  # only with a pyproject.toml: most runs need no TOML parser

    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise InvalidInput(f"{path}: cannot read [tool.specexec]: {e}") from None
    section = doc.get("tool", {}).get("specexec", {})
    value = section.get("worktree_dir") if isinstance(section, dict) else None
    if value is not None and (not isinstance(value, str) or not value.strip()):
        raise InvalidInput(f"{path}: [tool.specexec] worktree_dir: must be a non-empty string")
    return value


def default_worktree_base() -> Path:
    cache = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(cache) / "specexec" / "worktrees"


def _configured_base(root: Path) -> Path:
    """``$SPECEXEC_WORKTREE_DIR``, else ``worktree_dir`` of ``[tool.specexec]`` (relative to
    the repository's top), else the user's cache directory."""
    env = os.environ.get(WORKTREE_DIR_ENV)
    if env:
        return Path(env).expanduser()
    configured = repo_worktree_dir(root)
    if configured is not None:
        return root / Path(configured).expanduser()
    return default_worktree_base()


def worktree_root(root: Path, common_dir: Path) -> Path:
    """``<base>/<repo-name>-<id>``: the worktrees of the repository at ``common_dir``.

    ``id`` is a stable hash of the common dir's path, so two repositories of one name
    never share a directory. A base inside the working tree or the git dir is refused:
    its worktrees would show up in ``git status`` or be deleted with ``.git``.
    """
    base = Path(os.path.abspath(_configured_base(root)))
    real = Path(os.path.realpath(base))
    for inside, what in ((root, "the working tree"), (common_dir, "the git directory")):
        if real == inside or inside in real.parents:
            raise InvalidInput(
                f"worktree directory {base} is inside {what} of {root}: set "
                f"{WORKTREE_DIR_ENV} or [tool.specexec] worktree_dir to a directory outside it"
            )
    main = common_dir.parent if common_dir.name == ".git" else common_dir
    name = re.sub(r"[^A-Za-z0-9._-]", "_", main.name.removesuffix(".git")) or "repo"
    digest = hashlib.sha256(os.fsencode(common_dir)).hexdigest()[:12]
    return real / f"{name}-{digest}"


def log_graph(root: Path, rev: str) -> str:
    """``git log --oneline --graph REV``: a branch's history as a person reads it."""
    res = run(["log", "--oneline", "--graph", rev], cwd=root, ok=range(256))
    return res.text if res.returncode == 0 else res.stderr.strip()
