"""`specexec validate SPEC_DIR...`: every problem of every spec folder, in one run."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from specexec.errors import EXIT_INVALID, EXIT_OK, InvalidInput
from specexec.tasksfile.schema import load_spec


def validate(spec_dirs: Sequence[str]) -> int:
    failed = 0
    for d in spec_dirs:
        try:
            spec, warnings = load_spec(d)
        except InvalidInput as e:
            failed += 1
            for problem in e.problems:
                print(f"error: {problem}", file=sys.stderr)
            continue
        for w in warnings:
            print(f"warning: {w}", file=sys.stderr)
        n = len(spec.tasks)
        print(f"ok: {d} ({n} task{'s' if n != 1 else ''})")
    return EXIT_INVALID if failed else EXIT_OK
