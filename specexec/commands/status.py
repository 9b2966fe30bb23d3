"""`specexec status SPEC_DIR...`: one row per task and the totals."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from specexec import fmt
from specexec.errors import EXIT_OK
from specexec.run.excerpt import latest_log, log_excerpt, shown_path
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
                "error_class": t.raw.get("error_class"),
                "waiting_until": t.raw.get("waiting_until"),
                "cost_usd": t.raw.get("cost_usd"),
                "tokens": t.raw.get("tokens"),
                # Where the cause of a failure is: the worker's (and verify's) output.
                "log": str(log)
                if t.status in ("fail", "blocked", "in_progress")
                and (log := latest_log(spec.dir, t.id))
                else None,
            }
            for t in spec.tasks
        ],
        "fleet": _fleet_state(spec) if RunLock.holder(spec.dir) else None,
        "totals": {s: counts.get(s, 0) for s in STATUSES} | {"total": len(spec.tasks)},
    }


def _fleet_state(spec: Spec) -> dict[str, Any] | None:
    """The live run's worker limits and spend (run/executor.py writes it), if readable."""
    from specexec.run.executor import FLEET_STATE

    try:
        doc = json.loads((spec.runtime_dir / FLEET_STATE).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def _spent(cost: Any, tokens: Any) -> str:
    parts = []
    if isinstance(cost, int | float) and not isinstance(cost, bool):
        parts.append(f"${cost:.4f}")
    if isinstance(tokens, dict):
        n = sum(v for k, v in tokens.items() if k in ("input", "output") and isinstance(v, int))
        parts.append(f"{n} tok")
    return " ".join(parts)


def _state(t: dict[str, Any]) -> str:
    if t["status"] == "in_progress" and isinstance(t.get("waiting_until"), str):
        # A rate limit or overload being waited out: when it resumes (UTC).
        return f"waiting until {fmt.clean(t['waiting_until'], 40)[11:19]} UTC"
    if t["status"] in ("fail", "blocked") and isinstance(t.get("error_class"), str):
        return f"{t['status']} ({fmt.clean(t['error_class'], 20)})"
    return str(t["status"])


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
        fleet = r.get("fleet")
        if fleet:
            limits = ", ".join(
                f"{fmt.clean(w, 40)} {n}/{fleet.get('jobs')}"
                for w, n in (fleet.get("limits") or {}).items()
            )
            line = f"run {fmt.clean(fleet.get('run_id'), 40)}: concurrency {limits or '-'}"
            line += f" · spent {_spent(fleet.get('cost_usd'), {'input': fleet.get('tokens')})}"
            if fleet.get("resource_wait"):
                line += f" · no new task starts: {fmt.clean(fleet['resource_wait'], 100)}"
            print(line)
        rows = [
            [
                t["id"],
                _state(t),
                str(t["attempts"]),
                "-" if t["duration_minutes"] is None else fmt.duration(t["duration_minutes"] * 60),
                _spent(t.get("cost_usd"), t.get("tokens")),
                fmt.shorten(t["blocker"] or "", 60),
            ]
            for t in r["tasks"]
        ]
        print(fmt.table(["task", "status", "tries", "time", "cost", "blocker"], rows))
        for t in r["tasks"]:
            if t.get("log") and t["status"] in ("fail", "blocked"):
                # The cause in the worker's (or verify's) own words, from its log.
                cause = " | ".join(log_excerpt(Path(t["log"]))) if t["status"] == "fail" else ""
                cause += " " if cause else ""
                print(f"{t['status']} {t['id']}: {cause}(log: {shown_path(t['log'])})")
        costs = [t["cost_usd"] for t in r["tasks"] if isinstance(t.get("cost_usd"), int | float)]
        if costs:
            toks = [t.get("tokens") for t in r["tasks"] if isinstance(t.get("tokens"), dict)]
            total = {
                "input": sum(d.get("input", 0) for d in toks if d),
                "output": sum(d.get("output", 0) for d in toks if d),
            }
            print(f"recorded cost: {_spent(sum(costs), total)}")
        tot = r["totals"]
        print(f"{tot['total']} tasks: " + ", ".join(f"{tot[s]} {s}" for s in STATUSES if tot[s]))
    return EXIT_OK
