"""Secrets: the environment is never written to logs, reports or tasks.json, and what
specexec writes about a run is readable by its owner only (even under umask 000)."""

from __future__ import annotations

import json
import os
import stat
import subprocess
from pathlib import Path

import pytest
from conftest import PY, git, task, write_spec

from reliability.support import call_main

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

SECRETS = {
    "SPECEXEC_TEST_SECRET": "hunter2-xyz",
    "AWS_SECRET_ACCESS_KEY": "wJalrXUtnFEMI-K7MDENG-bPxRfiCYEXAMPLEKEY",
    "GITHUB_TOKEN": "ghp_0123456789abcdefSECRETtoken",
    "ANTHROPIC_API_KEY": "sk-ant-api03-secret-value",
}
# Files specexec creates for each task. (``<task>.result.json`` is written by the worker
# itself, with the worker's umask; the 0700 directories keep it private.)
PRIVATE_FILES = (".log", ".prompt.md", ".inputs.json")


def umask_000() -> None:
    os.umask(0)


def specexec(*args: str, cwd: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [PY, "-m", "specexec", *args],
        cwd=cwd,
        env={**os.environ, **SECRETS},
        capture_output=True,
        timeout=180,
        preexec_fn=umask_000,
        check=False,
    )


def test_no_secret_from_the_environment_is_written_anywhere(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every path a run can take: pass, fail, verify failure, a timeout with a retry, a
    # worker that cannot start, a blocked dependent, a worker result file with notes.
    result = '{"status": "pass", "notes": "done", "data": ["x"]}'
    spec = write_spec(
        repo / "specs" / "sec",
        [
            task("ok", files=["a.txt"], command="echo working; echo a > a.txt"),
            task(
                "res",
                files=["r.txt"],
                command=f"echo r > r.txt; echo '{result}' > \"$SPECEXEC_RESULT_FILE\"",
            ),
            task("bad", files=["b.txt"], command="echo failing >&2; exit 3", max_retries=0),
            task(
                "verify", files=["v.txt"], command="echo v > v.txt", verify="false", max_retries=0
            ),
            task("slow", files=["s.txt"], command="sleep 30", timeout_minutes=0.01, max_retries=1),
            task(
                "nostart",
                files=["n.txt"],
                worker={"command": ["specexec-no-such-agent", "{prompt_file}"]},
            ),
            task("after", blocked_by=["bad"], files=["c.txt"], command="echo c > c.txt"),
        ],
    )
    proc = specexec("run", str(spec), "--jobs", "3", cwd=repo)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    outputs = [proc.stdout, proc.stderr]
    for name, value in SECRETS.items():  # the commands below run in this process
        monkeypatch.setenv(name, value)
    for args in (
        ["status", str(spec)],
        ["status", str(spec), "--json"],
        ["report", str(spec)],
        ["report", str(spec), "--format", "json"],
        ["report", str(spec), "--format", "html"],
    ):
        code, out, err = call_main(args)
        assert code in (0, 1), err
        outputs += [out.encode(), err.encode()]

    files = [p for p in spec.rglob("*") if p.is_file() and not p.is_symlink()]
    assert any(p.suffix == ".log" for p in files) and any(p.name == "report.md" for p in files)
    history = git(repo, "log", "--all", "-p").encode()
    for name, value in SECRETS.items():
        needle = value.encode()
        leaks = [str(p) for p in files if needle in p.read_bytes()]
        leaks += [f"output #{i}" for i, out in enumerate(outputs) if needle in out]
        if needle in history:
            leaks.append("git history")
        assert not leaks, f"{name} leaked into {leaks}"

    # Readable by the owner only: the runtime tree is 0700 and every per-task file specexec
    # creates is 0600, although the run had umask 000.
    runtime = spec / ".specexec"
    dirs = [runtime, runtime / "runs", *(runtime / "runs").iterdir()]
    for d in dirs:
        assert stat.S_IMODE(d.stat().st_mode) == 0o700, (d, oct(d.stat().st_mode))
    private = [p for p in files if p.name.endswith(PRIVATE_FILES) or p.name == "events.jsonl"]
    assert len(private) >= 6 * 3  # log, prompt, inputs of each task that started
    for p in private:
        assert stat.S_IMODE(p.stat().st_mode) == 0o600, (p, oct(p.stat().st_mode))
    # tasks.json keeps the mode it had.
    assert stat.S_IMODE((spec / "tasks.json").stat().st_mode) == 0o644
    blockers = {
        t["id"]: t.get("blocker") for t in json.loads((spec / "tasks.json").read_text())["tasks"]
    }
    assert "could not start" in (blockers["nostart"] or "")
