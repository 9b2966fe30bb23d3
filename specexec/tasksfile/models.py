"""tasks.json v1 as pydantic models: the JSON schema, and the validation (with its error
messages) of every document that is not plain.

Importing pydantic and building these models costs ~50 ms, so this module is imported
only when needed: ``specexec schema`` and ``init``, and by ``schema.validate_document`` for
a value its fast path does not take (see ``schema._plain_task``). Whatever the fast path
takes, these models must take as well, to the same values.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, TypeAdapter, ValidationError

from specexec.tasksfile.schema import MAX_MINUTES


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


_M = TypeVar("_M", bound=BaseModel)


def validated(model: type[_M], raw: Any) -> tuple[_M | None, list[Mapping[str, Any]]]:
    """``raw`` as ``model``, or None and pydantic's errors."""
    try:
        return model.model_validate(raw), []
    except ValidationError as e:
        return None, list(e.errors())


def validated_worker(raw: Any) -> tuple[str | WorkerModel | None, list[Mapping[str, Any]]]:
    """``raw`` as a worker (a preset name or a worker object), or None and the errors."""
    try:
        return TypeAdapter(WorkerField).validate_python(raw), []
    except ValidationError as e:
        return None, list(e.errors())
