"""Run metrics (``run.json``) and the human report (``report.md`` / html), both pure
functions of what the executor recorded."""

from __future__ import annotations

import html
import json
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from specexec import fmt
from specexec.run.handoff import merge_data
from specexec.tasksfile.types import MergeConfig


@dataclass(frozen=True, slots=True)
class TaskRecord:
    """What happened to one task in one run."""

    spec: str
    task: str
    status: str  # pass | fail | blocked | pending (interrupted)
    attempts: int = 0
    start: float | None = None  # epoch seconds
    end: float | None = None
    worker_seconds: float = 0.0  # time inside worker processes (and verify)
    blocker: str | None = None
    summary: str = ""
    notes: str | None = None
    data: list[Any] | None = None
    cost_usd: float | None = None
    tokens: dict[str, int] | None = None
    branch: str | None = None
    commit: str | None = None
    scope_violations: tuple[str, ...] = ()
    retried: int = 0
    wave: int | None = None
    critical: bool = False
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def seconds(self) -> float:
        return (self.end - self.start) if self.start is not None and self.end is not None else 0.0


_RECORD_FIELDS = tuple(f.name for f in fields(TaskRecord))


def run_metrics(
    *,
    run_id: str,
    specs: Sequence[str],
    jobs: int,
    schedule: str,
    started: float,
    finished: float,
    records: Sequence[TaskRecord],
    critical_path: Sequence[str],
    waves: Sequence[dict[str, Any]],
    integration_branches: Sequence[str],
) -> dict[str, Any]:
    """The figures of pattern 001/003 for one run."""
    ran = [r for r in records if r.start is not None]
    critical = set(critical_path)
    wall = max(finished - started, 1e-9)
    task_sum = sum(r.seconds for r in ran)
    spawned = sum(r.attempts for r in ran)
    succeeded = sum(1 for r in ran if r.status == "pass")
    failed_attempts = spawned - succeeded
    # Coordination overhead: specexec's own time around the workers (worktrees, commits,
    # merges, bookkeeping), summed over tasks.
    overhead = sum(max(r.seconds - r.worker_seconds, 0.0) for r in ran)
    costs = [r.cost_usd for r in ran if r.cost_usd is not None]
    events = sorted(
        [(r.start, 1) for r in ran] + [(r.end, -1) for r in ran if r.end is not None],
        key=lambda e: (e[0], e[1]),
    )
    level = peak = 0
    for _, delta in events:
        level += delta
        peak = max(peak, level)
    counts = {
        s: sum(1 for r in records if r.status == s) for s in ("pass", "fail", "blocked", "pending")
    }
    speedup = task_sum / wall if ran else 0.0
    return {
        "run_id": run_id,
        "specs": list(specs),
        "jobs": jobs,
        "schedule": schedule,
        "started_at": started,
        "finished_at": finished,
        "wall_seconds": round(wall, 3),
        "task_seconds_sum": round(task_sum, 3),
        "speedup": round(speedup, 3),
        "parallel_efficiency": round(speedup / jobs, 3) if jobs else 0.0,
        "critical_path": list(critical_path),
        "critical_path_seconds": round(sum(r.seconds for r in ran if r.task in critical), 3),
        "max_concurrent": peak,
        "waves": list(waves),
        "tasks_total": len(records),
        "tasks": counts,
        "workers": {
            "spawned": spawned,
            "succeeded": succeeded,
            "failed": failed_attempts,
            "retried": sum(r.retried for r in ran),
        },
        "success_rate": round(succeeded / len(ran), 3) if ran else 0.0,
        "coordination_overhead_seconds": round(overhead, 3),
        "cost_usd": round(sum(costs), 6) if costs else None,
        "integration_branches": list(integration_branches),
        # Shallow (asdict deep-copies every value): the document is only serialised.
        "records": [
            {f: getattr(r, f) for f in _RECORD_FIELDS} | {"seconds": round(r.seconds, 3)}
            for r in records
        ],
    }


def summary_lines(m: dict[str, Any]) -> list[str]:
    """The end-of-run summary every run prints."""
    t = m["tasks"]
    lines = [
        f"{t['pass']} passed, {t['fail']} failed, {t['blocked']} blocked"
        + (f", {t['pending']} not run" if t["pending"] else "")
        + f" of {m['tasks_total']} task(s)",
        f"wall {fmt.seconds(m['wall_seconds'])} · task time {fmt.seconds(m['task_seconds_sum'])}"
        f" · speedup {m['speedup']:.2f}x · efficiency {m['parallel_efficiency'] * 100:.0f}%"
        f" at --jobs {m['jobs']} · max concurrent {m['max_concurrent']}",
    ]
    if m["critical_path"]:
        lines.append(f"critical path: {' -> '.join(m['critical_path'])}")
    if m.get("cost_usd") is not None:
        lines.append(f"agent cost: ${m['cost_usd']:.4f}")
    for b in m["integration_branches"]:
        lines.append(f"review: git log --oneline --graph {b}")
    return lines


def _merged_findings(records: Sequence[dict[str, Any]]) -> list[Any]:
    lists = [
        r["data"] for r in records if r["status"] == "pass" and isinstance(r.get("data"), list)
    ]
    return merge_data(MergeConfig("union"), lists)


def _gantt(m: dict[str, Any]) -> list[str]:
    recs = [r for r in m["records"] if r["start"] is not None and r["end"] is not None]
    if not recs:
        return []
    lines = [
        "```mermaid",
        "gantt",
        f"  title run {m['run_id']}",
        "  dateFormat x",
        "  axisFormat %M:%S",
    ]
    for spec in dict.fromkeys(r["spec"] for r in recs):
        lines.append(f"  section {spec}")
        for r in sorted((r for r in recs if r["spec"] == spec), key=lambda r: r["start"]):
            tags = ["crit"] if r["critical"] else []
            tags.append({"pass": "done", "fail": "active"}.get(r["status"], "done"))
            start, end = (
                int(r["start"] * 1000),
                max(int(r["end"] * 1000), int(r["start"] * 1000) + 1),
            )
            lines.append(f"  {r['task']} ({r['status']}) :{', '.join(tags)}, {start}, {end}")
    lines.append("```")
    return lines


def render_markdown(m: dict[str, Any]) -> str:
    recs = m["records"]
    out = [f"# specexec run {m['run_id']}", "", *[f"- {line}" for line in summary_lines(m)], ""]
    out += [
        "## Tasks",
        "",
        "| spec | task | status | tries | time | blocker |",
        "|---|---|---|---|---|---|",
    ]
    for r in recs:
        blocker = (r["blocker"] or "").replace("|", "\\|").replace("\n", " ")
        out.append(
            f"| {r['spec']} | {r['task']} | {r['status']} | {r['attempts']} | "
            f"{fmt.seconds(r['seconds'])} | {blocker} |"
        )
    out += ["", "## Metrics", "", "| metric | value |", "|---|---|"]
    for key in (
        "wall_seconds",
        "task_seconds_sum",
        "speedup",
        "parallel_efficiency",
        "max_concurrent",
        "success_rate",
        "coordination_overhead_seconds",
        "cost_usd",
    ):
        out.append(f"| {key} | {m[key]} |")
    for key, value in m["workers"].items():
        out.append(f"| workers_{key} | {value} |")
    out += ["", "## Handoff", "", "```xml", "<handoff>", "<parallel_results>"]
    for r in recs:
        attrs = f'id="{r["task"]}" status="{r["status"]}" duration="{r["seconds"]:.1f}s"'
        if r["blocker"]:
            attrs += f' error="{html.escape(r["blocker"], quote=True)}"'
        out.append(f"  <result {attrs}>")
        out.append(f"    <summary>{html.escape(r['notes'] or r['summary'])}</summary>")
        if r.get("data"):
            out.append(f"    <data>{html.escape(json.dumps(r['data'], ensure_ascii=False))}</data>")
        out.append("  </result>")
    out.append("</parallel_results>")
    failed = [r for r in recs if r["status"] in ("fail", "blocked")]
    findings = _merged_findings(recs)
    out.append("<merged>")
    out.append(f"  Passed: {m['tasks']['pass']} of {m['tasks_total']}")
    if findings:
        out.append(
            f"  Findings (union, {len(findings)} unique): "
            + html.escape(json.dumps(findings, ensure_ascii=False))
        )
    if failed:
        out.append(
            "  Failed tasks: "
            + "; ".join(
                f"{r['task']} ({r['status']}: {r['blocker'] or 'no reason recorded'})"
                for r in failed
            )
        )
        out.append("  Recommendation: fix the failures above, then `specexec run --retry-failed`")
    else:
        out.append("  Recommendation: review and merge the integration branch")
    out += ["</merged>", "</handoff>", "```", ""]
    gantt = _gantt(m)
    if gantt:
        out += ["## Timeline", "", *gantt, ""]
    return "\n".join(out)


def render_html(m: dict[str, Any]) -> str:
    rows = "\n".join(
        f"<tr><td>{html.escape(r['spec'])}</td><td>{html.escape(r['task'])}</td>"
        f"<td class='{r['status']}'>{r['status']}</td><td>{r['attempts']}</td>"
        f"<td>{fmt.seconds(r['seconds'])}</td><td>{html.escape(r['blocker'] or '')}</td></tr>"
        for r in m["records"]
    )
    summary = "".join(f"<li>{html.escape(s)}</li>" for s in summary_lines(m))
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>specexec run {html.escape(m["run_id"])}</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:2px 8px;text-align:left}}
.pass{{color:#070}}.fail{{color:#b00}}.blocked{{color:#a60}}</style></head>
<body><h1>specexec run {html.escape(m["run_id"])}</h1><ul>{summary}</ul>
<table><tr><th>spec</th><th>task</th><th>status</th><th>tries</th><th>time</th><th>blocker</th></tr>
{rows}</table></body></html>
"""
