"""`specexec report SPEC_DIR [--run RUN_ID] [--format md|json|html]`: the report of the
whole spec (every task's latest outcome across its runs, written to
``.specexec/report.md``), or with ``--run`` one run's report from its run.json."""

from __future__ import annotations

import html as htmllib
import json
from pathlib import Path
from typing import Any

from specexec import fmt
from specexec.errors import EXIT_OK, InvalidInput
from specexec.run.report import render_html, render_markdown, render_spec_markdown, spec_overview
from specexec.tasksfile.schema import load_spec, resolve_spec_dir
from specexec.tasksfile.types import RUNTIME_DIR


def _read_run(run_dir: Path) -> dict[str, Any]:
    try:
        doc = json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError) as e:
        raise InvalidInput(f"{run_dir / 'run.json'}: unreadable: {e}") from None
    if not isinstance(doc, dict):
        raise InvalidInput(f"{run_dir / 'run.json'}: not a JSON object")
    return doc


def report(spec_dir: str, *, run_id: str | None = None, output: str = "md") -> int:
    d = resolve_spec_dir(spec_dir)
    runs = d / RUNTIME_DIR / "runs"
    if run_id is not None:
        return _one_run(d, runs, run_id, output)
    spec = load_spec(d)[0]
    done = sorted(p for p in runs.glob("*") if (p / "run.json").is_file()) if runs.is_dir() else []
    tasks = [
        {k: t.raw.get(k) for k in ("blocker", "error_class")}
        | {"id": t.id, "status": t.status, "attempts": t.attempts}
        for t in spec.tasks
    ]
    doc = spec_overview(spec.name, tasks, [_read_run(p) for p in done])
    md = render_spec_markdown(doc)
    out = d / RUNTIME_DIR / "report.md"
    if out.parent.is_dir():
        out.write_text(md)
    if output == "json":
        print(json.dumps(doc, indent=2, default=str))
    elif output == "html":
        print(_printable(_spec_html(doc)))
    else:
        print(_printable(md))
    return EXIT_OK


def _one_run(d: Path, runs: Path, run_id: str, output: str) -> int:
    run_dir = runs / run_id
    if "/" in run_id or not (run_dir / "run.json").is_file():
        known = sorted(p.name for p in runs.glob("*")) if runs.is_dir() else []
        raise InvalidInput(f"{d}: no run {run_id!r}{fmt.did_you_mean(run_id, known)} (see {runs})")
    metrics = _read_run(run_dir)
    md = render_markdown(metrics)
    (run_dir / "report.md").write_text(md)
    if output == "json":
        print(json.dumps(metrics, indent=2))
    elif output == "html":
        html = render_html(metrics)
        (run_dir / "report.html").write_text(html)
        print(_printable(html))
    else:
        print(_printable(md))
    return EXIT_OK


def _spec_html(doc: dict[str, Any]) -> str:
    e = htmllib.escape
    rows = "\n".join(
        f"<tr><td>{e(t['id'])}</td><td class='{e(t['status'])}'>{e(t['status'])}</td>"
        f"<td>{t['attempts']}</td>"
        f"<td>{'-' if t['seconds'] is None else fmt.duration(t['seconds'])}</td>"
        f"<td>{e(t['run_id'] or '-')}</td>"
        f"<td>{e(' / '.join(t['excerpt']) or (t['blocker'] or ''))}</td>"
        f"<td>{e(t['log'] or '')}</td></tr>"
        for t in doc["tasks"]
    )
    return f"""<!doctype html>
<html><head><meta charset="utf-8"><title>specexec spec {e(doc["spec"])}</title>
<style>body{{font-family:sans-serif;margin:2em}}td,th{{padding:2px 8px;text-align:left}}
.pass{{color:#070}}.fail{{color:#b00}}.blocked{{color:#a60}}</style></head>
<body><h1>specexec spec {e(doc["spec"])}</h1><p>{len(doc["runs"])} run(s)</p>
<table><tr><th>task</th><th>status</th><th>tries</th><th>time</th><th>last run</th>
<th>cause</th><th>log</th></tr>
{rows}</table></body></html>
"""


# A report line longer than this is cut on the terminal (report.md keeps all of it).
_LINE_MAX = 2000


def _printable(doc: str) -> str:
    """The report as a terminal may show it: worker text (blockers, notes, data) made
    safe line by line, indentation kept."""
    return "\n".join(fmt.clean(line, _LINE_MAX, strip=False) for line in doc.split("\n"))
