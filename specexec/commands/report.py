"""`specexec report SPEC_DIR [--run RUN_ID] [--format md|json|html]`: print (and
regenerate) a run's report from its run.json."""

from __future__ import annotations

import json

from specexec import fmt
from specexec.errors import EXIT_OK, InvalidInput
from specexec.run.report import render_html, render_markdown
from specexec.tasksfile.schema import resolve_spec_dir


def report(spec_dir: str, *, run_id: str | None = None, output: str = "md") -> int:
    d = resolve_spec_dir(spec_dir)
    runs = d / ".specexec" / "runs"
    if run_id is not None:
        run_dir = runs / run_id
        if "/" in run_id or not (run_dir / "run.json").is_file():
            raise InvalidInput(f"{d}: no run {run_id!r} (see {runs})")
    else:
        done = (
            sorted(p for p in runs.glob("*") if (p / "run.json").is_file()) if runs.is_dir() else []
        )
        if not done:
            raise InvalidInput(f"{d}: no finished run yet (run `specexec run {spec_dir}` first)")
        run_dir = done[-1]
    try:
        metrics = json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError) as e:
        raise InvalidInput(f"{run_dir / 'run.json'}: unreadable: {e}") from None
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


# A report line longer than this is cut on the terminal (report.md keeps all of it).
_LINE_MAX = 2000


def _printable(doc: str) -> str:
    """The report as a terminal may show it: worker text (blockers, notes, data) made
    safe line by line, indentation kept."""
    return "\n".join(fmt.clean(line, _LINE_MAX, strip=False) for line in doc.split("\n"))
