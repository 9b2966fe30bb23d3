"""tasks.json v1 at the file boundary: pydantic models, validation, and ``load_spec``.

Validation reports *every* problem in one pass, each naming the file, the task and the
field. The raw document (with unknown fields and key order) is kept on the ``Spec`` so
that writers never lose what they do not understand.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from specexec.errors import InvalidInput, UnsafePath
from specexec.fmt import did_you_mean
from specexec.git.repo import find_repo_root
from specexec.plan import patterns as paths
from specexec.plan import planner
from specexec.tasksfile import jsonio
from specexec.tasksfile.types import (
    CONTEXT_FILE,
    PROMPT_OVERRIDE,
    TASKS_FILE,
    MergeConfig,
    Spec,
    Task,
    WorkerConfig,
)

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
# About two years. Larger durations are mistakes, and 1e308 minutes summed over a plan
# would overflow to infinity (which cannot be printed as hours and minutes).
MAX_MINUTES = 1_000_000
_ID_RE = re.compile(ID_PATTERN)


class _Open(BaseModel):
    # Unknown fields are allowed (and kept in the raw document); types are strict so that
    # "5" is not silently taken for 5.
    model_config = ConfigDict(extra="allow", strict=True)


class WorkerModel(_Open):
    preset: str | None = Field(
        None, description="Worker preset: shell, claude, codex, aider, gemini."
    )
    command: list[str] | str | None = Field(
        None,
        description="argv list or shell string; {prompt_file} {task_id} {worktree} {spec_dir} are substituted.",
    )
    args: list[str] = Field(default_factory=list, description="Extra arguments for a preset.")


WorkerField = Annotated[str | WorkerModel, Field(description="A preset name or a worker object.")]


class ParallelizationModel(_Open):
    blocked_by: list[str] = Field(
        default_factory=list, description="Ids of tasks that must pass first."
    )


class MergeModel(_Open):
    strategy: Literal["union", "intersection", "priority", "voting"]
    key: str | None = Field(None, description="priority: the item field to rank by (ascending).")
    top_n: Annotated[int, Field(ge=1)] | None = None
    min_votes: Annotated[int, Field(ge=1)] = 2


class DefaultsModel(_Open):
    timeout_minutes: Annotated[float, Field(gt=0, le=MAX_MINUTES)] = 30.0
    max_retries: Annotated[int, Field(ge=0, le=100)] = 1
    verify: str | None = None
    max_wait_minutes: Annotated[float, Field(ge=0, le=MAX_MINUTES)] = Field(
        default=30.0, description="Per task: how long rate limits and overloads are waited out."
    )
    max_cost_usd: Annotated[float, Field(gt=0)] | None = Field(
        default=None, description="Start no task once the run's agent cost reaches this (USD)."
    )
    max_tokens: Annotated[int, Field(ge=1)] | None = Field(
        default=None, description="Start no task once the run's tokens (input + output) reach this."
    )
    on_conflict: Literal["fail", "rerun"] = Field(
        default="fail", description="rerun: a task whose merge conflicts runs once more."
    )


class TaskModel(_Open):
    id: str = Field(description="1-64 chars of [A-Za-z0-9._-], starting with a letter or digit.")
    summary: Annotated[str, Field(min_length=1)]
    status: Literal["pending", "in_progress", "pass", "fail", "blocked"] = "pending"
    relevant_files: list[str] = Field(
        default_factory=list, description="Repo-relative files, directories (trailing /) and globs."
    )
    parallelization: ParallelizationModel = Field(default_factory=ParallelizationModel)
    estimated_minutes: Annotated[float, Field(ge=0, le=MAX_MINUTES)] | None = None
    duration_minutes: Annotated[float, Field(ge=0, le=MAX_MINUTES)] | None = None
    command: str | None = Field(None, description="The shell command of the `shell` worker.")
    verify: str | None = Field(
        None, description="Run in the worktree after the worker; non-zero fails."
    )
    worker: WorkerField | None = None
    timeout_minutes: Annotated[float, Field(gt=0, le=MAX_MINUTES)] | None = None
    max_retries: Annotated[int, Field(ge=0, le=100)] | None = None
    on_conflict: Literal["fail", "rerun"] | None = None
    attempts: Annotated[int, Field(ge=0)] = 0
    isolation: Literal["worktree", "none"] = "worktree"
    checkout: Literal["full", "sparse"] = "full"
    expect_changes: bool | None = None
    sparse_paths: list[str] = Field(default_factory=list)
    merge: MergeModel | None = None
    blocker: str | None = None
    spec_sections: list[str] = Field(default_factory=list)
    codebase_refs: dict[str, Any] = Field(default_factory=dict)
    standards: dict[str, Any] = Field(default_factory=dict)
    started_at: str | None = None
    completed_at: str | None = None
    branch: str | None = None
    commit: str | None = None
    files_changed: list[str] | None = None
    scope_violations: list[str] | None = None
    result: dict[str, Any] | None = None


class TasksFileModel(_Open):
    """tasks.json, version 1. Only tasks[].id and tasks[].summary are required."""

    model_config = ConfigDict(
        extra="allow",
        strict=True,
        title="specexec tasks.json",
        json_schema_extra={"$id": "https://specexec.dev/schema/tasks-v1.json"},
    )

    version: Literal[1] = 1
    spec: str | None = Field(
        None, description="Spec name (branch specexec/<spec>); default: the folder name."
    )
    base_ref: str | None = Field(
        None, description="Where the integration branch starts; default: HEAD."
    )
    worker: WorkerField | None = None
    defaults: DefaultsModel = Field(default_factory=DefaultsModel)
    tasks: list[TaskModel]
    execution_strategy: dict[str, Any] = Field(default_factory=dict)


def json_schema() -> dict[str, Any]:
    schema = TasksFileModel.model_json_schema()
    schema["$schema"] = "https://json-schema.org/draft/2020-12/schema"
    return schema


# --- validation --------------------------------------------------------------------------


def id_problem(value: str) -> str | None:
    if not _ID_RE.match(value):
        return "must be 1-64 characters of A-Z a-z 0-9 . _ - starting with a letter or digit"
    if ".." in value:
        return "must not contain '..'"
    if value.endswith(".lock") or value.endswith("."):
        return "must not end with '.lock' or '.'"
    return None


def _loc(loc: Sequence[int | str]) -> str:
    return ".".join(str(p) for p in loc) or "(document)"


def _describe(err: Mapping[str, Any]) -> str:
    msg = str(err.get("msg", "invalid"))
    if err.get("type") == "missing":
        return "is required"
    if "input" in err and err.get("type") not in ("missing",):
        got = err["input"]
        shown = repr(got) if not isinstance(got, dict | list) else type(got).__name__
        if len(shown) > 60:
            shown = shown[:57] + "..."
        return f"{msg} (got {shown})"
    return msg


class _Problems:
    def __init__(self, file: Path) -> None:
        self.file = file
        self.errors: list[str] = []
        self.warnings: list[str] = []

    def where(self, task: str | None, field: str | None) -> str:
        s = str(self.file)
        if task is not None:
            s += f': task "{task}"'
        if field:
            s += f": field {field}"
        return s

    def error(self, task: str | None, field: str | None, what: str) -> None:
        self.errors.append(f"{self.where(task, field)}: {what}")

    def warn(self, task: str | None, field: str | None, what: str) -> None:
        self.warnings.append(f"{self.where(task, field)}: {what}")


# Strings from the file are printed in messages: cut long ones, and escape what a
# terminal would interpret (escape sequences, bidi overrides) or not show.
_SHOWN_MAX = 80


def _cut(text: str) -> str:
    return text if len(text) <= _SHOWN_MAX else text[: _SHOWN_MAX - 1] + "\u2026"


def _repr(value: str) -> str:
    """``repr(value)``, cut to a readable length."""
    return _cut(repr(value))


def _plain(value: str) -> str:
    """``value`` as-is when printable, else its escaped form; cut to a readable length."""
    return _cut(value if value.isprintable() else repr(value)[1:-1])


# A lone surrogate comes from an invalid \u escape in the file. It cannot be encoded for
# the OS, so it can be neither a path nor a command (nor an argument of one).
_SURROGATE = re.compile("[\ud800-\udfff]")


def _check_unicode(probs: _Problems, label: str | None, field: str, value: Any) -> None:
    values = value if isinstance(value, list | tuple) else [value]
    for v in values:
        if isinstance(v, str) and _SURROGATE.search(v):
            probs.error(
                label, field, f"{_repr(v)} contains a lone surrogate (an invalid \\u escape)"
            )
            return


def _check_worker_unicode(probs: _Problems, label: str | None, w: WorkerModel | str | None) -> None:
    if isinstance(w, WorkerModel):
        _check_unicode(probs, label, "worker.preset", w.preset)
        _check_unicode(probs, label, "worker.command", w.command)
        _check_unicode(probs, label, "worker.args", w.args)
    else:
        _check_unicode(probs, label, "worker", w)


def _task_label(raw_task: Any, index: int) -> str:
    if isinstance(raw_task, dict) and isinstance(raw_task.get("id"), str) and raw_task["id"]:
        return _plain(raw_task["id"])
    return f"#{index + 1}"


def worker_config(value: str | WorkerModel | None) -> WorkerConfig | None:
    if value is None:
        return None
    if isinstance(value, str):
        return WorkerConfig(preset=value)
    command: tuple[str, ...] | str | None
    command = tuple(value.command) if isinstance(value.command, list) else value.command
    return WorkerConfig(preset=value.preset, command=command, args=tuple(value.args))


class _InRepo:
    """Where relevant_files entries lead on disk. The directories on the way are resolved
    once for all tasks: a realpath() per entry walks every component again (most of the
    validation time of a 1,000-task spec)."""

    def __init__(self, root: Path) -> None:
        self.root = root
        self.real_root = os.path.realpath(root)
        self._dirs: dict[str, str] = {".": self.real_root}
        self._isdir: dict[str, bool] = {".": True}

    def resolve(self, rel: str) -> str:
        """``os.path.realpath(root / rel)`` for a path without ``..``."""
        rel = os.path.normpath(rel)
        hit = self._dirs.get(rel)
        if hit is None:
            parent, _, name = rel.rpartition("/")
            full = os.path.join(self.resolve(parent or "."), name)
            # Nothing is there (so no link) when the parent is not a directory.
            link = self.isdir(parent or ".") and os.path.islink(full)
            hit = self._dirs[rel] = os.path.realpath(full) if link else full
        return hit

    def escapes(self, rel: str) -> bool:
        target = self.resolve(rel)
        return target != self.real_root and not target.startswith(self.real_root + os.sep)

    def isdir(self, rel: str) -> bool:
        """``os.path.isdir(root / rel)``; a path whose parent is not a directory is not
        one either, so a big spec stats each missing directory once, not each file."""
        rel = os.path.normpath(rel)
        hit = self._isdir.get(rel)
        if hit is None:
            parent = os.path.dirname(rel)
            hit = (not parent or self.isdir(parent)) and os.path.isdir(os.path.join(self.root, rel))
            self._isdir[rel] = hit
        return hit


def _check_path(
    probs: _Problems, label: str, field: str, pattern: str, repo: _InRepo | None
) -> str | None:
    """Normalise one relevant_files entry, or record why it is unsafe."""
    if _SURROGATE.search(pattern):
        _check_unicode(probs, label, field, pattern)
        return None
    problem = paths.path_problem(pattern)
    if problem:
        shown = _repr(pattern)
        probs.error(label, field, f"{shown}: {problem.replace(repr(pattern), shown)}")
        return None
    if repo is None:
        return pattern
    prefix = paths.fixed_prefix(pattern)
    if prefix and repo.escapes(prefix):
        probs.error(label, field, f"{_repr(pattern)}: escapes the repository through a symlink")
        return None
    if not pattern.endswith("/") and not paths.is_glob(pattern) and repo.isdir(pattern):
        return pattern + "/"
    return pattern


def validate_document(
    raw: Any, *, file: Path, repo_root: Path | None, context: Mapping[str, Any] | None = None
) -> tuple[Spec, list[str]]:
    """Check a parsed tasks.json; return the Spec and warnings, or raise with every error.

    The top level first, then each task on its own (so one bad task does not hide the
    problems of the others), then what ties tasks together: ids, blockers, cycles."""
    probs = _Problems(file)
    spec_dir = file.parent
    if not isinstance(raw, dict):
        raise InvalidInput(
            f"{file}: the top level must be a JSON object",
            [f"{file}: the top level must be a JSON object (got {type(raw).__name__})"],
        )
    top_model, raw_tasks = _check_top(probs, raw)
    models = _task_models(probs, raw_tasks)
    spec_name = spec_dir.name
    if top_model is not None and top_model.spec is not None:
        spec_name = top_model.spec
    if (p := id_problem(spec_name)) is not None:
        probs.error(None, "spec", f"{_repr(spec_name)} {p} (it names the branch specexec/<spec>)")
    _check_ids(probs, models)
    # A task that is invalid on its own (say, a bad status) still exists: naming it as a
    # blocker is no second error.
    _check_blockers(probs, models, {i for rt in raw_tasks if (i := _raw_id(rt)) is not None})

    defaults = top_model.defaults if top_model else DefaultsModel()
    if top_model is not None:
        _check_unicode(probs, None, "base_ref", top_model.base_ref)
        _check_unicode(probs, None, "defaults.verify", defaults.verify)
        _check_worker_unicode(probs, None, top_model.worker)
    in_repo = _InRepo(repo_root) if repo_root is not None else None
    tasks = [_task(probs, label, m, rt, defaults, in_repo) for label, m, rt in models]
    # Cycles, whatever else is wrong: among the first task of each id (a duplicate is
    # reported above), along the known blockers (find_cycle ignores unknown ones).
    first: dict[str, Task] = {}
    for t in tasks:
        first.setdefault(t.id, t)
    cycle = planner.find_cycle(list(first.values()))
    if cycle:
        shown = " -> ".join(_plain(c) for c in cycle)
        probs.error(_plain(cycle[0]), "parallelization.blocked_by", "cycle: " + shown)

    if probs.errors:
        n = len(probs.errors)
        raise InvalidInput(f"{file}: {n} problem{'s' if n != 1 else ''}", probs.errors)
    spec = Spec(
        dir=spec_dir,
        name=spec_name,
        tasks=tuple(tasks),
        base_ref=top_model.base_ref if top_model else None,
        worker=worker_config(top_model.worker) if top_model else None,
        verify=defaults.verify,
        max_wait_minutes=defaults.max_wait_minutes,
        max_cost_usd=defaults.max_cost_usd,
        max_tokens=defaults.max_tokens,
        context=dict(context or {}),
        raw=raw,
    )
    return spec, probs.warnings


def _check_top(probs: _Problems, raw: dict[str, Any]) -> tuple[TasksFileModel | None, list[Any]]:
    """The top level without its tasks (None if it is invalid), and the raw task list."""
    top = {k: v for k, v in raw.items() if k != "tasks"}
    top_model: TasksFileModel | None = None
    try:
        top_model = TasksFileModel.model_validate({**top, "tasks": []})
    except ValidationError as e:
        for err in e.errors():
            probs.error(None, _loc(err["loc"]), _describe(err))
    raw_tasks = raw.get("tasks")
    if "tasks" not in raw:
        probs.error(None, "tasks", "is required (a list of task objects)")
        return top_model, []
    if not isinstance(raw_tasks, list):
        probs.error(None, "tasks", f"must be a list (got {type(raw_tasks).__name__})")
        return top_model, []
    return top_model, raw_tasks


def _task_models(
    probs: _Problems, raw_tasks: list[Any]
) -> list[tuple[str, TaskModel, dict[str, Any]]]:
    """(label, model, raw object) of each task that is valid on its own."""
    models: list[tuple[str, TaskModel, dict[str, Any]]] = []
    for i, rt in enumerate(raw_tasks):
        label = _task_label(rt, i)
        if not isinstance(rt, dict):
            probs.error(label, None, f"must be an object (got {type(rt).__name__})")
            continue
        try:
            models.append((label, TaskModel.model_validate(rt), rt))
        except ValidationError as e:
            for err in e.errors():
                probs.error(label, _loc(err["loc"]), _describe(err))
    return models


def _check_ids(probs: _Problems, models: Sequence[tuple[str, TaskModel, Any]]) -> None:
    """Ids: invalid, duplicate, colliding by case."""
    seen: dict[str, str] = {}
    for label, m, _ in models:
        if (p := id_problem(m.id)) is not None:
            probs.error(label, "id", f"{_repr(m.id)} {p}")
        folded = m.id.casefold()
        if folded not in seen:
            seen[folded] = m.id
        elif seen[folded] == m.id:
            probs.error(label, "id", f'duplicate id "{_plain(m.id)}"')
        else:
            probs.error(
                label,
                "id",
                f'"{_plain(m.id)}" differs from "{_plain(seen[folded])}" only in letter case '
                "(they collide as branch names and paths)",
            )


def _raw_id(raw_task: Any) -> str | None:
    value = raw_task.get("id") if isinstance(raw_task, dict) else None
    return value if isinstance(value, str) else None


def _check_blockers(
    probs: _Problems, models: Sequence[tuple[str, TaskModel, Any]], ids: set[str]
) -> None:
    """Blockers: unknown (not the id of any task in the file, valid or not), self."""
    for label, m, _ in models:
        for b in m.parallelization.blocked_by:
            if b == m.id:
                probs.error(
                    label, "parallelization.blocked_by", "a task cannot be blocked by itself"
                )
            elif b not in ids:
                probs.error(
                    label,
                    "parallelization.blocked_by",
                    f'unknown task "{_plain(b)}"{did_you_mean(b, sorted(map(_plain, ids)))}',
                )


def _task(
    probs: _Problems,
    label: str,
    m: TaskModel,
    rt: dict[str, Any],
    defaults: DefaultsModel,
    in_repo: _InRepo | None,
) -> Task:
    """One task's own checks (text, paths, worker), then the internal Task with the
    spec's defaults applied."""
    _check_unicode(probs, label, "command", m.command)
    _check_unicode(probs, label, "verify", m.verify)
    _check_worker_unicode(probs, label, m.worker)
    rel: list[str] = []
    for j, pattern in enumerate(m.relevant_files):
        norm = _check_path(probs, label, f"relevant_files[{j}]", pattern, in_repo)
        if norm is not None:
            rel.append(norm)
    for j, pattern in enumerate(m.sparse_paths):
        _check_path(probs, label, f"sparse_paths[{j}]", pattern, in_repo)
    # An analysis task ("isolation": "none", no files) conflicting with nothing is the point.
    if not m.relevant_files and m.isolation != "none":
        probs.warn(
            label,
            "relevant_files",
            "is empty: the task conflicts with nothing and may run beside any task",
        )
    merge = (
        MergeConfig(m.merge.strategy, m.merge.key, m.merge.top_n, m.merge.min_votes)
        if m.merge
        else None
    )
    return Task(
        id=m.id,
        summary=m.summary,
        status=m.status,
        relevant_files=tuple(rel),
        blocked_by=tuple(b for b in m.parallelization.blocked_by if b != m.id),
        estimated_minutes=m.estimated_minutes,
        duration_minutes=m.duration_minutes,
        command=m.command,
        verify=m.verify if m.verify is not None else defaults.verify,
        worker=worker_config(m.worker),
        timeout_minutes=m.timeout_minutes or defaults.timeout_minutes,
        max_retries=m.max_retries if m.max_retries is not None else defaults.max_retries,
        on_conflict=m.on_conflict or defaults.on_conflict,
        attempts=m.attempts,
        isolation=m.isolation,
        checkout=m.checkout,
        expect_changes=m.expect_changes,
        sparse_paths=tuple(m.sparse_paths),
        merge=merge,
        blocker=m.blocker,
        raw=rt,
    )


def load_context(spec_dir: Path) -> dict[str, Any]:
    path = spec_dir / CONTEXT_FILE
    if not path.exists():
        return {}
    doc = jsonio.load_file(path)
    if not isinstance(doc, dict):
        raise InvalidInput(f"{path}: the top level must be a JSON object")
    glob = doc.get("global", {})
    if not isinstance(glob, dict):
        raise InvalidInput(f"{path}: field global: must be an object (got {type(glob).__name__})")
    if (where := _surrogate_at(doc)) is not None:
        # The context goes into every prompt, which is written as UTF-8.
        raise InvalidInput(
            f"{path}: field {where}: contains a lone surrogate (an invalid \\u escape)"
        )
    return doc


def _surrogate_at(doc: Any) -> str | None:
    """Where (``global.tech_stack[1]``) the first key or string with a lone surrogate is."""
    stack: list[tuple[str, Any]] = [("", doc)]
    while stack:  # iterative: the document may be nested up to jsonio.MAX_DEPTH
        where, value = stack.pop()
        if isinstance(value, str):
            if _SURROGATE.search(value):
                return where or "(document)"
        elif isinstance(value, dict):
            for key, item in value.items():
                name = f"{where}.{_plain(key)}" if where else _plain(key)
                if _SURROGATE.search(key):
                    return name
                stack.append((name, item))
        elif isinstance(value, list):
            stack.extend((f"{where}[{i}]", item) for i, item in enumerate(value))
    return None


def resolve_spec_dir(spec_dir: str | Path) -> Path:
    """The spec folder as an absolute path; refuses what is not a spec folder."""
    p = Path(spec_dir)
    if p.name == TASKS_FILE and p.is_file():
        p = p.parent
    if not p.is_dir():
        raise InvalidInput(f"{spec_dir}: no such spec folder")
    if not (p / TASKS_FILE).exists() and not (p / TASKS_FILE).is_symlink():
        raise InvalidInput(f"{spec_dir}: no {TASKS_FILE} in this folder")
    return p.absolute()


def checked_spec_dir(spec_dir: str | Path) -> Path:
    """The spec folder, refused if it (or a parent) is a symlink leading out of its repo."""
    d = resolve_spec_dir(spec_dir)
    root = find_repo_root(d)
    if root is not None:
        real_root, real_dir = os.path.realpath(root), os.path.realpath(d)
        if real_dir != real_root and not real_dir.startswith(real_root + os.sep):
            raise UnsafePath(f"{d}: the spec folder is a symlink leading out of its repository")
    return d


def load_spec(spec_dir: str | Path) -> tuple[Spec, list[str]]:
    """Read and validate a spec folder. Raises InvalidInput with every problem found."""
    d = checked_spec_dir(spec_dir)
    root = find_repo_root(d)
    if os.path.lexists(d / PROMPT_OVERRIDE):
        # A template override that is a link out of the folder (or not a file) makes the
        # whole spec folder invalid up front, instead of failing every task at run time.
        from specexec.run.prompt import template_path  # jinja2 is only needed when there is one

        template_path(d)
    raw = jsonio.load_file(d / TASKS_FILE)
    context = load_context(d)
    return validate_document(raw, file=d / TASKS_FILE, repo_root=root, context=context)
