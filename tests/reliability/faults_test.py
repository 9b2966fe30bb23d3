"""Resource faults: a full disk and a worker that cannot be started.

Disk full is real, not simulated: the spec folder is a 256 KiB tmpfs, mounted in a
private mount namespace (``unshare -m``; ``unshare -rm`` maps the user to root in a new
user namespace when the tests do not run as root), so the mount is invisible to the rest
of the system and disappears with the namespace. The first task fills it; every later
write by specexec (events, logs, tasks.json) then gets ENOSPC.
"""

from __future__ import annotations

import json
import os
import shlex
import shutil
import subprocess
from pathlib import Path

import pytest
from conftest import PY, git, read_tasks, run_cli, task, write_spec

pytestmark = pytest.mark.reliability


def namespace_prefix() -> list[str]:
    """The command prefix that gives a private mount namespace where we may mount."""
    unshare = shutil.which("unshare")
    if unshare is None:
        pytest.skip("util-linux unshare is not installed: no way to mount a small filesystem")
    prefix = [unshare, "-m", "--propagation", "private"]
    if os.geteuid() != 0:
        prefix.insert(1, "-r")  # a user namespace where we are root (needs userns enabled)
    probe = subprocess.run([*prefix, "true"], capture_output=True, text=True, check=False)
    if probe.returncode != 0:
        # Without root or unprivileged user namespaces nothing can mount a filesystem, and
        # only a real filesystem gives a real ENOSPC (RLIMIT_FSIZE gives EFBIG).
        pytest.skip(f"cannot create a mount namespace here: {probe.stderr.strip()}")
    return prefix


FILLER = """
import os, sys, time
stop = time.monotonic() + 120  # never outlive the test for long
while not os.path.exists(sys.argv[2]) and time.monotonic() < stop:
    time.sleep(0.005)
f = open(os.path.join(sys.argv[1], "filler"), "ab", buffering=0)
while time.monotonic() < stop:
    try:
        f.write(bytes(4096))
    except OSError:
        time.sleep(0.002)
"""


def fill_command(go: Path) -> str:
    """Have the disk filled and kept full: a page freed later (say, a worker's registry
    record removed) is taken again within milliseconds, so every later write of
    tasks.json fails. The filler must outlive the task, so the test starts it (no process
    of a worker outlives its task); the worker only tells it to begin, through ``go``."""
    return (
        f"touch {shlex.quote(str(go))}; "
        'while [ ! -s "$SPECEXEC_SPEC_DIR/filler" ]; do sleep 0.01; done; sleep 0.2; '
        "echo a > a.txt"
    )


@pytest.mark.slow
def test_disk_full_leaves_tasks_json_intact_and_a_rerun_finishes(
    repo: Path, tmp_path: Path
) -> None:
    seed = write_spec(
        tmp_path / "seed",
        [
            task(
                "fill",
                files=["a.txt"],
                command=fill_command(tmp_path / "go"),
                **{"x-keep": "an unknown field"},
            ),
            task("next", blocked_by=["fill"], files=["b.txt"], command="echo b > b.txt"),
            task("other", files=["c.txt"], command="sleep 0.3; echo c > c.txt"),
        ],
        spec="full",
    )
    spec = repo / "specs" / "full"
    spec.mkdir(parents=True)
    out = tmp_path / "out"
    out.mkdir()
    sx = f"{shlex.quote(PY)} -m specexec"
    q = shlex.quote
    script = f"""
        set -u
        mount -t tmpfs -o size=256k,mode=0755 tmpfs {q(str(spec))} || exit 99
        cp {q(str(seed / "tasks.json"))} {q(str(spec))}/
        cp {q(str(spec / "tasks.json"))} {q(str(out / "before.json"))}
        filler_py={q(FILLER)}
        {q(PY)} -c "$filler_py" {q(str(spec))} {q(str(tmp_path / "go"))} > /dev/null 2>&1 &
        echo $! > {q(str(tmp_path / "filler.pid"))}
        {sx} run {q(str(spec))} --jobs 2 > {q(str(out / "run.out"))} 2> {q(str(out / "run.err"))}
        echo $? > {q(str(out / "run.rc"))}
        cp {q(str(spec / "tasks.json"))} {q(str(out / "after-run.json"))}
        ls -a {q(str(spec))} > {q(str(out / "listing"))}
        {sx} plan {q(str(spec))} --write --jobs 1 > /dev/null 2> {q(str(out / "plan.err"))}
        echo $? > {q(str(out / "plan.rc"))}
        cp {q(str(spec / "tasks.json"))} {q(str(out / "after-plan.json"))}
        filler=$(cat {q(str(tmp_path / "filler.pid"))}); kill "$filler"
        # Until it has exited (a zombie holds no file open), for at most 10 s.
        i=0; while [ $i -lt 1000 ] && [ -d /proc/$filler ] && ! grep -q '^State:[[:space:]]*Z' /proc/$filler/status 2>/dev/null; do sleep 0.01; i=$((i+1)); done
        rm {q(str(spec / "filler"))}
        {sx} run {q(str(spec))} --jobs 2 > {q(str(out / "rerun.out"))} 2> {q(str(out / "rerun.err"))}
        echo $? > {q(str(out / "rerun.rc"))}
        cp {q(str(spec / "tasks.json"))} {q(str(out / "final.json"))}
    """
    proc = subprocess.run(
        [*namespace_prefix(), "sh", "-c", script],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = {p.name: p.read_text() for p in out.iterdir()}
    err = result["run.err"]

    # The run reports the full disk, with the file it could not write, and no traceback.
    assert int(result["run.rc"]) != 0, result["run.out"] + err
    assert "No space left on device (ENOSPC)" in err and "tasks.json" in err, err
    assert "the file was left unchanged" in err
    assert "Traceback" not in err + result["run.out"]
    # tasks.json is the last complete version: it parses, every task and unknown field
    # is there, and no temporary file is left beside it.
    for name in ("after-run.json", "after-plan.json"):
        doc = json.loads(result[name])
        assert [t["id"] for t in doc["tasks"]] == ["fill", "next", "other"]
        assert doc["tasks"][0]["x-keep"] == "an unknown field"
    assert [n for n in result["listing"].split() if n.startswith(".tasks.json")] == []
    # plan --write on the full disk fails the same way and changes nothing.
    assert int(result["plan.rc"]) != 0 and "ENOSPC" in result["plan.err"]
    assert result["after-plan.json"] == result["after-run.json"]

    # With space again, a rerun finishes, and nothing is merged twice.
    assert int(result["rerun.rc"]) == 0, result["rerun.out"] + result["rerun.err"]
    final = {t["id"]: t for t in json.loads(result["final.json"])["tasks"]}
    assert all(t["status"] == "pass" for t in final.values()), final
    subjects = git(repo, "log", "--no-merges", "--format=%s", "specexec/full").splitlines()
    for tid in final:
        assert sum(s.startswith(f"{tid}:") for s in subjects) == 1, subjects
    print(
        f"ENOSPC: run exit {result['run.rc'].strip()}, plan --write exit "
        f"{result['plan.rc'].strip()}, rerun exit 0; first run said: "
        f"{[x for x in err.splitlines() if 'ENOSPC' in x][-1]}"
    )


@pytest.mark.slow
def test_a_worker_that_cannot_start_fails_its_task_not_the_run(repo: Path) -> None:
    spec = write_spec(
        repo / "specs" / "nostart",
        [
            task("ok", files=["ok.txt"], command="echo ok > ok.txt"),
            task(
                "argv",
                files=["a.txt"],
                worker={"command": ["specexec-no-such-agent", "{prompt_file}"]},
            ),
            task("preset", files=["p.txt"], worker="claude"),
            task("notexec", files=["n.txt"], worker={"command": ["./README.md"]}),
            task("after", blocked_by=["argv"], files=["b.txt"], command="echo b > b.txt"),
            task("shell", files=["s.txt"], command="specexec-no-such-command --flag"),
        ],
    )
    # A PATH with python and the basic tools but no agent CLI (the daemon under systemd).
    env = {"PATH": f"{os.path.dirname(PY)}:/usr/bin:/bin"}
    proc = run_cli("run", str(spec), "--jobs", "2", env=env)
    assert proc.returncode == 1, proc.stdout + proc.stderr  # tasks failed; the run did not
    assert "Traceback" not in proc.stdout + proc.stderr
    tasks = read_tasks(spec)
    assert tasks["ok"]["status"] == "pass"
    for tid, program in (("argv", "specexec-no-such-agent"), ("preset", "claude")):
        t = tasks[tid]
        assert t["status"] == "fail", t
        assert "worker could not start" in t["blocker"] and program in t["blocker"], t["blocker"]
        assert "command not found" in t["blocker"], t["blocker"]
        assert t["attempts"] == 1, "a worker that cannot start is not retried"
    assert tasks["notexec"]["status"] == "fail"
    assert "permission denied" in tasks["notexec"]["blocker"], tasks["notexec"]["blocker"]
    assert tasks["after"]["status"] == "blocked" and "argv" in tasks["after"]["blocker"]
    # sh itself starts; the missing program is its exit status 127.
    assert tasks["shell"]["status"] == "fail" and "127" in tasks["shell"]["blocker"], tasks["shell"]
    assert "could not start" in proc.stdout  # shown in the run's output too
