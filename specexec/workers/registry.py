"""Every worker plugin by name: the one list to extend when adding an agent."""

from __future__ import annotations

from specexec.workers import aider, claude, codex, gemini, shell
from specexec.workers.agent import Agent

AGENTS: dict[str, Agent] = {m.AGENT.name: m.AGENT for m in (shell, claude, codex, aider, gemini)}
DEFAULT_PRESET = shell.AGENT.name
KNOWN_PRESETS: tuple[str, ...] = tuple(AGENTS)
CUSTOM = "custom"  # the preset of a custom command without one: its output is tried
# against every agent's shapes (a wrapper script around an agent, say)
