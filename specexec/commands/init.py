"""`specexec init SPEC_DIR [--template NAME]`: scaffold a spec folder from templates/:
``shell`` (shell commands), ``agent`` (an AI coding agent), ``mixed`` (analysis tasks
feeding a merge step, then an agent)."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from specexec.errors import EXIT_OK, InvalidInput
from specexec.fmt import did_you_mean
from specexec.resources import data_dir
from specexec.tasksfile import jsonio, store
from specexec.tasksfile.models import json_schema
from specexec.tasksfile.schema import id_problem
from specexec.tasksfile.types import TASKS_FILE

SCHEMA_FILE = "tasks.schema.json"


# Older names, still accepted (scripts and notes written against earlier versions).
ALIASES = {"minimal": "shell", "feature": "agent"}
# The order `init --list` shows them in: the way most people start, first.
_ORDER = ("shell", "agent", "mixed")


def _templates() -> dict[str, Path]:
    root = data_dir("templates")
    found = {p.name: p for p in sorted(root.iterdir()) if (p / TASKS_FILE).is_file()}
    first = {n: found.pop(n) for n in _ORDER if n in found}
    return {**first, **found}


def list_templates() -> int:
    for name, path in _templates().items():
        doc = json.loads((path / TASKS_FILE).read_text(encoding="utf-8"))
        print(f"{name:6}  {doc.get('description', '')}")
    print("use: specexec init SPEC_DIR --template NAME  (default: shell)")
    return EXIT_OK


def init(spec_dir: str, template: str = "shell") -> int:
    templates = _templates()
    template = ALIASES.get(template, template)
    if template not in templates:
        raise InvalidInput(
            f"unknown template {template!r}{did_you_mean(template, list(templates))};"
            f" choose one of: {', '.join(templates)} (specexec init --list describes them)"
        )
    dest = Path(spec_dir)
    if (dest / TASKS_FILE).exists() or (dest / TASKS_FILE).is_symlink():
        raise InvalidInput(f"{dest / TASKS_FILE} already exists; not overwriting it")
    name = dest.absolute().name
    if (problem := id_problem(name)) is not None:
        raise InvalidInput(f"{dest}: the folder name {name!r} {problem} (it names the branch)")

    dest.mkdir(parents=True, exist_ok=True)
    src = templates[template]
    for item in sorted(src.iterdir()):
        if item.is_file() and item.name != TASKS_FILE and not (dest / item.name).exists():
            shutil.copyfile(item, dest / item.name)
    doc = jsonio.load_file(src / TASKS_FILE)
    doc["spec"] = name
    store.create(dest, doc)  # the store is the one writer of tasks.json
    # Editors validate tasks.json against this (its "$schema" points here).
    (dest / SCHEMA_FILE).write_text(json.dumps(json_schema(), indent=2) + "\n", encoding="utf-8")
    print(f"created {dest}/ from template {template!r}:")
    for item in sorted(dest.iterdir()):
        if item.is_file():
            print(f"  {item.name}")
    for note in doc.get("notes", []):
        print(f"note: {note}")
    print(f"next: specexec validate {dest} && specexec plan {dest} && specexec run {dest}")
    return EXIT_OK
