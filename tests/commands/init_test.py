from __future__ import annotations

import json
from pathlib import Path

from conftest import run_cli


def test_init_each_template_then_validate_and_plan(tmp_path: Path) -> None:
    for name in ("minimal", "feature"):
        d = tmp_path / "specs" / f"my-{name}"
        proc = run_cli("init", str(d), "--template", name)
        assert proc.returncode == 0, proc.stderr
        doc = json.loads((d / "tasks.json").read_text())
        assert doc["spec"] == f"my-{name}"
        assert json.loads((d / "tasks.schema.json").read_text())["title"] == "specexec tasks.json"
        assert run_cli("validate", str(d)).returncode == 0
        assert run_cli("plan", str(d)).returncode == 0


def test_feature_template_is_realistic(tmp_path: Path) -> None:
    d = tmp_path / "add-auth"
    assert run_cli("init", str(d), "--template", "feature").returncode == 0
    assert (d / "context-summary.json").exists()
    assert (d / "worker_prompt.md.j2").exists()
    plan = json.loads(run_cli("plan", str(d), "--format", "json").stdout)
    assert len(plan["execution_strategy"]["waves"]) >= 3
    assert len(json.loads((d / "tasks.json").read_text())["tasks"]) >= 8
    assert plan["conflicts"], "the feature template shows a file conflict"


def test_init_refuses_to_overwrite_and_unknown_template(tmp_path: Path) -> None:
    d = tmp_path / "s"
    assert run_cli("init", str(d)).returncode == 0
    before = (d / "tasks.json").read_bytes()
    proc = run_cli("init", str(d))
    assert proc.returncode == 2 and "already exists" in proc.stderr
    assert (d / "tasks.json").read_bytes() == before
    proc = run_cli("init", str(tmp_path / "t"), "--template", "nope")
    assert proc.returncode == 2 and "minimal" in proc.stderr
