"""The worker prompt: default template content, spec-folder override, sandboxing."""

from __future__ import annotations

import os
import threading
import tracemalloc
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from specexec.errors import InvalidInput, UnsafePath
from specexec.run import prompt
from specexec.run.prompt import (
    DEFAULT_INSTRUCTIONS,
    BlockerResult,
    MergedInput,
    ParallelContext,
    RenderCancelled,
    render_prompt,
)
from specexec.tasksfile.types import Spec, Task

RAW: dict[str, Any] = {
    "id": "T2",
    "summary": "Add the login endpoint",
    "relevant_files": ["src/api/login.py", "tests/api/"],
    "parallelization": {"blocked_by": ["T1"]},
    "spec_sections": ["2.1 Data model", "3.4 Login flow"],
    "codebase_refs": {"functions": ["hash_password(pw: str) -> str", "User.by_email(email)"]},
    "standards": {"patterns": ["repository pattern", "no SQL in handlers"]},
    "verify": "pytest -q tests/api",
    "owner": "team-a",
}


def make(
    spec_dir: Path, raw: dict[str, Any] | None = None, context: dict[str, Any] | None = None
) -> tuple[Spec, Task]:
    raw = dict(RAW if raw is None else raw)
    task = Task(
        id=raw["id"],
        summary=raw["summary"],
        relevant_files=tuple(raw.get("relevant_files", ())),
        blocked_by=tuple(raw.get("parallelization", {}).get("blocked_by", ())),
        verify=raw.get("verify"),
        raw=raw,
    )
    spec_dir.mkdir(parents=True, exist_ok=True)
    spec = Spec(dir=spec_dir, name="add-auth", tasks=(task,), context=context or {})
    return spec, task


CONTEXT = {
    "global": {
        "product_pitch": "A todo app for teams",
        "tech_stack": ["Python", "FastAPI"],
        "branch_name": "feature/auth",
    }
}
T1 = BlockerResult(
    "T1", "pass", "Create the user model", "User model in src/models/user.py", [{"table": "users"}]
)


def render(spec: Spec, task: Task, **kw: Any) -> str:
    kw.setdefault(
        "parallel", ParallelContext(wave=2, concurrent_tasks=("T3", "T4"), conflict_risk="low")
    )
    kw.setdefault("inputs", [T1])
    return render_prompt(spec, task, **kw)


def test_default_prompt_carries_everything_the_worker_needs(tmp_path: Path) -> None:
    spec, task = make(tmp_path / "spec", context=CONTEXT)
    merged = MergedInput(strategy="union", items=({"table": "users"},), sources=("T1",))
    text = render(spec, task, merged=merged)
    assert text.startswith("# Task Worker: Execute Task T2\n")
    assert "- **Description**: Add the login endpoint" in text
    assert "- **Product**: A todo app for teams" in text
    assert "- **Tech Stack**: Python, FastAPI" in text
    assert "- **Branch**: feature/auth" in text
    assert "- 2.1 Data model\n- 3.4 Login flow" in text
    assert "## Files to Modify\n- src/api/login.py\n- tests/api/\n" in text
    assert (
        "## Existing Functions (USE EXACT NAMES)\n```\nhash_password(pw: str) -> str\nUser.by_email(email)\n```"
        in text
    )
    assert "- repository pattern\n- no SQL in handlers" in text
    assert "- **Wave**: 2" in text and "- **Conflict Risk**: low" in text
    assert "- **Concurrent With**: Tasks T3, T4" in text
    assert DEFAULT_INSTRUCTIONS in text
    assert "Do not commit, push" in text
    assert (
        '<input>\n  <result id="T1" status="pass">\n'
        "    <summary>Create the user model</summary>\n"
        "    <notes>User model in src/models/user.py</notes>\n"
        '    <data>[{"table": "users"}]</data>\n'
        "  </result>\n</input>"
    ) in text
    assert (
        '<merged strategy="union" sources="T1">\n[\n  {\n    "table": "users"\n  }\n]\n</merged>'
        in text
    )
    assert "specexec runs `pytest -q tests/api`" in text
    assert "`$SPECEXEC_RESULT_FILE`" in text  # the default result_file: the variable
    assert '"status": "pass|fail|blocked"' in text and '"data": []' in text
    assert text.rstrip().endswith("**TASK COMPLETE**")


def test_sparse_task_without_context_still_renders(tmp_path: Path) -> None:
    spec, task = make(tmp_path / "spec", raw={"id": "T9", "summary": "Tidy up"})
    text = render(spec, task, parallel=ParallelContext(wave=1), inputs=[])
    assert "Project Context" not in text and "Existing Functions" not in text
    assert "<input>" not in text and "Verification" not in text
    assert "- (none listed" in text and "- **Sequential Execution**" in text


def test_tech_stack_may_be_a_string(tmp_path: Path) -> None:
    spec, task = make(tmp_path / "spec", context={"global": {"tech_stack": "Go, Postgres"}})
    text = render(spec, task)
    assert "- **Tech Stack**: Go, Postgres" in text and "**Product**" not in text


def test_spec_folder_template_overrides_the_default(tmp_path: Path) -> None:
    spec, task = make(tmp_path / "spec")
    (spec.dir / "worker_prompt.md.j2").write_text(
        "Custom for {{ task.id }} by {{ task.owner }}: {{ task.functions | join('; ') }}\n"
        '{% for r in inputs %}<result id="{{ r.task_id }}">{{ r.data | json(None) }}</result>{% endfor %}\n'
        "{{ nothing_here }}wave {{ parallel.wave }}"
    )
    text = render(spec, task)
    assert text == (
        "Custom for T2 by team-a: hash_password(pw: str) -> str; User.by_email(email)\n"
        '<result id="T1">[{"table": "users"}]</result>'  # trim_blocks eats the newline
        "wave 2\n"
    )


def test_a_symlink_inside_the_spec_folder_is_allowed(tmp_path: Path) -> None:
    spec, task = make(tmp_path / "spec")
    (spec.dir / "prompts").mkdir()
    (spec.dir / "prompts" / "mine.j2").write_text("inside {{ task.id }}")
    (spec.dir / "worker_prompt.md.j2").symlink_to("prompts/mine.j2")
    assert render(spec, task) == "inside T2\n"


def test_a_symlink_pointing_outside_the_spec_folder_is_refused(tmp_path: Path) -> None:
    spec, task = make(tmp_path / "spec")
    outside = tmp_path / "elsewhere.j2"
    outside.write_text("{{ task.id }}")
    (spec.dir / "worker_prompt.md.j2").symlink_to(outside)
    with pytest.raises(UnsafePath, match="outside the spec folder"):
        render(spec, task)


def test_a_fifo_or_directory_template_is_refused_without_hanging(tmp_path: Path) -> None:
    spec, task = make(tmp_path / "spec")
    os.mkfifo(spec.dir / "worker_prompt.md.j2")
    with pytest.raises(UnsafePath, match="not a regular file"):
        render(spec, task)


@pytest.mark.parametrize(
    "source",
    [
        "line one\n{{ ''.__class__.__mro__ }}",
        "line one\n{{ cycler.__init__.__globals__.os }}",
        "line one\n{{ task.relevant_files.append('/etc/passwd') }}",
        "line one\n{{ 'a' * 1000000000 }}",
        "line one\n{{ 10 ** 1000000 }}",
        "line one\n{{ (2 ** 9999) ** 9999 }}",
        "line one\n{% for i in range(10**9) %}x{% endfor %}",
    ],
)
def test_sandbox_escapes_and_bombs_are_clean_invalid_input(tmp_path: Path, source: str) -> None:
    spec, task = make(tmp_path / "spec")
    path = spec.dir / "worker_prompt.md.j2"
    path.write_text(source)
    with pytest.raises(InvalidInput) as err:
        render(spec, task)
    assert str(err.value).startswith(f"{path}:2: template error")
    assert task.relevant_files == ("src/api/login.py", "tests/api/")  # untouched


def test_an_unsafe_attribute_alone_renders_nothing(tmp_path: Path) -> None:
    spec, task = make(tmp_path / "spec")
    (spec.dir / "worker_prompt.md.j2").write_text("[{{ ''.__class__ }}]")
    assert render(spec, task) == "[]\n"


def test_template_syntax_error_names_file_and_line(tmp_path: Path) -> None:
    spec, task = make(tmp_path / "spec")
    path = spec.dir / "worker_prompt.md.j2"
    path.write_text("ok\nok\n{% for x in %}\n")
    with pytest.raises(InvalidInput, match=rf"^{path}:3: template syntax error"):
        render(spec, task)


def test_templates_are_recompiled_when_the_override_changes(tmp_path: Path) -> None:
    spec, task = make(tmp_path / "spec")
    path = spec.dir / "worker_prompt.md.j2"
    path.write_text("v1")
    assert render(spec, task) == "v1\n"
    path.write_text("v2")
    assert render(spec, task) == "v2\n"
    path.unlink()
    assert render(spec, task).startswith("# Task Worker")


# --- the rendering budget (issue 15, case 10) ---------------------------------------------

NESTED = (
    "{% for a in range(3000) %}{% for b in range(3000) %}{% for c in range(300) %}"
    "{% endfor %}{% endfor %}{% endfor %}"
)


def _template(spec: Spec, source: str) -> None:
    (spec.dir / "worker_prompt.md.j2").write_text(source)


class StepClock:
    """The prompt module's clock, replaced: each reading advances it by ``step`` seconds.
    The template reads it at every loop iteration and macro call, so a time budget is
    used up by the template's own steps, whatever the machine's speed; ``reads`` counts
    them, and ``on_read(reads)`` runs at each. A template still running after
    ``MAX_READS`` readings fails the test (rather than run on for hours)."""

    MAX_READS = 100_000

    def __init__(
        self,
        monkeypatch: pytest.MonkeyPatch,
        step: float,
        on_read: Callable[[int], None] | None = None,
    ) -> None:
        self.step, self.on_read = step, on_read
        self.now, self.reads = 0.0, 0
        monkeypatch.setattr(prompt, "time", self)

    def monotonic(self) -> float:
        self.reads += 1
        assert self.reads <= self.MAX_READS, "the template ran on past its budget"
        self.now += self.step
        if self.on_read is not None:
            self.on_read(self.reads)
        return self.now


@pytest.mark.parametrize(
    "source",
    [
        NESTED,
        # Each a loop with no output, a macro that recurses widely, a loop over data.
        "{% macro f(n) %}{% for i in range(50) %}{{ f(n + 1) if n < 5 else '' }}{% endfor %}"
        "{% endmacro %}{{ f(0) }}",
        "{% for a in task.relevant_files * 100000 %}{% for b in range(100000) %}"
        "{% endfor %}{% endfor %}",
    ],
    ids=["nested-loops", "recursing-macro", "loop-over-data"],
)
def test_a_template_over_its_time_budget_is_refused_naming_it(
    tmp_path: Path, source: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(prompt, "RENDER_BUDGET_S", 0.3)
    clock = StepClock(monkeypatch, step=0.001)  # the budget is 300 template steps
    spec, task = make(tmp_path / "spec")
    _template(spec, source)
    with pytest.raises(InvalidInput, match=r"worker_prompt\.md\.j2: .*rendering budget of 0\.3 s"):
        render(spec, task)
    # Stopped as the budget ran out, by the clock read at each step: not before, and not
    # after the rest of its loops (billions of steps).
    assert 300 <= clock.reads <= 305


@pytest.mark.parametrize(
    "source",
    [
        '{% for a in range(100000) %}{{ "x" * 100 }}{% endfor %}',
        '{% set ns = namespace(s="x") %}{% for i in range(64) %}{% set ns.s = ns.s ~ ns.s %}'
        "{% endfor %}",
        '{% set ns = namespace(s="x") %}{% for i in range(64) %}{% set ns.s = ns.s + ns.s %}'
        "{% endfor %}",
        '{% set ns = namespace(s=["x"]) %}{% for i in range(64) %}'
        "{% set ns.s = ns.s + ns.s %}{% endfor %}",
        '{{ "x"|center(1000000000) }}',
        '{{ "x"|indent(1000000000, true) }}',
        '{{ "x".ljust(1000000000) }}',
        '{{ "%1000000000s" % "x" }}',
        '{{ "%*s" % (1000000000, "x") }}',
        '{{ "%1000000000s"|format("x") }}',
        '{{ "{:>1000000000}".format("x") }}',
        '{{ "{:>{}}".format("x", 1000000000) }}',
        '{{ ("x" * 1000000)|replace("x", "yyyyyyyy") }}',
    ],
)
def test_a_template_building_too_much_is_refused_before_it_is_built(
    tmp_path: Path, source: str
) -> None:
    spec, task = make(tmp_path / "spec")
    _template(spec, source)
    tracemalloc.start()
    try:
        with pytest.raises(
            InvalidInput, match=r"worker_prompt\.md\.j2: .*budget of 4 Mi characters"
        ):
            render(spec, task)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    # Refused before the gigabytes (10**9 characters, a string doubled 64 times) were
    # allocated: at most a few times the budget (a list of 8 Mi items is 64 MiB) was.
    assert peak < 32 * prompt.PROMPT_MAX_CHARS, f"{peak / 2**20:.0f} MiB allocated"


def test_rendering_stops_when_cancelled(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The run's cancel event (Ctrl-C, SIGTERM) is looked at as the template runs."""
    spec, task = make(tmp_path / "spec")
    _template(spec, NESTED)
    cancel = threading.Event()

    def interrupt(reads: int) -> None:
        if reads == 100:  # 100 steps into the loops, another thread sets the event
            setter = threading.Thread(target=cancel.set)
            setter.start()
            setter.join()

    # The time budget (5 s) is 5000 steps: far from used up when the event is set.
    clock = StepClock(monkeypatch, step=0.001, on_read=interrupt)
    with pytest.raises(RenderCancelled):
        render(spec, task, cancel=cancel)
    assert cancel.is_set()
    assert clock.reads <= 101  # stopped at the next step after the event was set


def test_templates_within_budget_render_as_before(tmp_path: Path) -> None:
    spec, task = make(tmp_path / "spec")
    _template(
        spec,
        "{% for f in task.relevant_files %}{{ loop.index }}. {{ f|center(20) }}\n{% endfor %}"
        '{{ "%-5s|" % "ab" }}{{ "{:>4}".format(7) }}{{ [1, 2] + [3] }}{{ "a" ~ "b" }}'
        "{{ range(3)|join(',') }}",
    )
    assert render(spec, task) == (
        "1.   src/api/login.py  \n2.      tests/api/     \nab   |   7[1, 2, 3]ab0,1,2\n"
    )
