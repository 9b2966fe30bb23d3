"""The live view as a person sees it: ``specexec run`` inside a real terminal (tmux), the
screen captured again and again while it runs, and each frame checked against the
run's own event log (issue 16, items 1-3)."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import pytest
from conftest import task, wait_for, write_spec
from rich.console import Console

from specexec.run.live import LiveState, LiveView, event_line

PY = sys.executable
# Rich markup that must never reach the screen: a style in brackets or a closing tag.
MARKUP = re.compile(r"\[/?(bold|cyan|red|green|yellow|dim|italic|magenta|blue)\b[^\]]*\]|\[/\]")
FOOTER = re.compile(r"(\d+)/(\d+) done\b.*?(\d+) running")
RUNNING = re.compile(r"^running\s+(\S+/\S+)\s")
ETA = re.compile(r"ETA ~(\S+)")
# How stale a frame may be: rich redraws 8 times a second; tmux and the capture add a bit.
STALE_S = 0.75


class Tmux:
    """One private tmux server (its own socket) running one command in a fixed-size pane."""

    def __init__(self, sock: Path, width: int = 220, height: int = 50) -> None:
        self.sock, self.width, self.height = sock, width, height

    def _tmux(self, *args: str) -> str:
        proc = subprocess.run(
            ["tmux", "-S", str(self.sock), "-f", "/dev/null", *args],
            capture_output=True,
            text=True,
            check=True,
            timeout=30,
        )
        return proc.stdout

    def start(self, command: str, cwd: Path) -> None:
        # The pane stays after the command (exec sleep) so its last screen can be read.
        self._tmux(
            "new-session", "-d", "-s", "t", "-x", str(self.width), "-y", str(self.height),
            "-c", str(cwd), f"{command}; echo SPECEXEC-EXIT=$?; exec sleep 600",
        )  # fmt: skip

    def screen(self) -> str:
        return self._tmux("capture-pane", "-p", "-J", "-t", "t")

    def kill(self) -> None:
        subprocess.run(["tmux", "-S", str(self.sock), "kill-server"], capture_output=True)


@dataclass
class Frame:
    at: float  # epoch seconds of the capture (its start)
    text: str


def _events(spec: Path) -> list[dict[str, object]]:
    path = spec / ".specexec" / "events.jsonl"
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _epoch(iso: object) -> float:
    return datetime.fromisoformat(str(iso).replace("Z", "+00:00")).timestamp()


def _finished(events: list[dict[str, object]]) -> dict[str, float]:
    """task -> when it finished (pass or fail), from the transitions."""
    return {
        str(e["task"]): _epoch(e["time"])
        for e in events
        if e["kind"] == "transition" and e["to"] in ("pass", "fail")
    }


# In CI (.ci/run installs it) a missing tmux fails the test instead of skipping it.
needs_tmux = pytest.mark.skipif(
    shutil.which("tmux") is None and not os.environ.get("CI"), reason="tmux not installed"
)


@needs_tmux
def test_run_in_a_real_terminal_shows_what_the_events_say(repo: Path, tmp_path: Path) -> None:
    chek = f"{PY} -m ruff chek"  # a real usage error: clap prints the cause, then --help
    spec = write_spec(
        repo / "specs" / "s",
        [
            task("a1", files=["a1"], command="sleep 0.6"),
            task("a2", files=["a2"], command="sleep 0.8"),
            task("a3", files=["a3"], command="sleep 0.4"),
            task("lint", files=["l"], command=chek, max_retries=0),
            task("b1", files=["b1"], command="sleep 0.6", blocked_by=["a1", "a2"]),
            task("c1", files=["c1"], command="sleep 0.5", blocked_by=["b1"]),
        ],
    )
    term = Tmux(tmp_path / "tmux.sock")
    term.start(f"{PY} -m specexec run specs/s --jobs 2", repo)
    frames: list[Frame] = []
    try:

        def capture() -> bool:
            at = time.time()
            text = term.screen()
            frames.append(Frame(at, text))
            return "SPECEXEC-EXIT=" in text

        wait_for(capture, 120, "the run to end in the terminal", interval=0.05)
    finally:
        term.kill()
    events = _events(spec)
    finished = _finished(events)
    assert set(finished) == {"a1", "a2", "a3", "lint", "b1", "c1"}, finished
    live = [f for f in frames if FOOTER.search(f.text)]
    assert len(live) >= 10, f"only {len(live)} frames showed the live area"
    saw_eta = False
    for f in frames:
        assert not MARKUP.search(f.text), f.text
        m = FOOTER.search(f.text)
        if m is None:
            continue
        done, total, running = int(m[1]), int(m[2]), int(m[3])
        assert total == 6, f.text
        # Done counts task_finished: never ahead of the log, never far behind it.
        ended = [t for t, at in finished.items() if at <= f.at + 0.05]
        surely_ended = [t for t, at in finished.items() if at < f.at - STALE_S]
        assert len(surely_ended) <= done <= len(ended), (f.text, finished, f.at)
        rows = [m[1] for line in f.text.splitlines() if (m := RUNNING.match(line))]
        assert len(rows) == running, f.text
        for who in rows:
            assert who.split("/")[1] not in surely_ended, (who, f.text)
        eta = ETA.search(f.text)
        # Declared minutes alone are guesses (5 min for this 3 s run): no ETA from them.
        assert not (eta and done == 0), f.text
        if running and eta:
            saw_eta = True
            assert eta[1] not in ("0ms", "0.0s", "0s"), f.text
    assert saw_eta, "no frame showed an ETA while tasks ran"
    last = frames[-1].text
    assert "SPECEXEC-EXIT=1" in last, last
    # The fail line names the real error and the log (done-when 2).
    (run_dir,) = (spec / ".specexec" / "runs").iterdir()
    log = run_dir.relative_to(repo) / "lint.log"
    fail_line = next(line for line in last.splitlines() if line.startswith("fail   s/lint"))
    assert "error: unrecognized subcommand 'chek'" in fail_line, fail_line
    assert "For more information" not in fail_line, fail_line
    assert fail_line.rstrip().endswith(f"log: {log}"), fail_line
    # The summary names it too.
    assert f"fail s/lint: error: unrecognized subcommand 'chek' (log: {log})" in last, last
    assert "5 passed, 1 failed, 0 blocked of 6 task(s)" in last, last


# -- the state and the lines, without a terminal ----------------------------------------


def test_a_finished_task_leaves_the_running_list_in_the_same_step() -> None:
    s = LiveState()
    s.apply("run_started", {"pending": 2}, 0.0)
    s.apply("task_started", {"spec": "s", "task": "a", "attempt": 1}, 0.0)
    s.apply("task_started", {"spec": "s", "task": "b", "attempt": 1}, 0.0)
    s.apply("task_finished", {"spec": "s", "task": "a", "status": "pass"}, 1.0)
    assert list(s.running) == ["s/b"] and s.finished == 1
    footer = s.footer(1.5, 2.0).plain
    assert footer.startswith("1/2 done · 1 running · 1.5s · ETA ~2.0s"), footer
    s.apply("task_waiting", {"spec": "s", "task": "b", "resume_at": "2026-12-01T23:10:05Z"}, 2)
    assert not s.running and s.waiting == {"s/b": "23:10:05"}
    # No ETA when nothing runs or waits; before run_started no frame at all.
    s.apply("task_finished", {"spec": "s", "task": "b", "status": "fail"}, 3.0)
    assert "ETA" not in s.footer(3.0, 5.0).plain and "1 failed" in s.footer(3.0, None).plain
    assert LiveState().render(0.0, None) is not None


def test_worker_text_is_shown_as_written_never_as_markup() -> None:
    console = Console(record=True, width=200, force_terminal=True, color_system=None)
    view = LiveView(console=console)
    view.event("run_started", run_id="r", pending=1, specs=1, jobs=1, schedule="critical")
    view.event("task_started", spec="s", task="t", attempt=1)
    view.event(
        "task_finished",
        spec="s",
        task="t",
        status="fail",
        seconds=0.2,
        blocker="the worker exited with code 1",
        excerpt=["[bold red]error:[/] boom \x1b[31m"],
        log="/x/t.log",
    )
    view.close()
    out = console.export_text()
    assert "[bold red]error:[/] boom \\x1b[31m" in out, out
    assert "log: /x/t.log" in out


def test_unknown_events_still_get_a_line() -> None:
    line = event_line("budget_split", {"spec": "s", "limit": 3, "why": "[cyan]x"})
    assert line is not None and line.plain == "budget split: spec=s, limit=3, why=[cyan]x"
    assert event_line("task_started", {"spec": "s", "task": "t"}) is None
