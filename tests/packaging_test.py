"""The wheel carries the templates and the example: `init`, `validate`, `plan` and `demo`
work from it, not only from a checkout."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
from conftest import init_repo

ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.slow
def test_wheel_works_without_the_checkout(tmp_path: Path) -> None:
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "-q",
            "--no-deps",
            "-w",
            str(tmp_path / "dist"),
            str(ROOT),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (wheel,) = (tmp_path / "dist").glob("specexec-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "specexec/_data/templates/agent/tasks.json" in names
    assert "specexec/_data/specs/textkit/tasks.json" in names
    assert "specexec/run/worker_prompt.md.j2" in names
    target = tmp_path / "site"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "install",
            "-q",
            "--no-deps",
            "--target",
            str(target),
            str(wheel),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    # Dependencies come from this environment; specexec itself only from the wheel.
    env = {**os.environ, "PYTHONPATH": str(target), "PYTHONSAFEPATH": "1"}
    # A repository: `validate` checks what `run` needs, and worktree tasks need one.
    work = init_repo(tmp_path / "work")

    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "-m", "specexec", *args],
            cwd=work,
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
        )

    where = subprocess.run(
        [sys.executable, "-c", "import specexec; print(specexec.__file__)"],
        cwd=work,
        env=env,
        capture_output=True,
        text=True,
        check=True,
    )
    assert where.stdout.startswith(str(target))
    for template in ("shell", "agent", "mixed"):
        d = work / "specs" / template
        assert cli("init", str(d), "--template", template).returncode == 0
        assert cli("validate", str(d)).returncode == 0
        assert cli("plan", str(d)).returncode == 0
    demo = cli("demo", "--dir", str(tmp_path / "demo"))
    assert demo.returncode == 0, demo.stdout + demo.stderr
    assert "10 passed, 0 failed, 0 blocked" in demo.stdout
