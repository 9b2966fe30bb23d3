"""events.jsonl: one line per event, appended safely by many processes, read tolerantly."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import textwrap
from datetime import datetime
from pathlib import Path

from conftest import PY

from specexec.tasksfile.events import EventLog, read_events


def test_a_transition_is_one_complete_line(tmp_path: Path) -> None:
    log = EventLog(tmp_path, run_id="r1")
    log.transition("T1", "pending", "in_progress", attempt=1, worker="shell")
    log.append("run_started", jobs=4)
    path = tmp_path / ".specexec" / "events.jsonl"
    lines = path.read_text().splitlines()
    assert len(lines) == 2
    first = json.loads(lines[0])
    assert list(first) == [
        "time",
        "kind",
        "run_id",
        "pid",
        "task",
        "from",
        "to",
        "attempt",
        "worker",
    ]
    assert first["kind"] == "transition" and first["run_id"] == "r1"
    assert (first["task"], first["from"], first["to"], first["attempt"]) == (
        "T1",
        "pending",
        "in_progress",
        1,
    )
    assert first["pid"] == os.getpid()
    assert first["time"].endswith("Z")
    assert datetime.fromisoformat(first["time"].replace("Z", "+00:00")).utcoffset() is not None
    assert read_events(tmp_path)[1]["jobs"] == 4
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700


def test_values_that_are_not_json_are_written_as_text(tmp_path: Path) -> None:
    EventLog(tmp_path).append("note", path=tmp_path, text="line\nbreak é")
    [event] = read_events(tmp_path)
    assert event["path"] == str(tmp_path) and event["text"] == "line\nbreak é"
    assert event["run_id"] is None


def test_a_truncated_last_line_is_ignored_and_the_next_event_starts_clean(tmp_path: Path) -> None:
    log = EventLog(tmp_path, run_id="r1")
    for i in range(3):
        log.transition(f"T{i}", "pending", "in_progress")
    path = tmp_path / ".specexec" / "events.jsonl"
    # What a writer killed in the middle of a line leaves behind.
    with path.open("ab") as f:
        f.write(b'{"time": "2025-01-01T00:00:00.000Z", "kind": "transi')
    assert [e["task"] for e in read_events(tmp_path)] == ["T0", "T1", "T2"]
    EventLog(tmp_path, run_id="r2").transition("T3", "pending", "pass")
    events = read_events(tmp_path)
    assert [e["task"] for e in events] == ["T0", "T1", "T2", "T3"]
    assert events[-1]["run_id"] == "r2"


def test_a_log_removed_or_replaced_during_a_run_is_written_again(tmp_path: Path) -> None:
    # The descriptor stays open between events; events must still land in the file that
    # is at the path now, not in one that was deleted or renamed away.
    log = EventLog(tmp_path, run_id="r1")
    log.REOPEN_CHECK_S = 0.0  # looked at before every event (normally once a second)
    log.transition("T1", "pending", "in_progress")
    path = tmp_path / ".specexec" / "events.jsonl"
    path.unlink()
    log.transition("T1", "in_progress", "pass")
    assert [e["to"] for e in read_events(tmp_path)] == ["pass"]
    path.rename(tmp_path / "old.jsonl")
    path.write_text('{"kind": "by hand"}')  # no final newline
    log.transition("T2", "pending", "in_progress")
    assert [e.get("to") for e in read_events(tmp_path)] == [None, "in_progress"]
    log.close()
    log.transition("T2", "in_progress", "pass")  # reopened after close
    assert len(read_events(tmp_path)) == 3


def test_no_log_means_no_events(tmp_path: Path) -> None:
    assert read_events(tmp_path) == []


APPENDER = """
import sys
from specexec.tasksfile.events import EventLog
log = EventLog(sys.argv[1], run_id="w" + sys.argv[2])
for i in range(int(sys.argv[3])):
    log.append("tick", i=i, pad="x" * 300)
"""


def test_concurrent_processes_never_interleave_lines(tmp_path: Path) -> None:
    procs, per = 4, 500
    children = [
        subprocess.Popen([PY, "-c", textwrap.dedent(APPENDER), str(tmp_path), str(w), str(per)])
        for w in range(procs)
    ]
    assert [c.wait(timeout=120) for c in children] == [0] * procs
    # A writer that starts while another is mid-append may begin with a separating
    # newline (see EventLog._write); readers skip empty lines.
    raw = [x for x in (tmp_path / ".specexec" / "events.jsonl").read_bytes().splitlines() if x]
    assert len(raw) == procs * per
    events = [json.loads(line) for line in raw]  # every line is whole
    for w in range(procs):
        mine = [e["i"] for e in events if e["run_id"] == f"w{w}"]
        assert mine == list(range(per))  # each writer's order is kept
