"""Run metrics (``run.json``) and the human report (``report.md`` / html), both pure
functions of what the executor recorded."""

from __future__ import annotations

import html
import json
import time
from collections.abc import Sequence
from dataclasses import dataclass, field, fields
from typing import Any

from specexec import fmt
from specexec.run.excerpt import shown_path
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
    error_class: str | None = None  # why it failed (workers.agent.ERROR_CLASSES)
    waits: int = 0  # rate limits / overloads waited out (not retries)
    waited_seconds: float = 0.0
    log: str | None = None  # the task's log in the run folder
    excerpt: tuple[str, ...] = ()  # the telling lines of a failed attempt's output

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
    ended = [r for r in ran if r.status != "pending"]  # not the interrupted
    critical = set(critical_path)
    wall = max(finished - started, 1e-9)
    task_sum = sum(r.seconds for r in ran)
    spawned = sum(r.attempts for r in ran)
    succeeded = sum(1 for r in ran if r.status == "pass")
    failed_attempts = spawned - succeeded
    # Coordination overhead: specexec's own time around the workers (worktrees, commits,
    # merges, bookkeeping), summed over tasks.
    overhead = sum(max(r.seconds - r.worker_seconds, 0.0) for r in ran)
    costs = [r.cost_usd for r in records if r.cost_usd is not None]
    token_sums: dict[str, int] = {}
    for r in records:
        for k, v in (r.tokens or {}).items():
            token_sums[k] = token_sums.get(k, 0) + v
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
    # Of the pending: the tasks that ran and were stopped (Ctrl-C, a drain).
    counts["interrupted"] = sum(1 for r in ran if r.status == "pending")
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
        "success_rate": round(succeeded / len(ended), 3) if ended else 0.0,
        "coordination_overhead_seconds": round(overhead, 3),
        "cost_usd": round(sum(costs), 6) if costs else None,
        "tokens": token_sums or None,
        "error_classes": {
            c: n
            for c in sorted({r.error_class for r in records if r.error_class})
            if (n := sum(1 for r in records if r.error_class == c))
        },
        "waits": sum(r.waits for r in records),
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
    stopped = t.get("interrupted", 0)
    not_run = t["pending"] - stopped
    lines = [
        f"{t['pass']} passed, {t['fail']} failed, {t['blocked']} blocked"
        + (f", {stopped} interrupted" if stopped else "")
        + (f", {not_run} not run" if not_run else "")
        + f" of {m['tasks_total']} task(s)",
        f"wall {fmt.seconds(m['wall_seconds'])} · task time {fmt.seconds(m['task_seconds_sum'])}"
        f" · speedup {m['speedup']:.2f}x · efficiency {m['parallel_efficiency'] * 100:.0f}%"
        f" at --jobs {m['jobs']} · max concurrent {m['max_concurrent']}",
    ]
    if m["critical_path"]:
        lines.append(f"critical path: {' -> '.join(m['critical_path'])}")
    if m.get("cost_usd") is not None or m.get("tokens"):
        spent = [f"${m['cost_usd']:.4f}"] if m.get("cost_usd") is not None else []
        if m.get("tokens"):
            tok = m["tokens"]
            spent.append(f"{tok.get('input', 0) + tok.get('output', 0)} tokens (input + output)")
        lines.append("agent cost: " + ", ".join(spent))
    if m.get("budget_reached"):
        lines.append(f"{m['budget_reached']}: the tasks left stay pending")
    for why in (m.get("stopped_workers") or {}).values():
        lines.append(f"stopped: {why}")
    if m.get("waits"):
        lines.append(f"waited out {m['waits']} rate limit(s) / overload(s)")
    for r in m.get("records") or ():  # a run_finished event carries no records
        if r["status"] == "fail":
            lines.append(failure_line(r))
    for b in m["integration_branches"]:
        lines.append(f"review: git log --oneline --graph {b}")
    return lines


def failure_line(r: dict[str, Any]) -> str:
    """``fail spec/task: <the telling output lines> (log: <path>)`` for a failed record."""
    # The worker's own output: made safe for the terminal, cut.
    cause = fmt.clean(" | ".join(r.get("excerpt") or ()), 300) or fmt.clean(
        r.get("blocker") or "", 200
    )
    log = f" (log: {fmt.clean(shown_path(r['log']), None)})" if r.get("log") else ""
    return f"fail {r['spec']}/{r['task']}: {cause}{log}"


def _merged_findings(records: Sequence[dict[str, Any]]) -> list[Any]:
    lists = [
        r["data"] for r in records if r["status"] == "pass" and isinstance(r.get("data"), list)
    ]
    return merge_data(MergeConfig("union"), lists)


def _clock(t: float) -> str:
    """An epoch time as the Gantt chart reads it: ``2026-12-01 23:04:05`` (UTC)."""
    return time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(t))


def _gantt_chart(title: str, sections: Sequence[tuple[str, Sequence[dict[str, Any]]]]) -> list[str]:
    """A mermaid Gantt chart with readable times (UTC, to the second)."""
    sections = [
        (name, [r for r in recs if r["start"] is not None and r["end"] is not None])
        for name, recs in sections
    ]
    sections = [(name, recs) for name, recs in sections if recs]
    if not sections:
        return []
    lines = [
        "```mermaid",
        "gantt",
        f"  title {title}",
        "  dateFormat YYYY-MM-DD HH:mm:ss",
        "  axisFormat %H:%M:%S",
    ]
    for name, recs in sections:
        lines.append(f"  section {name}")
        for r in sorted(recs, key=lambda r: r["start"]):
            tags = ["crit"] if r.get("critical") else []
            tags.append({"pass": "done", "fail": "active"}.get(r["status"], "done"))
            # A bar is at least one second long: shorter ones would not show.
            end = max(r["end"], r["start"] + 1)
            label = f"{r['task']} ({r['status']}, {fmt.duration(r['seconds'])})"
            lines.append(f"  {label} :{', '.join(tags)}, {_clock(r['start'])}, {_clock(end)}")
    lines.append("```")
    return lines


def _gantt(m: dict[str, Any]) -> list[str]:
    recs = m["records"]
    return _gantt_chart(
        f"run {m['run_id']} (UTC)",
        [
            (spec, [r for r in recs if r["spec"] == spec])
            for spec in dict.fromkeys(r["spec"] for r in recs)
        ],
    )


def spec_overview(
    spec: str, tasks: Sequence[dict[str, Any]], runs: Sequence[dict[str, Any]]
) -> dict[str, Any]:
    """The whole spec across its runs: every task of tasks.json (its status there is the
    truth) with its latest outcome from the run folders' run.json (``runs`` oldest
    first). A record of a task that ran beats a later one of a task never started."""
    latest: dict[str, tuple[str, dict[str, Any]]] = {}
    for m in runs:
        for r in m.get("records") or ():
            if r.get("spec") != spec:
                continue
            before = latest.get(r["task"])
            if before is None or r.get("start") is not None or before[1].get("start") is None:
                latest[r["task"]] = (m["run_id"], r)
    rows = []
    for t in tasks:
        run_id, rec = latest.get(t["id"], (None, None))
        rows.append(
            {
                "id": t["id"],
                "status": t.get("status", "pending"),
                "attempts": t.get("attempts", 0),
                "run_id": run_id,
                "seconds": rec["seconds"] if rec else None,
                "blocker": t.get("blocker") or (rec or {}).get("blocker"),
                "error_class": t.get("error_class"),
                "excerpt": list((rec or {}).get("excerpt") or ()),
                "log": (rec or {}).get("log"),
                "record": rec,
            }
        )
    totals: dict[str, int] = {}
    for row in rows:
        totals[row["status"]] = totals.get(row["status"], 0) + 1
    return {
        "spec": spec,
        "tasks": rows,
        "totals": totals,
        "runs": [
            {
                k: m.get(k)
                for k in ("run_id", "started_at", "wall_seconds", "tasks", "max_concurrent")
            }
            for m in runs
        ],
        "integration_branches": sorted(
            {b for m in runs for b in m.get("integration_branches") or ()}
        ),
    }


def render_spec_markdown(doc: dict[str, Any]) -> str:
    """The report of a whole spec: what every task's state is and why, over all runs."""
    tot = doc["totals"]
    out = [
        f"# specexec report: spec {doc['spec']}",
        "",
        f"- {len(doc['tasks'])} task(s): " + ", ".join(f"{n} {s}" for s, n in sorted(tot.items())),
        f"- {len(doc['runs'])} run(s); the latest outcome of each task is shown",
    ]
    for b in doc["integration_branches"]:
        out.append(f"- integration branch: {b} (`git log --oneline --graph {b}`)")
    out += [
        "",
        "## Tasks",
        "",
        "| task | status | tries | time | last run | cause |",
        "|---|---|---|---|---|---|",
    ]
    for t in doc["tasks"]:
        cause = " / ".join(t["excerpt"]) or (t["blocker"] or "")
        cause = fmt.clean(cause, 200).replace("|", "\\|")
        shown = "-" if t["seconds"] is None else fmt.duration(t["seconds"])
        out.append(
            f"| {t['id']} | {t['status']} | {t['attempts']} | {shown} | {t['run_id'] or '-'} "
            f"| {cause} |"
        )
    failed = [t for t in doc["tasks"] if t["status"] in ("fail", "blocked")]
    if failed:
        out += ["", "## Failures", ""]
        for t in failed:
            cause = " | ".join(t["excerpt"]) or fmt.clean(t["blocker"] or "no reason recorded", 200)
            out.append(f"- {t['id']} ({t['status']}): {cause}")
            if t["log"]:
                out.append(f"  log: {t['log']}")
        out.append("")
        out.append("Fix the causes above, then `specexec run --retry-failed`.")
    out += [
        "",
        "## Runs",
        "",
        "| run | wall | passed | failed | blocked | pending | max concurrent |",
    ]
    out.append("|---|---|---|---|---|---|---|")
    for m in doc["runs"]:
        c = m.get("tasks") or {}
        out.append(
            f"| {m['run_id']} | {fmt.duration(m.get('wall_seconds') or 0)} | {c.get('pass', 0)} "
            f"| {c.get('fail', 0)} | {c.get('blocked', 0)} | {c.get('pending', 0)} "
            f"| {m.get('max_concurrent', 0)} |"
        )
    sections = []
    for m in doc["runs"]:
        recs = [
            t["record"] | {"task": t["id"]}
            for t in doc["tasks"]
            if t["record"] is not None and t["run_id"] == m["run_id"]
        ]
        sections.append((f"run {m['run_id']}", recs))
    gantt = _gantt_chart(f"spec {doc['spec']} (UTC)", sections)
    if gantt:
        out += ["", "## Timeline", "", *gantt]
    return "\n".join(out) + "\n"


def render_markdown(m: dict[str, Any]) -> str:
    recs = m["records"]
    out = [f"# specexec run {m['run_id']}", "", *[f"- {line}" for line in summary_lines(m)], ""]
    out += [
        "## Tasks",
        "",
        "| spec | task | status | tries | time | cost | tokens | class | blocker |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in recs:
        blocker = (r["blocker"] or "").replace("|", "\\|").replace("\n", " ")
        cost = f"${r['cost_usd']:.4f}" if r.get("cost_usd") is not None else ""
        tok = r.get("tokens") or {}
        tokens = str(tok.get("input", 0) + tok.get("output", 0)) if tok else ""
        out.append(
            f"| {r['spec']} | {r['task']} | {r['status']} | {r['attempts']} | "
            f"{fmt.seconds(r['seconds'])} | {cost} | {tokens} | {r.get('error_class') or ''} "
            f"| {blocker} |"
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
