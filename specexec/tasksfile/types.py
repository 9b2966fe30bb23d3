"""The internal, immutable view of a spec folder.

pydantic models live only at the file boundary (``specexec.tasksfile.models``, imported only
for a value the plain-value checks of ``schema`` cannot vouch for); everything else in
specexec works with these small frozen dataclasses.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

Status = Literal["pending", "in_progress", "pass", "fail", "blocked"]
STATUSES: tuple[Status, ...] = ("pending", "in_progress", "pass", "fail", "blocked")

MergeStrategy = Literal["union", "intersection", "priority", "voting"]
Isolation = Literal["worktree", "none"]
Checkout = Literal["full", "sparse"]

TASKS_FILE = "tasks.json"
CONTEXT_FILE = "context-summary.json"
PROMPT_OVERRIDE = "worker_prompt.md.j2"
RUNTIME_DIR = ".specexec"


@dataclass(frozen=True, slots=True)
class WorkerConfig:
    """A worker: a preset name, a custom command (argv tuple or shell string), or both."""

    preset: str | None = None
    command: tuple[str, ...] | str | None = None
    args: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class MergeConfig:
    """How a task receives its blockers' ``data`` lists combined (pattern 000)."""

    strategy: MergeStrategy
    key: str | None = None  # priority: the item field to rank by (ascending)
    top_n: int | None = None  # priority: keep the first N
    min_votes: int = 2  # voting: keep items reported by at least this many blockers


@dataclass(frozen=True, slots=True)
class Task:
    id: str
    summary: str
    status: Status = "pending"
    relevant_files: tuple[str, ...] = ()
    blocked_by: tuple[str, ...] = ()
    estimated_minutes: float | None = None
    duration_minutes: float | None = None  # last recorded duration
    command: str | None = None
    verify: str | None = None
    worker: WorkerConfig | None = None
    timeout_minutes: float = 30.0
    max_retries: int = 1
    on_conflict: Literal["fail", "rerun"] = "fail"  # rerun: once more after a merge conflict
    attempts: int = 0
    isolation: Isolation = "worktree"
    checkout: Checkout = "full"
    # None: the worker's rule (agents must change a file to pass, shell tasks need not).
    expect_changes: bool | None = None
    sparse_paths: tuple[str, ...] = ()
    merge: MergeConfig | None = None
    blocker: str | None = None
    # The task's whole JSON object (spec_sections, codebase_refs, standards, result,
    # unknown fields, ...) for the prompt template and reports.
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)

    @property
    def estimate(self) -> float:
        """Minutes used for planning: the estimate, else the last duration, else 1."""
        if self.estimated_minutes is not None and self.estimated_minutes > 0:
            return self.estimated_minutes
        if self.duration_minutes is not None and self.duration_minutes > 0:
            return self.duration_minutes
        return 1.0


@dataclass(frozen=True, slots=True)
class Spec:
    dir: Path
    name: str
    tasks: tuple[Task, ...]
    base_ref: str | None = None
    worker: WorkerConfig | None = None
    verify: str | None = None  # defaults.verify
    max_wait_minutes: float = 30.0  # per task, for rate limits and overloads
    max_cost_usd: float | None = None  # the run's budgets (defaults.*)
    max_tokens: int | None = None
    context: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    raw: Mapping[str, Any] = field(default_factory=dict, compare=False, repr=False)
    _by_id: Mapping[str, Task] = field(init=False, compare=False, repr=False)

    def __post_init__(self) -> None:
        # Frozen: set the index once, the way dataclasses themselves do.
        object.__setattr__(self, "_by_id", {t.id: t for t in self.tasks})

    @property
    def tasks_file(self) -> Path:
        return self.dir / TASKS_FILE

    @property
    def runtime_dir(self) -> Path:
        return self.dir / RUNTIME_DIR

    def task(self, task_id: str) -> Task:
        return self._by_id[task_id]
