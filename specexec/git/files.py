"""Deleting and opening up a worktree's files, whatever modes a worker left on them."""

from __future__ import annotations

import contextlib
import os
import shutil
import stat
from pathlib import Path


def add_mode(path: str | bytes | Path, bits: int) -> None:
    """Add permission ``bits`` to ``path`` (never through a symlink)."""
    mode = os.lstat(path).st_mode
    if mode & bits != bits and not stat.S_ISLNK(mode):
        os.chmod(path, stat.S_IMODE(mode) | bits)


def make_writable(top: Path, *, files: bool = False) -> None:
    """Give the owner rwx on every directory under ``top`` (and rw on files if asked)."""
    # Top-down, so each directory is opened up before os.walk enters it.
    add_mode(top, 0o700)
    for root, dirs, names in os.walk(top):
        for d in dirs:
            with contextlib.suppress(FileNotFoundError):
                add_mode(os.path.join(root, d), 0o700)
        if files:
            for name in names:
                with contextlib.suppress(FileNotFoundError):
                    add_mode(os.path.join(root, name), 0o600)


def rmtree(path: Path) -> None:
    """Delete ``path`` (never following a symlink), even if a worker made dirs read-only."""
    if path.is_symlink() or path.is_file():
        path.unlink(missing_ok=True)
        return
    if not path.exists():
        return
    try:
        shutil.rmtree(path)
    except FileNotFoundError:
        return
    except OSError:
        make_writable(path)
        shutil.rmtree(path)
