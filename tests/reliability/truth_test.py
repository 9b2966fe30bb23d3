"""Issue 15: specexec's own facts, not a worker's or a file's word.

Cases 7, 8, 11, 12 and 13 of the issue, and one more way to break each of their rules
(RELIABILITY.md): spec identity is one folder per spec name; bookkeeping stays within
the limits it enforces; text from workers and files is made safe for a terminal;
`validate` runs every check `run` runs, and an exit 2 leaves no trace. Real repositories,
real `specexec` processes.
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import (
    PY,
    git,
    init_repo,
    read_tasks,
    run_cli,
    skip_unless_nobody_can_run_specexec,
    task,
    wait_for,
    write_spec,
)

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

# What a terminal acts on or hides: ESC (escape sequences), BEL, and U+202E (which shows
# "evil\u202etxt.exe" as "evilexe.txt").
UNSAFE = ("\x1b", "\x07", "\u202e", "\x9b")
EVIL = "evil\x1b[2J\x07\u202etxt.exe"


def _no_trace(spec: Path) -> None:
    assert not (spec / ".specexec").exists(), sorted(os.listdir(spec / ".specexec"))


# --- case 7: two folders, one spec name --------------------------------------------------


def _start_run(spec: Path, repo: Path) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [PY, "-m", "specexec", "run", str(spec)],
        cwd=repo,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


def _running(spec: Path) -> bool:
    lock = spec / ".specexec" / "run.lock"
    return lock.is_file() and lock.stat().st_size > 0


@pytest.mark.parametrize("named", [False, True], ids=["folder-name", "spec-field"])
def test_two_folders_of_one_spec_name_are_refused_naming_both(tmp_path: Path, named: bool) -> None:
    """Case 7: ``specs/auth`` and ``legacy/auth`` (no ``spec`` field) run by two
    processes. The second is refused (exit 2) naming both folders, writes nothing, and
    only the first one's tasks land on ``specexec/auth``. Another way to the same name
    (``spec-field``): a folder of another name whose ``spec`` says ``auth``."""
    repo = init_repo(tmp_path / "repo")
    first = write_spec(
        repo / "specs" / "auth",
        [task("T1", files=["a.txt"], command="sleep 4; echo a > a.txt")],
        spec=None,
    )
    other = repo / "legacy" / ("other" if named else "auth")
    second = write_spec(
        other,
        [task("T1", files=["b.txt"], command="echo b > b.txt")],
        spec="auth" if named else None,
    )
    for d in (first, second):  # no `spec` field: the name is the folder's (or "auth")
        doc = json.loads((d / "tasks.json").read_text())
        if doc.get("spec") is None:
            doc.pop("spec", None)
        (d / "tasks.json").write_text(json.dumps(doc, indent=2) + "\n")
    before = (second / "tasks.json").read_bytes()
    proc = _start_run(first, repo)
    try:
        wait_for(lambda: _running(first) or proc.poll() is not None, 30, "the first run")
        res = run_cli("run", str(second), cwd=repo)
        assert res.returncode == 2, res.stdout + res.stderr
        assert str(first) in res.stderr and str(second) in res.stderr, res.stderr
        assert "Traceback" not in res.stderr
        assert (second / "tasks.json").read_bytes() == before
        _no_trace(second)
    finally:
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out + err
    assert read_tasks(first)["T1"]["status"] == "pass"
    assert git(repo, "show", "specexec/auth:a.txt") == "a"
    assert git(repo, "ls-tree", "--name-only", "specexec/auth").split() == ["README.md", "a.txt"]
    # Once the first run ended, the name is free again: the claim outlives nothing.
    res = run_cli("run", str(second), cwd=repo)
    assert res.returncode == 0, res.stdout + res.stderr


def test_the_same_folder_by_another_path_is_busy_not_a_name_clash(tmp_path: Path) -> None:
    """The claim names a folder by its real path: the same folder through a symlink is the
    same run (busy, 75), never "two folders of one name"."""
    repo = init_repo(tmp_path / "repo")
    spec = write_spec(
        repo / "specs" / "auth", [task("T1", files=["a.txt"], command="sleep 4; echo a > a.txt")]
    )
    (repo / "alias").symlink_to(repo / "specs")
    proc = _start_run(spec, repo)
    try:
        wait_for(lambda: _running(spec) or proc.poll() is not None, 30, "the first run")
        res = run_cli("run", str(repo / "alias" / "auth"), cwd=repo)
        assert res.returncode == 75, res.stdout + res.stderr
    finally:
        out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, out + err


# --- case 8: bookkeeping within the limits it enforces --------------------------------------

MAX = 8 * 1024 * 1024


def _padded_spec(spec: Path, tasks: list[dict[str, Any]], size: int) -> None:
    """tasks.json of about ``size`` bytes: the tasks and an unknown top-level field
    (kept by every write) that fills the file."""
    write_spec(spec, tasks)
    doc = json.loads((spec / "tasks.json").read_text())
    base = len((spec / "tasks.json").read_bytes())
    doc["padding"] = "p" * (size - base - 20)
    (spec / "tasks.json").write_text(json.dumps(doc, indent=2) + "\n")


def _result_writer(data_bytes: int = 0, blocker_bytes: int = 0, status: str = "pass") -> str:
    """A shell command writing a result file of that size to $SPECEXEC_RESULT_FILE."""
    script = (
        "import json, os\n"
        f"doc = {{'status': {status!r}}}\n"
        f"if {data_bytes}: doc['data'] = ['x' * 1000 for _ in range({data_bytes} // 1000)]\n"
        f"if {blocker_bytes}: doc['blocker'] = 'b' * {blocker_bytes}\n"
        "json.dump(doc, open(os.environ['SPECEXEC_RESULT_FILE'], 'w'))\n"
        "open('r.txt', 'w').write('done\\n')\n"
    )
    return f"{shlex.quote(PY)} -c {shlex.quote(script)}"


def test_a_result_of_a_few_mib_is_kept_in_the_run_folder(tmp_path: Path) -> None:
    """Case 8: a worker's result of 3 MiB in a tasks.json of 6.5 MB. Before: the task ran,
    then "refusing to write" and exit 2, the work recorded nowhere. Now: the task
    passes, tasks.json stays under its limit with a bounded summary pointing to the run
    folder, and the next run hands the whole result to a dependent task."""
    repo = init_repo(tmp_path / "repo")
    spec = repo / "specs" / "big"
    _padded_spec(
        spec,
        [
            task("T1", files=["r.txt"], command=_result_writer(data_bytes=3 * 1024 * 1024)),
            task("T2", files=["s.txt"], blocked_by=["T1"], command="cat $SPECEXEC_INPUTS_FILE"),
        ],
        6_500_000,
    )
    # T2 waits for a second run (its status says so), to read T1's result from disk.
    doc = json.loads((spec / "tasks.json").read_text())
    doc["tasks"][1]["status"] = "blocked"
    (spec / "tasks.json").write_text(json.dumps(doc, indent=2) + "\n")
    res = run_cli("run", str(spec), cwd=repo, timeout=180)
    assert res.returncode in (0, 1), res.stdout + res.stderr
    assert "refusing to write" not in res.stderr and "unchanged" not in res.stderr, res.stderr
    assert (spec / "tasks.json").stat().st_size <= MAX
    t1 = read_tasks(spec)["T1"]
    assert t1["status"] == "pass", t1
    result = t1["result"]
    assert result["status"] == "pass" and result["truncated"] is True, result
    assert result["data"] == {"truncated": True, "file": result["file"]}
    record = json.loads((spec / result["file"]).read_text())
    assert len(record["result"]["data"]) == 3 * 1024 * 1024 // 1000
    # The next run: T2 gets all of T1's data through its inputs file.
    res = run_cli("run", str(spec), "--retry-failed", cwd=repo, timeout=180)
    assert res.returncode == 0, res.stdout + res.stderr
    inputs = sorted((spec / ".specexec" / "runs").glob("*/T2.inputs.json"))
    blockers = json.loads(inputs[-1].read_text())["blockers"]
    assert len(blockers[0]["data"]) == 3 * 1024 * 1024 // 1000
    assert (spec / "tasks.json").stat().st_size <= MAX


def test_a_blocker_of_mib_is_clipped_not_a_lost_run(tmp_path: Path) -> None:
    """Another way to overflow: a failing worker whose blocker is 4 MB, in a tasks.json of
    5 MB. The failure is recorded (fail, the blocker clipped, the whole in the run
    folder); the run's exit is the task's (1), never "nothing was changed"."""
    repo = init_repo(tmp_path / "repo")
    spec = repo / "specs" / "loud"
    cmd = _result_writer(blocker_bytes=4_000_000, status="fail")
    _padded_spec(spec, [task("T1", files=["r.txt"], command=cmd, max_retries=0)], 5_000_000)
    res = run_cli("run", str(spec), cwd=repo, timeout=180)
    assert res.returncode == 1, res.stdout + res.stderr
    assert (spec / "tasks.json").stat().st_size <= MAX
    t1 = read_tasks(spec)["T1"]
    assert t1["status"] == "fail" and len(t1["blocker"]) <= 1000, len(t1["blocker"])
    assert t1["result"]["truncated"] is True
    record = json.loads((spec / t1["result"]["file"]).read_text())
    assert len(record["blocker"]) == 4_000_000
    # The summary line is cut too.
    assert max(len(line) for line in res.stdout.splitlines()) < 2000


def test_a_spec_that_could_not_be_recorded_is_refused_before_anything_runs(
    tmp_path: Path,
) -> None:
    """Case 8: 3,000 tasks in 7.9 MB: recording them would pass the 8 MiB limit.
    Before: every task ran, then exit 2 and the next run ran them all again. Now:
    refused at once (exit 2, the sizes named), nothing run, nothing written; and
    `validate` says the same."""
    repo = init_repo(tmp_path / "repo")
    spec = repo / "specs" / "huge"
    marker = tmp_path / "ran"
    tasks = [
        task(f"T{i}", files=[f"f{i}.txt"], command=f"touch {marker}", summary="s" * 2400)
        for i in range(3000)
    ]
    write_spec(spec, tasks)
    size = (spec / "tasks.json").stat().st_size
    assert 7_000_000 < size < MAX
    before = (spec / "tasks.json").read_bytes()
    res = run_cli("run", str(spec), cwd=repo, timeout=240)
    assert res.returncode == 2, res.stdout[-2000:] + res.stderr[-2000:]
    assert "no room to record this run" in res.stderr, res.stderr
    assert f"({size:,} bytes)" in res.stderr and "(8,388,608 bytes)" in res.stderr
    assert not marker.exists()
    assert (spec / "tasks.json").read_bytes() == before
    _no_trace(spec)
    res = run_cli("validate", str(spec), cwd=repo, timeout=240)
    assert res.returncode == 2 and "no room to record this run" in res.stderr, res.stderr


def test_a_file_just_over_the_limit_gets_its_precise_size(tmp_path: Path) -> None:
    """Case 13's message: an 8.4 MB file is not "8 MiB, larger than the 8 MiB limit"."""
    spec = tmp_path / "s"
    spec.mkdir()
    (spec / "tasks.json").write_bytes(b'{"tasks": []}' + b" " * (8_390_683 - 13))
    res = run_cli("validate", str(spec))
    assert res.returncode == 2
    assert "8.4 MB (8,390,683 bytes), larger than the 8 MiB (8,388,608 bytes) limit" in (
        res.stderr
    ), res.stderr


# --- case 11: text from workers and files made safe for the terminal ------------------------


def _unsafe_in(text: str) -> list[str]:
    return [c for c in UNSAFE if c in text]


def test_worker_text_never_reaches_the_terminal_raw(tmp_path: Path) -> None:
    """Case 11: a worker makes a file whose name carries ESC, BEL and U+202E outside its
    relevant_files, another fails with such a blocker (and one of 100,000 characters).
    `run` (progress and summary), `status`, `report` (md, html), `plan` and `validate`
    print none of them raw, and cut long lines."""
    repo = init_repo(tmp_path / "repo")
    spec = repo / "specs" / "evil"
    name_cmd = f"{PY} -c \"open({EVIL!r}, 'w').write('x')\""
    blocker = "red\x1b[31m bell\x07 \u202eflip\x9b " + "z" * 100_000
    fail_cmd = (
        f"{PY} -c \"import json, os; json.dump({{'status': 'fail', 'blocker': {blocker!r}}}, "
        "open(os.environ['SPECEXEC_RESULT_FILE'], 'w'))\""
    )
    write_spec(
        spec,
        [
            task("T1", files=["a.txt"], command=name_cmd, summary="make \x1b]0;title\x07 names"),
            task("T2", files=["b.txt"], command=fail_cmd, max_retries=0),
        ],
    )
    outputs: dict[str, str] = {}
    res = run_cli("run", str(spec), cwd=repo)
    assert res.returncode == 1, res.stdout + res.stderr
    outputs["run"] = res.stdout + res.stderr
    assert "outside relevant_files" in res.stdout, res.stdout
    assert "\\x1b" in res.stdout and "\\u202e" in res.stdout  # shown escaped, recognisable
    for argv in (
        ["status", str(spec)],
        ["report", str(spec)],
        ["report", str(spec), "--format", "html"],
        ["plan", str(spec)],
        ["plan", str(spec), "--format", "mermaid"],
        ["validate", str(spec)],
    ):
        res = run_cli(*argv, cwd=repo)
        assert res.returncode in (0, 2), res.stdout + res.stderr
        outputs[" ".join(argv[:1] + argv[2:])] = res.stdout + res.stderr
    for what, text in outputs.items():
        assert not _unsafe_in(text), (what, _unsafe_in(text))
        longest = max((len(line) for line in text.splitlines()), default=0)
        assert longest <= 4100, (what, longest)
    # The records themselves keep the worker's text as it was (only terminals need it safe).
    assert read_tasks(spec)["T2"]["blocker"].startswith("red\x1b[31m")


def test_a_spec_folder_name_with_escapes_is_shown_safely(tmp_path: Path) -> None:
    """Another way in: the folder's own name (a clone or a dropped folder names it)
    reaches `validate`, `status` and the errors of `run`."""
    repo = init_repo(tmp_path / "repo")
    spec = write_spec(
        repo / "specs" / "x\x1b[2Jy\u202e",
        [task("T1", files=["a.txt"], command="echo", worker={"command": "{nope}"})],
        spec="x",
    )
    for argv in (["validate", str(spec)], ["status", str(spec)], ["run", str(spec)]):
        res = run_cli(*argv, cwd=repo)
        assert res.returncode in (0, 2), res.stdout + res.stderr
        assert not _unsafe_in(res.stdout + res.stderr), (argv[0], res.stdout + res.stderr)
        assert "\\x1b" in res.stdout + res.stderr


def test_watch_logs_are_safe(tmp_path: Path) -> None:
    """`watch`'s log lines: the blocker of a task run by the daemon, and a refused folder."""
    repo = init_repo(tmp_path / "repo")
    inbox = repo / "inbox"
    fail_cmd = (
        f"{PY} -c \"import json, os; json.dump({{'status': 'fail', 'blocker': 'b\\x1b[31m\\u202e'}}, "
        "open(os.environ['SPECEXEC_RESULT_FILE'], 'w'))\""
    )
    write_spec(inbox / "s", [task("T1", files=["a.txt"], command=fail_cmd, max_retries=0)])
    write_spec(
        inbox / "bad\x1b[2J",
        [task("T1", files=["a.txt"], worker={"command": "{nope}"})],
        spec="bad",
    )
    proc = subprocess.Popen(
        [PY, "-m", "specexec", "watch", str(inbox), "--allow-commands", "--polling"],
        cwd=repo,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        wait_for(
            lambda: read_tasks(inbox / "s")["T1"]["status"] == "fail" or proc.poll() is not None,
            60,
            "the daemon's run",
        )
        time.sleep(1.0)
    finally:
        proc.terminate()
        out, err = proc.communicate(timeout=60)
    assert "refused" in err and "fail" in err, err
    assert not _unsafe_in(out + err), _unsafe_in(out + err)


# --- case 12: validate runs every check run runs ------------------------------------------


def _both(spec: Path, repo: Path) -> tuple[subprocess.CompletedProcess[str], ...]:
    return run_cli("validate", str(spec), cwd=repo), run_cli("run", str(spec), cwd=repo)


@pytest.mark.parametrize(
    ("top", "extra", "needle"),
    [
        ({"worker": {"command": ""}}, {}, "the command is empty"),
        ({"worker": {"command": "echo {nope}"}}, {}, "unknown placeholder {nope}"),
        ({"base_ref": "no-such-ref"}, {}, "'no-such-ref' does not name a commit"),
        ({}, {"worker": {"command": []}}, "empty"),
    ],
    ids=["empty-command", "unknown-placeholder", "bad-base-ref", "empty-argv"],
)
def test_validate_refuses_what_run_refuses(
    tmp_path: Path, top: dict[str, Any], extra: dict[str, Any], needle: str
) -> None:
    """Case 12: `validate` said ok where `run` refused with exit 2."""
    repo = init_repo(tmp_path / "repo")
    cmd = None if "worker" in top or "worker" in extra else "echo a > a.txt"
    spec = write_spec(
        repo / "specs" / "v", [task("T1", files=["a.txt"], command=cmd, **extra)], **top
    )
    val, run = _both(spec, repo)
    assert val.returncode == 2 and needle in val.stderr, val.stdout + val.stderr
    assert run.returncode == 2 and needle in run.stderr, run.stdout + run.stderr
    _no_trace(spec)


def test_validate_refuses_a_worker_from_pyproject_that_run_refuses(tmp_path: Path) -> None:
    """Another way: the worker comes from ``[tool.specexec]`` of the repository."""
    repo = init_repo(
        tmp_path / "repo", {"pyproject.toml": '[tool.specexec]\nworker = {command = "x {bad}"}\n'}
    )
    spec = write_spec(repo / "specs" / "v", [task("T1", files=["a.txt"])])
    val, run = _both(spec, repo)
    assert val.returncode == 2 and "unknown placeholder {bad}" in val.stderr, val.stderr
    assert run.returncode == 2 and "unknown placeholder {bad}" in run.stderr, run.stderr


def test_validate_reports_every_problem_and_no_false_follow_on(tmp_path: Path) -> None:
    """Case 12: a cycle next to a duplicate id is reported; a task with an invalid
    status is no "unknown task" to the task it blocks."""
    repo = init_repo(tmp_path / "repo")
    spec = write_spec(
        repo / "specs" / "g",
        [
            task("T1", files=["1"], blocked_by=["T2"], command="true"),
            task("T2", files=["2"], blocked_by=["T1"], command="true"),
            task("T3", files=["3"], command="true"),
            task("T3", files=["3b"], command="true"),
            task("T4", files=["4"], command="true", status="weird"),
            task("T5", files=["5"], blocked_by=["T4", "T9"], command="true"),
        ],
    )
    res = run_cli("validate", str(spec), cwd=repo)
    assert res.returncode == 2
    err = res.stderr
    assert "cycle: T1 -> T2 -> T1" in err or "cycle: T2 -> T1 -> T2" in err, err
    assert 'duplicate id "T3"' in err, err
    assert "field status" in err, err
    assert 'unknown task "T4"' not in err, err
    assert 'unknown task "T9"' in err, err  # a real unknown blocker still is one


# --- case 13: an exit 2 leaves no trace -----------------------------------------------------


def test_a_repository_without_commits_leaves_no_trace(tmp_path: Path) -> None:
    """Case 13: before, `.specexec/` with a `run_started` event that never ends."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    spec = write_spec(repo / "specs" / "e", [task("T1", files=["a.txt"], command="true")])
    res = run_cli("run", str(spec), cwd=repo)
    assert res.returncode == 2 and "repository has no commits" in res.stderr, res.stderr
    _no_trace(spec)
    assert not (repo / ".git" / "specexec").exists()


def test_a_bad_base_ref_leaves_no_trace(tmp_path: Path) -> None:
    repo = init_repo(tmp_path / "repo")
    spec = write_spec(
        repo / "specs" / "b", [task("T1", files=["a.txt"], command="true")], base_ref="nope"
    )
    res = run_cli("run", str(spec), cwd=repo)
    assert res.returncode == 2 and "does not name a commit" in res.stderr, res.stderr
    _no_trace(spec)
    assert git(repo, "branch", "--list", "specexec/*") == ""


def test_one_refused_folder_of_several_leaves_no_trace_in_any(tmp_path: Path) -> None:
    """Another way: the second of two folders is refused; the first, fine on its own, is
    not touched either (every folder is checked before any lock or write)."""
    repo = init_repo(tmp_path / "repo")
    good = write_spec(repo / "specs" / "good", [task("T1", files=["a.txt"], command="true")])
    bad = write_spec(
        repo / "specs" / "bad", [task("T1", files=["b.txt"], command="true")], base_ref="nope"
    )
    res = run_cli("run", str(good), str(bad), cwd=repo)
    assert res.returncode == 2, res.stdout + res.stderr
    _no_trace(good)
    _no_trace(bad)
    assert git(repo, "branch", "--list", "specexec/*") == ""


if sys.platform != "linux":  # pragma: no cover
    pytestmark.append(pytest.mark.skip(reason="Linux process and file semantics"))


# --- case 9: no process of a worker outlives its task -------------------------------------


def _c9_read(path: Path) -> int | None:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        return None
    return int(text) if text else None


def _c9_alive(pid: int) -> bool:
    import psutil

    try:
        return bool(psutil.Process(pid).status() != psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return False


def _c9_kill(*pids: int | None) -> None:
    import contextlib
    import signal

    for pid in pids:
        if pid is not None:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def _c9_escape(how: str, out: Path) -> str:
    """A shell line that sends a ``sleep 300`` out of the worker's process group; the
    escaped process itself writes its pid to ``out`` once it has left, and the worker
    waits for that (so it never ends before the escape is complete)."""
    report = f"echo $$ > {out}.tmp; mv {out}.tmp {out}; exec sleep 300"
    start = {
        "setsid": f"setsid sh -c {shlex.quote(report)} &",
        # fork, setsid, fork again, the middle one exits: how daemons detach
        "double-fork": "setsid sh -c "
        + shlex.quote(f"sh -c {shlex.quote(report)} & exit 0")
        + " &",
        "nohup": f"nohup setsid sh -c {shlex.quote(report)} >/dev/null 2>&1 &",
        # not in the issue: an escape that also clears its environment
        "env-cleared": "env -i $(command -v setsid) $(command -v sh) -c "
        + shlex.quote(report.replace("exec sleep", "exec $(command -v sleep)"))
        + " &",
    }[how]
    return f"{start} while [ ! -s {out} ]; do :; done"


@pytest.mark.parametrize("how", ["setsid", "double-fork", "nohup", "env-cleared"])
def test_a_workers_escaped_process_is_gone_when_run_returns(tmp_path: Path, how: str) -> None:
    """Case 9: ``setsid sleep 300 &`` (and a double fork, nohup in its own session, and
    one that clears its environment too) in a worker that passes. Before: the process
    was alive after the run. Now: it is gone when `specexec run` returns."""
    repo = init_repo(tmp_path / "repo")
    pid_file = tmp_path / "escaped"
    cmd = f"{_c9_escape(how, pid_file)}; echo x > a.txt"
    spec = write_spec(repo / "specs" / "s", [task("T1", files=["a.txt"], command=cmd)])
    try:
        res = run_cli("run", str(spec), cwd=repo)
        assert res.returncode == 0, res.stdout + res.stderr
        pid = _c9_read(pid_file)
        assert pid is not None
        assert not _c9_alive(pid), f"{how}: pid {pid} outlived its task"
    finally:
        _c9_kill(_c9_read(pid_file))


def test_a_timed_out_workers_setsid_child_is_gone_when_run_returns(tmp_path: Path) -> None:
    """Case 9 by timeout: the worker is killed by --timeout; its setsid child too."""
    repo = init_repo(tmp_path / "repo")
    pid_file = tmp_path / "escaped"
    cmd = f"{_c9_escape('setsid', pid_file)}; sleep 300"
    spec = write_spec(repo / "specs" / "s", [task("T1", files=["a.txt"], command=cmd)])
    try:
        res = run_cli("run", str(spec), "--timeout", "0.03", "--retries", "0", cwd=repo)
        assert res.returncode == 1, res.stdout + res.stderr
        assert "timed out" in (read_tasks(spec)["T1"].get("blocker") or ""), read_tasks(spec)
        pid = _c9_read(pid_file)
        assert pid is not None and not _c9_alive(pid)
    finally:
        _c9_kill(_c9_read(pid_file))


def test_a_setsid_child_dies_on_ctrl_c_and_unrelated_processes_live(tmp_path: Path) -> None:
    """Another way: the run is interrupted (a real SIGINT) while the worker runs; its
    setsid child is gone when `specexec run` exits. An unrelated ``sleep 300`` in a
    session of its own, started before, is untouched."""
    import signal

    repo = init_repo(tmp_path / "repo")
    pid_file = tmp_path / "escaped"
    cmd = f"{_c9_escape('setsid', pid_file)}; sleep 300"
    spec = write_spec(repo / "specs" / "s", [task("T1", files=["a.txt"], command=cmd)])
    unrelated = subprocess.Popen(["sleep", "300"], start_new_session=True)
    proc = _start_run(spec, repo)
    try:
        wait_for(lambda: _c9_read(pid_file), 60, "the worker's escaped process")
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=60)
        assert proc.returncode == 130
        pid = _c9_read(pid_file)
        assert pid is not None and not _c9_alive(pid)
        assert unrelated.poll() is None, "an unrelated process was stopped"
    finally:
        proc.kill()
        proc.communicate()
        unrelated.kill()
        unrelated.wait()
        _c9_kill(_c9_read(pid_file))


def test_another_running_tasks_process_is_untouched_until_its_own_end(tmp_path: Path) -> None:
    """Another way: two tasks at once, each with a setsid child. T1's dies at T1's end
    while T2 still runs; T2's lives on until T2 ends (T2 checks it itself, after seeing
    T1's gone), then it is gone too."""
    repo = init_repo(tmp_path / "repo")
    p1, p2, state = tmp_path / "p1", tmp_path / "p2", tmp_path / "t2state"
    t1 = f"{_c9_escape('setsid', p1)}; echo x > a.txt"
    t2 = (
        f"{_c9_escape('setsid', p2)}; while [ ! -s {p1} ]; do sleep 0.01; done;"
        f" n=0; while kill -0 $(cat {p1}) 2>/dev/null && [ $n -lt 6000 ]; do"
        " sleep 0.01; n=$((n+1)); done;"
        f" if kill -0 $(cat {p2}); then echo alive > {state}; else echo dead > {state}; fi;"
        " echo y > b.txt"
    )
    spec = write_spec(
        repo / "specs" / "s",
        [task("T1", files=["a.txt"], command=t1), task("T2", files=["b.txt"], command=t2)],
    )
    try:
        res = run_cli("run", str(spec), "--jobs", "2", cwd=repo)
        assert res.returncode == 0, res.stdout + res.stderr
        assert state.read_text().strip() == "alive", "T2's process was stopped at T1's end"
        for f in (p1, p2):
            pid = _c9_read(f)
            assert pid is not None and not _c9_alive(pid)
    finally:
        _c9_kill(_c9_read(p1), _c9_read(p2))


# --- case 10: prompt rendering is bounded ------------------------------------------------

C10_LOOPS = (
    "{% for a in range(3000) %}{% for b in range(3000) %}{% for c in range(300) %}"
    "{% endfor %}{% endfor %}{% endfor %}"
)


def _c10_specs(repo: Path, template: str) -> tuple[Path, Path]:
    bad = write_spec(
        repo / "specs" / "bad", [task("T1", files=["a.txt"], command="echo x > a.txt")]
    )
    (bad / "worker_prompt.md.j2").write_text(template)
    good = write_spec(
        repo / "specs" / "good", [task("T1", files=["b.txt"], command="echo y > b.txt")]
    )
    return bad, good


def test_a_template_of_nested_loops_fails_its_task_within_the_budget(tmp_path: Path) -> None:
    """Case 10: a worker_prompt.md.j2 with 3000x3000x300 loops. Before: `run` was busy for
    minutes. Now: that task fails within seconds with a blocker naming the template and
    the budget; the other folder of the same run passes."""
    repo = init_repo(tmp_path / "repo")
    bad, good = _c10_specs(repo, C10_LOOPS)
    # The loops alone would keep the run busy for minutes, past run_cli's timeout: the
    # run ends only because the rendering was stopped by its time budget.
    res = run_cli("run", str(bad), str(good), "--retries", "0", cwd=repo, timeout=100)
    assert res.returncode == 1, res.stdout + res.stderr
    blocker = read_tasks(bad)["T1"].get("blocker") or ""
    assert read_tasks(bad)["T1"]["status"] == "fail"
    assert "worker_prompt.md.j2" in blocker and "rendering budget of 5 s" in blocker, blocker
    assert read_tasks(good)["T1"]["status"] == "pass"


@pytest.mark.parametrize(
    "template",
    [
        '{% for a in range(100000) %}{{ "x" * 100 }}{% endfor %}',
        '{% set ns = namespace(s="x") %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}'
        "{% endfor %}",
        '{{ "x"|center(1000000000) }}',
    ],
    ids=["10-MiB-prompt", "doubled-string", "huge-width"],
)
def test_a_template_building_too_much_fails_its_task_quickly(tmp_path: Path, template: str) -> None:
    """Another way: a prompt of 10 Mi characters, a string doubled 64 times without any
    output, a width of 10**9: refused by the size budget before memory runs out."""
    repo = init_repo(tmp_path / "repo")
    bad, good = _c10_specs(repo, template)
    res = run_cli("run", str(bad), str(good), "--retries", "0", cwd=repo, timeout=100)
    assert res.returncode == 1, res.stdout + res.stderr
    blocker = read_tasks(bad)["T1"].get("blocker") or ""
    assert "worker_prompt.md.j2" in blocker and "budget" in blocker, blocker
    assert read_tasks(good)["T1"]["status"] == "pass"


@pytest.mark.parametrize("sig", ["SIGINT", "SIGTERM"])
def test_ctrl_c_during_rendering_stops_the_run_promptly(tmp_path: Path, sig: str) -> None:
    """Case 10, Ctrl-C: a real SIGINT to a real `specexec run` while it renders the
    nested loops. Before: busy for minutes. Now: it exits (130) promptly and the task is
    pending again: stopped by the interrupt, not failed by the time budget. Another way:
    SIGTERM, the same."""
    import signal

    repo = init_repo(tmp_path / "repo")
    bad, _ = _c10_specs(repo, C10_LOOPS)
    proc = _start_run(bad, repo)
    try:
        assert proc.stdout is not None
        for line in proc.stdout:
            if "start" in line and "bad/T1" in line:
                break
        proc.send_signal(getattr(signal, sig))
        out, err = proc.communicate(timeout=60)  # (a safety net: the loops take minutes)
        assert proc.returncode == 130, out + err
        # Stopped by the interrupt, as it rendered: not run on until the time budget
        # (5 s) failed the task.
        t1 = read_tasks(bad)["T1"]
        assert t1["status"] == "pending" and "blocker" not in t1, t1
        assert "budget" not in out + err, out + err
    finally:
        proc.kill()
        proc.communicate()


# --- cases 2-6: what lands is specexec's snapshot; only specexec moves the branch; --------
# --- ownership is the runner's hold, never a file a worker can reach ----------------------


def _history_repo(tmp_path: Path) -> Path:
    """main: `one` adds bad.txt, `two` deletes it, so a worker's `git reset --hard HEAD~1`
    brings it back: its files then differ from the base by bad.txt alone, while its HEAD
    is an ancestor of the integration branch."""
    repo = init_repo(tmp_path / "r", {"README.md": "hello\n", "bad.txt": "bad\n"})
    git(repo, "rm", "-q", "bad.txt")
    git(repo, "commit", "-qm", "two")
    return repo


def _spec(repo: Path, tasks: list[dict[str, Any]], name: str = "s") -> Path:
    return write_spec(repo / "specs" / name, tasks, spec=name)


def _tree(repo: Path, rev: str) -> list[str]:
    return git(repo, "ls-tree", "-r", "--name-only", rev).splitlines()


RESET = "git reset -q --hard HEAD~1"


def test_a_worker_that_resets_its_head_lands_its_files(tmp_path: Path) -> None:
    """Case 2: the task's change is specexec's snapshot of the files, never the worker's HEAD."""
    repo = _history_repo(tmp_path)
    spec = _spec(repo, [task("T1", files=["bad.txt"], command=RESET)])
    done = run_cli("run", str(spec), "--jobs", "1", cwd=repo)
    assert done.returncode == 0, done.stdout + done.stderr
    t1 = read_tasks(spec)["T1"]
    assert t1["status"] == "pass" and t1["files_changed"] == ["bad.txt"]
    assert "bad.txt" in _tree(repo, "specexec/s")  # what it reported is what landed
    assert git(repo, "show", "specexec/s:bad.txt") == "bad"


# Other ways a worker moves its HEAD or hides a file; each must land exactly its files.
HOSTILE_GIT = {
    "amends the base commit": "echo amended > a.txt && git add a.txt && git commit -q --amend -m x",
    "commits on another branch": (
        "git checkout -q -b elsewhere HEAD~1 && echo other > a.txt && git add a.txt"
        " && git commit -qm other"
    ),
    "deletes its task branch": (
        'echo deleted > a.txt && git checkout -q --detach && git branch -q -D "$(git for-each-ref'
        " --format='%(refname:short)' 'refs/heads/specexec/s@*')\""
    ),
    "hides an edit with assume-unchanged": (
        "echo hidden > a.txt && git update-index --assume-unchanged README.md"
        " && echo hidden-edit > README.md"
    ),
}


@pytest.mark.parametrize("how", sorted(HOSTILE_GIT))
def test_what_lands_is_the_files_whatever_the_worker_does_to_git(tmp_path: Path, how: str) -> None:
    repo = _history_repo(tmp_path)
    ident = "GIT_AUTHOR_NAME=w GIT_AUTHOR_EMAIL=w@x GIT_COMMITTER_NAME=w GIT_COMMITTER_EMAIL=w@x"
    spec = _spec(repo, [task("T1", files=["**"], command=f"export {ident}; {HOSTILE_GIT[how]}")])
    done = run_cli("run", str(spec), "--jobs", "1", cwd=repo)
    assert done.returncode == 0, done.stdout + done.stderr
    tip = "specexec/s"
    # Exactly the worktree's files on top of the base, as one snapshot commit.
    want = {
        "amends the base commit": ({"README.md", "a.txt"}, {"a.txt": "amended"}),
        "commits on another branch": ({"README.md", "a.txt", "bad.txt"}, {"a.txt": "other"}),
        "deletes its task branch": ({"README.md", "a.txt"}, {"a.txt": "deleted"}),
        "hides an edit with assume-unchanged": (
            {"README.md", "a.txt"},
            {"a.txt": "hidden", "README.md": "hidden-edit"},
        ),
    }[how]
    assert set(_tree(repo, tip)) == want[0]
    for path, text in want[1].items():
        assert git(repo, "show", f"{tip}:{path}") == text
    assert read_tasks(spec)["T1"]["status"] == "pass"


def test_a_failed_worker_that_reset_its_head_is_not_passed_by_recovery(tmp_path: Path) -> None:
    """Case 3: "already merged" means the task's own snapshot is reachable, not that the
    branch the worker moved is an ancestor of the integration branch."""
    repo = _history_repo(tmp_path)
    spec = _spec(repo, [task("T1", files=["bad.txt"], command=f"{RESET}; exit 1")])
    first = run_cli("run", str(spec), "--jobs", "1", cwd=repo)
    assert first.returncode != 0 and read_tasks(spec)["T1"]["status"] == "fail"
    tip = git(repo, "rev-parse", "specexec/s")
    again = run_cli("run", str(spec), "--retry-failed", "--jobs", "1", cwd=repo)
    assert "already merged" not in again.stderr + again.stdout
    assert again.returncode != 0 and read_tasks(spec)["T1"]["status"] == "fail"
    assert read_tasks(spec)["T1"]["attempts"] == 2  # it ran again
    assert git(repo, "rev-parse", "specexec/s") == tip


def test_a_worker_pointing_its_branch_at_the_integration_tip_is_not_merged(
    tmp_path: Path,
) -> None:
    """Another way to fake "merged": a --no-pool worker that fails after pointing its task
    branch at an ancestor of the integration branch (and its base ref at its parent)."""
    repo = _history_repo(tmp_path)
    fake = (
        'b=$(git symbolic-ref HEAD); git update-ref "$b" HEAD~1;'
        " git update-ref refs/specexec/bases/s/T1 HEAD~2 2>/dev/null; exit 1"
    )
    spec = _spec(repo, [task("T1", files=["x"], command=fake)])
    first = run_cli("run", str(spec), "--no-pool", "--jobs", "1", cwd=repo)
    assert first.returncode != 0
    again = run_cli("run", str(spec), "--retry-failed", "--no-pool", "--jobs", "1", cwd=repo)
    assert "already merged" not in again.stderr
    assert read_tasks(spec)["T1"]["status"] == "fail"


def test_an_unreadable_directory_fails_the_task_and_nothing_lands(tmp_path: Path) -> None:
    """Case 4 (as an ordinary user: root reads a mode-000 directory): a worker edits src/
    and makes it unreadable. The task fails naming src; its dependent never runs on the
    old content; nothing is merged."""
    import shutil
    import tempfile

    skip_unless_nobody_can_run_specexec()
    base = Path(tempfile.mkdtemp(prefix="specexec-nobody-"))
    try:
        repo = init_repo(base / "r", {"README.md": "hello\n", "src/a.py": "a = 1\n"})
        edit = "echo 'b = 2' > src/b.py && echo 'a = 2' > src/a.py && chmod 000 src"
        spec = _spec(
            repo,
            [
                task("T1", files=["src/**"], command=edit),
                task("T2", blocked_by=["T1"], files=["out.txt"], command="cat src/a.py > out.txt"),
            ],
        )
        subprocess.run(["chown", "-R", "65534:65534", str(base)], check=True)
        # specexec itself runs as nobody (its git, its worker): PY directly, since nobody
        # may not be able to run the interpreter a venv's sys.executable names.
        proc = subprocess.run(
            ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups",
             PY, "-m", "specexec", "run", str(spec), "--jobs", "1"],
            capture_output=True, text=True, timeout=300, check=False, cwd=repo,
            env={**os.environ, "HOME": str(base), "SPECEXEC_WORKTREE_DIR": str(base / "wt")},
        )  # fmt: skip
        out = proc.stdout + proc.stderr
        assert proc.returncode == 1, out
        tasks = read_tasks(spec)
        assert tasks["T1"]["status"] == "fail", out
        assert "unreadable" in tasks["T1"]["blocker"] and "src" in tasks["T1"]["blocker"]
        assert tasks["T2"]["status"] == "blocked", out
        safe = ("-c", "safe.directory=*")  # the repository is nobody's
        assert git(repo, *safe, "ls-tree", "-r", "--name-only", "specexec/s").split() == [
            "README.md",
            "src/a.py",
        ]
        assert git(repo, *safe, "show", "specexec/s:src/a.py") == "a = 1"
    finally:
        subprocess.run(["chmod", "-R", "u+rwx", str(base)], check=False)
        shutil.rmtree(base, ignore_errors=True)


def test_a_nested_repository_commit_that_exists_only_in_the_worktree_fails(
    tmp_path: Path,
) -> None:
    """Another thing a snapshot cannot hold: a gitlink to a commit that is only in the
    worktree (a nested repository). Merging it would leave a submodule pointing nowhere."""
    repo = init_repo(tmp_path / "r")
    nested = (
        "git init -q nested && git -C nested -c user.name=w -c user.email=w@x"
        " commit -q --allow-empty -m n && echo x > x.txt"
    )
    spec = _spec(repo, [task("T1", files=["**"], command=nested)])
    done = run_cli("run", str(spec), "--jobs", "1", cwd=repo)
    assert done.returncode != 0, done.stdout + done.stderr
    t1 = read_tasks(spec)["T1"]
    assert t1["status"] == "fail" and "nested" in t1["blocker"], t1
    assert _tree(repo, "specexec/s") == ["README.md"]


def _wait_file(path: str) -> str:
    # Shell: wait (at most 30 s) until `path` exists.
    return f"i=0; while [ ! -e {path} ] && [ $i -lt 600 ]; do sleep 0.05; i=$((i+1)); done"


def test_a_worker_moving_the_integration_branch_back_loses_no_passed_task(
    tmp_path: Path,
) -> None:
    """Case 5: T2's worker moves specexec/s back to its own base after T1 merged. T2 fails
    saying so; T1's change stays reachable; the run exits non-zero."""
    repo = init_repo(tmp_path / "r")
    t2 = (
        "while ! git cat-file -e refs/heads/specexec/s:a.txt 2>/dev/null; do sleep 0.05; done;"
        " git update-ref refs/heads/specexec/s HEAD; echo b > b.txt"
    )
    spec = _spec(
        repo,
        [
            task("T1", files=["a.txt"], command="echo a > a.txt"),
            task("T2", files=["b.txt"], command=t2),
        ],
    )
    done = run_cli("run", str(spec), "--jobs", "2", cwd=repo, timeout=180)
    out = done.stdout + done.stderr
    assert done.returncode != 0, out
    tasks = read_tasks(spec)
    assert tasks["T1"]["status"] == "pass"
    assert tasks["T2"]["status"] == "fail"
    assert "moved by someone else" in tasks["T2"]["blocker"], tasks["T2"]
    # T1's merged change is kept by a ref specexec keeps, and was never merged over.
    assert git(repo, "show", "refs/specexec/tips/s:a.txt") == "a"
    assert "b.txt" not in _tree(repo, "refs/specexec/tips/s")
    # Put back, the next run lands T2.
    git(repo, "update-ref", "refs/heads/specexec/s", "refs/specexec/tips/s")
    spec_doc = json.loads((spec / "tasks.json").read_text())
    spec_doc["tasks"][1]["command"] = "echo b > b.txt"
    (spec / "tasks.json").write_text(json.dumps(spec_doc))
    again = run_cli("run", str(spec), "--retry-failed", cwd=repo)
    assert again.returncode == 0, again.stdout + again.stderr
    assert {"a.txt", "b.txt"} <= set(_tree(repo, "specexec/s"))


def test_an_integration_branch_replaced_by_a_sibling_is_detected(tmp_path: Path) -> None:
    """Another way to drop merged work: a worker points the integration branch at a new
    commit that is not a descendant of what specexec merged (not an ancestor either)."""
    repo = init_repo(tmp_path / "r")
    forge = (
        "while ! git cat-file -e refs/heads/specexec/s:a.txt 2>/dev/null; do sleep 0.05; done;"
        " c=$(git -c user.name=w -c user.email=w@x commit-tree 'HEAD^{tree}' -p HEAD -m forged);"
        " git update-ref refs/heads/specexec/s $c; echo b > b.txt"
    )
    spec = _spec(
        repo,
        [
            task("T1", files=["a.txt"], command="echo a > a.txt"),
            task("T2", files=["b.txt"], command=forge),
        ],
    )
    done = run_cli("run", str(spec), "--jobs", "2", cwd=repo, timeout=180)
    assert done.returncode != 0, done.stdout + done.stderr
    assert "moved by someone else" in read_tasks(spec)["T2"]["blocker"]
    assert git(repo, "show", "refs/specexec/tips/s:a.txt") == "a"


def test_a_user_who_moves_the_integration_branch_forward_keeps_working(tmp_path: Path) -> None:
    repo = init_repo(tmp_path / "r")
    spec = _spec(repo, [task("T1", files=["a.txt"], command="echo a > a.txt")])
    first = run_cli("run", str(spec), cwd=repo)
    assert first.returncode == 0, first.stdout + first.stderr
    # The user commits their own work onto the integration branch (a fast-forward).
    git(repo, "checkout", "-q", "-b", "mine", "specexec/s")
    (repo / "user.txt").write_text("u\n")
    git(repo, "add", "user.txt")
    git(repo, "commit", "-qm", "user work")
    git(repo, "checkout", "-q", "main")
    git(repo, "branch", "-f", "specexec/s", "mine")
    doc = json.loads((spec / "tasks.json").read_text())
    doc["tasks"].append(task("T2", files=["b.txt"], command="echo b > b.txt"))
    (spec / "tasks.json").write_text(json.dumps(doc))
    again = run_cli("run", str(spec), cwd=repo)
    assert again.returncode == 0, again.stdout + again.stderr
    assert {"a.txt", "b.txt", "user.txt"} <= set(_tree(repo, "specexec/s"))


def _pool_spec(repo: Path, t1_extra: str) -> tuple[Path, Path]:
    """T1 runs long in its pool slot after `t1_extra`; T2 is quick and leaves a marker
    beside its own slot naming a live foreign process (``marks/forged.json``); T3 (after
    T2) takes a free slot. A pool that believed the files would see T2's slot taken and
    T1's free, and put T3 into T1's. Each task records where it ran."""
    marks = repo.parent / "marks"
    marks.mkdir()
    t1 = (
        f"pwd > {marks}/T1; {t1_extra}; touch {marks}/T1.ready; {_wait_file(f'{marks}/T3')};"
        " echo one > one.txt"
    )
    t2 = (
        f'{_wait_file(f"{marks}/T1.ready")}; cp {marks}/forged.json "$SPECEXEC_WORKTREE.owner";'
        " echo 2 > two.txt"
    )
    t3 = f"pwd > {marks}/T3.tmp; mv {marks}/T3.tmp {marks}/T3; echo three > three.txt"
    spec = _spec(
        repo,
        [
            task("T1", files=["one.txt"], command=t1),
            task("T2", files=["two.txt"], command=t2),
            task("T3", blocked_by=["T2"], files=["three.txt"], command=t3),
        ],
    )
    return spec, marks


@pytest.mark.parametrize(
    "t1_extra",
    ['rm -f "$SPECEXEC_WORKTREE.owner"', 'echo "{}" > "$SPECEXEC_WORKTREE.owner"'],
    ids=["removes its owner marker", "overwrites it with garbage"],
)
def test_a_slot_whose_marker_a_worker_removed_is_not_handed_out(
    tmp_path: Path, t1_extra: str
) -> None:
    """Case 6: the pool knows which slots it handed out; the marker is not its memory."""
    repo = init_repo(tmp_path / "r")
    spec, marks = _pool_spec(repo, t1_extra)
    sleeper, owner = _live_sleep()
    try:
        (marks / "forged.json").write_text(json.dumps(owner))
        done = run_cli("run", str(spec), "--jobs", "2", cwd=repo, timeout=180)
    finally:
        sleeper.kill()
        sleeper.wait()
    assert done.returncode == 0, done.stdout + done.stderr
    assert (marks / "T1").read_text() != (marks / "T3").read_text()
    tip = "specexec/s"
    assert {"one.txt", "two.txt", "three.txt"} <= set(_tree(repo, tip))


def _live_sleep() -> tuple[subprocess.Popen[bytes], dict[str, Any]]:
    import socket

    from specexec.system import ProcessId

    proc = subprocess.Popen(["sleep", "120"])
    me = ProcessId.of(proc.pid)
    assert me is not None
    return proc, {**me.to_json(), "host": socket.gethostname()}


def test_a_forged_marker_naming_a_live_process_does_not_block_a_slot(tmp_path: Path) -> None:
    """A worker (or anyone) writes a marker beside a free slot naming a live foreign
    process: the slot stays usable (before, every later task overflowed to a fresh one)."""
    repo = init_repo(tmp_path / "r")
    marks = repo.parent / "marks"
    marks.mkdir()
    spec = _spec(repo, [task("T1", files=["a.txt"], command=f"pwd > {marks}/T1; echo a > a.txt")])
    assert run_cli("run", str(spec), "--jobs", "1", cwd=repo).returncode == 0
    slot = Path((marks / "T1").read_text().strip())
    sleeper, owner = _live_sleep()
    try:
        slot.with_name(slot.name + ".owner").write_text(json.dumps(owner))
        doc = json.loads((spec / "tasks.json").read_text())
        doc["tasks"].append(
            task("T2", files=["b.txt"], command=f"pwd > {marks}/T2; echo b > b.txt")
        )
        (spec / "tasks.json").write_text(json.dumps(doc))
        done = run_cli("run", str(spec), "--jobs", "1", cwd=repo)
        assert done.returncode == 0, done.stdout + done.stderr
        assert Path((marks / "T2").read_text().strip()) == slot
    finally:
        sleeper.kill()
        sleeper.wait()


@pytest.mark.parametrize(
    "hide",
    [
        'rm -f "$SPECEXEC_WORKTREE.owner"',
        'rm -f "$SPECEXEC_WORKTREE.owner" "$(git rev-parse --git-common-dir)"/specexec/holds/pool/*.lock',
    ],
    ids=["marker removed", "marker and hold file removed"],
)
def test_gc_never_removes_a_live_runs_slot(tmp_path: Path, hide: str) -> None:
    """`gc` while a worker that hid its slot's ownership still runs: the slot stays."""
    repo = init_repo(tmp_path / "r")
    marks = repo.parent / "marks"
    marks.mkdir()
    t1 = (
        f"pwd > {marks}/T1.tmp; mv {marks}/T1.tmp {marks}/T1; {hide}; {_wait_file(f'{marks}/go')};"
        " echo one > one.txt"
    )
    spec = _spec(repo, [task("T1", files=["one.txt"], command=t1)])
    run = subprocess.Popen(
        [PY, "-m", "specexec", "run", str(spec), "--jobs", "1"],
        cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for(lambda: (marks / "T1").exists(), 60, "T1 to start")
        time.sleep(0.3)  # after its `rm`
        slot = Path((marks / "T1").read_text().strip())
        gc = run_cli("gc", str(repo))
        assert gc.returncode == 0, gc.stderr
        assert str(slot) not in gc.stdout and slot.is_dir(), gc.stdout
    finally:
        (marks / "go").touch()
        out, err = run.communicate(timeout=120)
    assert run.returncode == 0, out + err
    assert git(repo, "show", "specexec/s:one.txt") == "one"


def test_watch_goes_on_with_other_folders_and_keeps_its_sigterm_grace(tmp_path: Path) -> None:
    """Case 10 under `watch`: a folder whose template renders forever must neither hold
    up another folder nor keep the daemon past its SIGTERM grace (its task stays
    pending: stopped by the interrupt, not failed by the budget)."""
    import signal

    repo = init_repo(tmp_path / "repo")
    watched = repo / "specs"
    watched.mkdir()
    staging = tmp_path / "staging"
    bad, good = _c10_specs(staging, C10_LOOPS)
    log_path = tmp_path / "watch.log"
    argv = [PY, "-m", "specexec", "watch", str(watched), "--allow-commands", "--grace", "1"]
    with log_path.open("wb") as log_file:
        proc = subprocess.Popen(
            argv,
            stdout=log_file,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for(lambda: "specexec watch:" in log_path.read_text(), 30, "the daemon")
        os.rename(bad, watched / "bad")
        wait_for(lambda: "[bad] start" in log_path.read_text(), 30, "bad/T1 to start")
        os.rename(good, watched / "good")
        wait_for(
            lambda: read_tasks(watched / "good")["T1"]["status"] == "pass",
            30,
            "the other folder's task to pass: " + log_path.read_text(),
        )
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)  # (a safety net: the loops take minutes)
        assert proc.returncode == 0, log_path.read_text()
        # Stopped by the SIGTERM, as it rendered: not run on until the time budget (5 s)
        # failed the task.
        t1 = read_tasks(watched / "bad")["T1"]
        assert t1["status"] == "pending" and "blocker" not in t1, log_path.read_text()
        assert "budget" not in log_path.read_text(), log_path.read_text()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_another_run_never_takes_a_slot_whose_marker_its_worker_removed(tmp_path: Path) -> None:
    """Case 6 across processes: run A's worker removes its slot's marker; run B of another
    spec in the same repository must not get that slot while A's task still runs there."""
    repo = init_repo(tmp_path / "r")
    marks = repo.parent / "marks"
    marks.mkdir()
    a_cmd = (
        f'pwd > {marks}/A.tmp; mv {marks}/A.tmp {marks}/A; rm -f "$SPECEXEC_WORKTREE.owner";'
        f" {_wait_file(f'{marks}/B')}; echo one > one.txt"
    )
    spec_a = _spec(repo, [task("T1", files=["one.txt"], command=a_cmd)], name="a")
    b_cmd = f"pwd > {marks}/B; echo b > b.txt"
    spec_b = _spec(repo, [task("T1", files=["b.txt"], command=b_cmd)], name="b")
    run_a = subprocess.Popen(
        [PY, "-m", "specexec", "run", str(spec_a), "--jobs", "1"],
        cwd=repo, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        wait_for(lambda: (marks / "A").exists(), 60, "run A's task to start")
        time.sleep(0.3)  # after its `rm`
        run_b = run_cli("run", str(spec_b), "--jobs", "1", cwd=repo)
        assert run_b.returncode == 0, run_b.stdout + run_b.stderr
    finally:
        (marks / "B").touch()
        out, err = run_a.communicate(timeout=120)
    assert run_a.returncode == 0, out + err
    assert (marks / "A").read_text() != (marks / "B").read_text()
    assert git(repo, "show", "specexec/a:one.txt") == "one"
    assert git(repo, "show", "specexec/b:b.txt") == "b"
