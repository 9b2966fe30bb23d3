"""``specexec reset SPEC_DIR [--failed] [TASK_ID...]``: make tasks pending again.

No ids and no ``--failed``: every task. ``--failed``: the ``fail`` and ``blocked`` ones
(among the given ids, if any). The fields specexec writes during a run are removed;
everything else in the task (including unknown fields) is kept. Refused while a run
holds the spec folder's run lock.
"""

from __future__ import annotations

from collections.abc import Sequence

from specexec.tasksfile.events import EventLog
from specexec.tasksfile.reset import reset_tasks
from specexec.tasksfile.runlock import RunLock
from specexec.tasksfile.schema import checked_spec_dir
from specexec.tasksfile.store import TasksStore


def reset(spec_dir: str, task_ids: Sequence[str] = (), failed: bool = False) -> int:
    spec_dir = str(checked_spec_dir(spec_dir))  # the same folder checks as every command
    store = TasksStore(spec_dir)
    store.read()  # a missing or broken tasks.json is reported before anything is created
    with RunLock(spec_dir):
        lines = reset_tasks(store, EventLog(spec_dir), task_ids, failed)
    for line in lines:
        print(line)
    if not lines:
        print("nothing to reset")
    return 0
