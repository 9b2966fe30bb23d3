from __future__ import annotations

import json
import math
import os
import subprocess
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import pytest
from conftest import PY, task, write_spec
from hypothesis import event, given, settings
from hypothesis import strategies as st

from specexec.errors import InvalidInput, UnsafePath
from specexec.tasksfile import models, schema
from specexec.tasksfile.models import json_schema
from specexec.tasksfile.schema import MAX_MINUTES, id_problem, load_spec, validate_document


def _problems(spec_dir: Path) -> list[str]:
    with pytest.raises(InvalidInput) as ei:
        load_spec(spec_dir)
    return list(ei.value.problems)


def test_minimal_spec_defaults(repo: Path) -> None:
    d = write_spec(repo / "specs" / "s", [{"id": "T1", "summary": "x"}])
    spec, warnings = load_spec(d)
    (t,) = spec.tasks
    assert spec.name == "s"
    assert (t.status, t.max_retries, t.timeout_minutes, t.relevant_files) == (
        "pending",
        1,
        30.0,
        (),
    )
    assert any("relevant_files" in w and '"T1"' in w for w in warnings)


def test_every_problem_reported_at_once(repo: Path) -> None:
    (repo / "outside").mkdir()
    os.symlink("/etc", repo / "etc-link")
    d = write_spec(
        repo / "specs" / "bad",
        [
            task("T1", blocked_by=["T3"], files=["a.py"]),
            task("T1", files=["b.py"]),  # duplicate
            task("t2", files=["c.py"]),
            task("T2", files=["/abs/path.py"]),  # case collision + absolute
            task("T3", blocked_by=["T1"], files=["../up.py"]),
            task("T4", blocked_by=["T4", "nope"], files=["C:/win.py"]),
            task("bad id!", files=["x\u0000y"]),
            task("T5", files=["etc-link/passwd"]),
            {"id": "T6", "summary": "s", "relevant_files": "not-a-list", "estimated_minutes": "5"},
        ],
    )
    problems = "\n".join(_problems(d))
    for needle in (
        'task "T1": field id: duplicate id "T1"',
        'task "T2": field id: "T2" differs from "t2" only in letter case',
        "task \"T2\": field relevant_files[0]: '/abs/path.py'",
        "task \"T3\": field relevant_files[0]: '../up.py'",
        'task "T4": field parallelization.blocked_by: a task cannot be blocked by itself',
        'task "T4": field parallelization.blocked_by: unknown task "nope"',
        "'C:/win.py'",
        'task "bad id!": field id:',
        "NUL",
        "escapes the repository through a symlink",
        'task "T6": field relevant_files:',
        'task "T6": field estimated_minutes:',
    ):
        assert needle in problems, f"missing {needle!r} in:\n{problems}"
    assert str(d / "tasks.json") in problems


def test_cycle_is_named_as_a_path(repo: Path) -> None:
    d = write_spec(
        repo / "specs" / "cyc",
        [task("T1", blocked_by=["T3"]), task("T2"), task("T3", blocked_by=["T1"])],
    )
    problems = "\n".join(_problems(d))
    assert "T1 -> T3 -> T1" in problems or "T3 -> T1 -> T3" in problems


def test_existing_directory_is_a_directory_pattern(repo: Path) -> None:
    (repo / "src" / "pkg").mkdir(parents=True)
    d = write_spec(repo / "specs" / "s", [task("T1", files=["src/pkg", "src/x.py"])])
    spec, _ = load_spec(d)
    assert spec.tasks[0].relevant_files == ("src/pkg/", "src/x.py")


def test_symlinked_spec_folder_leading_out_is_refused(repo: Path, tmp_path: Path) -> None:
    real = write_spec(tmp_path / "elsewhere" / "s", [task("T1")])
    (repo / "specs").mkdir()
    os.symlink(real, repo / "specs" / "s")
    with pytest.raises(UnsafePath):
        load_spec(repo / "specs" / "s")


@pytest.mark.parametrize(
    ("value", "ok"),
    [
        ("T1", True),
        ("a.b_c-1", True),
        ("-x", False),
        ("a..b", False),
        ("x.lock", False),
        ("x.", False),
        ("x" * 64, True),
        ("x" * 65, False),
        ("é", False),
        ("", False),
    ],
)
def test_id_rules(value: str, ok: bool) -> None:
    assert (id_problem(value) is None) is ok


def test_schema_describes_required_fields() -> None:
    schema = json_schema()
    task_def = schema["$defs"]["TaskModel"]
    assert set(task_def["required"]) == {"id", "summary"}
    json.dumps(schema)  # serialisable


def test_round_trip_with_unknown_fields_at_every_level_is_byte_identical(repo: Path) -> None:
    from specexec.tasksfile.store import TasksStore

    text = """{
  "x-top": {"kept": [1, 2.5, "é", null]},
  "version": 1,
  "spec": "rt",
  "defaults": {
    "timeout_minutes": 10,
    "x-defaults": true
  },
  "tasks": [
    {
      "x-first": "before id",
      "id": "T1",
      "summary": "s",
      "parallelization": {
        "blocked_by": [],
        "x-par": {
          "deep": {
            "deeper": [
              {}
            ]
          }
        }
      },
      "result": {
        "status": "pass",
        "x-res": 1
      },
      "x-last": "after"
    }
  ],
  "x-bottom": "end"
}
"""
    from specexec.tasksfile import jsonio

    canonical = jsonio.dumps(jsonio.loads(text, source="t"))
    d = repo / "specs" / "rt"
    d.mkdir(parents=True)
    (d / "tasks.json").write_text(canonical)
    load_spec(d)
    store = TasksStore(d)
    store.update(tasks={"T1": {"summary": "s"}})  # no change: no write
    assert (d / "tasks.json").read_text() == canonical
    store.update(tasks={"T1": {"status": "pass"}})
    store.update(tasks={"T1": {"status": "pending"}})
    after = (d / "tasks.json").read_text()
    # A new field goes at the end of its object; everything else stays where it was.
    assert after == canonical.replace(
        '"x-last": "after"\n', '"x-last": "after",\n      "status": "pending"\n'
    )
    assert jsonio.dumps(jsonio.loads(after, source="t")) == after


# --- the fast path and the pydantic models read a document alike ---------------------------
# Plain values (the exact JSON type, in range) are read without pydantic; everything else
# goes through the models. Both ways must give the same Spec, the same errors and warnings.

_SURROGATE = "x\ud800"
_IDS = ["T1", "T2", "T3", "t1", "a.b", "bad id!", "x.lock", _SURROGATE]
_LITERALS = ["pending", "in_progress", "pass", "fail", "blocked", "done", "rerun", "worktree"]
_LITERALS += ["none", "full", "sparse", "union", "intersection", "priority", "voting", ""]
_ODD_KEYS = ["x-extra", "_private", "model_config", "__class__", "__dict__", "k\udc00", "tasks"]

strings = st.sampled_from([*_IDS, *_LITERALS, "a.py", "src/", "../up", "/abs"]) | st.text(
    max_size=6
)
scalars = st.none() | st.booleans() | st.integers() | st.floats() | strings
keys = st.sampled_from(_ODD_KEYS) | st.text(max_size=4)
junk = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(keys | st.integers(0, 2), inner, max_size=3)
    ),
    max_leaves=6,
)


def _objects(fields: dict[str, st.SearchStrategy[Any]]) -> st.SearchStrategy[dict[Any, Any]]:
    """Objects of some of these fields; sometimes with an unknown key."""
    extra = st.dictionaries(st.sampled_from(_ODD_KEYS[:2]), junk, max_size=1)
    return st.tuples(extra, st.fixed_dictionaries({}, optional=fields)).map(
        lambda p: {**p[0], **p[1]}
    )


# Values the fast path takes: a document of these only is read without pydantic.
paths = st.lists(st.sampled_from(["a.py", "src/", "src/*.py", "b/c.txt"]), max_size=3)
minutes = st.sampled_from([0, 1, 5, 0.5, 30.0, 10**6, 1e6, -0.0])
opt_text = st.none() | st.sampled_from(["echo hi", "true", "make test", _SURROGATE])
plain_worker = st.sampled_from(["shell", "claude", ""]) | _objects(
    {
        "preset": st.none() | st.sampled_from(["shell", "codex"]),
        "command": opt_text | st.lists(st.sampled_from(["a", "-x", _SURROGATE]), max_size=2),
        "args": st.lists(st.sampled_from(["--fast", "-v"]), max_size=2),
    }
)
PLAIN_MERGE = {
    "key": opt_text,
    "top_n": st.none() | st.sampled_from([1, 7, 2**53]),
    "min_votes": st.sampled_from([1, 3]),
}
PLAIN_TASK = {
    "status": st.sampled_from(["pending", "in_progress", "pass", "fail", "blocked"]),
    "relevant_files": paths,
    "parallelization": _objects({"blocked_by": st.lists(st.sampled_from(_IDS), max_size=2)}),
    "estimated_minutes": st.none() | minutes,
    "duration_minutes": st.none() | minutes,
    "timeout_minutes": st.none() | st.sampled_from([1, 0.5, 10**6, 45.0]),
    "command": opt_text,
    "verify": opt_text,
    "worker": st.none() | plain_worker,
    "max_retries": st.none() | st.sampled_from([0, 1, 100]),
    "on_conflict": st.none() | st.sampled_from(["fail", "rerun"]),
    "attempts": st.sampled_from([0, 3, 2**53]),
    "isolation": st.sampled_from(["worktree", "none"]),
    "checkout": st.sampled_from(["full", "sparse"]),
    "expect_changes": st.none() | st.booleans(),
    "sparse_paths": paths,
    "merge": st.none()
    | st.tuples(
        st.sampled_from(["union", "intersection", "priority", "voting"]), _objects(PLAIN_MERGE)
    ).map(lambda p: {"strategy": p[0], **p[1]}),
    "blocker": opt_text,
    "spec_sections": st.lists(st.sampled_from(["§1", "intro"]), max_size=2),
    "codebase_refs": st.dictionaries(st.sampled_from(["a", _SURROGATE]), junk, max_size=2),
    "standards": st.dictionaries(st.text(max_size=3), junk, max_size=2),
    "started_at": opt_text,
    "completed_at": opt_text,
    "branch": opt_text,
    "commit": opt_text,
    "files_changed": st.none() | paths,
    "scope_violations": st.none() | paths,
    "result": st.none() | st.dictionaries(st.sampled_from(["status", "data"]), junk, max_size=2),
}
PLAIN_DEFAULTS = {
    "timeout_minutes": st.sampled_from([1, 30.0, 0.25, 10**6]),
    "max_retries": st.sampled_from([0, 2, 100]),
    "verify": opt_text,
    "max_wait_minutes": minutes,
    "max_cost_usd": st.none() | st.sampled_from([0.01, 5, 1e300, 2**53]),
    "max_tokens": st.none() | st.sampled_from([1, 10**6, 2**53]),
    "on_conflict": st.sampled_from(["fail", "rerun"]),
}
PLAIN_TOP = {
    "version": st.just(1),
    "spec": st.none() | st.sampled_from(["s", "other", "bad name!"]),
    "base_ref": opt_text,
    "worker": st.none() | plain_worker,
    "defaults": _objects(PLAIN_DEFAULTS),
    "execution_strategy": st.dictionaries(st.text(max_size=3), junk, max_size=2),
}
PLAIN = {"top": PLAIN_TOP, "defaults": PLAIN_DEFAULTS, "task": PLAIN_TASK}

# Valid values the fast path leaves to the models (which convert them).
COERCED: dict[str, dict[str, st.SearchStrategy[Any]]] = {
    "top": {"version": st.sampled_from([True, 1.0])},
    "defaults": {
        "max_cost_usd": st.sampled_from([2**53 + 1, 10**30, math.inf]),
        "max_tokens": st.just(2**64),
    },
    "task": {
        "attempts": st.sampled_from([2**53 + 1, 10**400]),
        "merge": st.just({"strategy": "voting", "min_votes": 2**60, "top_n": 2**70}),
    },
}


def _near(*limits: float) -> list[Any]:
    """Numbers at and just past these limits, as ints and floats; and what is no number."""
    values: list[Any] = [True, False, None, "1", math.inf, -math.inf, math.nan, 2**53 + 1]
    for x in limits:
        values += [x, x - 1, x + 1, float(x), x - 0.5, x + 0.5, -0.0 * x]
    return values


# Values at or just past the limits of their field, by name.
LIMITS: dict[str, list[Any]] = {
    "version": [0, 1, 2, True, False, 1.0, "1", None],
    "summary": ["", " ", _SURROGATE, "\udc00", None, 1],
    "timeout_minutes": _near(0, MAX_MINUTES),
    "max_wait_minutes": _near(0, MAX_MINUTES),
    "estimated_minutes": _near(0, MAX_MINUTES),
    "duration_minutes": _near(0, MAX_MINUTES),
    "max_retries": _near(0, 100),
    "attempts": _near(0),
    "max_tokens": _near(1),
    "max_cost_usd": _near(0),
    "top_n": _near(1),
    "min_votes": _near(1),
    "expect_changes": [0, 1, "true", None],
}
EDGES: dict[str, st.SearchStrategy[Any]] = {
    **{k: st.sampled_from(v) for k, v in LIMITS.items()},
    "merge": st.fixed_dictionaries(
        {},
        optional={
            "strategy": strings,
            "key": scalars,
            "top_n": st.sampled_from(LIMITS["top_n"]),
            "min_votes": st.sampled_from(LIMITS["min_votes"]),
        },
    ),
    "worker": st.fixed_dictionaries(
        {},
        optional={
            "preset": scalars,
            "command": scalars | st.lists(scalars, max_size=2),
            "args": scalars | st.lists(scalars, max_size=2),
        },
    ),
}
edges = scalars | st.lists(scalars, max_size=2)
MODES = {
    "plain": lambda k, v: v,
    "coerced": lambda k, v: v,  # and a value of COERCED: valid, but not plain
    "edgy": lambda k, v: v | EDGES.get(k, edges),
    "any": lambda k, v: v | EDGES.get(k, edges) | junk,
}


def _fields(mode: str, shape: str) -> st.SearchStrategy[Any]:
    """Objects of some fields of ``shape`` ("top", "defaults", "task") in this mode."""
    plain = PLAIN[shape]
    if mode == "coerced":
        coerced = st.fixed_dictionaries({}, optional=COERCED[shape])
        return st.tuples(_objects(plain), coerced).map(lambda p: {**p[0], **p[1]})
    return _objects({k: MODES[mode](k, v) for k, v in plain.items()})


def _tasks(mode: str) -> st.SearchStrategy[list[Any]]:
    summary = st.sampled_from(["s", "Do it"])
    if mode in ("edgy", "any"):
        summary = MODES[mode]("summary", summary)
    one = st.tuples(st.sampled_from(_IDS[:5]), summary, _fields(mode, "task")).map(
        lambda p: {**p[2], "id": p[0], "summary": p[1]}
    )
    if mode != "any":
        return st.lists(one, max_size=4, unique_by=lambda t: t["id"].casefold())
    required = {"id": st.sampled_from(_IDS) | junk, "summary": strings | junk}
    odd = st.tuples(
        st.dictionaries(keys | st.integers(0, 1), junk, max_size=2),
        st.fixed_dictionaries({}, optional={**required, **PLAIN_TASK}),
    ).map(lambda p: {**p[0], **p[1]})
    return st.lists(one | odd | junk, max_size=4)


@st.composite
def documents(draw: st.DrawFn) -> tuple[str, Any]:
    """(mode, document): a "plain" one has only values the fast path takes."""
    mode = draw(st.sampled_from(list(MODES)))
    top = draw(_fields(mode, "top"))
    if "defaults" in top and mode != "plain" and draw(st.booleans()):
        top["defaults"] = draw(_fields(mode, "defaults"))
    doc = {**top, "tasks": draw(_tasks(mode))}
    if mode == "any":
        doc = draw(st.just(doc) | st.just(top) | junk)
    return mode, doc


def _outcome(doc: Any, *, fast: bool) -> tuple[Any, ...]:
    """Everything a caller sees: the Spec (its repr shows the types: 5.0, not 5), or the
    error with every problem; the warnings."""
    file = Path("/work/specs/s/tasks.json")
    try:
        spec, warnings = validate_document(
            doc, file=file, repo_root=None, context={"c": 1}, fast=fast
        )
    except InvalidInput as e:
        return ("invalid", str(e), list(e.problems))
    return ("valid", repr(spec), spec, warnings, spec.raw is doc)


@settings(max_examples=600, deadline=None)
@given(documents())
def test_the_fast_path_reads_every_document_as_the_pydantic_models_do(
    case: tuple[str, Any],
) -> None:
    mode, doc = case
    if mode == "plain":
        # Not vacuous: a plain document is read without the models.
        assert schema._plain_top(doc) is not None
        assert all(schema._plain_task(t) is not None for t in doc["tasks"])
    fast = _outcome(doc, fast=True)
    if fast[0] == "valid":
        all_plain = schema._plain_top(doc) and all(map(schema._plain_task, doc["tasks"]))
        event(f"valid, {'read without pydantic' if all_plain else 'with the models'}")
    assert fast == _outcome(doc, fast=False)


def test_the_fast_path_knows_every_field_of_the_models() -> None:
    """A field added to a model but not to the fast path would pass unchecked there."""
    for known, model in [
        (schema._TOP_KEYS, models.TasksFileModel),
        (schema._DEFAULTS_KEYS, models.DefaultsModel),
        (schema._TASK_KEYS, models.TaskModel),
        (schema._PARALLELIZATION_KEYS, models.ParallelizationModel),
        (schema._MERGE_KEYS, models.MergeModel),
        (schema._WORKER_KEYS, models.WorkerModel),
    ]:
        assert known == set(model.model_fields), model.__name__
    assert schema._defaults_of(models.DefaultsModel()) == schema.Defaults()


# Any value of a field: of each JSON type (a tuple is none), at its limits, odd strings.
ANY_TYPE: list[Any] = [None, True, False, 0, 1, -1, 2**53 + 1, 10**400, 0.5, -0.0, math.nan]
ANY_TYPE += [math.inf, "", "x", _SURROGATE, "pending", [], ["a"], ["a", 1], [_SURROGATE]]
ANY_TYPE += [("a",), {}, {"a": 1}, {1: "a"}, {_SURROGATE: 1}, {"strategy": "union"}]
WORKER_FIELDS = ("preset", "command", "args")


def _placements() -> Iterator[tuple[str, str, dict[Any, Any]]]:
    """(where, shape, object): each field of each object set to each value of its LIMITS
    and of ANY_TYPE, and each object with each odd key."""

    def in_task(**fields: Any) -> dict[Any, Any]:
        return {"id": "T1", "summary": "s", **fields}

    shapes: list[tuple[str, str, Iterable[Any], Callable[[Any], dict[Any, Any]]]] = [
        ("top", "top", PLAIN_TOP, lambda d: d),
        ("defaults", "top", PLAIN_DEFAULTS, lambda d: {"defaults": d}),
        ("task", "task", ["id", "summary", *PLAIN_TASK], lambda d: {**in_task(), **d}),
        (
            "merge",
            "task",
            ["strategy", *PLAIN_MERGE],
            lambda d: in_task(merge={"strategy": "union", **d}),
        ),
        ("worker", "task", WORKER_FIELDS, lambda d: in_task(worker=d)),
        ("parallelization", "task", ["blocked_by"], lambda d: in_task(parallelization=d)),
    ]
    for name, shape, fields, place in shapes:
        for key in _ODD_KEYS:
            yield f"{name}[{key!r}]", shape, place({key: 1})
        yield f"{name}[1]", shape, place({1: 1})
        for field in fields:
            for value in [*LIMITS.get(field, []), *ANY_TYPE]:
                yield f"{name}.{field} = {value!r}", shape, place({field: value})


def test_no_value_the_fast_path_takes_is_read_otherwise_by_the_models() -> None:
    """Whatever the fast path takes, the models take as well, to the same values (the
    values it leaves go to the models: their errors are the only ones)."""
    taken = 0
    for where, shape, obj in _placements():
        if shape == "top":
            fast: Any = schema._plain_top(obj)
            top, errors = models.validated(models.TasksFileModel, {**obj, "tasks": []})
            slow: Any = top and schema._top_of(top)
        else:
            fast = schema._plain_task(obj)
            task, errors = models.validated(models.TaskModel, obj)
            slow = task and schema._task_of(task)
        if fast is not None:
            taken += 1
            assert (errors, repr(fast)) == ([], repr(slow)), where
    assert taken > 200  # not vacuous


@settings(max_examples=300, deadline=None)
@given(plain_worker | junk)
def test_a_plain_worker_is_read_as_pydantic_reads_it(value: Any) -> None:
    """``[tool.specexec] worker`` of pyproject.toml (workers.resolve): without pydantic
    when plain, else with its error."""
    model, errors = models.validated_worker(value)
    expected = (repr(schema._worker_of(model)), [e["msg"] for e in errors])
    got, got_errors = schema.read_worker(value)
    assert (repr(got), [e["msg"] for e in got_errors]) == expected
    if schema.plain_worker(value) is not None:
        event("plain")


_IMPORTS = """
import sys
from specexec.commands import plan, run, status, validate
from specexec.tasksfile.schema import load_spec
from specexec.workers.resolve import repo_worker
spec, _ = load_spec(sys.argv[1])
repo_worker(spec.dir.parent.parent)
print("pydantic" in sys.modules, len(spec.tasks))
"""


def test_a_plain_spec_loads_without_importing_pydantic(repo: Path) -> None:
    (repo / "pyproject.toml").write_text('[tool.specexec]\nworker = "shell"\n')
    d = write_spec(
        repo / "specs" / "s",
        [
            task("T1", files=["a.py"], command="true", worker="shell", isolation="none"),
            task("T2", blocked_by=["T1"], files=["src/"], estimated_minutes=5),
        ],
        defaults={"timeout_minutes": 10, "max_retries": 2},
        worker={"preset": "shell", "args": []},
    )

    def imported(spec_dir: Path) -> str:
        proc = subprocess.run(
            [PY, "-c", _IMPORTS, str(spec_dir)], capture_output=True, text=True, check=True
        )
        return proc.stdout.strip()

    assert imported(d) == "False 2"
    # ... but a value the fast path leaves to the models imports them (and is read alike).
    d = write_spec(repo / "specs" / "t", [task("T1")], defaults={"max_cost_usd": 2**60})
    assert imported(d) == "True 1"
    assert load_spec(d)[0].max_cost_usd == float(2**60)
