"""`specexec validate SPEC_DIR...`: every problem of every spec folder, in one run.

Besides the file itself (schema, ids, blockers, cycles, paths), every check `specexec run`
makes before it starts (``specexec.run.checks``: workers and their placeholders, the
repository and ``base_ref``, room in tasks.json), read-only: `validate` says ``ok`` only
where `run` would start."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from specexec.errors import EXIT_INVALID, EXIT_OK, InvalidInput
from specexec.fmt import clean
from specexec.run import checks
from specexec.run.executor import RunOptions
from specexec.tasksfile.schema import load_spec


def validate(spec_dirs: Sequence[str], opts: RunOptions | None = None) -> int:
    """``opts``: the run options to check against (default: those of a plain `run`)."""
    opts = opts or RunOptions()
    failed = 0
    for d in spec_dirs:
        try:
            spec, warnings = load_spec(d)
            problems = checks.problems(spec, opts)
        except InvalidInput as e:
            spec, warnings, problems = None, [], list(e.problems)
        # Paths and values from the file, made safe for the terminal.
        for w in warnings:
            print(f"warning: {clean(w, None)}", file=sys.stderr)
        if spec is None or problems:
            failed += 1
            for problem in problems:
                print(f"error: {clean(problem, None)}", file=sys.stderr)
            continue
        n = len(spec.tasks)
        print(f"ok: {clean(d, None)} ({n} task{'s' if n != 1 else ''})")
    return EXIT_INVALID if failed else EXIT_OK
