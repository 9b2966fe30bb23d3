"""specexec.git.repo: finding a repository, and where its worktrees live (never inside the
working tree or the git dir)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from conftest import git, init_repo, read_tasks, run_cli, task, write_spec

from specexec.errors import InvalidInput
from specexec.git.repo import WORKTREE_DIR_ENV, find_repo_root, locate
from specexec.git.workspace import Workspace


def test_find_repo_root_and_locate_agree(repo: Path) -> None:
    (repo / "sub" / "deep").mkdir(parents=True)
    assert find_repo_root(repo / "sub" / "deep") == repo
    dirs = locate(repo / "sub" / "deep")
    assert dirs.root == repo.resolve()
    assert dirs.common_dir == dirs.git_dir == (repo / ".git").resolve()
    assert dirs.hooks_dir == (repo / ".git" / "hooks").resolve()
    assert find_repo_root(repo.parent) is None


def test_locate_respects_core_hookspath(repo: Path) -> None:
    git(repo, "config", "core.hooksPath", "myhooks")
    assert locate(repo).hooks_dir == (repo / "myhooks").resolve()


def test_the_default_worktree_root_is_in_the_users_cache(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(WORKTREE_DIR_ENV)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    root = Workspace(repo).worktree_root
    assert root.parent == (tmp_path / "cache" / "specexec" / "worktrees").resolve()
    assert root.name.startswith("repo-") and len(root.name) == len("repo-") + 12
    assert Workspace(repo / "README.md").worktree_root == root  # stable


def test_two_repositories_of_one_name_never_share_a_root(tmp_path: Path) -> None:
    a = init_repo(tmp_path / "a" / "proj")
    b = init_repo(tmp_path / "b" / "proj")
    assert Workspace(a).worktree_root != Workspace(b).worktree_root


def test_the_environment_variable_sets_the_root(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv(WORKTREE_DIR_ENV, str(tmp_path / "elsewhere"))
    ws = Workspace(repo)
    assert ws.worktree_root.parent == (tmp_path / "elsewhere").resolve()
    ws.ensure_integration_branch("feat")
    wt = ws.create_worktree("feat", "T1")
    assert ws.worktree_root in wt.path.parents
    ws.remove_worktree(wt, delete_branch=True)


def test_the_pyproject_setting_sets_the_root(
    repo: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(WORKTREE_DIR_ENV)
    (repo / "pyproject.toml").write_text('[tool.specexec]\nworktree_dir = "../wt-here"\n')
    assert Workspace(repo).worktree_root.parent == (repo.parent / "wt-here").resolve()
    # The environment variable wins over the file.
    monkeypatch.setenv(WORKTREE_DIR_ENV, str(tmp_path / "env"))
    assert Workspace(repo).worktree_root.parent == (tmp_path / "env").resolve()


@pytest.mark.parametrize("where", ["wt", ".git/wt", "."])
def test_a_root_inside_the_working_tree_or_git_dir_is_refused(
    repo: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    monkeypatch.setenv(WORKTREE_DIR_ENV, str(repo / where))
    ws = Workspace(repo)  # only what needs worktrees refuses
    with pytest.raises(InvalidInput, match="is inside the working tree"):
        ws.create_worktree("feat", "T1")
    monkeypatch.delenv(WORKTREE_DIR_ENV)
    (repo / "pyproject.toml").write_text('[tool.specexec]\nworktree_dir = "build/wt"\n')
    with pytest.raises(InvalidInput, match=r"worktree directory .*build/wt is inside"):
        _ = Workspace(repo).worktree_root


def test_a_refused_root_fails_the_run_with_the_reason(
    repo: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    spec = write_spec(repo / "specs" / "s", [task("T1", files=["a.txt"], command="echo a > a.txt")])
    proc = run_cli("run", str(spec), env={WORKTREE_DIR_ENV: str(repo / "wt")}, cwd=repo)
    assert proc.returncode != 0
    assert "is inside the working tree" in proc.stdout + proc.stderr
    assert not (repo / "wt").exists()


LIST = (
    'git worktree list --porcelain > "$SPECEXEC_SPEC_DIR/.specexec/{id}.list"; echo {id} > {id}.txt'
)


@pytest.mark.parametrize("pool", [True, False], ids=["pool", "no-pool"])
def test_no_worktree_is_ever_inside_the_repository(repo: Path, pool: bool) -> None:
    """A worker records ``git worktree list`` while it runs; after the run too."""
    tasks = [task(f"T{i}", files=[f"T{i}.txt"], command=LIST.format(id=f"T{i}")) for i in range(3)]
    spec = write_spec(repo / "specs" / "s", tasks)
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "spec")
    proc = run_cli("run", str(spec), "--jobs", "2", *([] if pool else ["--no-pool"]), cwd=repo)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert all(t["status"] == "pass" for t in read_tasks(spec).values())
    top = repo.resolve()
    listings = [(spec / ".specexec" / f"T{i}.list").read_text() for i in range(3)]
    listings.append(git(repo, "worktree", "list", "--porcelain"))
    seen_linked = False
    for listing in listings:
        paths = [Path(line[9:]) for line in listing.splitlines() if line.startswith("worktree ")]
        assert paths[0] == top, listing  # the main working tree
        for p in paths[1:]:
            seen_linked = True
            assert top not in p.parents, listing
            assert Workspace(repo).worktree_root in p.parents, listing
            dot_git = (p / ".git").read_text() if (p / ".git").is_file() else ""
            if dot_git:  # the worktree's .git file points back at the repository
                assert dot_git.startswith(f"gitdir: {top / '.git' / 'worktrees'}"), dot_git
    assert seen_linked
    assert json.loads((spec / "tasks.json").read_text())  # still readable, nothing moved
