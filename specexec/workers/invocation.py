"""The command line each task's worker runs (DESIGN §4), from its plugin and the user's
worker setting.

A worker object ``{"preset": P, "args": [...]}`` inserts ``args`` between the plugin's head
and tail. A custom ``{"command": [...] | "..."}`` replaces the plugin's command (a ``preset``
next to it then only selects how the output is read); ``{prompt_file}``, ``{task_id}``,
``{worktree}``, ``{spec_dir}`` are substituted in it and in ``args``: shell-quoted inside a
string command, verbatim inside argv items. ``${NAME}`` is left to the shell and
``{{name}}`` gives a literal ``{name}``. A custom command gets the prompt on stdin as well.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Mapping
from dataclasses import dataclass

from specexec.errors import InvalidInput
from specexec.fmt import did_you_mean
from specexec.tasksfile.types import Task, WorkerConfig
from specexec.workers.agent import Agent
from specexec.workers.registry import AGENTS, CUSTOM, DEFAULT_PRESET, KNOWN_PRESETS

PLACEHOLDERS: tuple[str, ...] = ("prompt_file", "task_id", "worktree", "spec_dir")


@dataclass(frozen=True, slots=True)
class Invocation:
    """What to run for one task: argv tuple (no shell) or a string for ``sh -c``."""

    command: tuple[str, ...] | str
    stdin_prompt: bool  # give the rendered prompt on stdin (else /dev/null)
    preset: str  # how results.parse_result reads the output: a preset name or "custom"

    @property
    def agent(self) -> Agent | None:
        """The plugin behind this command (None: a custom command without a preset)."""
        return AGENTS.get(self.preset)


# {{name}} -> literal {name}; ${name} is a shell variable; {name} is a placeholder.
_PLACEHOLDER_RE = re.compile(r"\{\{(?P<esc>[A-Za-z_]\w*)\}\}|(?<!\$)\{(?P<name>[A-Za-z_]\w*)\}")


def substitute(text: str, values: Mapping[str, str], *, quote: bool, where: str) -> str:
    """Replace ``{placeholder}`` in ``text``; shell-quote the values when ``quote``."""

    def repl(m: re.Match[str]) -> str:
        if m.group("esc") is not None:
            return "{" + m.group("esc") + "}"
        name = m.group("name")
        if name not in PLACEHOLDERS:
            known = ", ".join("{" + p + "}" for p in PLACEHOLDERS)
            raise InvalidInput(
                f"{where}: unknown placeholder {{{name}}} (known: {known}; "
                f"write {{{{{name}}}}} for a literal {{{name}}})"
            )
        if name not in values:
            raise InvalidInput(f"{where}: no value for placeholder {{{name}}}")
        value = str(values[name])
        return shlex.quote(value) if quote else value

    return _PLACEHOLDER_RE.sub(repl, text)


def _where(task: Task) -> str:
    return f"task {task.id}: worker"


def build_invocation(
    worker: WorkerConfig | None, task: Task, placeholders: Mapping[str, str]
) -> Invocation:
    """The command for ``task`` under ``worker`` (already resolved per DESIGN §4 by the
    caller; None = the ``shell`` preset). Raises InvalidInput for an unknown preset, a
    ``shell`` task without ``command``, or an unknown placeholder."""
    worker = worker or WorkerConfig(preset=DEFAULT_PRESET)
    where = _where(task)
    preset_name = worker.preset or (CUSTOM if worker.command is not None else DEFAULT_PRESET)
    if worker.preset is not None and worker.preset not in KNOWN_PRESETS:
        raise InvalidInput(
            f"{where}: unknown preset {worker.preset!r}{did_you_mean(worker.preset, KNOWN_PRESETS)}"
            f" (known: {', '.join(KNOWN_PRESETS)})"
        )
    args = tuple(substitute(a, placeholders, quote=False, where=where) for a in worker.args)

    if worker.command is not None:
        if isinstance(worker.command, str):
            if not worker.command.strip():
                raise InvalidInput(f"{where}: the command is empty")
            text = substitute(worker.command, placeholders, quote=True, where=where)
            if args:
                text = f"{text} {shlex.join(args)}"
            return Invocation(text, True, preset_name)
        if not worker.command or not worker.command[0]:
            raise InvalidInput(f"{where}: the command is empty")
        argv = tuple(substitute(a, placeholders, quote=False, where=where) for a in worker.command)
        return Invocation(argv + args, True, preset_name)

    if preset_name == DEFAULT_PRESET:
        if not task.command or not task.command.strip():
            raise InvalidInput(
                f"task {task.id}: the 'shell' worker runs the task's 'command', "
                "but the task has none (set 'command' or choose another worker)"
            )
        # Run verbatim: shell code is full of braces; $SPECEXEC_* carry the same values.
        text = task.command if not args else f"{task.command} {shlex.join(args)}"
        return Invocation(text, True, DEFAULT_PRESET)

    preset = AGENTS[preset_name]
    head = tuple(substitute(a, placeholders, quote=False, where=where) for a in preset.head)
    tail = tuple(substitute(a, placeholders, quote=False, where=where) for a in preset.tail)
    return Invocation(head + args + tail, preset.stdin_prompt, preset_name)


def preset_problem(worker: WorkerConfig | None, task: Task) -> str | None:
    """Why ``task`` cannot run under ``worker`` (for validation), or None."""
    dummy = {p: f"<{p}>" for p in PLACEHOLDERS}
    try:
        build_invocation(worker, task, dummy)
    except InvalidInput as exc:
        return str(exc)
    return None
