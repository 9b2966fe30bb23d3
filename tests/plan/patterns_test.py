"""relevant_files patterns: safety, coverage, and the conflict index (pure, in memory)."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from specexec.plan.patterns import (
    conflict_graph,
    conflict_index,
    conflict_indices,
    covers,
    fixed_prefix,
    is_glob,
    overlap,
    path_problem,
    patterns_conflict,
    scope_violations,
)
from specexec.tasksfile.types import Task


def t(task_id: str, *files: str) -> Task:
    return Task(task_id, f"Task {task_id}", relevant_files=files)


@pytest.mark.parametrize(
    ("path", "word"),
    [
        ("", "empty"),
        ("/etc/passwd", "absolute"),
        ("src/../../etc", ".."),
        ("..", ".."),
        ("C:/Windows", "drive letter"),
        ("c:x", "drive letter"),
        ("src\\a.py", "backslash"),
        ("a\x00b", "NUL"),
    ],
)
def test_unsafe_paths_are_named(path: str, word: str) -> None:
    problem = path_problem(path)
    assert problem is not None and word in problem


@pytest.mark.parametrize(
    "path", ["src/a.py", "docs/", "src/**/*.py", "a..b/c", ".github/x.yml", "src/[ab].py"]
)
def test_safe_paths_pass(path: str) -> None:
    assert path_problem(path) is None


@pytest.mark.parametrize(
    ("a", "b", "expected"),
    [
        ("src/a.py", "src/a.py", True),
        ("a.py", "a.pyc", False),
        ("docs/", "docs/x.md", True),
        ("docs/", "docs", True),
        ("docs/", "docsx/y.md", False),
        ("src/*.py", "src/a/b.py", False),  # * does not cross /
        ("src/*.py", "src/a.py", True),
        ("src/**", "src/a/b.py", True),
        ("src/**/*.py", "src/a/b/c.py", True),
        ("src/**/*.py", "src/a/b/c.md", False),
        ("**/*.md", "docs/x.md", True),
        ("src/*.py", "src/*.md", False),
        ("src/*.py", "src/**", True),
        ("src/a/*", "src/*/b.py", True),
        ("src/t?.py", "src/ta.py", True),
        ("src/t?.py", "src/tab.py", False),
        ("src/[ab].py", "src/b.py", True),
        ("src/[ab].py", "src/c.py", False),
        ("src/", "src/**/*.py", True),
        ("lib/*", "src/*", False),
        ("src/*", "src/a/b.py", False),
        ("src/*/", "src/a/b.py", True),  # a glob ending in / names whole trees
        ("src/*", "src/a/", True),  # both name the directory src/a itself
        ("src/a", "src/a/b.py", True),  # a file and a directory of one name clash
        ("src/a", "src/a/*.py", True),
        ("*.md", "**/*.py", False),
        ("src/*.py", "src/*/b.py", False),
    ],
)
def test_pattern_conflicts(a: str, b: str, expected: bool) -> None:
    assert patterns_conflict(a, b) is expected
    assert patterns_conflict(b, a) is expected
    graph = conflict_graph([t("A", a), t("B", b)])
    assert (graph["A"] == {"B"}) is expected
    assert (graph["B"] == {"A"}) is expected


def test_tasks_without_files_conflict_with_nothing() -> None:
    graph = conflict_graph([t("A"), t("B", "**"), t("C", "src/a.py")])
    assert graph == {"A": frozenset(), "B": frozenset({"C"}), "C": frozenset({"B"})}


def test_shared_pattern_makes_a_clique() -> None:
    graph = conflict_graph([t("A", "x.py"), t("B", "x.py"), t("C", "x.py", "x.py"), t("D", "y")])
    assert graph["A"] == {"B", "C"} and graph["C"] == {"A", "B"} and graph["D"] == set()


def test_glob_detection_and_fixed_prefix() -> None:
    assert is_glob("src/*.py") and is_glob("t?.py") and is_glob("[ab].py")
    assert not is_glob("src/a.py") and not is_glob("docs/")
    assert fixed_prefix("src/a/*.py") == "src/a"
    assert fixed_prefix("src/**/x.py") == "src"
    assert fixed_prefix("**/*.md") == ""
    assert fixed_prefix("docs/x.md") == "docs/x.md"


def test_covers_and_scope_violations() -> None:
    patterns = ["src/models/", "tests/test_*.py", "README.md"]
    assert covers(patterns, "src/models/user.py")
    assert covers(patterns, "tests/test_user.py")
    assert not covers(patterns, "tests/helpers/test_x.py")
    assert scope_violations(
        ["src/models/a.py", "setup.cfg", "README.md", "src/app.py", "setup.cfg"], patterns
    ) == ["setup.cfg", "src/app.py"]


def test_covers_by_glob() -> None:
    assert covers(["src/*/"], "src/a/b.py")  # a tree glob names everything beneath
    assert not covers(["src/*.py"], "src/a/b.py")  # * never crosses /
    assert covers(["src/*/b.py"], "src/a/b.py")
    assert not covers(["src/*/b.py"], "src/a") and not covers(["src/*/b.py"], "src/a/b.py/c")
    assert covers(["src/**"], "src/a/b.py") and covers(["src/**/b.py"], "src/b.py")


def test_unnormalised_patterns_name_the_same_paths() -> None:
    assert patterns_conflict("./src//a.py", "src/a.py")
    assert patterns_conflict("src/./a/", "src/a/b.py")
    assert not patterns_conflict("src//a.py", "src/b.py")


def test_no_declared_scope_has_no_violations() -> None:
    assert scope_violations(["anything.py"], []) == []


def test_overlap_names_the_shared_path() -> None:
    assert overlap(["src/x.py", "a/"], ["b/", "src/x.py"]) == "src/x.py"
    assert overlap(["docs/"], ["docs/x.md"]) == "docs/x.md"
    assert overlap(["src/*.py"], ["src/a.py"]) == "src/a.py"
    assert overlap(["src/"], ["src/a/*.py"]) == "src/a/*.py"
    assert overlap(["a.py"], ["a.pyc"]) is None


# -- properties -------------------------------------------------------------------------

PATTERNS = [
    "a.py",
    "a.pyc",
    "README.md",
    "src/",
    "src/a.py",
    "src/b.py",
    "src/*.py",
    "src/**",
    "src/a/",
    "src/a/b.py",
    "src/*/b.py",
    "src/**/*.md",
    "src/a/*.md",
    "docs/",
    "docs/x.md",
    "*.md",
    "**/*.py",
    "t?.py",
    "[ab].py",
    "lib/x*y/z.py",
    "lib/*y/",
]
# Concrete paths: enough to witness most overlaps of the patterns above.
UNIVERSE = [
    "a.py",
    "a.pyc",
    "b.py",
    "ta.py",
    "README.md",
    "x.md",
    "src/a.py",
    "src/b.py",
    "src/c.md",
    "src/a/b.py",
    "src/a/c.md",
    "src/q/b.py",
    "src/q/r/s.md",
    "docs/x.md",
    "docs/y.py",
    "lib/xay/z.py",
    "lib/xay/q.md",
    "src/x.py/b.py",  # a directory may be named like a file
]

files = st.lists(st.sampled_from(PATTERNS), max_size=3)


@settings(max_examples=200, deadline=None)
@given(st.lists(files, min_size=1, max_size=8))
def test_index_agrees_with_pairwise_check(file_sets: list[list[str]]) -> None:
    tasks = [t(f"T{i}", *fs) for i, fs in enumerate(file_sets)]
    graph = conflict_graph(tasks)
    for a, b in itertools.combinations(tasks, 2):
        brute = any(patterns_conflict(p, q) for p in a.relevant_files for q in b.relevant_files)
        assert (b.id in graph[a.id]) is brute, (a, b)
        assert (a.id in graph[b.id]) is brute
        # Sound: a concrete path both tasks name is always seen as a conflict.
        witness = any(covers(a.relevant_files, p) and covers(b.relevant_files, p) for p in UNIVERSE)
        if witness:
            assert brute, (a, b)


@settings(max_examples=200, deadline=None)
@given(st.lists(files, min_size=1, max_size=8))
def test_index_overlap_is_the_pairwise_overlap(file_sets: list[list[str]]) -> None:
    """The index looks ``overlap`` up among the pairs it found: the same answer."""
    tasks = [t(f"T{i}", *fs) for i, fs in enumerate(file_sets)]
    index = conflict_index(tasks)
    assert index.conflicts == conflict_indices(tasks)
    for i, a in enumerate(tasks):
        for j, b in enumerate(tasks):
            assert index.overlap(i, j) == overlap(a.relevant_files, b.relevant_files), (a, b)


def test_index_overlap_with_every_pattern() -> None:
    # One task per pattern plus one holding them all: patterns with many neighbours.
    tasks = [t(f"T{i}", p) for i, p in enumerate(PATTERNS)] + [t("ALL", *reversed(PATTERNS))]
    index = conflict_index(tasks)
    for i, a in enumerate(tasks):
        for j, b in enumerate(tasks):
            assert index.overlap(i, j) == overlap(a.relevant_files, b.relevant_files), (a, b)


# Two glob components are only compared by their literal head and tail (documented).
CONSERVATIVE = {("t?.py", "[ab].py")}


@pytest.mark.parametrize(("a", "b"), list(itertools.combinations(PATTERNS, 2)))
def test_pairwise_conflict_is_exact_on_this_universe(a: str, b: str) -> None:
    """Every conflict between these patterns has a witness path (none is spurious)."""
    witness = any(covers([a], p) and covers([b], p) for p in UNIVERSE)
    assert patterns_conflict(a, b) is (witness or (a, b) in CONSERVATIVE)
