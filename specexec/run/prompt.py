"""Rendering the worker prompt (BUILD_WORKER_PROMPT_PATTERN, handoff form of pattern 000).

The template is ``<spec_dir>/worker_prompt.md.j2`` when the spec folder has one, else the
packaged ``specexec/run/worker_prompt.md.j2``. Spec folders may be dropped in by other
people, so templates run in jinja2's immutable sandbox: no attribute starting with ``_``,
no mutation of the data passed in, bounded ``range``, and bounded ``*``/``**`` so a
template cannot exhaust memory or CPU. Any template problem is an InvalidInput naming the
file and line.

Variables a template sees (plain JSON-like data):

- ``task``: the task's whole JSON object, plus normalised lists ``relevant_files``,
  ``spec_sections``, ``functions`` (codebase_refs.functions), ``patterns``
  (standards.patterns), and ``verify`` (the task's, else the spec's)
- ``spec``: ``{"name", "dir"}``; ``project``: ``{"product_pitch", "tech_stack" (list),
  "branch_name"}`` from context-summary.json; ``context``: that whole file
- ``parallel``: ``{"wave", "concurrent_tasks", "conflict_risk", "instructions"}``
- ``inputs``: the blockers' results ``[{"task_id", "status", "summary", "notes", "data"}]``
- ``merged``: ``{"strategy", "sources", "data"}`` (MergedInput.items as ``data``) or None
- ``result_env``: the name of the result-file variable (SPECEXEC_RESULT_FILE)
- ``answer_block``: whether to also ask for the result as a fenced block in the answer
- ``result_file``: where to write the result (in a worktree: ``.specexec-result.json`` in
  the working directory, where every agent sandbox allows writes)
- filter ``json``: pretty JSON (jinja's ``tojson`` escapes ``<>&`` for HTML)
"""

from __future__ import annotations

import functools
import json
import operator
import os
import re
import stat
import threading
import time
import traceback
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import jinja2
from jinja2.compiler import CodeGenerator, Frame
from jinja2.exceptions import SecurityError
from jinja2.nodes import Concat
from jinja2.sandbox import ImmutableSandboxedEnvironment

from specexec.errors import InvalidInput, SpecexecError, UnsafePath
from specexec.tasksfile.types import PROMPT_OVERRIDE, Spec, Task

TEMPLATE_MAX_BYTES = 1024 * 1024
PACKAGED_TEMPLATE = "run/worker_prompt.md.j2"
RESULT_ENV = "SPECEXEC_RESULT_FILE"

DEFAULT_INSTRUCTIONS = (
    "- Work only in this worktree (your current directory); do not read or write files "
    "outside it.\n"
    "- Change only the files listed under Files to Modify (and their tests); other tasks "
    "may be changing other files at the same time.\n"
    "- Do not commit, push, create branches or switch branches: specexec commits and merges "
    "your changes when you are done."
)

# Limits on what a template expression may build (the sandbox alone does not bound them).
_MAX_REPEAT = 1_000_000  # items or characters made by `*`
_MAX_POWER_BITS = 100_000  # bits of an int made by `**`

# The budget of one rendering (internal, not configurable by a spec folder): a template
# is user-supplied code, and without these a loop of 3000*3000*300 ignores --timeout and
# Ctrl-C. The time is checked at every iteration of every loop and every macro call.
RENDER_BUDGET_S = 5.0
PROMPT_MAX_CHARS = 4 * 1024 * 1024  # the rendered prompt
# Any one string or list a template builds (`~`, `+`, `%`, a filter, a method call):
# bounds memory where no output is produced (a string doubled in a loop).
_MAX_BUILT = PROMPT_MAX_CHARS
# A width or precision that would build more than _MAX_BUILT at once ("%999999999s").
_HUGE_WIDTH = re.compile(r"%[-#0 +]*(?:\*|\d{7,})|%[-#0 +]*\d*\.(?:\*|\d{7,})")
_HUGE_FORMAT = re.compile(r"\{[^{}]*:[^{}]*\d{7,}")
_WIDTH_FILTERS = frozenset({"center", "indent", "wordwrap", "truncate", "batch", "slice"})


class RenderCancelled(SpecexecError):
    """Rendering stopped because the run was interrupted (Ctrl-C, SIGTERM)."""


class _OverTime(Exception):
    pass


class _TooLarge(Exception):
    pass


@dataclass(slots=True)
class _Budget:
    deadline: float
    cancel: threading.Event | None


# The budget of the rendering running in this thread (the daemon renders in several).
_current = threading.local()


def _checkpoint() -> None:
    budget: _Budget | None = getattr(_current, "budget", None)
    if budget is None:
        return
    if budget.cancel is not None and budget.cancel.is_set():
        raise RenderCancelled("interrupted while rendering the prompt")
    if time.monotonic() > budget.deadline:
        raise _OverTime


def _built(value: Any) -> Any:
    """``value``, refused when it is a string or list larger than _MAX_BUILT."""
    if isinstance(value, str | list | tuple) and len(value) > _MAX_BUILT:
        raise _TooLarge
    return value


def _no_huge_ints(args: Sequence[Any]) -> None:
    for arg in args:
        if isinstance(arg, int) and not isinstance(arg, bool) and abs(arg) > _MAX_BUILT:
            raise _TooLarge
        if isinstance(arg, tuple):
            _no_huge_ints(arg)


def _bounded_filter(name: str, func: Any) -> Any:
    @functools.wraps(func)
    def bounded(*args: Any, **kwargs: Any) -> Any:
        if name in _WIDTH_FILTERS:
            _no_huge_ints(args[1:] + tuple(kwargs.values()))
        elif name == "format" and args and isinstance(args[0], str):
            if _HUGE_WIDTH.search(args[0]):
                raise _TooLarge
            _no_huge_ints(args[1:])
        _checkpoint()
        return _built(func(*args, **kwargs))

    return bounded


class _Generator(CodeGenerator):
    """Jinja's code generator with a budget check at the start of every block body
    (each loop iteration, each macro call) and around every ``~``."""

    def blockvisit(self, nodes: Any, frame: Frame) -> None:
        self.writeline("environment.checkpoint()")
        super().blockvisit(nodes, frame)

    def visit_Concat(self, node: Concat, frame: Frame) -> None:
        self.write("environment.built(")
        super().visit_Concat(node, frame)
        self.write(")")


@dataclass(frozen=True, slots=True)
class ParallelContext:
    wave: int
    concurrent_tasks: tuple[str, ...] = ()
    conflict_risk: str = "none"
    instructions: str = DEFAULT_INSTRUCTIONS


@dataclass(frozen=True, slots=True)
class BlockerResult:
    """A finished blocker, as handed to the task that waited for it."""

    task_id: str
    status: str
    summary: str | None = None
    notes: str | None = None
    data: Any = None


@dataclass(frozen=True, slots=True)
class MergedInput:
    """The blockers' ``data`` combined by the task's merge strategy (handoff.merge_data).

    Templates see it as ``merged.data`` (``merged.items`` would be the dict method)."""

    strategy: str
    items: Sequence[Any] = ()
    sources: tuple[str, ...] = ()  # the blockers merged, in declared order


class _Environment(ImmutableSandboxedEnvironment):
    intercepted_binops = frozenset({"*", "**", "+", "%"})
    code_generator_class = _Generator

    @staticmethod
    def checkpoint() -> None:
        _checkpoint()

    @staticmethod
    def built(value: Any) -> Any:
        return _built(value)

    def call(__self, __context: Any, __obj: Any, *args: Any, **kwargs: Any) -> Any:
        # A str or list method with a huge count or width (" ".ljust(10**9)) is refused
        # before it allocates; every result (macros too) is bounded after.
        # (str.format comes wrapped by the sandbox: the method is its __wrapped__.)
        owner = getattr(getattr(__obj, "__wrapped__", __obj), "__self__", None)
        if isinstance(owner, str | list | tuple):
            _no_huge_ints(args + tuple(kwargs.values()))
            if isinstance(owner, str) and _HUGE_FORMAT.search(owner):
                raise _TooLarge
        _checkpoint()
        return _built(super().call(__context, __obj, *args, **kwargs))

    def call_binop(self, context: Any, operator_: str, left: Any, right: Any) -> Any:
        if operator_ == "+":
            return _built(operator.add(left, right))
        if operator_ == "%":
            if isinstance(left, str):
                if _HUGE_WIDTH.search(left):
                    raise _TooLarge
                _no_huge_ints(right if isinstance(right, tuple) else (right,))
            return _built(operator.mod(left, right))
        if operator_ == "**":
            if (
                isinstance(left, int)
                and isinstance(right, int)
                and right > 0
                and left.bit_length() * right > _MAX_POWER_BITS
            ):
                raise SecurityError("the result of '**' would be too large")
            return operator.pow(left, right)  # floats overflow quickly (OverflowError)
        if operator_ == "*":
            for seq, times in ((left, right), (right, left)):
                sized = isinstance(seq, str | list | tuple) and isinstance(times, int)
                if sized and len(seq) * times > _MAX_REPEAT:
                    raise SecurityError("the result of '*' would be too large")
            return operator.mul(left, right)
        return super().call_binop(context, operator_, left, right)


def _json_filter(value: Any, indent: int | None = 2) -> str:
    return json.dumps(value, indent=indent, ensure_ascii=False, default=str)


@functools.cache
def _environment() -> _Environment:
    env = _Environment(
        autoescape=False,
        keep_trailing_newline=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["json"] = _json_filter
    for name, func in list(env.filters.items()):
        env.filters[name] = _bounded_filter(name, func)
    return env


@functools.lru_cache(maxsize=16)
def _compile(source: str, filename: str) -> jinja2.Template:
    env = _environment()
    code = env.compile(source, name=os.path.basename(filename), filename=filename)
    return env.template_class.from_code(env, code, env.make_globals(None))


@functools.cache
def _packaged_source() -> str:
    return resources.files("specexec").joinpath(PACKAGED_TEMPLATE).read_text(encoding="utf-8")


def template_path(spec_dir: Path) -> Path | None:
    """The spec folder's own template, checked; None when it has none.

    It must be a regular file inside the spec folder: a symlink is followed only when its
    target stays inside (UnsafePath otherwise), anything else (a FIFO, a directory) is
    refused, and so is a file over TEMPLATE_MAX_BYTES.
    """
    path = spec_dir / PROMPT_OVERRIDE
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise InvalidInput(f"{path}: cannot read the prompt template: {exc.strerror}") from None
    if stat.S_ISLNK(st.st_mode):
        target = Path(os.path.realpath(path))
        root = Path(os.path.realpath(spec_dir))
        if not target.is_relative_to(root):
            raise UnsafePath(
                f"{path}: the prompt template is a symlink to {target}, outside the spec folder"
            )
        try:
            st = os.stat(target)
        except OSError:
            raise UnsafePath(f"{path}: the prompt template is a dangling symlink") from None
        path = target
    if not stat.S_ISREG(st.st_mode):
        raise UnsafePath(f"{path}: the prompt template is not a regular file")
    if st.st_size > TEMPLATE_MAX_BYTES:
        raise InvalidInput(
            f"{path}: the prompt template is {st.st_size} bytes (limit {TEMPLATE_MAX_BYTES})"
        )
    return path


def _load(spec_dir: Path) -> tuple[str, str]:
    """(source, filename) of the template to use."""
    path = template_path(spec_dir)
    if path is None:
        return _packaged_source(), f"<specexec>/{PACKAGED_TEMPLATE}"
    try:
        return path.read_text(encoding="utf-8"), str(spec_dir / PROMPT_OVERRIDE)
    except UnicodeDecodeError:
        raise InvalidInput(f"{path}: the prompt template is not UTF-8 text") from None
    except OSError as exc:
        raise InvalidInput(f"{path}: cannot read the prompt template: {exc.strerror}") from None


def _list(value: Any) -> list[Any]:
    if value is None or value == "":
        return []
    if isinstance(value, list | tuple):
        return [v for v in value if v is not None and v != ""]
    return [value]


def _plain(value: Any) -> Any:
    """A deep copy as dicts/lists (the template must not see or touch our objects)."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    if value is None or isinstance(value, str | int | float | bool):
        return value
    return str(value)


def _task_vars(spec: Spec, task: Task) -> dict[str, Any]:
    raw = _plain(task.raw) if task.raw else {}
    refs = raw.get("codebase_refs")
    refs = refs if isinstance(refs, dict) else {}
    standards = raw.get("standards")
    standards = standards if isinstance(standards, dict) else {}
    out = dict(raw)
    out.update(
        id=task.id,
        summary=task.summary,
        relevant_files=list(task.relevant_files) or _list(raw.get("relevant_files")),
        spec_sections=_list(raw.get("spec_sections")),
        functions=_list(refs.get("functions")),
        patterns=_list(standards.get("patterns")),
        verify=task.verify or spec.verify,
        blocked_by=list(task.blocked_by),
    )
    return out


def _project_vars(context: Mapping[str, Any]) -> dict[str, Any]:
    raw = context.get("global")
    glob: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
    stack = glob.get("tech_stack")
    if isinstance(stack, str):
        stack = [s.strip() for s in stack.split(",")]
    return {
        "product_pitch": glob.get("product_pitch") or None,
        "tech_stack": [str(s) for s in _list(stack)],
        "branch_name": glob.get("branch_name") or None,
    }


# The last spec contexts seen, by identity: every task of a spec shares its context, and
# copying a large context-summary.json for each task would cost more than rendering.
_CONTEXTS: dict[int, tuple[Mapping[str, Any], dict[str, Any]]] = {}


def _context_vars(context: Mapping[str, Any]) -> dict[str, Any]:
    hit = _CONTEXTS.get(id(context))
    if hit is not None and hit[0] is context:
        return hit[1]
    variables = {"project": _project_vars(context), "context": _plain(context)}
    if len(_CONTEXTS) >= 16:
        _CONTEXTS.clear()
    _CONTEXTS[id(context)] = (context, variables)
    return variables


def render_prompt(
    spec: Spec,
    task: Task,
    *,
    parallel: ParallelContext,
    inputs: Sequence[BlockerResult],
    merged: MergedInput | None = None,
    result_file: str = "$" + RESULT_ENV,
    answer_block: bool = True,
    conflicts: Sequence[str] = (),
    cancel: threading.Event | None = None,
) -> str:
    """The worker prompt for ``task``. Raises InvalidInput (UnsafePath) for a bad template
    or one over its budget (RENDER_BUDGET_S, PROMPT_MAX_CHARS); RenderCancelled once
    ``cancel`` is set (checked as the template runs).
    ``result_file`` is the path the prompt tells the worker to write its result to;
    ``conflicts`` the paths whose merge conflicted last time (on_conflict "rerun")."""
    source, filename = _load(spec.dir)
    variables = {
        "task": _task_vars(spec, task),
        "spec": {"name": spec.name, "dir": str(spec.dir)},
        **_context_vars(spec.context),
        "parallel": {
            "wave": parallel.wave,
            "concurrent_tasks": list(parallel.concurrent_tasks),
            "conflict_risk": parallel.conflict_risk,
            "instructions": parallel.instructions or DEFAULT_INSTRUCTIONS,
        },
        "inputs": [
            {
                "task_id": b.task_id,
                "status": b.status,
                "summary": b.summary,
                "notes": b.notes,
                "data": _plain(b.data),
            }
            for b in inputs
        ],
        "merged": None
        if merged is None
        else {
            "strategy": merged.strategy,
            "sources": list(merged.sources),
            "data": _plain(list(merged.items)),
        },
        "result_env": RESULT_ENV,
        "result_file": result_file,
        "answer_block": answer_block,
        "conflicts": list(conflicts),
    }
    budget = _Budget(time.monotonic() + RENDER_BUDGET_S, cancel)
    try:
        text = _render(_compile(source, filename), variables, budget)
    except _OverTime:
        raise InvalidInput(
            f"{filename}: the prompt took longer than its rendering budget of "
            f"{RENDER_BUDGET_S:g} s (a loop too long?)"
        ) from None
    except (_TooLarge, MemoryError):
        raise InvalidInput(
            f"{filename}: the prompt is larger than its budget of "
            f"{PROMPT_MAX_CHARS // (1024 * 1024)} Mi characters"
        ) from None
    except jinja2.TemplateSyntaxError as exc:
        raise InvalidInput(
            f"{filename}:{exc.lineno}: template syntax error: {exc.message}"
        ) from None
    except (SecurityError, jinja2.TemplateError, ArithmeticError, TypeError, ValueError) as exc:
        raise InvalidInput(f"{_where(exc, filename)}: template error: {_message(exc)}") from None
    except RecursionError:
        raise InvalidInput(f"{filename}: template error: recursion too deep") from None
    return text if text.endswith("\n") else text + "\n"


def _render(template: jinja2.Template, variables: dict[str, Any], budget: _Budget) -> str:
    """Render within ``budget``: its deadline and cancel event are checked by the
    compiled template itself (_Generator), the prompt's size as it is produced."""
    saved = getattr(_current, "budget", None)
    _current.budget = budget
    try:
        parts: list[str] = []
        size = 0
        for part in template.generate(variables):
            size += len(part)
            if size > PROMPT_MAX_CHARS:
                raise _TooLarge
            parts.append(part)
        return "".join(parts)
    finally:
        _current.budget = saved


def _message(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    if isinstance(exc, SecurityError):
        return f"not allowed in a sandboxed template: {text}"
    return text


def _where(exc: BaseException, filename: str) -> str:
    """``file:line`` of the template line that failed (jinja maps frames to it)."""
    line = None
    for frame in traceback.extract_tb(exc.__traceback__):
        if frame.filename == filename:
            line = frame.lineno
    return f"{filename}:{line}" if line else filename
