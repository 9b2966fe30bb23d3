"""GitPython against the git fork it would replace, per call, for the read-only questions
specexec asks: where is the repository, what does a ref point at, what does the config say.

Usage: python bench/gitpython.py [-n N]   (default N=200)

Each question is asked N times in a row on a small generated repository (20 branches, its
refs packed); the median per-call time is printed in microseconds. The fork rows run git
exactly as ``specexec.git.runner`` does (clean environment, fixed options). The import of
GitPython is timed once, in a fresh interpreter, since a process pays it once.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from specexec.git import repo as git_repo
from specexec.git.runner import run


def _make_repo(path: Path) -> Path:
    def g(*args: str) -> None:
        run(args, cwd=path)

    path.mkdir()
    g("init", "-q", "-b", "main")
    g("config", "user.name", "bench")
    g("config", "user.email", "bench@example.invalid")
    (path / "a.txt").write_text("a\n")
    g("add", "-A")
    g("commit", "-q", "-m", "one")
    for i in range(20):
        g("branch", f"specexec/s@t{i}")
    g("pack-refs", "--all")
    g("branch", "specexec/s")  # one loose ref, as a fresh integration branch is
    (path / "sub" / "deep").mkdir(parents=True)
    return path


def _per_call_us(fn: Callable[[], object], n: int) -> float:
    fn()  # warm: caches, page cache
    times = []
    for _ in range(n):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times) * 1e6


def _import_ms(module: str) -> float:
    code = f"import time; t=time.perf_counter(); import {module}; print(time.perf_counter()-t)"
    best = min(
        float(
            subprocess.run(
                [sys.executable, "-c", code], capture_output=True, text=True, check=True
            ).stdout
        )
        for _ in range(5)
    )
    return best * 1e3


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("-n", type=int, default=200)
    n = ap.parse_args(argv).n

    import git  # GitPython

    with tempfile.TemporaryDirectory() as tmp:
        repo = _make_repo(Path(tmp) / "r")
        deep = repo / "sub" / "deep"
        gp = git.Repo(repo)
        ref = "refs/heads/specexec/s@t7"  # packed
        loose = "refs/heads/specexec/s"
        rows: list[tuple[str, str, float, float]] = [
            (
                "repository discovery (from a subdirectory)",
                "rev-parse --git-dir --git-common-dir --show-toplevel",
                _per_call_us(lambda: git_repo.locate(deep), n),
                _per_call_us(lambda: git.Repo(deep, search_parent_directories=True), n),
            ),
            (
                "git common dir",
                "rev-parse --git-common-dir",
                _per_call_us(lambda: run(["rev-parse", "--git-common-dir"], cwd=repo), n),
                _per_call_us(lambda: git.Repo(repo).common_dir, n),
            ),
            (
                "packed ref -> sha",
                "rev-parse -q --verify REF^{commit}",
                _per_call_us(
                    lambda: run(["rev-parse", "-q", "--verify", ref + "^{commit}"], cwd=repo), n
                ),
                _per_call_us(lambda: git.SymbolicReference.dereference_recursive(gp, ref), n),
            ),
            (
                "loose ref -> sha",
                "rev-parse -q --verify REF^{commit}",
                _per_call_us(
                    lambda: run(["rev-parse", "-q", "--verify", loose + "^{commit}"], cwd=repo),
                    n,
                ),
                _per_call_us(lambda: git.SymbolicReference.dereference_recursive(gp, loose), n),
            ),
            (
                "3 refs -> shas (specexec's batch)",
                "cat-file --batch-check (one fork)",
                _per_call_us(
                    lambda: run(
                        ["cat-file", "--batch-check=%(objectname)"],
                        cwd=repo,
                        input=f"{ref}^{{commit}}\n{loose}^{{commit}}\nHEAD^{{commit}}\n".encode(),
                    ),
                    n,
                ),
                _per_call_us(
                    lambda: [
                        git.SymbolicReference.dereference_recursive(gp, r)
                        for r in (ref, loose, "HEAD")
                    ],
                    n,
                ),
            ),
            (
                "config user.name + user.email",
                "config --get-regexp",
                _per_call_us(
                    lambda: run(
                        ["config", "--get-regexp", r"^user\.(name|email)$"], cwd=repo, ok=(0, 1)
                    ),
                    n,
                ),
                _per_call_us(
                    lambda: (
                        (c := git.Repo(repo).config_reader()).get_value("user", "name"),
                        c.get_value("user", "email"),
                    ),
                    n,
                ),
            ),
        ]
    imp = _import_ms("git")
    print(f"GitPython {git.__version__} vs git CLI, median of N={n} calls, microseconds per call")
    print(f"{'question':45} {'git CLI':>9} {'GitPython':>10} {'ratio':>6}  (CLI command)")
    for what, cmd, cli, gp_us in rows:
        print(f"{what:45} {cli:9.0f} {gp_us:10.0f} {gp_us / cli:6.2f}  ({cmd})")
    in_proc = _per_call_us(lambda: git_repo.find_repo_root(deep), n)
    print(f"{'in-process .git walk (find_repo_root)':45} {'-':>9} {in_proc:10.0f}")
    print(f"import git (GitPython), once per process: {imp:.0f} ms")
    return 0


if __name__ == "__main__":
    sys.exit(main())
