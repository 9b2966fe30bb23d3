"""`specexec status SPEC_DIR...`: one row per task and the totals."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from typing import Any

from specexec import fmt
from specexec.errors import EXIT_OK
from specexec.tasksfile.runlock import RunLock
from specexec.tasksfile.schema import load_spec
from specexec.tasksfile.types import STATUSES, Spec


def spec_status(spec: Spec) -> dict[str, Any]:
    from specexec.daemon import read_refusal

    counts = Counter(t.status for t in spec.tasks)
    return {
        "spec": spec.name,
        "dir": str(spec.dir),
        "running": RunLock.holder(spec.dir),
        # Why `specexec watch` will not run this folder (None: it may).
        "refused": read_refusal(spec.dir),
        "tasks": [
            {
                "id": t.id,
                "status": t.status,
                "attempts": t.attempts,
                "duration_minutes": t.duration_minutes,
                "blocker": t.blocker,
                "branch": t.raw.get("branch"),
            }
            for t in spec.tasks
        ],
        "totals": {s: counts.get(s, 0) for s in STATUSES} | {"total": len(spec.tasks)},
    }


def status(spec_dirs: Sequence[str], *, as_json: bool = False) -> int:
    reports = [spec_status(load_spec(d)[0]) for d in spec_dirs]
    if as_json:
        print(json.dumps(reports if len(reports) > 1 else reports[0], indent=2))
        return EXIT_OK
    for i, r in enumerate(reports):
        if i:
            print()
        # Everything below but the counts comes from files a worker or a clone could
        # have written: made safe for the terminal.
        head = f"spec {r['spec']} ({fmt.clean(r['dir'], None)})"
        if r["running"]:
            h = r["running"]
            head += f": running (pid {h.get('pid')} on {fmt.clean(h.get('host'), 100)})"
        print(head)
        if r["refused"]:
            ref = r["refused"]
            reason = fmt.clean(ref["reason"])
            print(f"refused by specexec watch ({fmt.clean(ref.get('time'), 40)}): {reason}")
            for problem in ref.get("problems") or []:
                if problem != ref["reason"]:
                    print(f"  {fmt.clean(problem)}")
        rows = [
            [
                t["id"],
                t["status"],
                str(t["attempts"]),
                fmt.minutes(t["duration_minutes"]),
                fmt.shorten(t["blocker"] or "", 60),
            ]
            for t in r["tasks"]
        ]
        print(fmt.table(["task", "status", "tries", "time", "blocker"], rows))
        tot = r["totals"]
        print(f"{tot['total']} tasks: " + ", ".join(f"{tot[s]} {s}" for s in STATUSES if tot[s]))
    return EXIT_OK
