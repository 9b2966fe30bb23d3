"""SpecNameClaim: one spec folder per spec name and repository, while a run holds it."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from specexec.errors import InvalidInput
from specexec.tasksfile.runlock import SpecNameClaim


def test_a_second_folder_is_refused_naming_both_and_the_same_folder_is_not(
    tmp_path: Path,
) -> None:
    common = tmp_path / ".git"
    common.mkdir()
    a, b = tmp_path / "specs" / "auth", tmp_path / "legacy" / "auth"
    a.mkdir(parents=True)
    b.mkdir(parents=True)
    with SpecNameClaim(a, "auth", common):
        SpecNameClaim(a, "auth", common).check()  # the same folder: the run lock decides
        with pytest.raises(InvalidInput) as info:
            SpecNameClaim(b, "auth", common).check()
        assert str(a) in str(info.value.problems) and str(b) in str(info.value.problems)
        with pytest.raises(InvalidInput):
            SpecNameClaim(b, "auth", common).acquire()
        SpecNameClaim(b, "other", common).check()  # another name is free
    # Released: free for the other folder now.
    with SpecNameClaim(b, "auth", common):
        pass


def test_a_claim_dies_with_its_holder_whatever_it_left_in_the_file(tmp_path: Path) -> None:
    """The kernel drops the flock of a killed holder: its folder, still in the file,
    claims nothing."""
    common = tmp_path / ".git"
    common.mkdir()
    a, b = tmp_path / "a" / "auth", tmp_path / "b" / "auth"
    a.mkdir(parents=True)
    b.mkdir(parents=True)
    code = textwrap.dedent(
        f"""
        import os, sys
        from pathlib import Path
        from specexec.tasksfile.runlock import SpecNameClaim
        claim = SpecNameClaim(Path({str(a)!r}), "auth", Path({str(common)!r}))
        claim.acquire()
        print("held", flush=True)
        sys.stdin.read()
        os._exit(9)
        """
    )
    proc = subprocess.Popen(
        [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    assert proc.stdout is not None and proc.stdout.readline() == "held\n"
    with pytest.raises(InvalidInput):
        SpecNameClaim(b, "auth", common).check()
    proc.kill()
    proc.wait()
    assert str(a) in (common / "specexec" / "specs" / "auth.lock").read_text()
    with SpecNameClaim(b, "auth", common):
        pass
