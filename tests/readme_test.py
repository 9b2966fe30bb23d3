"""Every example in the README runs as written.

Each fenced ```` ```sh ```` block of README.md is one test: its text runs with
``bash -e -o pipefail`` in a scratch git repository (one commit on ``main``), with the
venv's ``bin`` (so ``specexec``) first on ``PATH``, ``HOME`` pointing at a scratch folder
and ``EDITOR=true``, and must exit 0.

The convention, for whoever edits the README:

- A block that must not run here (it needs the network, a systemd user session, your own
  paths, or it installs into your Python) has an HTML comment right before it, on the
  line above the opening fence: ``<!-- not run: the reason -->``. The reason is shown as
  the skip reason.
- A block that needs something prepared (a folder it ``cd``s into, a copy of this
  checkout) gets a setup in ``SETUPS`` below, keyed on the block's first line.
- Other fences (```` ``` ````, ```` ```json ````, ```` ```yaml ````) are not run.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import git, init_repo

ROOT = Path(__file__).resolve().parent.parent
README = ROOT / "README.md"
BIN = Path(sys.executable).parent  # the venv's bin: specexec, python3

_FENCE = re.compile(r"^```(\S*)\s*$")
_NOT_RUN = re.compile(r"^<!--\s*not run\b:?\s*(.*?)\s*-->\s*$")


@dataclass(frozen=True)
class Block:
    line: int  # of the opening fence, 1-based
    text: str
    not_run: str | None  # the reason, when marked

    @property
    def first(self) -> str:
        return self.text.splitlines()[0].strip() if self.text.strip() else ""


def sh_blocks(markdown: str) -> list[Block]:
    lines = markdown.splitlines()
    blocks: list[Block] = []
    i = 0
    while i < len(lines):
        m = _FENCE.match(lines[i])
        if m is None:
            i += 1
            continue
        start, lang = i, m.group(1)
        i += 1
        body = []
        while i < len(lines) and not lines[i].startswith("```"):
            body.append(lines[i])
            i += 1
        i += 1  # the closing fence
        if lang != "sh":
            continue
        before = next((lines[j] for j in range(start - 1, -1, -1) if lines[j].strip()), "")
        marked = _NOT_RUN.match(before.strip())
        reason = (marked.group(1) or "marked not run") if marked else None
        blocks.append(Block(start + 1, "\n".join(body) + "\n", reason))
    return blocks


# -- per-block setup: (cwd, extra environment) for the block, in a scratch folder ---------


@dataclass(frozen=True)
class Setup:
    prepare: Callable[[Path], Path] | None = None  # scratch -> the cwd; default: a repo
    skip: str | None = None  # a reason not to run it, for blocks not marked in the README
    slow: bool = False
    timeout: float = 300


def _scratch_repo(scratch: Path) -> Path:
    return init_repo(scratch / "repo")


def _your_repo(scratch: Path) -> Path:
    """`cd your-repo`: the block starts next to a git repository of that name."""
    init_repo(scratch / "your-repo")
    return scratch


def _checkout_copy(scratch: Path) -> Path:
    """A copy of this checkout as it is now (tracked and new files, not ignored ones)."""
    dest = scratch / "specexec"
    names = git(ROOT, "ls-files", "-z", "--cached", "--others", "--exclude-standard")
    for rel in filter(None, names.split("\0")):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    return dest


# Keyed on a block's first line (a prefix of it). Blocks that run the test suite or touch
# the machine are skipped here too, so that the test holds even before the README marks them.
SETUPS: dict[str, Setup] = {
    "python3 -m venv .venv && .venv/bin/pip install . && .venv/bin/specexec demo": Setup(
        _checkout_copy, slow=True, timeout=900
    ),
    "python3 -m venv .venv && .venv/bin/pip install -e": Setup(
        skip="runs the whole test suite, this test included"
    ),
    "cd your-repo": Setup(_your_repo),
    "mkdir -p ~/.config/systemd/user": Setup(skip="needs a systemd user session"),
    "python tests/conformance/install_agents.py": Setup(
        skip="installs the agent CLIs from the registries"
    ),
}


def _setup(block: Block) -> Setup:
    for prefix, setup in SETUPS.items():
        if block.first.startswith(prefix):
            return setup
    return Setup()


def _params() -> list[object]:
    params: list[object] = []
    for b in sh_blocks(README.read_text(encoding="utf-8")):
        setup = _setup(b)
        marks: list[pytest.MarkDecorator] = []
        if b.not_run is not None:
            marks.append(pytest.mark.skip(reason=f"README: not run: {b.not_run}"))
        elif setup.skip is not None:
            marks.append(pytest.mark.skip(reason=setup.skip))
        if setup.slow:
            marks.append(pytest.mark.slow)
        marks.append(pytest.mark.timeout(setup.timeout + 60))
        params.append(pytest.param(b, id=f"L{b.line}-{b.first[:40]}", marks=marks))
    return params


@pytest.mark.parametrize("block", _params())
def test_readme_block_runs_as_written(block: Block, tmp_path: Path) -> None:
    setup = _setup(block)
    cwd = (setup.prepare or _scratch_repo)(tmp_path)
    home = tmp_path / "home"
    home.mkdir()
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}",
        "HOME": str(home),
        "EDITOR": "true",
        "GIT_AUTHOR_NAME": "Test",
        "GIT_AUTHOR_EMAIL": "test@example.com",
        "GIT_COMMITTER_NAME": "Test",
        "GIT_COMMITTER_EMAIL": "test@example.com",
    }
    env.pop("VIRTUAL_ENV", None)
    proc = subprocess.run(
        ["bash", "-e", "-o", "pipefail", "-c", block.text],
        cwd=cwd,
        env=env,
        capture_output=True,
        text=True,
        timeout=setup.timeout,
        check=False,
    )
    assert proc.returncode == 0, (
        f"README.md line {block.line}: exit {proc.returncode}\n{block.text}\n"
        f"--- stdout ---\n{proc.stdout[-4000:]}\n--- stderr ---\n{proc.stderr[-4000:]}"
    )


def test_the_readme_has_blocks_that_run() -> None:
    """The extraction itself: the blocks a newcomer types first are found and run."""
    blocks = sh_blocks(README.read_text(encoding="utf-8"))
    assert any(b.first == "cd your-repo" and b.not_run is None for b in blocks)
    assert all(b.text.strip() for b in blocks)
