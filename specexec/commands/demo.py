"""`specexec demo [--dir PATH]`: the bundled example, end to end, in a scratch repository."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from specexec.errors import InvalidInput
from specexec.git.runner import run as git
from specexec.resources import data_dir
from specexec.run.executor import RunOptions
from specexec.run.session import run_specs as run

EXAMPLE = "textkit"
README = """# specexec demo

A scratch repository made by `specexec demo`. The spec folder `specs/textkit/` lists ten
tasks; specexec runs each in its own git worktree and merges them into `specexec/textkit`.
"""


def _make_repo(dest: Path) -> Path:
    dest.mkdir(parents=True, exist_ok=True)
    if any(dest.iterdir()):
        raise InvalidInput(f"{dest}: not empty; give --dir a new or empty folder")
    git(["init", "-q", "-b", "main"], cwd=dest)
    # The scratch repository gets its own identity so the demo works on a fresh machine.
    git(["config", "user.name", "specexec demo"], cwd=dest)
    git(["config", "user.email", "demo@specexec.invalid"], cwd=dest)
    (dest / "README.md").write_text(README)
    shutil.copytree(
        data_dir("specs") / EXAMPLE,
        dest / "specs" / EXAMPLE,
        ignore=shutil.ignore_patterns(".specexec"),
    )
    git(["add", "-A"], cwd=dest)
    git(["commit", "-q", "-m", "Add the textkit spec"], cwd=dest)
    return dest / "specs" / EXAMPLE


def demo(path: str | None = None, *, jobs: int = 4) -> int:
    dest = Path(path) if path else Path(tempfile.mkdtemp(prefix="specexec-demo-"))
    spec_dir = _make_repo(dest.absolute())
    print(f"demo repository: {dest}")
    print(f"spec folder:     {spec_dir}\n")
    code = run([str(spec_dir)], RunOptions(jobs=jobs))  # ends with the summary
    branch = f"specexec/{EXAMPLE}"
    commits = git(["rev-list", "--count", f"main..{branch}"], cwd=dest).text.strip()
    print(f"\nintegration branch: {branch} ({commits} commit(s) on top of main)")
    print(f"  git -C {dest} log --oneline --graph {branch}")
    print(f"full report: specexec report {spec_dir}")
    return code
