"""Fuzzing tasks.json and context-summary.json: hostile input never crashes specexec.

For every generated file, ``validate``, ``plan`` and ``run`` (in-process through
``specexec.main.main``, stdout a strict UTF-8 stream as in a pipe) must:

- exit 0 or 2, never 3, never print a traceback, and agree with each other;
- on exit 2, print a message that names the file (and, for a single problem, the problem);
- never modify the file, and never create anything in the spec folder or the repository.

Documents that are valid are only ``run --dry-run`` here (running them is what the chaos
tests do). A smaller set goes through real subprocesses, where an unprintable string or
a crash in the interpreter's own output handling would show.

Scale with SPECEXEC_FUZZ_EXAMPLES (examples per property, default 150; the quick
subsets that are not marked slow run a fifth of that).
"""

from __future__ import annotations

import json
import os
import random
import re
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest
from conftest import PY, git, init_repo, task, write_spec
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from reliability.support import call_main

pytestmark = pytest.mark.reliability

EXAMPLES = int(os.environ.get("SPECEXEC_FUZZ_EXAMPLES", "150"))
FUZZ = settings(
    max_examples=EXAMPLES,
    deadline=None,
    derandomize=os.environ.get("SPECEXEC_FUZZ_RANDOM") is None,  # CI: the same inputs every time
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    database=None,
)
# The quick subset (not slow: `pytest -m "not slow"`); the slow ones use other seeds.
QUICK = settings(FUZZ, max_examples=max(10, EXAMPLES // 5))
# Bound on a single line of error output: a megabyte-long id must not come back whole.
MAX_LINE = 2000
UNSAFE_OUTPUT = re.compile("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202a-\u202e\u2066-\u2069]")

# --------------------------------------------------------------------------- strategies

ODD_TEXT = st.text(
    st.characters(codec=None, categories=None, exclude_categories=()),  # surrogates included
    max_size=12,
)
CRAFTED_IDS = [
    "",
    ".",
    "..",
    "../x",
    "a/b",
    "/abs",
    "-rf",
    "--help",
    "a..b",
    "x.lock",
    "x.",
    "HEAD",
    "@",
    "a@b",
    "a b",
    "a\tb",
    "a\nb",
    "\u00e4",
    "\uff34\uff11",
    "a\u202eb",
    "a\u200bb",
    "\x00",
    "T1\x00",
    "x" * 65,
    "x" * 100_000,
    "refs/heads/x",
    "~x",
    "a:b",
    "a^b",
    "a\\b",
    "T1 ",
    " T1",
    "t1",
    "\udc80",
    "\ud83d",
    "\U0001f600",
    "\u1d40" + "1",
    "\ufb01",
    "con",
]
CRAFTED_PATHS = [
    "../x",
    "..",
    "/etc/passwd",
    "a/../../x",
    "./../x",
    "a/./b",
    "~/x",
    "C:\\x",
    "C:/x",
    "\\\\srv\\share",
    "a\x00b",
    "",
    " ",
    "**/../x",
    "*",
    "**",
    "/",
    "//",
    ".git/config",
    ".git/",
    ".specexec/x",
    "a\nb",
    "\u202e",
    "x" * 5000,
    "a/" * 300,
    "[",
    "[!",
    "***",
    "a/**/b/**/c/**/d",
    "*" * 500 + "x",
    "\udc80",
    "[z-a]",
    "{a,b}",
    "$(touch pwned)",
]
HUGE = ["x" * 1_000_000, "\u00e9" * 300_000, "\U0001f600" * 200_000]


def json_values(max_leaves: int = 12) -> st.SearchStrategy[Any]:
    leaves = (
        st.none()
        | st.booleans()
        | st.integers()
        | st.integers(min_value=-(10**40), max_value=10**40)
        | st.floats(allow_nan=False, allow_infinity=False)
        | ODD_TEXT
        | st.sampled_from(CRAFTED_IDS + CRAFTED_PATHS)
    )
    return st.recursive(
        leaves,
        lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ODD_TEXT, inner, max_size=4),
        max_leaves=max_leaves,
    )


def base_doc(n: int) -> dict[str, Any]:
    tasks = []
    for i in range(n):
        tasks.append(
            {
                "id": f"T{i}",
                "summary": f"task {i}",
                "status": "pending",
                "relevant_files": [f"src/f{i}.py"],
                "parallelization": {"blocked_by": [f"T{i - 1}"] if i else []},
                "command": "true",
            }
        )
    return {"version": 1, "defaults": {"timeout_minutes": 5, "max_retries": 0}, "tasks": tasks}


TOP_FIELDS = ["version", "spec", "base_ref", "worker", "defaults", "tasks", "execution_strategy"]
TASK_FIELDS = [
    "id",
    "summary",
    "status",
    "relevant_files",
    "parallelization",
    "estimated_minutes",
    "duration_minutes",
    "command",
    "verify",
    "worker",
    "timeout_minutes",
    "max_retries",
    "attempts",
    "isolation",
    "checkout",
    "sparse_paths",
    "merge",
    "blocker",
    "spec_sections",
    "codebase_refs",
    "standards",
    "result",
    "files_changed",
]
SPECIAL_VALUES = [
    None,
    True,
    0,
    -1,
    1.5,
    1e308,
    -1e308,
    5e-324,
    10**30,
    "",
    "5",
    [],
    {},
    [None],
    [[]],
    {"preset": 5},
    {"command": []},
    {"command": [1]},
    {"preset": "nope"},
    "nope",
    {"strategy": "voting", "min_votes": 0},
    {"blocked_by": "T0"},
    {"blocked_by": ["T0", "T0"]},
    "--upload-pack=touch /tmp/pwned",
    "-x",
    "HEAD~100000",
    "in_progress",
    "pass",
    "sparse",
]


@st.composite
def mutated_docs(draw: st.DrawFn) -> dict[str, Any]:
    """A valid document with a few fields replaced by wrong, crafted or random values."""
    doc = base_doc(draw(st.integers(1, 6)))
    values = (
        st.sampled_from(SPECIAL_VALUES)
        | json_values()
        | st.sampled_from(CRAFTED_IDS + CRAFTED_PATHS)
    )
    for _ in range(draw(st.integers(1, 4))):
        where = draw(st.sampled_from(["top", "task", "path", "id", "blocker", "unknown"]))
        tasks = doc["tasks"] if isinstance(doc.get("tasks"), list) else []
        t = draw(st.sampled_from(tasks)) if tasks and isinstance(tasks[0], dict) else None
        if where == "top":
            doc[draw(st.sampled_from(TOP_FIELDS))] = draw(values)
        elif t is None:
            continue
        elif where == "task":
            t[draw(st.sampled_from(TASK_FIELDS))] = draw(values)
        elif where == "path":
            field = draw(st.sampled_from(["relevant_files", "sparse_paths"]))
            t[field] = draw(st.lists(st.sampled_from(CRAFTED_PATHS) | ODD_TEXT, max_size=3))
        elif where == "id":
            t["id"] = draw(st.sampled_from(CRAFTED_IDS) | ODD_TEXT)
        elif where == "blocker":
            ids = [x.get("id") for x in tasks if isinstance(x, dict)]
            pool = st.sampled_from([i for i in ids if isinstance(i, str)] or ["T0"]) | ODD_TEXT
            t["parallelization"] = {"blocked_by": draw(st.lists(pool, max_size=4))}
        else:
            key = draw(st.sampled_from(["x-unknown", "summary", "notes"]))
            t[key] = draw(st.sampled_from(HUGE) | json_values(30))
    return doc


def nested(depth: int, inner: str = "1") -> str:
    return "[" * depth + inner + "]" * depth


def doc_text(doc: Any, rng: random.Random) -> bytes:
    """A document as a file, ASCII-escaped or raw UTF-8 (lone surrogates then make the
    bytes invalid UTF-8, which is one more thing to reject cleanly)."""
    if rng.random() < 0.5:
        return json.dumps(doc, ensure_ascii=True, indent=rng.choice([None, 2])).encode()
    text = json.dumps(doc, ensure_ascii=False, indent=rng.choice([None, 2]))
    return text.encode("utf-8", "surrogatepass")


def crafted_texts() -> st.SearchStrategy[bytes]:
    """Files that are not JSON, or JSON a careful reader refuses."""
    valid = json.dumps(base_doc(2))
    return st.sampled_from(
        [
            b"",
            b" \n",
            b"\xef\xbb\xbf" + valid.encode(),
            valid.encode("utf-16"),
            valid.encode("utf-32"),
            valid[: len(valid) // 2].encode(),
            b"\xff\xfe\x00",
            b'{"version": 1, "version": 1, "tasks": []}',
            b'{"tasks": [{"id": "a", "summary": "s", "id": "b"}]}',
            b'{"tasks": [], "x": NaN}',
            b'{"tasks": [], "x": Infinity}',
            b'{"tasks": [], "x": 1e999}',
            b'{"tasks": [], "x": -Infinity}',
            ('{"tasks": [], "x": ' + "1" * 5000 + "}").encode(),
            ('{"tasks": [], "x": ' + nested(65) + "}").encode(),
            ('{"tasks": [], "x": ' + nested(62) + "}").encode(),
            ('{"tasks": [], "x": ' + nested(100_000) + "}").encode(),
            ('{"tasks": [], "x": ' + nested(100_000, "") + "}").encode(),
            ('{"tasks": [], "x": "' + "\\ud800" + '"}').encode(),
            b'{"tasks": [], "x": "\xed\xa0\x80"}',  # a surrogate encoded in UTF-8: invalid
            b'{"tasks": [{"id": "a\\u0000", "summary": "s"}]}',
            b"[]",
            b"null",
            b"1",
            b'"tasks"',
            b"{",
            b"}",
            b"{}",
            b'{"tasks": null}',
            b'{"tasks": [null]}',
            b'{"tasks": [[]]}',
            b'{"tasks": [{}]}',
            b"\x00" * 100,
            b'{"tasks": []}' + b" " * 100 + b"x",
            b'{"tasks": []}\n{"tasks": []}',
            b'{"tasks": [], "/*": 1} // comment',
            b"{'tasks': []}",
            b'{"tasks": [],}',
        ]
    )


@st.composite
def tasks_files(draw: st.DrawFn) -> bytes:
    kind = draw(st.sampled_from(["mutated", "mutated", "mutated", "random", "crafted", "bytes"]))
    rng = random.Random(draw(st.integers(0, 2**32)))
    if kind == "mutated":
        return doc_text(draw(mutated_docs()), rng)
    if kind == "random":
        return doc_text(draw(json_values(20)), rng)
    if kind == "crafted":
        return draw(crafted_texts())
    data = bytearray(json.dumps(base_doc(2)).encode())
    for _ in range(draw(st.integers(1, 5))):  # flip, drop or insert a few bytes
        i = draw(st.integers(0, len(data) - 1))
        op = draw(st.sampled_from(["flip", "drop", "insert"]))
        if op == "flip":
            data[i] = draw(st.integers(0, 255))
        elif op == "drop":
            del data[i]
        else:
            data.insert(i, draw(st.integers(0, 255)))
    return bytes(data)


# --------------------------------------------------------------------------- checks


@pytest.fixture(scope="module")
def spec_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    repo = init_repo(tmp_path_factory.mktemp("fuzz") / "repo", {"src/f0.py": "x = 0\n"})
    d = repo / "specs" / "fz"
    d.mkdir(parents=True)
    return d


def snapshot(spec_dir: Path) -> tuple[list[str], list[str]]:
    """What must not change: the spec folder's entries and the repository's refs."""
    repo = spec_dir.parent.parent
    refs = sorted(str(p.relative_to(repo)) for p in (repo / ".git" / "refs").rglob("*"))
    return sorted(os.listdir(spec_dir)), refs


def check(argv: list[str], spec_dir: Path, name: str) -> int:
    """One command on hostile input: the checks every fuzz property shares."""
    path = spec_dir / name
    before, state = path.read_bytes(), snapshot(spec_dir)
    code, out, err = call_main(argv)
    assert code in (0, 2), (argv, code, err[-3000:])
    assert "Traceback" not in out + err and "internal error" not in err, err[-3000:]
    assert path.read_bytes() == before, f"{argv[0]} modified {name}"
    assert snapshot(spec_dir) == state, f"{argv[0]} created or removed files or refs"
    for line in (out + err).splitlines():
        assert len(line) <= MAX_LINE, f"{len(line)}-character line: {line[:200]}..."
    # No output prints terminal control (escape sequences, C1 controls, bidi overrides)
    # taken from the file: neither error messages nor plan's own output (issue 15).
    assert not UNSAFE_OUTPUT.search(out + err), UNSAFE_OUTPUT.search(out + err)
    if code == 2:
        assert name in err, err[-3000:]
        problems = [x for x in err.splitlines() if x.strip() and "problem" not in x]
        assert problems, f"no problem named: {err}"
    return code


def check_all(spec_dir: Path, name: str) -> None:
    d = str(spec_dir)
    codes = {cmd: check([cmd, d], spec_dir, name) for cmd in ("validate", "plan")}
    # `validate` checks what `plan` does and also what `run` needs (workers, base_ref).
    assert codes["plan"] == 0 or codes["validate"] == 2, codes
    if codes["validate"] == 2:
        assert check(["run", d, "--jobs", "2"], spec_dir, name) == 2
    else:
        check(["run", d, "--dry-run"], spec_dir, name)


def tasks_json_property(spec_dir: Path, data: bytes) -> None:
    (spec_dir / "context-summary.json").unlink(missing_ok=True)
    (spec_dir / "tasks.json").write_bytes(data)
    check_all(spec_dir, "tasks.json")


@QUICK
@given(data=tasks_files())
def test_hostile_tasks_json_quick(spec_dir: Path, data: bytes) -> None:
    tasks_json_property(spec_dir, data)


@pytest.mark.slow
@FUZZ
@given(data=tasks_files())
def test_hostile_tasks_json_is_refused_cleanly_and_never_changed(
    spec_dir: Path, data: bytes
) -> None:
    tasks_json_property(spec_dir, data)


CONTEXT_SHAPES = st.one_of(
    json_values(20),
    st.fixed_dictionaries({"global": json_values(15)}),
    st.fixed_dictionaries(
        {
            "global": st.fixed_dictionaries(
                {},
                optional={
                    "product_pitch": json_values(6) | st.sampled_from(HUGE),
                    "tech_stack": json_values(6),
                    "branch_name": json_values(4) | st.sampled_from(CRAFTED_IDS),
                },
            ),
        },
        optional={"x": json_values(10)},
    ),
)


@st.composite
def context_files(draw: st.DrawFn) -> bytes:
    if draw(st.integers(0, 4)) == 0:
        return draw(crafted_texts())
    return doc_text(draw(CONTEXT_SHAPES), random.Random(draw(st.integers(0, 2**32))))


def context_property(spec_dir: Path, data: bytes) -> None:
    (spec_dir / "tasks.json").write_text(json.dumps(base_doc(2), indent=2) + "\n")
    (spec_dir / "context-summary.json").write_bytes(data)
    check_all(spec_dir, "context-summary.json")


@QUICK
@given(data=context_files())
def test_hostile_context_summary_quick(spec_dir: Path, data: bytes) -> None:
    context_property(spec_dir, data)


@pytest.mark.slow
@FUZZ
@given(data=context_files())
def test_hostile_context_summary_is_refused_cleanly_and_never_changed(
    spec_dir: Path, data: bytes
) -> None:
    context_property(spec_dir, data)


@pytest.mark.slow
@settings(FUZZ, max_examples=max(10, EXAMPLES // 10))
@given(ctx=CONTEXT_SHAPES)
def test_any_valid_context_renders_into_a_prompt(spec_dir: Path, ctx: Any) -> None:
    """A context-summary.json that validates never breaks a run: every task renders its
    prompt and passes (isolation none, worker `true`: no git, nothing to merge)."""
    (spec_dir / "context-summary.json").write_bytes(doc_text(ctx, random.Random(0)))
    (spec_dir / "tasks.json").write_text(json.dumps(base_doc(2), indent=2) + "\n")
    code, _, err = call_main(["validate", str(spec_dir)])
    assume(code == 0)
    code, out, err = call_main(
        ["run", str(spec_dir), "--isolation", "none", "--worker", "true", "--jobs", "1"]
    )
    assert code == 0, out + err
    assert "Traceback" not in out + err


# --------------------------------------------------------------------------- subprocesses


@pytest.mark.slow
@settings(FUZZ, max_examples=max(6, EXAMPLES // 15))
@given(data=tasks_files())
def test_hostile_tasks_json_through_real_processes(spec_dir: Path, data: bytes) -> None:
    """The same properties through ``python -m specexec``: real stdout/stderr encodings,
    real exit codes, the interpreter's own error handling."""
    (spec_dir / "context-summary.json").unlink(missing_ok=True)
    (spec_dir / "tasks.json").write_bytes(data)
    state = snapshot(spec_dir)
    codes = {}
    for cmd in ("validate", "plan", "run"):
        argv = [cmd, str(spec_dir)] + (["--dry-run"] if cmd == "run" else [])
        proc = subprocess.run(
            [PY, "-m", "specexec", *argv],
            capture_output=True,
            timeout=120,
            check=False,
            env={**os.environ, "PYTHONIOENCODING": ""},
        )
        out, err = proc.stdout.decode("utf-8", "replace"), proc.stderr.decode("utf-8", "replace")
        assert proc.returncode in (0, 2), (cmd, proc.returncode, err[-3000:])
        assert "Traceback" not in out + err, err[-3000:]
        if proc.returncode == 2:
            assert "tasks.json" in err
        codes[cmd] = proc.returncode
        assert (spec_dir / "tasks.json").read_bytes() == data
        assert snapshot(spec_dir) == state
    assert len(set(codes.values())) == 1, codes


# --------------------------------------------------------------------------- targeted


def test_deep_nesting_is_refused_fast(spec_dir: Path) -> None:
    """100,000 levels: a clean error naming line and column, in well under a second of
    CPU (CPU time, not wall time: the machine may be busy)."""
    (spec_dir / "context-summary.json").unlink(missing_ok=True)
    (spec_dir / "tasks.json").write_text('{"tasks": [], "x": ' + nested(100_000) + "}")
    began = time.process_time()
    assert check(["validate", str(spec_dir)], spec_dir, "tasks.json") == 2
    assert time.process_time() - began < 1.0


def test_a_base_ref_that_looks_like_an_option_never_reaches_git(spec_dir: Path) -> None:
    (spec_dir / "context-summary.json").unlink(missing_ok=True)
    pwned = spec_dir.parent / "pwned"
    doc = base_doc(1) | {"base_ref": f"--upload-pack=touch {pwned}"}
    (spec_dir / "tasks.json").write_text(json.dumps(doc))
    # `validate` checks base_ref against the repository as `run` does (issue 15, case 12).
    assert check(["validate", str(spec_dir)], spec_dir, "tasks.json") == 2
    assert not pwned.exists()
    code, out, err = call_main(["run", str(spec_dir)])
    assert code == 2 and "does not name a commit" in err, out + err
    assert not pwned.exists()


@pytest.mark.slow
def test_a_lone_surrogate_in_a_prompt_field_does_not_fail_the_task(spec_dir: Path) -> None:
    (spec_dir / "context-summary.json").unlink(missing_ok=True)
    doc = base_doc(1)
    doc["tasks"][0]["spec_sections"] = ["2.1 \ud800"]  # the prompt lists them
    (spec_dir / "tasks.json").write_text(json.dumps(doc))
    assert check(["validate", str(spec_dir)], spec_dir, "tasks.json") == 0
    code, out, err = call_main(
        ["run", str(spec_dir), "--isolation", "none", "--worker", "true", "--jobs", "1"]
    )
    assert code == 0, out + err


def test_a_spec_that_cannot_run_is_refused_by_validate_and_not_changed(spec_dir: Path) -> None:
    (spec_dir / "context-summary.json").unlink(missing_ok=True)
    doc = base_doc(2)
    doc["tasks"][0]["status"] = "in_progress"  # left by a run that died
    del doc["tasks"][1]["command"]  # a `shell` task with nothing to run
    (spec_dir / "tasks.json").write_text(json.dumps(doc))
    # `validate` runs every check `run` runs before it starts (issue 15, case 12).
    assert check(["validate", str(spec_dir)], spec_dir, "tasks.json") == 2
    before = (spec_dir / "tasks.json").read_bytes()
    code, _, err = call_main(["run", str(spec_dir)])
    assert code == 2 and "T1" in err, err
    assert (spec_dir / "tasks.json").read_bytes() == before, "run changed tasks.json"


@pytest.mark.parametrize("second", ["another folder", "the same folder"])
def test_two_folders_with_one_spec_name_are_refused_before_any_change(
    tmp_path: Path, second: str
) -> None:
    """Refused before a lock is taken or a file written (the same folder twice used to wait
    for its own run lock, exit 75; two folders were refused only after both were prepared)."""
    repo = init_repo(tmp_path / "repo")
    a = write_spec(repo / "specs" / "a", [task("T1", files=["a.txt"], command="true")])
    b = a
    if second == "another folder":
        b = write_spec(repo / "other" / "a", [task("T1", files=["b.txt"], command="true")])
    before = {d: (d / "tasks.json").read_bytes() for d in (a, b)}
    code, out, err = call_main(["run", str(a), str(b)])
    assert code == 2 and "same spec name" in err and f"{b}: spec name 'a'" in err, out + err
    assert {d: (d / "tasks.json").read_bytes() for d in (a, b)} == before
    assert not (a / ".specexec").exists() and not (b / ".specexec").exists()
    assert git(repo, "branch", "--list", "specexec/*") == ""
