"""Paths: nothing in a spec folder makes specexec read or write outside the repository.

Each case plants a way out (``..``, an absolute path, a symlink inside the repository, a
symlinked spec folder, tasks.json, context-summary.json, prompt template, ``.specexec`` or
file inside it) towards a directory ``outside`` holding files. specexec must refuse the
input (exit 2, the message naming the problem, tasks.json unchanged) and inotify must
report no open, read, write, create or delete anywhere under ``outside``.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import pytest
from conftest import git, init_repo, read_tasks, task, write_spec

from reliability.support import call_main, untouched

pytestmark = [
    pytest.mark.reliability,
    pytest.mark.slow,
    pytest.mark.skipif(not sys.platform.startswith("linux"), reason="inotify is Linux-only"),
]

READ_ONLY = ("validate", "plan")


@pytest.fixture
def world(tmp_path: Path) -> tuple[Path, Path]:
    """(repo, outside): a repository with a symlink ``link`` to a directory outside it."""
    outside = tmp_path / "outside"
    (outside / "sub").mkdir(parents=True)
    (outside / "secret.txt").write_text("secret\n")
    (outside / "sub" / "x.txt").write_text("x\n")
    (outside / "run.lock").write_text(json.dumps({"pid": os.getpid(), "host": "h"}))
    repo = init_repo(tmp_path / "repo")
    (repo / "link").symlink_to(outside)
    git(repo, "add", "link")
    git(repo, "commit", "-qm", "link out")
    return repo, outside


def ok_spec(repo: Path, name: str = "s", **top: object) -> Path:
    return write_spec(
        repo / "specs" / name,
        [
            task("T1", files=["a.txt"], command="echo a > a.txt"),
            task("T2", blocked_by=["T1"], files=["b.txt"], command="echo b > b.txt"),
        ],
        **top,
    )


def refused(argv: list[str], spec: Path | None, *needles: str) -> str:
    """Run ``specexec ARGV`` in-process: exit 2, no traceback, tasks.json unchanged."""
    before = (
        (spec / "tasks.json").read_bytes() if spec and (spec / "tasks.json").is_file() else None
    )
    code, out, err = call_main(argv)
    assert code == 2, (argv, code, out, err)
    assert "Traceback" not in out + err and "internal error" not in err, err
    for needle in needles:
        assert needle in err, (needle, err)
    if before is not None:
        assert spec is not None and (spec / "tasks.json").read_bytes() == before
    return err


@pytest.mark.parametrize(
    "pattern, why",
    [
        ("../outside/secret.txt", "'..' segment"),
        ("a/../../outside", "'..' segment"),
        ("{outside}/secret.txt", "absolute"),
        ("link/secret.txt", "escapes the repository through a symlink"),
        ("link", "escapes the repository through a symlink"),
        ("link/", "escapes the repository through a symlink"),
        ("link/sub/*.txt", "escapes the repository through a symlink"),
        ("link/**", "escapes the repository through a symlink"),
        ("C:/Windows", "drive letter"),
        ("..\\outside", "backslash"),
        ("a.txt\x00/x", "NUL"),
    ],
)
@pytest.mark.parametrize("field", ["relevant_files", "sparse_paths"])
def test_relevant_files_cannot_leave_the_repository(
    world: tuple[Path, Path], pattern: str, why: str, field: str
) -> None:
    repo, outside = world
    pattern = pattern.replace("{outside}", str(outside))
    spec = write_spec(
        repo / "specs" / "esc",
        [task("T1", files=["a.txt"], command="echo a > a.txt", **{field: [pattern]})]
        if field == "sparse_paths"
        else [task("T1", files=[pattern], command="echo > a.txt")],
    )
    with untouched(outside):
        for cmd in (*READ_ONLY, "run"):
            refused([cmd, str(spec)], spec, f"{field}[0]", why)
    assert not (spec / ".specexec").exists()


def test_a_glob_through_a_symlink_is_never_expanded_on_disk(world: tuple[Path, Path]) -> None:
    """``l*/secret.txt`` passes validation (its fixed part is the root), but specexec never
    expands patterns on disk: it computes changes from git, so nothing outside is read."""
    repo, outside = world
    spec = write_spec(
        repo / "specs" / "glob",
        [
            task("T1", files=["l*/secret.txt", "out.txt"], command="echo done > out.txt"),
        ],
    )
    git(repo, "add", "-A")
    git(repo, "commit", "-qm", "spec")
    with untouched(outside):
        for cmd in READ_ONLY:
            assert call_main([cmd, str(spec)])[0] == 0
        code, out, err = call_main(["run", str(spec), "--jobs", "1"])
    assert code == 0, out + err
    assert read_tasks(spec)["T1"]["status"] == "pass"


@pytest.mark.parametrize("cmd", [*READ_ONLY, "run", "status", "reset"])
def test_a_spec_folder_that_is_a_symlink_out_of_the_repository(
    world: tuple[Path, Path], cmd: str
) -> None:
    repo, outside = world
    real = ok_spec(outside / "fake-repo-free", "evil")  # a valid spec folder, outside
    (repo / "specs").mkdir()
    (repo / "specs" / "evil").symlink_to(real)
    with untouched(outside):
        refused([cmd, str(repo / "specs" / "evil")], None, "symlink leading out of its repository")


@pytest.mark.parametrize("cmd", [*READ_ONLY, "run", "status", "reset"])
def test_a_spec_folder_under_a_symlinked_parent_directory(
    world: tuple[Path, Path], cmd: str
) -> None:
    repo, outside = world
    ok_spec(outside, "evil")
    (repo / "specs").symlink_to(outside / "specs")
    with untouched(outside):
        refused([cmd, str(repo / "specs" / "evil")], None, "symlink leading out")


@pytest.mark.parametrize("name", ["tasks.json", "context-summary.json"])
def test_a_symlinked_json_file_is_not_followed(world: tuple[Path, Path], name: str) -> None:
    repo, outside = world
    spec = ok_spec(repo)
    target = outside / name
    if name == "tasks.json":
        target.write_bytes((spec / "tasks.json").read_bytes())
        (spec / "tasks.json").unlink()
    else:
        target.write_text(json.dumps({"global": {"product_pitch": "stolen"}}))
    (spec / name).symlink_to(target)
    commands = (
        (*READ_ONLY, "run", "status", "reset") if name == "tasks.json" else (*READ_ONLY, "run")
    )
    with untouched(outside):
        for cmd in commands:
            refused([cmd, str(spec)], None, f"{name}: is a symbolic link")


def test_a_prompt_template_symlinked_out_is_refused_up_front(world: tuple[Path, Path]) -> None:
    repo, outside = world
    spec = ok_spec(repo)
    (outside / "prompt.j2").write_text("{{ task.id }} secret\n")
    (spec / "worker_prompt.md.j2").symlink_to(outside / "prompt.j2")
    with untouched(outside):
        for cmd in (*READ_ONLY, "run"):
            refused([cmd, str(spec)], spec, "worker_prompt.md.j2", "outside the spec folder")
    assert not (spec / ".specexec").exists()


@pytest.mark.parametrize(
    "body",
    [
        '{% include "' + "../" * 12 + '{outside}/secret.txt" %}',
        '{% extends "{outside}/secret.txt" %}',
        '{% import "{outside}/secret.txt" as s %}{{ s }}',
        "{{ ''.__class__.__mro__[1].__subclasses__() }}",
        "{{ self._TemplateReference__context }}",
        "{{ cycler.__init__.__globals__.os.popen('cat {outside}/secret.txt').read() }}",
    ],
)
def test_a_prompt_template_cannot_read_files_or_reach_python(
    world: tuple[Path, Path], body: str
) -> None:
    """Templates run in jinja's sandbox with no loader: include/extends/import fail the
    task with a template error, and an attribute walk to Python internals either fails
    the same way or renders as empty; nothing is read and no internals reach the prompt."""
    repo, outside = world
    spec = write_spec(
        repo / "specs" / "tpl",
        [
            task("T1", files=["a.txt"], command='cp "$SPECEXEC_PROMPT_FILE" a.txt', max_retries=0),
        ],
    )
    (spec / "worker_prompt.md.j2").write_text(body.replace("{outside}", str(outside)))
    with untouched(outside):
        code, out, err = call_main(["run", str(spec), "--jobs", "1"])
    assert code in (0, 1), out + err
    t = read_tasks(spec)["T1"]
    assert t["status"] == "pass" or "template" in t["blocker"], t
    rendered = "".join(p.read_text() for p in spec.glob(".specexec/runs/*/T1.prompt.md"))
    for leak in ("secret", "<class", "Context", "function", "module"):
        assert leak not in rendered, rendered
    assert "secret" not in git(repo, "log", "--all", "-p")


def test_a_symlinked_runtime_folder_is_refused(world: tuple[Path, Path]) -> None:
    repo, outside = world
    spec = ok_spec(repo)
    (spec / ".specexec").symlink_to(outside)
    with untouched(outside):
        refused(["run", str(spec)], spec, ".specexec: must be a directory, not a symbolic link")
        for cmd in READ_ONLY:
            assert call_main([cmd, str(spec)])[0] == 0


def test_status_does_not_read_through_a_symlinked_runtime_folder(world: tuple[Path, Path]) -> None:
    repo, outside = world
    spec = ok_spec(repo)
    (spec / ".specexec").symlink_to(outside)
    with untouched(outside):
        call_main(["status", str(spec)])


PLANTED = {
    # name inside .specexec -> what the symlink points at
    "tasks.lock": "secret.txt",
    "run.lock": "secret.txt",
    "events.jsonl": "secret.txt",
    "runs": "sub",
    "workers": "sub",
}


@pytest.mark.parametrize("name", list(PLANTED))
def test_symlinks_planted_in_the_runtime_folder_are_never_followed(
    world: tuple[Path, Path], name: str
) -> None:
    """A dropped spec folder may carry its own ``.specexec`` (it is never committed, but it
    is copied along): no file in it may lead specexec's writes outside."""
    repo, outside = world
    spec = ok_spec(repo)
    (spec / ".specexec").mkdir(mode=0o700)
    (spec / ".specexec" / name).symlink_to(outside / PLANTED[name])
    with untouched(outside):
        _, _, err = call_main(["run", str(spec), "--jobs", "1"])
    assert "Traceback" not in err  # refused or not, nothing outside was touched
    assert (outside / "secret.txt").read_text() == "secret\n"


@pytest.mark.parametrize("name", ["tasks.lock", "run.lock", "events.jsonl", "runs"])
def test_a_planted_symlink_is_refused_as_unsafe_input(world: tuple[Path, Path], name: str) -> None:
    repo, outside = world
    spec = ok_spec(repo)
    (spec / ".specexec").mkdir(mode=0o700)
    (spec / ".specexec" / name).symlink_to(outside / PLANTED[name])
    refused(["run", str(spec)], spec, name, "symbolic link")


def test_a_planted_link_in_one_folder_of_a_run_changes_no_other_folder(
    world: tuple[Path, Path],
) -> None:
    """`run A B` checks every folder before it writes the tasks.json of any: a planted
    `.specexec/runs` link in B refuses the run, and A's tasks.json is unchanged too."""
    repo, outside = world
    a, b = ok_spec(repo, "a"), ok_spec(repo, "b")
    (b / ".specexec").mkdir(mode=0o700)
    (b / ".specexec" / "runs").symlink_to(outside / "sub")
    before = (a / "tasks.json").read_bytes()
    with untouched(outside):
        refused(["run", str(a), str(b)], b, "runs", "symbolic link")
    assert (a / "tasks.json").read_bytes() == before
