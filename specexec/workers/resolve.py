"""Which worker runs a task (DESIGN §4): ``--worker`` overrides; otherwise the most
specific of the task, the spec, and ``[tool.specexec]`` in the repository's pyproject."""

from __future__ import annotations

import shutil
import tomllib
from pathlib import Path
from typing import Any

from specexec.errors import InvalidInput
from specexec.fmt import did_you_mean
from specexec.tasksfile.schema import read_worker, worker_config
from specexec.tasksfile.types import Spec, Task, WorkerConfig
from specexec.workers.registry import KNOWN_PRESETS


def repo_config(repo_root: Path | None) -> dict[str, Any]:
    """``[tool.specexec]`` of ``<repo>/pyproject.toml``, or {}."""
    if repo_root is None:
        return {}
    path = repo_root / "pyproject.toml"
    if not path.is_file():
        return {}
    try:
        doc = tomllib.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as e:
        raise InvalidInput(f"{path}: cannot read [tool.specexec]: {e}") from None
    section = doc.get("tool", {}).get("specexec", {})
    if not isinstance(section, dict):
        raise InvalidInput(f"{path}: [tool.specexec] must be a table")
    return section


def repo_worker(repo_root: Path | None) -> WorkerConfig | None:
    section = repo_config(repo_root)
    if "worker" not in section:
        return None
    value, errors = read_worker(section["worker"])
    if errors:
        raise InvalidInput(
            f"{repo_root}/pyproject.toml: [tool.specexec] worker: {errors[0]['msg']}"
        )
    return worker_config(value)


def repo_allows_commands(repo_root: Path | None) -> bool:
    """``[tool.specexec] allow_commands = true``: the daemon may run this repository's
    spec folders whose tasks run their own shell command."""
    value = repo_config(repo_root).get("allow_commands", False)
    if not isinstance(value, bool):
        raise InvalidInput(
            f"{repo_root}/pyproject.toml: [tool.specexec] allow_commands: must be true or false"
        )
    return value


def cli_worker(value: str | None) -> WorkerConfig | None:
    """``--worker claude`` is a preset; anything else is a shell command."""
    if value is None:
        return None
    if value in KNOWN_PRESETS:
        return WorkerConfig(preset=value)
    # A one-word near miss of a preset that is no command either is a typo: say so now,
    # rather than have every task fail with "command not found".
    hint = did_you_mean(value, KNOWN_PRESETS)
    if hint and value.isidentifier() and shutil.which(value) is None:
        raise InvalidInput(
            f"--worker {value!r} is neither a preset nor a command on PATH{hint}"
            f" (presets: {', '.join(KNOWN_PRESETS)})"
        )
    return WorkerConfig(command=value)


def resolve_worker(
    task: Task, spec: Spec, override: WorkerConfig | None, from_repo: WorkerConfig | None
) -> WorkerConfig | None:
    return override or task.worker or spec.worker or from_repo
