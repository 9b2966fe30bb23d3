"""tasks.json v1 at the file boundary: validation, and ``load_spec``.

Validation reports *every* problem in one pass, each naming the file, the task and the
field. The raw document (with unknown fields and key order) is kept on the ``Spec`` so
that writers never lose what they do not understand. The pydantic models are in
``specexec.tasksfile.models``, imported only for a document that is not plain.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, TypeGuard

from specexec.errors import InvalidInput, UnsafePath
from specexec.fmt import did_you_mean
from specexec.git.repo import find_repo_root
from specexec.plan import patterns as paths
from specexec.plan import planner
from specexec.tasksfile import jsonio
from specexec.tasksfile.types import (
    CONTEXT_FILE,
    PROMPT_OVERRIDE,
    STATUSES,
    TASKS_FILE,
    Checkout,
    Isolation,
    MergeConfig,
    Spec,
    Status,
    Task,
    WorkerConfig,
)

if TYPE_CHECKING:
    from specexec.tasksfile.models import DefaultsModel, TaskModel, TasksFileModel, WorkerModel

ID_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$"
# About two years. Larger durations are mistakes, and 1e308 minutes summed over a plan
# would overflow to infinity (which cannot be printed as hours and minutes).
MAX_MINUTES = 1_000_000
_ID_RE = re.compile(ID_PATTERN)


# --- the values validation reads -----------------------------------------------------------
# The top level and each task are read into these, from the pydantic models of
# ``specexec.tasksfile.models`` or, when every value is plain, by the ``_plain_*``
# functions below. Those take only what the models take as it is (the exact JSON type,
# in range, no coercion) and give the very values the models give, defaults included;
# anything else (wrong types, out of range, missing, a key pydantic refuses) goes to the
# models, so that every message comes from one place. Importing pydantic and building
# the models costs ~50 ms, most of a 1-task run's start-up.

OnConflict = Literal["fail", "rerun"]
WorkerValue = str | WorkerConfig  # a worker as written: a preset name, or a worker object


@dataclass(frozen=True, slots=True)
class Defaults:
    timeout_minutes: float = 30.0
    max_retries: int = 1
    verify: str | None = None
    max_wait_minutes: float = 30.0
    max_cost_usd: float | None = None
    max_tokens: int | None = None
    on_conflict: OnConflict = "fail"


@dataclass(frozen=True, slots=True)
class Top:
    """The top level of tasks.json, but its tasks."""

    spec: str | None = None
    base_ref: str | None = None
    worker: WorkerValue | None = None
    defaults: Defaults = Defaults()


@dataclass(slots=True)  # not frozen: that costs ~3 us per task (object.__setattr__)
class TaskFields:
    """A task object's fields that specexec uses, before the spec's defaults apply."""

    id: str
    summary: str
    status: Status
    relevant_files: list[str]
    blocked_by: list[str]
    estimated_minutes: float | None
    duration_minutes: float | None
    command: str | None
    verify: str | None
    worker: WorkerValue | None
    timeout_minutes: float | None
    max_retries: int | None
    on_conflict: OnConflict | None
    attempts: int
    isolation: Isolation
    checkout: Checkout
    expect_changes: bool | None
    sparse_paths: list[str]
    merge: MergeConfig | None
    blocker: str | None


def _worker_of(value: str | WorkerModel | None) -> WorkerValue | None:
    if value is None or isinstance(value, str):
        return value
    command = tuple(value.command) if isinstance(value.command, list) else value.command
    return WorkerConfig(preset=value.preset, command=command, args=tuple(value.args))


def _defaults_of(m: DefaultsModel) -> Defaults:
    return Defaults(
        m.timeout_minutes,
        m.max_retries,
        m.verify,
        m.max_wait_minutes,
        m.max_cost_usd,
        m.max_tokens,
        m.on_conflict,
    )


def _top_of(m: TasksFileModel) -> Top:
    return Top(m.spec, m.base_ref, _worker_of(m.worker), _defaults_of(m.defaults))


def _task_of(m: TaskModel) -> TaskFields:
    mm = m.merge
    merge = MergeConfig(mm.strategy, mm.key, mm.top_n, mm.min_votes) if mm else None
    return TaskFields(
        m.id,
        m.summary,
        m.status,
        m.relevant_files,
        m.parallelization.blocked_by,
        m.estimated_minutes,
        m.duration_minutes,
        m.command,
        m.verify,
        _worker_of(m.worker),
        m.timeout_minutes,
        m.max_retries,
        m.on_conflict,
        m.attempts,
        m.isolation,
        m.checkout,
        m.expect_changes,
        m.sparse_paths,
        merge,
        m.blocker,
    )


# The fast path. Its checks are those of the models, minus every case pydantic might
# treat otherwise: ``type(v) is str`` (not a subclass), bools are no numbers, ints within
# ±2**53 only (a float field converts them exactly; bigger ones are left to pydantic).

_BIG = 2**53


def _str(v: Any) -> TypeGuard[str]:
    return type(v) is str


def _one_of(v: Any, literals: tuple[str, ...]) -> bool:
    return type(v) is str and v in literals


def _opt_str(v: Any) -> bool:
    return v is None or type(v) is str


def _strs(v: Any) -> bool:
    if type(v) is not list:
        return False
    # A loop, not all() of a generator: that costs twice as much on a short list.
    for s in v:  # noqa: SIM110
        if type(s) is not str:
            return False
    return True


def _obj(v: Any) -> bool:
    """``dict[str, Any]`` (strict: string keys)."""
    return type(v) is dict and all(type(k) is str for k in v)


def _num(v: Any, hi: float, *, positive: bool = False) -> bool:
    """A float field ``ge=0`` (``gt=0`` if positive), ``le=hi``: a finite float or an int."""
    if type(v) is float:
        if not math.isfinite(v):
            return False
    elif type(v) is not int or not -_BIG <= v <= _BIG:
        return False
    return bool(v > 0 if positive else v >= 0) and v <= hi


def _int(v: Any, lo: int, hi: int = _BIG) -> bool:
    return type(v) is int and lo <= v <= hi


def _float(v: float | None) -> float | None:
    return None if v is None else float(v)


def _utf8(v: str) -> bool:
    """``v`` has no lone surrogate."""
    return v.isascii() or not _SURROGATE.search(v)


def _keys_ok(obj: dict[Any, Any], known: frozenset[str]) -> bool:
    """Unknown keys are kept (``extra="allow"``), but pydantic refuses a key that is no
    string or has a lone surrogate."""
    return obj.keys() <= known or all(k in known or (_str(k) and _utf8(k)) for k in obj)


_WORKER_KEYS = frozenset({"preset", "command", "args"})
_PARALLELIZATION_KEYS = frozenset({"blocked_by"})
_MERGE_KEYS = frozenset({"strategy", "key", "top_n", "min_votes"})
_STRATEGIES = ("union", "intersection", "priority", "voting")
_ON_CONFLICT = ("fail", "rerun")
_DEFAULTS_KEYS = frozenset(
    {
        "timeout_minutes",
        "max_retries",
        "verify",
        "max_wait_minutes",
        "max_cost_usd",
        "max_tokens",
        "on_conflict",
    }
)
_TOP_KEYS = frozenset(
    {"version", "spec", "base_ref", "worker", "defaults", "execution_strategy", "tasks"}
)
# Fields that are checked but not used here (the raw task object keeps them).
_TASK_RECORDS = frozenset(
    {
        "spec_sections",
        "codebase_refs",
        "standards",
        "started_at",
        "completed_at",
        "branch",
        "commit",
        "files_changed",
        "scope_violations",
        "result",
    }
)
_TASK_KEYS = _TASK_RECORDS | {
    "id",
    "summary",
    "status",
    "relevant_files",
    "parallelization",
    "estimated_minutes",
    "duration_minutes",
    "command",
    "verify",
    "worker",
    "timeout_minutes",
    "max_retries",
    "on_conflict",
    "attempts",
    "isolation",
    "checkout",
    "expect_changes",
    "sparse_paths",
    "merge",
    "blocker",
}


def plain_worker(v: Any) -> WorkerValue | None:
    """``v`` as ``WorkerField`` reads it (a preset name or a worker object), or None if it
    is not plain."""
    if type(v) is str:
        return v
    if type(v) is not dict or not _keys_ok(v, _WORKER_KEYS):
        return None
    preset, command, args = v.get("preset"), v.get("command"), v.get("args", [])
    if not (_opt_str(preset) and (_opt_str(command) or _strs(command)) and _strs(args)):
        return None
    return WorkerConfig(preset, tuple(command) if type(command) is list else command, tuple(args))


def _plain_merge(v: Any) -> MergeConfig | None:
    if type(v) is not dict or not _keys_ok(v, _MERGE_KEYS):
        return None
    key, top_n, min_votes = v.get("key"), v.get("top_n"), v.get("min_votes", 2)
    if not (
        _one_of(v.get("strategy"), _STRATEGIES)
        and _opt_str(key)
        and (top_n is None or _int(top_n, 1))
        and _int(min_votes, 1)
    ):
        return None
    return MergeConfig(v["strategy"], key, top_n, min_votes)


def _plain_defaults(v: Any) -> Defaults | None:
    if type(v) is not dict or not _keys_ok(v, _DEFAULTS_KEYS):
        return None
    timeout, wait = v.get("timeout_minutes", 30.0), v.get("max_wait_minutes", 30.0)
    retries, verify, on_conflict = (
        v.get("max_retries", 1),
        v.get("verify"),
        v.get("on_conflict", "fail"),
    )
    cost, tokens = v.get("max_cost_usd"), v.get("max_tokens")
    if not (
        _num(timeout, MAX_MINUTES, positive=True)
        and _int(retries, 0, 100)
        and _opt_str(verify)
        and _num(wait, MAX_MINUTES)
        and (cost is None or _num(cost, math.inf, positive=True))
        and (tokens is None or _int(tokens, 1))
        and _one_of(on_conflict, _ON_CONFLICT)
    ):
        return None
    return Defaults(float(timeout), retries, verify, float(wait), _float(cost), tokens, on_conflict)


def _plain_top(raw: dict[Any, Any]) -> Top | None:
    """The top level (its tasks aside) as ``TasksFileModel`` reads it, or None."""
    if not _keys_ok(raw, _TOP_KEYS):
        return None
    version, spec, base_ref = raw.get("version", 1), raw.get("spec"), raw.get("base_ref")
    if not (type(version) is int and version == 1 and _opt_str(spec) and _opt_str(base_ref)):
        return None
    if not _obj(raw.get("execution_strategy", {})):
        return None
    worker = raw.get("worker")
    if worker is not None and (worker := plain_worker(worker)) is None:
        return None
    defaults = _plain_defaults(raw["defaults"]) if "defaults" in raw else Defaults()
    if defaults is None:
        return None
    return Top(spec, base_ref, worker, defaults)


def _plain_records(rt: dict[str, Any]) -> bool:
    """The fields of ``_TASK_RECORDS`` are plain."""
    g = rt.get
    return (
        _strs(g("spec_sections", []))
        and _obj(g("codebase_refs", {}))
        and _obj(g("standards", {}))
        and all(_opt_str(g(k)) for k in ("started_at", "completed_at", "branch", "commit"))
        and all(v is None or _strs(v) for v in (g("files_changed"), g("scope_violations")))
        and (g("result") is None or _obj(g("result")))
    )


def _plain_task(rt: dict[Any, Any]) -> TaskFields | None:
    """A task object as ``TaskModel`` reads it, or None if any of its values is not plain."""
    if type(rt) is not dict or not _keys_ok(rt, _TASK_KEYS):
        return None
    if not (_TASK_RECORDS.isdisjoint(rt) or _plain_records(rt)):
        return None
    g = rt.get
    id_, summary, status = g("id"), g("summary"), g("status", "pending")
    # min_length makes pydantic read the summary as UTF-8: a lone surrogate is an error.
    if not (_str(id_) and _str(summary) and summary and _utf8(summary)):
        return None
    if not _one_of(status, STATUSES):
        return None
    relevant_files, sparse_paths = g("relevant_files", []), g("sparse_paths", [])
    if not (_strs(relevant_files) and _strs(sparse_paths)):
        return None
    blocked_by: Any = []
    if "parallelization" in rt:
        par = rt["parallelization"]
        if type(par) is not dict or not _keys_ok(par, _PARALLELIZATION_KEYS):
            return None
        blocked_by = par.get("blocked_by", [])
        if not _strs(blocked_by):
            return None
    estimated, duration, timeout = (
        g("estimated_minutes"),
        g("duration_minutes"),
        g("timeout_minutes"),
    )
    if not (
        (estimated is None or _num(estimated, MAX_MINUTES))
        and (duration is None or _num(duration, MAX_MINUTES))
        and (timeout is None or _num(timeout, MAX_MINUTES, positive=True))
    ):
        return None
    command, verify, blocker = g("command"), g("verify"), g("blocker")
    max_retries, on_conflict, attempts = g("max_retries"), g("on_conflict"), g("attempts", 0)
    isolation, checkout, expect_changes = (
        g("isolation", "worktree"),
        g("checkout", "full"),
        g("expect_changes"),
    )
    if not (
        _opt_str(command)
        and _opt_str(verify)
        and _opt_str(blocker)
        and (max_retries is None or _int(max_retries, 0, 100))
        and (on_conflict is None or _one_of(on_conflict, _ON_CONFLICT))
        and _int(attempts, 0)
        and _one_of(isolation, ("worktree", "none"))
        and _one_of(checkout, ("full", "sparse"))
        and (expect_changes is None or type(expect_changes) is bool)
    ):
        return None
    worker = g("worker")
    if worker is not None and (worker := plain_worker(worker)) is None:
        return None
    merge = g("merge")
    if merge is not None and (merge := _plain_merge(merge)) is None:
        return None
    return TaskFields(
        id_,
        summary,
        status,
        relevant_files,
        blocked_by,
        _float(estimated),
        _float(duration),
        command,
        verify,
        worker,
        _float(timeout),
        max_retries,
        on_conflict,
        attempts,
        isolation,
        checkout,
        expect_changes,
        sparse_paths,
        merge,
        blocker,
    )


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


def _check_worker_unicode(probs: _Problems, label: str | None, w: WorkerValue | None) -> None:
    if isinstance(w, WorkerConfig):
        _check_unicode(probs, label, "worker.preset", w.preset)
        _check_unicode(probs, label, "worker.command", w.command)
        _check_unicode(probs, label, "worker.args", w.args)
    else:
        _check_unicode(probs, label, "worker", w)


def _task_label(raw_task: Any, index: int) -> str:
    if isinstance(raw_task, dict) and isinstance(raw_task.get("id"), str) and raw_task["id"]:
        return _plain(raw_task["id"])
    return f"#{index + 1}"


def worker_config(value: WorkerValue | None) -> WorkerConfig | None:
    return WorkerConfig(preset=value) if isinstance(value, str) else value


def read_worker(raw: Any) -> tuple[WorkerValue | None, list[Mapping[str, Any]]]:
    """``raw`` (say, ``[tool.specexec] worker``) as a worker, or None and the errors."""
    value = plain_worker(raw)
    if value is not None:
        return value, []
    from specexec.tasksfile import models  # pydantic: only for a worker that is not plain

    model, errors = models.validated_worker(raw)
    return _worker_of(model), errors


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
    raw: Any,
    *,
    file: Path,
    repo_root: Path | None,
    context: Mapping[str, Any] | None = None,
    fast: bool = True,
) -> tuple[Spec, list[str]]:
    """Check a parsed tasks.json; return the Spec and warnings, or raise with every error.

    The top level first, then each task on its own (so one bad task does not hide the
    problems of the others), then what ties tasks together: ids, blockers, cycles.
    ``fast=False`` reads every value with the pydantic models, even plain ones (the
    tests compare the two ways)."""
    probs = _Problems(file)
    spec_dir = file.parent
    if not isinstance(raw, dict):
        raise InvalidInput(
            f"{file}: the top level must be a JSON object",
            [f"{file}: the top level must be a JSON object (got {type(raw).__name__})"],
        )
    top_model, raw_tasks = _check_top(probs, raw, fast)
    read = _task_fields(probs, raw_tasks, fast)
    spec_name = spec_dir.name
    if top_model is not None and top_model.spec is not None:
        spec_name = top_model.spec
    if (p := id_problem(spec_name)) is not None:
        probs.error(None, "spec", f"{_repr(spec_name)} {p} (it names the branch specexec/<spec>)")
    _check_ids(probs, read)
    # A task that is invalid on its own (say, a bad status) still exists: naming it as a
    # blocker is no second error.
    _check_blockers(probs, read, {i for rt in raw_tasks if (i := _raw_id(rt)) is not None})

    defaults = top_model.defaults if top_model else Defaults()
    if top_model is not None:
        _check_unicode(probs, None, "base_ref", top_model.base_ref)
        _check_unicode(probs, None, "defaults.verify", defaults.verify)
        _check_worker_unicode(probs, None, top_model.worker)
    in_repo = _InRepo(repo_root) if repo_root is not None else None
    tasks = [_task(probs, label, m, rt, defaults, in_repo) for label, m, rt in read]
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


def _check_top(probs: _Problems, raw: dict[str, Any], fast: bool) -> tuple[Top | None, list[Any]]:
    """The top level without its tasks (None if it is invalid), and the raw task list."""
    top_model = _plain_top(raw) if fast else None
    if top_model is None:
        from specexec.tasksfile import models

        top = {k: v for k, v in raw.items() if k != "tasks"}
        model, errors = models.validated(models.TasksFileModel, {**top, "tasks": []})
        for err in errors:
            probs.error(None, _loc(err["loc"]), _describe(err))
        top_model = _top_of(model) if model else None
    raw_tasks = raw.get("tasks")
    if "tasks" not in raw:
        probs.error(None, "tasks", "is required (a list of task objects)")
        return top_model, []
    if not isinstance(raw_tasks, list):
        probs.error(None, "tasks", f"must be a list (got {type(raw_tasks).__name__})")
        return top_model, []
    return top_model, raw_tasks


def _task_fields(
    probs: _Problems, raw_tasks: list[Any], fast: bool
) -> list[tuple[str, TaskFields, dict[str, Any]]]:
    """(label, fields, raw object) of each task that is valid on its own."""
    found: list[tuple[str, TaskFields, dict[str, Any]]] = []
    for i, rt in enumerate(raw_tasks):
        label = _task_label(rt, i)
        if not isinstance(rt, dict):
            probs.error(label, None, f"must be an object (got {type(rt).__name__})")
            continue
        fields = _plain_task(rt) if fast else None
        if fields is None:
            from specexec.tasksfile import models

            model, errors = models.validated(models.TaskModel, rt)
            for err in errors:
                probs.error(label, _loc(err["loc"]), _describe(err))
            fields = _task_of(model) if model else None
        if fields is not None:
            found.append((label, fields, rt))
    return found


def _check_ids(probs: _Problems, tasks: Sequence[tuple[str, TaskFields, Any]]) -> None:
    """Ids: invalid, duplicate, colliding by case."""
    seen: dict[str, str] = {}
    for label, m, _ in tasks:
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
    probs: _Problems, tasks: Sequence[tuple[str, TaskFields, Any]], ids: set[str]
) -> None:
    """Blockers: unknown (not the id of any task in the file, valid or not), self."""
    for label, m, _ in tasks:
        for b in m.blocked_by:
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
    m: TaskFields,
    rt: dict[str, Any],
    defaults: Defaults,
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
    return Task(
        id=m.id,
        summary=m.summary,
        status=m.status,
        relevant_files=tuple(rel),
        blocked_by=tuple(b for b in m.blocked_by if b != m.id),
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
        merge=m.merge,
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
