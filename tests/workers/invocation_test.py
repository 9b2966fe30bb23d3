"""Worker presets: the exact command lines, placeholders, and each agent CLI end to end
through fake `claude`, `codex`, `aider` and `gemini` executables put first on PATH."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from specexec.errors import InvalidInput
from specexec.run.processes import run_process, worker_env
from specexec.run.prompt import BlockerResult, ParallelContext, render_prompt
from specexec.tasksfile.types import Spec, Task, WorkerConfig
from specexec.workers.invocation import KNOWN_PRESETS, build_invocation, preset_problem
from specexec.workers.result import WorkerResult, parse_result

FAKE_AGENTS = Path(__file__).parents[1] / "fake_agents"
AGENTS = ("claude", "codex", "aider", "gemini")


def make_task(task_id: str = "T1", command: str | None = None, **raw: Any) -> Task:
    raw = {"id": task_id, "summary": f"Do {task_id}", **raw}
    return Task(
        id=task_id,
        summary=raw["summary"],
        command=command,
        relevant_files=tuple(raw.get("relevant_files", ())),
        raw=raw,
    )


def make_spec(tmp_path: Path, *tasks: Task) -> Spec:
    return Spec(dir=tmp_path / "spec", name="demo", tasks=tasks or (make_task(),))


PH = {
    "prompt_file": "/runs/r1/T1.prompt.md",
    "task_id": "T1",
    "worktree": "/wt/T1",
    "spec_dir": "/specs/demo",
}


def inv(worker: WorkerConfig | None, task: Task | None = None, ph: dict[str, str] = PH) -> Any:
    task = task or make_task(command="make test")
    return build_invocation(worker, task, ph)


# --------------------------------------------------------------------------- command lines


def test_each_preset_runs_the_documented_non_interactive_command() -> None:
    assert KNOWN_PRESETS == ("shell", "claude", "codex", "aider", "gemini")
    claude = inv(WorkerConfig(preset="claude"))
    assert claude.command == (
        "claude",
        "-p",
        "--output-format",
        "json",
        "--permission-mode",
        "acceptEdits",
    )
    assert claude.stdin_prompt and claude.preset == "claude"
    codex = inv(WorkerConfig(preset="codex"))
    assert codex.command == (
        "codex",
        "exec",
        "--sandbox",
        "workspace-write",
        "--json",
        "-c",
        "analytics.enabled=false",
        "-",
    )
    assert codex.stdin_prompt
    aider = inv(WorkerConfig(preset="aider"))
    assert aider.command[0] == "aider"
    assert {"--yes-always", "--no-auto-commits", "--analytics-disable"} <= set(aider.command)
    assert aider.command[-2:] == ("--message-file", "/runs/r1/T1.prompt.md")
    assert not aider.stdin_prompt  # it reads the file; stdin stays /dev/null
    gemini = inv(WorkerConfig(preset="gemini"))
    assert gemini.command == (
        "gemini",
        "--output-format",
        "json",
        "--approval-mode",
        "auto_edit",
        "--skip-trust",  # a fresh worktree is untrusted: gemini would exit 55
    )
    assert gemini.stdin_prompt


def test_preset_args_go_where_the_cli_accepts_them() -> None:
    claude = inv(WorkerConfig(preset="claude", args=("--model", "sonnet")))
    assert claude.command[-2:] == ("--model", "sonnet")
    codex = inv(WorkerConfig(preset="codex", args=("--model", "o3")))
    assert codex.command[-3:] == ("--model", "o3", "-")  # before the stdin marker
    aider = inv(WorkerConfig(preset="aider", args=("--model", "gpt-4o")))
    assert aider.command[-4:] == ("--model", "gpt-4o", "--message-file", "/runs/r1/T1.prompt.md")


def test_shell_is_the_default_and_runs_the_task_command_verbatim() -> None:
    task = make_task(command="awk '{print $1}' f | grep -c {x} ; echo ${HOME}")
    for worker in (None, WorkerConfig(preset="shell")):
        got = inv(worker, task)
        assert got.command == "awk '{print $1}' f | grep -c {x} ; echo ${HOME}"
        assert got.preset == "shell" and got.stdin_prompt


def test_shell_without_a_command_is_invalid_and_validation_says_so() -> None:
    task = make_task("T7")
    with pytest.raises(InvalidInput, match=r"T7.*'command'"):
        inv(None, task)
    problem = preset_problem(WorkerConfig(preset="shell"), task)
    assert problem is not None and "T7" in problem and "command" in problem
    assert preset_problem(None, make_task(command="true")) is None
    assert preset_problem(WorkerConfig(preset="claude"), task) is None


def test_unknown_preset_lists_the_known_ones() -> None:
    with pytest.raises(InvalidInput) as err:
        inv(WorkerConfig(preset="cursor"))
    assert "'cursor'" in str(err.value)
    for name in KNOWN_PRESETS:
        assert name in str(err.value)
    assert "cursor" in (preset_problem(WorkerConfig(preset="cursor"), make_task()) or "")


def test_custom_argv_command_gets_placeholders_verbatim() -> None:
    ph = dict(PH, prompt_file="/runs/my run/T1's prompt.md")
    got = inv(
        WorkerConfig(command=("python", "tools/agent.py", "{prompt_file}", "--id={task_id}")), ph=ph
    )
    assert got.command == ("python", "tools/agent.py", "/runs/my run/T1's prompt.md", "--id=T1")
    assert got.preset == "custom" and got.stdin_prompt


def test_custom_string_command_gets_placeholders_shell_quoted(tmp_path: Path) -> None:
    ph = dict(PH, prompt_file=str(tmp_path / "my run; rm -rf x" / "T1's prompt.md"))
    got = inv(
        WorkerConfig(
            command="printf '%s|' {prompt_file} {task_id} ${NOT_A_PLACEHOLDER-}{{worktree}}"
        ),
        ph=ph,
    )
    assert isinstance(got.command, str)
    out = subprocess.run(["sh", "-c", got.command], capture_output=True, text=True, check=True)
    assert out.stdout == f"{ph['prompt_file']}|T1|{{worktree}}|"


def test_unknown_placeholder_is_invalid_input() -> None:
    with pytest.raises(InvalidInput, match=r"task T1: worker: unknown placeholder \{prompt\}"):
        inv(WorkerConfig(command=("agent", "{prompt}")))
    with pytest.raises(InvalidInput, match="unknown placeholder"):
        inv(WorkerConfig(preset="claude", args=("--x", "{taskid}")))
    assert "unknown placeholder" in (
        preset_problem(WorkerConfig(command="a {nope}"), make_task()) or ""
    )


def test_a_preset_next_to_a_command_only_chooses_the_parser() -> None:
    got = inv(
        WorkerConfig(
            preset="gemini",
            command=("gemini", "--output-format", "json", "--approval-mode", "yolo"),
        )
    )
    assert got.command[-1] == "yolo" and got.preset == "gemini"


def test_empty_custom_command_is_invalid() -> None:
    with pytest.raises(InvalidInput, match="empty"):
        inv(WorkerConfig(command=()))
    with pytest.raises(InvalidInput, match="empty"):
        inv(WorkerConfig(command="  "))


# --------------------------------------------------------------------------- end to end


@pytest.fixture
def agent_run(tmp_path: Path) -> Any:
    """Render the prompt, build the invocation, run it, parse the result."""

    def go(
        worker: WorkerConfig,
        *,
        status: str = "pass",
        mode: str = "normal",
        task: Task | None = None,
    ) -> tuple[WorkerResult, Path]:
        task = task or make_task("T2", relevant_files=["src/app.py"])
        spec = make_spec(tmp_path, task)
        runs = tmp_path / "runs"
        runs.mkdir(exist_ok=True)
        worktree = tmp_path / "wt"
        worktree.mkdir(exist_ok=True)
        prompt_file = runs / f"{task.id}.prompt.md"
        result_file = runs / f"{task.id}.result.json"
        log = runs / f"{task.id}.log"
        prompt_file.write_text(
            render_prompt(
                spec,
                task,
                parallel=ParallelContext(wave=1),
                inputs=[BlockerResult("T1", "pass", "Made the model", "ok", None)],
            )
        )
        # The fakes are `#!/usr/bin/env python3`: find this interpreter first, not a shim.
        path = os.pathsep.join(
            [str(FAKE_AGENTS), str(Path(sys.executable).parent), os.environ["PATH"]]
        )
        base = dict(
            os.environ,
            PATH=path,
            FAKE_AGENT_STATUS=status,
            FAKE_AGENT_MODE=mode,
            FAKE_AGENT_ARGV_FILE=str(tmp_path / "argv.json"),
        )
        env = worker_env(
            base,
            task_id=task.id,
            spec_dir=spec.dir,
            worktree=worktree,
            prompt_file=prompt_file,
            result_file=result_file,
            run_id="r1",
            attempt=1,
        )
        invocation = build_invocation(
            worker,
            task,
            {
                "prompt_file": str(prompt_file),
                "task_id": task.id,
                "worktree": str(worktree),
                "spec_dir": str(spec.dir),
            },
        )
        out = run_process(
            invocation.command,
            cwd=worktree,
            env=env,
            stdin_path=prompt_file if invocation.stdin_prompt else None,
            log_path=log,
            timeout_s=60,
        )
        assert out.start_error is None, out.start_error
        return parse_result(result_file, log, out.returncode, preset=invocation.preset), worktree

    return go


COSTS = {"claude": 0.0421, "codex": None, "aider": 0.015, "gemini": None}
TOKENS = {  # input, output as each CLI reports them (summed over turns / messages / models)
    "claude": (1200, 250),
    "codex": (12000, 420),
    "aider": (3500, 230),
    "gemini": (6000, 350),
}


@pytest.mark.parametrize("agent", AGENTS)
@pytest.mark.parametrize("status", ["pass", "fail", "blocked"])
def test_agent_cli_end_to_end(agent: str, status: str, agent_run: Any) -> None:
    result, worktree = agent_run(WorkerConfig(preset=agent), status=status)
    assert result.status == status
    assert result.source == "output"
    assert result.notes == f"{agent} worked on task T2"  # it read the prompt we rendered
    assert (worktree / f"done-by-{agent}.txt").read_text() == "T2\n"  # ran in the worktree
    assert result.files_created == (f"done-by-{agent}.txt",)
    assert result.data == [{"agent": agent, "task": "T2"}]
    if status == "pass":
        assert result.blocker is None
        assert result.test_results == {"ran": 3, "passed": 3, "failed": 0}
    else:
        assert result.blocker == f"fake {agent}: {status} on purpose"
    assert result.cost_usd == COSTS[agent]
    assert result.tokens is not None
    assert (result.tokens["input"], result.tokens["output"]) == TOKENS[agent]


@pytest.mark.parametrize("agent", AGENTS)
def test_agent_cli_failure_is_a_fail_with_a_reason(agent: str, agent_run: Any) -> None:
    result, _ = agent_run(WorkerConfig(preset=agent), mode="error")
    assert result.status == "fail"
    assert result.blocker
    expected = {
        "claude": "claude reported an error: error_max_turns",
        "codex": "codex reported an error: stream disconnected",
        "aider": "invalid x-api-key",
        "gemini": "gemini reported an error: Quota exceeded",
    }[agent]
    assert expected in result.blocker


@pytest.mark.parametrize("agent", AGENTS)
def test_agent_answer_without_json_falls_back_to_the_exit_code(agent: str, agent_run: Any) -> None:
    result, _ = agent_run(WorkerConfig(preset=agent), mode="silent")
    assert result.status == "pass" and result.source == "exit_code"
    assert result.cost_usd == COSTS[agent]


@pytest.mark.parametrize("agent", AGENTS)
def test_agent_result_file_wins(agent: str, agent_run: Any) -> None:
    result, _ = agent_run(WorkerConfig(preset=agent), status="blocked", mode="write_result")
    assert result.source == "result_file" and result.status == "blocked"
    assert result.cost_usd == COSTS[agent]


def test_preset_args_reach_the_cli(agent_run: Any, tmp_path: Path) -> None:
    result, _ = agent_run(WorkerConfig(preset="claude", args=("--model", "sonnet")))
    assert result.status == "pass"
    argv = json.loads((tmp_path / "argv.json").read_text())
    assert argv == [
        "-p",
        "--output-format",
        "json",
        "--permission-mode",
        "acceptEdits",
        "--model",
        "sonnet",
    ]


def test_custom_wrapper_around_claude_is_unwrapped(agent_run: Any, tmp_path: Path) -> None:
    wrapper = tmp_path / "wrap.sh"
    wrapper.write_text(
        '#!/bin/sh\necho "wrapper starting for $SPECEXEC_TASK_ID"\nexec claude "$@"\n'
    )
    wrapper.chmod(0o755)
    cmd = f"{wrapper} -p --output-format json --permission-mode acceptEdits < {{prompt_file}}"
    result, _ = agent_run(WorkerConfig(command=cmd), status="fail")
    assert result.status == "fail" and result.cost_usd == 0.0421


def test_shell_task_end_to_end(agent_run: Any) -> None:
    task = make_task(
        "T3",
        command='echo "working on $SPECEXEC_TASK_ID"; echo \'{"status": "blocked", "blocker": "needs db"}\'',
    )
    result, _ = agent_run(WorkerConfig(preset="shell"), task=task)
    assert result.status == "blocked" and result.blocker == "needs db"
    task = make_task("T4", command="test -f missing-file")
    result, _ = agent_run(None, task=task)
    assert result.status == "fail" and result.source == "exit_code"
    assert "exited with code 1" in (result.blocker or "")


def test_fake_agents_are_on_path_only_in_the_worker_env() -> None:
    # The real CLIs must never be run by this suite by accident.
    for agent in AGENTS:
        assert (FAKE_AGENTS / agent).stat().st_mode & 0o111
        # Not on this process's PATH: only a worker environment that adds them finds them.
        found = shutil.which(agent)
        assert found is None or Path(found).parent != FAKE_AGENTS, found
    env = worker_env({**os.environ, "PATH": f"{FAKE_AGENTS}{os.pathsep}{os.environ['PATH']}"})
    assert shutil.which("claude", path=env["PATH"]) == str(FAKE_AGENTS / "claude")
