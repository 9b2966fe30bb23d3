"""`specexec plan SPEC_DIR`: waves, critical path and estimated speedup (no side effects
unless --write)."""

from __future__ import annotations

import json
import sys
from typing import Any

from specexec import fmt
from specexec.errors import EXIT_OK
from specexec.fmt import clean
from specexec.plan.planner import Plan, execution_strategy, make_plan
from specexec.tasksfile.schema import load_spec
from specexec.tasksfile.types import Spec


def _speedup(base: float, other: float) -> str:
    return f"{base / other:.1f}x" if other > 0 else "-"


def render_table(spec: Spec, plan: Plan) -> str:
    by_id = {t.id: t for t in spec.tasks}
    critical = set(plan.critical_path)
    rows: list[list[str]] = []
    for wave in plan.waves:
        for i, tid in enumerate(wave.tasks):
            t = by_id[tid]
            rows.append(
                [
                    str(wave.wave_id) if i == 0 else "",
                    tid + (" *" if tid in critical else ""),
                    t.status,
                    fmt.minutes(t.estimate),
                    fmt.shorten(clean(", ".join(t.relevant_files)) or "(none)", 40),
                    ", ".join(t.blocked_by) or "-",
                ]
            )
    head = (
        f"spec {spec.name}: {len(spec.tasks)} tasks in {len(plan.waves)} waves, "
        f"mode {plan.mode}, --jobs {plan.jobs}"
    )
    lines = [
        head,
        "",
        fmt.table(["wave", "task", "status", "est", "files", "blocked by"], rows),
        "",
    ]
    lines.append("waves:")
    for wave in plan.waves:
        lines.append(f"  {wave.wave_id}: {clean(wave.rationale)}")
    lines.append("")
    if plan.critical_path:
        lines.append(
            f"* critical path: {' -> '.join(plan.critical_path)} "
            f"({fmt.minutes(plan.critical_path_minutes)})"
        )
    seq = plan.sequential_minutes
    lines.append(
        f"estimated time at --jobs {plan.jobs}: sequential {fmt.minutes(seq)}"
        f" · waves {fmt.minutes(plan.waves_minutes)} ({_speedup(seq, plan.waves_minutes)})"
        f" · eager {fmt.minutes(plan.eager_minutes)} ({_speedup(seq, plan.eager_minutes)})"
    )
    # plan.warnings (tasks with no relevant_files) are not repeated here: `plan` prints
    # load_spec's warning for the same tasks, which also names the file.
    lines.append(_limits_line(spec))
    return "\n".join(lines)


def _limits_line(spec: Spec) -> str:
    """What bounds a run unattended (issue 17): the wait budget, budgets, conflicts."""
    parts = [f"rate limits and overloads waited out up to {spec.max_wait_minutes:g} min a task"]
    if spec.max_cost_usd is not None:
        parts.append(f"cost budget ${spec.max_cost_usd:g}")
    if spec.max_tokens is not None:
        parts.append(f"token budget {spec.max_tokens}")
    reruns = sum(1 for t in spec.tasks if t.on_conflict == "rerun")
    if reruns:
        parts.append(f"{reruns} task(s) rerun once after a merge conflict")
    return "limits: " + " · ".join(parts) + " (defaults.max_wait_minutes, ...)"


def render_mermaid(spec: Spec, plan: Plan) -> str:
    critical = set(plan.critical_path)
    lines = ["flowchart LR"]
    for wave in plan.waves:
        lines.append(f'  subgraph wave{wave.wave_id}["wave {wave.wave_id}"]')
        for tid in wave.tasks:
            label = clean(spec.task(tid).summary).replace('"', "'")
            lines.append(f'    {_node(tid)}["{tid}: {label}"]')
        lines.append("  end")
    for t in spec.tasks:
        for b in t.blocked_by:
            lines.append(f"  {_node(b)} --> {_node(t.id)}")
    if critical:
        lines.append("  classDef critical stroke:#d33,stroke-width:3px")
        lines.append("  class " + ",".join(_node(t) for t in plan.critical_path) + " critical")
    return "\n".join(lines)


def _node(task_id: str) -> str:
    return "t_" + "".join(c if c.isalnum() else "_" for c in task_id)


def render_dot(spec: Spec, plan: Plan) -> str:
    critical = set(plan.critical_path)
    lines = [f'digraph "{spec.name}" {{', "  rankdir=LR;", "  node [shape=box];"]
    for wave in plan.waves:
        lines.append(f'  subgraph "cluster_{wave.wave_id}" {{ label="wave {wave.wave_id}";')
        for tid in wave.tasks:
            style = ' color="red" penwidth=2' if tid in critical else ""
            lines.append(f'    "{tid}" [label="{tid}\\n{spec.task(tid).estimate:g}m"{style}];')
        lines.append("  }")
    for t in spec.tasks:
        for b in t.blocked_by:
            lines.append(f'  "{b}" -> "{t.id}";')
    lines.append("}")
    return "\n".join(lines)


def plan_json(spec: Spec, plan: Plan) -> dict[str, Any]:
    return {
        "spec": spec.name,
        "jobs": plan.jobs,
        "execution_strategy": execution_strategy(plan),
        "critical_path": list(plan.critical_path),
        "critical_path_minutes": plan.critical_path_minutes,
        "estimates": {
            "sequential_minutes": plan.sequential_minutes,
            "waves_minutes": plan.waves_minutes,
            "eager_minutes": plan.eager_minutes,
        },
        "conflicts": [list(pair) for pair in plan.conflicts],
        "warnings": list(plan.warnings),
        "max_wait_minutes": spec.max_wait_minutes,
        "max_cost_usd": spec.max_cost_usd,
        "max_tokens": spec.max_tokens,
    }


def plan(spec_dir: str, *, jobs: int = 4, output: str = "table", write: bool = False) -> int:
    spec, warnings = load_spec(spec_dir)
    result = make_plan(spec.tasks, jobs)
    if output == "json":
        print(json.dumps(plan_json(spec, result), indent=2))
    elif output == "mermaid":
        print(render_mermaid(spec, result))
    elif output == "dot":
        print(render_dot(spec, result))
    else:
        print(render_table(spec, result))
        for w in warnings:
            print(f"warning: {clean(w)}", file=sys.stderr)
    if write:
        from specexec.tasksfile.store import TasksStore  # filelock: only to write

        done = TasksStore(spec.dir).apply(top={"execution_strategy": execution_strategy(result)})
        if done.written:
            print(f"wrote execution_strategy to {spec.tasks_file}", file=sys.stderr)
        else:
            print(f"execution_strategy in {spec.tasks_file} is up to date", file=sys.stderr)
    return EXIT_OK
