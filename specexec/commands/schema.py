"""`specexec schema`: the JSON Schema of tasks.json, for editors and CI."""

from __future__ import annotations

import json

from specexec.errors import EXIT_OK
from specexec.tasksfile.models import json_schema


def schema() -> int:
    print(json.dumps(json_schema(), indent=2))
    return EXIT_OK
