"""Install the pinned agent CLIs the conformance tests drive, into a cache folder.

    python tests/conformance/install_agents.py [--print-bin]

npm packages go to ``<dir>/npm`` (``npm install --prefix``), aider-chat to its own venv
``<dir>/aider``. ``<dir>`` is ``$SPECEXEC_AGENTS_DIR``, else
``${XDG_CACHE_HOME:-~/.cache}/specexec/agents``: never inside the repository. Installing
again is a no-op while the pinned versions are unchanged (a stamp file records them).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

NPM_PACKAGES: dict[str, str] = {
    "@anthropic-ai/claude-code": "2.1.197",
    "@openai/codex": "0.171.0",
    "@google/gemini-cli": "0.61.0",
}
PYPI_PACKAGES: dict[str, str] = {"aider-chat": "0.86.2"}
# Which executable each agent preset runs, and where it lands.
BINARIES: dict[str, str] = {
    "claude": "npm/node_modules/.bin/claude",
    "codex": "npm/node_modules/.bin/codex",
    "gemini": "npm/node_modules/.bin/gemini",
    "aider": "aider/bin/aider",
}


def agents_dir() -> Path:
    if os.environ.get("SPECEXEC_AGENTS_DIR"):
        return Path(os.environ["SPECEXEC_AGENTS_DIR"])
    cache = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(cache) / "specexec" / "agents"


def bin_dir() -> Path:
    """A folder of links to the four agent executables, to put first on PATH."""
    return agents_dir() / "bin"


def install_command() -> str:
    return f"{sys.executable} tests/conformance/install_agents.py"


def _pins() -> dict[str, dict[str, str]]:
    return {"npm": NPM_PACKAGES, "pypi": PYPI_PACKAGES}


def installed() -> bool:
    stamp = agents_dir() / "installed.json"
    try:
        return json.loads(stamp.read_text()) == _pins() and all(
            (bin_dir() / name).exists() for name in BINARIES
        )
    except (OSError, ValueError):
        return False


def install() -> Path:
    root = agents_dir()
    if installed():
        return bin_dir()
    root.mkdir(parents=True, exist_ok=True)
    npm = [f"{name}@{version}" for name, version in NPM_PACKAGES.items()]
    subprocess.run(
        ["npm", "install", "--no-audit", "--no-fund", "--prefix", str(root / "npm"), *npm],
        check=True,
    )
    venv = root / "aider"
    if not (venv / "bin" / "python").exists():
        subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True)
    pypi = [f"{name}=={version}" for name, version in PYPI_PACKAGES.items()]
    subprocess.run([str(venv / "bin" / "pip"), "install", "-q", *pypi], check=True)
    bins = bin_dir()
    bins.mkdir(exist_ok=True)
    for name, rel in BINARIES.items():
        link = bins / name
        if link.is_symlink() or link.exists():
            link.unlink()
        link.symlink_to(root / rel)
    (root / "installed.json").write_text(json.dumps(_pins()))
    return bins


if __name__ == "__main__":
    where = install()
    print(where if "--print-bin" in sys.argv else f"agent CLIs installed; put {where} on PATH")
