"""`specexec init SPEC_DIR [--template NAME]`: scaffold a spec folder from templates/."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from specexec.errors import EXIT_OK, InvalidInput
from specexec.resources import data_dir
from specexec.tasksfile import jsonio, store
from specexec.tasksfile.schema import id_problem, json_schema
from specexec.tasksfile.types import TASKS_FILE

SCHEMA_FILE = "tasks.schema.json"


def _templates() -> dict[str, Path]:
    root = data_dir("templates")
    return {p.name: p for p in sorted(root.iterdir()) if (p / TASKS_FILE).is_file()}


def list_templates() -> int:
    for name, path in _templates().items():
        doc = json.loads((path / TASKS_FILE).read_text())
        print(f"{name:10}  {len(doc.get('tasks', []))} tasks  {doc.get('description', '')}")
    return EXIT_OK


def init(spec_dir: str, template: str = "minimal") -> int:
    templates = _templates()
    if template not in templates:
        raise InvalidInput(f"unknown template {template!r}; choose one of: {', '.join(templates)}")
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
    print(f"next: specexec validate {dest} && specexec plan {dest}")
    return EXIT_OK
