"""Trust of dropped spec folders: ``specexec watch`` runs nothing it should not.

One daemon (no --allow-commands) watches a drop directory holding two repositories: one
without configuration, one whose pyproject says ``[tool.specexec] allow_commands = true``.
Every spec folder that must not run has a command that would create a marker file; the
markers must never appear, tasks.json must stay byte-identical, and the refusal must be
logged and shown by ``specexec status`` (text and --json). Spec folders that may run
(worker presets; commands where the repository allows them; commands with
--allow-commands) must run and pass.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from conftest import PY, git, init_repo, read_tasks, task, wait_until, write_spec

from reliability.support import call_main, kill_tree

pytestmark = [pytest.mark.reliability, pytest.mark.slow]

FAKE_AGENTS = Path(__file__).resolve().parent.parent / "fake_agents"


class Daemon:
    """``specexec watch`` as a real process, its log collected line by line."""

    def __init__(self, drop: Path, *flags: str) -> None:
        env = {
            **os.environ,
            "PATH": f"{FAKE_AGENTS}{os.pathsep}{os.path.dirname(PY)}{os.pathsep}{os.environ['PATH']}",
            "SPECEXEC_WATCH_RESCAN": "0.5",
        }
        self.proc = subprocess.Popen(
            [PY, "-m", "specexec", "watch", str(drop), "--jobs", "2", *flags],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        self.lines: list[str] = []
        self._reader = threading.Thread(target=self._read, daemon=True)
        self._reader.start()

    def _read(self) -> None:
        assert self.proc.stderr is not None
        for line in self.proc.stderr:
            self.lines.append(line)

    @property
    def log(self) -> str:
        return "".join(self.lines)

    def wait_for(self, text: str, timeout: float = 60) -> None:
        assert wait_until(lambda: text in self.log, timeout), f"no {text!r} in:\n{self.log}"

    def stop(self) -> int:
        self.proc.send_signal(signal.SIGTERM)
        code = self.proc.wait(timeout=60)
        self._reader.join(timeout=10)
        return code


@pytest.fixture
def daemons() -> Iterator[list[Daemon]]:
    started: list[Daemon] = []
    yield started
    for d in started:
        if d.proc.poll() is None:
            kill_tree(d.proc)


def marker_cmd(markers: Path, name: str) -> str:
    return f"touch {markers / name}; echo x > out-{name}.txt"


def passed(spec: Path) -> bool:
    try:
        return all(t.get("status") == "pass" for t in read_tasks(spec).values())
    except ValueError:
        return False


def assert_refused(spec: Path, before: bytes, reason: str, daemon: Daemon, markers: Path) -> None:
    assert f"{spec}: refused: " in daemon.log, daemon.log
    at = next(i for i, x in enumerate(daemon.lines) if f"{spec}: refused: " in x)
    entry = (
        daemon.lines[at]
        + "".join(  # the problems follow on indented lines
            x for x in daemon.lines[at + 1 : at + 20] if x.startswith(" ")
        )
    )
    assert reason in entry, entry
    assert (spec / "tasks.json").read_bytes() == before, "a refused spec folder was changed"
    assert not list(markers.glob(f"{spec.name}*")), f"{spec.name} ran a command"
    code, out, err = call_main(["status", str(spec)])
    if (spec / "tasks.json").is_symlink():  # status itself refuses to read it, and says why
        assert code == 2 and "is a symbolic link" in err, err
        return
    assert code == 0 and "refused by specexec watch" in out and reason in out, out + err
    code, out, _ = call_main(["status", str(spec), "--json"])
    refusal = json.loads(out)["refused"]
    assert reason in " ".join([refusal["reason"], *refusal.get("problems", [])]), refusal


def test_the_daemon_runs_only_what_it_may(tmp_path: Path, daemons: list[Daemon]) -> None:
    drop = tmp_path / "drop"
    markers = tmp_path / "markers"
    markers.mkdir()
    plain = init_repo(drop / "plain")
    allowing = init_repo(
        drop / "allowing",
        {
            "pyproject.toml": "[tool.specexec]\nallow_commands = true\n",
        },
    )

    def spec(repo: Path, name: str, **fields: object) -> Path:
        fields.setdefault("command", marker_cmd(markers, name))
        return write_spec(repo / "specs" / name, [task("T1", files=[f"out-{name}.txt"], **fields)])

    # May run: a worker preset (the fake claude on PATH), and commands where the
    # repository's configuration allows them.
    preset = spec(plain, "preset", worker="claude", command=None)
    allowed = spec(allowing, "allowed")
    # Must not run: the task's own command; a custom worker command; folders others may
    # write (whatever their worker); a symlinked tasks.json.
    own_cmd = spec(plain, "own-cmd")
    custom = spec(
        plain,
        "custom",
        command=None,
        worker={"command": ["sh", "-c", marker_cmd(markers, "custom")]},
    )
    writable = {}
    for name, target, mode in (
        ("gw-dir", "", 0o775),
        ("ow-dir", "", 0o757),
        ("gw-file", "tasks.json", 0o664),
        ("ow-file", "tasks.json", 0o646),
    ):
        d = spec(plain, name, worker="claude", command=None)
        os.chmod(d / target if target else d, mode)
        writable[name] = d
    foreign = None
    if os.geteuid() == 0:  # only root can give a folder away to test this
        foreign = spec(plain, "foreign", worker="claude", command=None)
        os.chown(foreign, 65534, 65534)
        os.chown(foreign / "tasks.json", 65534, 65534)
    linked = spec(plain, "linked", worker="claude", command=None)
    (tmp_path / "elsewhere.json").write_bytes((linked / "tasks.json").read_bytes())
    (linked / "tasks.json").unlink()
    (linked / "tasks.json").symlink_to(tmp_path / "elsewhere.json")
    for repo in (plain, allowing):
        git(repo, "add", "-A")
        git(repo, "commit", "-qm", "specs")
    refused = [own_cmd, custom, *writable.values(), *([foreign] if foreign else []), linked]
    before = {d: (d / "tasks.json").read_bytes() for d in refused}

    daemon = Daemon(drop)
    daemons.append(daemon)
    assert wait_until(lambda: passed(preset) and passed(allowed), 90), daemon.log
    assert (markers / "allowed").exists()
    for d in refused:
        daemon.wait_for(f"{d}: refused: ")

    cmd_reason = "runs its own command, which the daemon only allows with --allow-commands"
    assert_refused(own_cmd, before[own_cmd], cmd_reason, daemon, markers)
    assert_refused(custom, before[custom], cmd_reason, daemon, markers)
    for d in writable.values():
        assert_refused(d, before[d], "is writable by group or others", daemon, markers)
    if foreign is not None:
        assert_refused(foreign, before[foreign], "is owned by uid 65534", daemon, markers)
    assert_refused(linked, before[linked], "is a symbolic link", daemon, markers)

    # A refusal is not forever: once nobody else may write the folder, it runs.
    os.chmod(writable["gw-file"] / "tasks.json", 0o644)
    assert wait_until(lambda: passed(writable["gw-file"]), 60), daemon.log
    assert call_main(["status", str(writable["gw-file"])])[1].count("refused") == 0

    assert daemon.stop() == 0, daemon.log
    assert "Traceback" not in daemon.log
    assert not list(markers.glob("own-cmd*")) and not list(markers.glob("custom*"))


def test_allow_commands_lets_the_daemon_run_a_tasks_command(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    drop = tmp_path / "drop"
    markers = tmp_path / "markers"
    markers.mkdir()
    repo = init_repo(drop / "repo")
    spec = write_spec(
        repo / "specs" / "cmd",
        [
            task("T1", files=["out-cmd.txt"], command=marker_cmd(markers, "cmd")),
        ],
    )
    daemon = Daemon(drop, "--allow-commands")
    daemons.append(daemon)
    assert wait_until(lambda: passed(spec), 60), daemon.log
    assert (markers / "cmd").exists()
    assert daemon.stop() == 0


def test_a_dropped_specs_verify_command_needs_allow_commands(
    tmp_path: Path, daemons: list[Daemon]
) -> None:
    drop = tmp_path / "drop"
    markers = tmp_path / "markers"
    markers.mkdir()
    repo = init_repo(drop / "repo")
    spec = write_spec(
        repo / "specs" / "verify",
        [
            task("T1", files=["src/"], worker="claude", verify=f"touch {markers / 'verify'}"),
        ],
        defaults={"verify": f"touch {markers / 'defaults-verify'}"},
    )
    daemon = Daemon(drop)
    daemons.append(daemon)
    wait_until(lambda: "refused" in daemon.log or passed(spec), 60)
    daemon.stop()
    assert not list(markers.iterdir()), f"the daemon ran verify commands: {list(markers.iterdir())}"
    assert f"{spec}: refused" in daemon.log


def test_a_planted_worker_record_cannot_make_specexec_kill_a_process(repo: Path) -> None:
    victim = subprocess.Popen(["sleep", "60"], start_new_session=True)
    try:
        dead = subprocess.Popen(["true"])
        dead.wait()  # a runner pid that no longer exists
        spec = write_spec(
            repo / "specs" / "plant", [task("T1", files=["a.txt"], command="echo > a.txt")]
        )
        registry = spec / ".specexec" / "workers"
        registry.mkdir(parents=True, mode=0o700)
        (registry / f"{victim.pid}.json").write_text(
            json.dumps(
                {
                    "pgid": victim.pid,
                    "pid": victim.pid,
                    "create_time": psutil.Process(victim.pid).create_time(),
                    "runner_pid": dead.pid,
                    "runner_create_time": 1.0,
                    "command": "agent",
                }
            )
        )
        code, out, err = call_main(["run", str(spec)])
        assert code == 0, out + err
        assert victim.poll() is None, "specexec killed a process it never started"
    finally:
        victim.kill()
        victim.wait()
