"""Helpers shared by the reliability tests (not a test module).

- ``call_main``: ``specexec.main.main`` in-process with stdout/stderr as real UTF-8 text
  streams (stdout strict, stderr backslashreplace, as Python sets them up for a pipe), so
  an unprintable string fails here exactly as it would in a subprocess.
- ``FileWatch``: Linux inotify on a directory tree, to prove that specexec never opened,
  read, wrote or created anything in it (a stat or a realpath makes no event).
- ``spec_processes``: live processes whose environment says they work for a spec folder
  (every worker and its children inherit ``SPECEXEC_SPEC_DIR``).
- ``leftovers``: worktrees, branches and refs a finished run must not leave behind.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import io
import os
import struct
import subprocess
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path

import psutil
from conftest import git

from specexec.main import main


def call_main(argv: Sequence[str]) -> tuple[int, str, str]:
    """(exit code, stdout, stderr) of ``specexec ARGV`` run in this process."""
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict", write_through=True)
    err = io.TextIOWrapper(
        io.BytesIO(), encoding="utf-8", errors="backslashreplace", write_through=True
    )
    old = sys.stdout, sys.stderr
    sys.stdout, sys.stderr = out, err
    try:
        code = main(list(argv))
    except SystemExit as e:  # argparse usage errors
        code = e.code if isinstance(e.code, int) else 2
    finally:
        sys.stdout, sys.stderr = old
    return code, _text(out), _text(err)


def _text(stream: io.TextIOWrapper) -> str:
    stream.flush()
    buf = stream.buffer
    assert isinstance(buf, io.BytesIO)
    return buf.getvalue().decode("utf-8", "replace")


# --------------------------------------------------------------------------- processes


def spec_processes(spec_dir: Path) -> list[psutil.Process]:
    """Live (non-zombie) processes working for ``spec_dir``: workers and their children."""
    want = {str(spec_dir), os.path.realpath(spec_dir)}
    found = []
    for p in psutil.process_iter():
        try:
            if p.environ().get("SPECEXEC_SPEC_DIR") in want and p.status() != psutil.STATUS_ZOMBIE:
                found.append(p)
        except psutil.Error:
            continue
    return found


def group_alive(pgid: int) -> bool:
    """Is a process of group ``pgid`` still running (zombies do not count)?"""
    for p in psutil.process_iter():
        try:
            if os.getpgid(p.pid) == pgid and p.status() != psutil.STATUS_ZOMBIE:
                return True
        except (ProcessLookupError, psutil.Error):
            continue
    return False


def kill_tree(proc: subprocess.Popen[bytes] | subprocess.Popen[str]) -> None:
    """Test cleanup: SIGKILL a runner we started and whatever it left running."""
    with contextlib.suppress(psutil.Error):
        for child in psutil.Process(proc.pid).children(recursive=True):
            with contextlib.suppress(psutil.Error):
                child.kill()
    with contextlib.suppress(ProcessLookupError):
        proc.kill()
    proc.wait()


# --------------------------------------------------------------------------- git state


def leftovers(repo: Path, specs: Sequence[str], jobs: int) -> list[str]:
    """What a finished run left behind that it should not have: worktrees other than the
    repository's own and at most ``jobs`` pool slots, task branches, base refs, and
    half-removed worktree directories."""
    from specexec.git.workspace import Workspace

    ws = Workspace(repo)
    pool = ws.pool_dir
    problems = []
    listing = git(repo, "worktree", "list", "--porcelain")
    paths = [
        Path(line[len("worktree ") :])
        for line in listing.splitlines()
        if line.startswith("worktree ")
    ]
    others = [p for p in paths if p.resolve() != repo.resolve()]
    pooled = [p for p in others if p.resolve().parent == pool]
    if len(pooled) > jobs:
        problems.append(f"{len(pooled)} pool worktrees, more than --jobs {jobs}")
    problems += [f"worktree left: {p}" for p in others if p not in pooled]
    if "prunable" in listing:
        problems.append(f"prunable worktree: {listing}")
    allowed = {"refs/heads/main", *(f"refs/heads/specexec/{s}" for s in specs)}
    allowed |= {f"refs/specexec/tips/{s}" for s in specs}  # the tip specexec last wrote
    refs = git(repo, "for-each-ref", "--format=%(refname)").splitlines()
    problems += [
        f"ref left: {r}" for r in refs if r not in allowed and not r.startswith("refs/tags/")
    ]
    wt_dir = ws.worktrees_dir
    if wt_dir.is_dir():
        problems += [
            f"worktree files left: {p}"
            for p in wt_dir.rglob("*")
            if p.is_dir() and p.parent.parent == wt_dir
        ]
    return problems


# --------------------------------------------------------------------------- inotify

_IN_ACCESS, _IN_MODIFY, _IN_ATTRIB = 0x1, 0x2, 0x4
_IN_CLOSE_WRITE, _IN_OPEN, _IN_CREATE, _IN_DELETE = 0x8, 0x20, 0x100, 0x200
_IN_MOVED_FROM, _IN_MOVED_TO = 0x40, 0x80
_IN_NONBLOCK, _IN_CLOEXEC = os.O_NONBLOCK, os.O_CLOEXEC
_NAMES = {
    _IN_ACCESS: "read",
    _IN_MODIFY: "write",
    _IN_ATTRIB: "chmod/chown",
    _IN_CLOSE_WRITE: "close-write",
    _IN_OPEN: "open",
    _IN_CREATE: "create",
    _IN_DELETE: "delete",
    _IN_MOVED_FROM: "move-from",
    _IN_MOVED_TO: "move-to",
}
_WATCHED = sum(_NAMES)
_EVENT = struct.Struct("iIII")


class FileWatch:
    """Every open, read, write, create, delete, rename or chmod in a directory tree, as
    reported by inotify (Linux) between ``start()`` and ``events()``."""

    def __init__(self, top: Path) -> None:
        self.top = top
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        self._add = libc.inotify_add_watch
        self._add.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_uint32]
        self.fd = libc.inotify_init1(_IN_NONBLOCK | _IN_CLOEXEC)
        if self.fd < 0:
            raise OSError(ctypes.get_errno(), "inotify_init1")
        self.dirs: dict[int, Path] = {}

    def start(self) -> FileWatch:
        for d in [self.top, *(p for p in self.top.rglob("*") if p.is_dir() and not p.is_symlink())]:
            wd = self._add(self.fd, os.fsencode(d), _WATCHED)
            if wd < 0:
                raise OSError(ctypes.get_errno(), f"inotify_add_watch {d}")
            self.dirs[wd] = d
        return self

    def events(self) -> list[str]:
        """``"<what> <path>"`` for every event since ``start`` (drains the queue)."""
        out = []
        while True:
            try:
                data = os.read(self.fd, 65536)
            except BlockingIOError:
                return out
            pos = 0
            while pos < len(data):
                wd, mask, _cookie, length = _EVENT.unpack_from(data, pos)
                name = data[pos + _EVENT.size : pos + _EVENT.size + length].rstrip(b"\0")
                pos += _EVENT.size + length
                what = ",".join(v for k, v in _NAMES.items() if mask & k)
                if what:
                    where = self.dirs.get(wd, Path("?"))
                    out.append(f"{what} {where / os.fsdecode(name) if name else where}")

    def close(self) -> None:
        os.close(self.fd)

    def __enter__(self) -> FileWatch:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.close()


@contextlib.contextmanager
def untouched(top: Path) -> Iterator[FileWatch]:
    """Assert that nothing under ``top`` was opened or changed inside the block."""
    with FileWatch(top) as w:
        yield w
        seen = w.events()
    assert not seen, f"specexec touched files outside the repository: {seen[:10]}"
