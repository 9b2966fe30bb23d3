"""`--help` says what the commands do: only the public commands are listed, every
argument and option has help text, and each option with a default shows it."""

from __future__ import annotations

import argparse

import pytest

from specexec.main import build_parser


def _subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


def test_top_level_help_lists_only_the_public_commands() -> None:
    text = build_parser().format_help()
    assert "SUPPRESS" not in text and "hook-run" not in text
    for name in ("init", "validate", "plan", "run", "status", "watch", "hooks", "demo"):
        assert f"    {name} " in text, name


@pytest.mark.parametrize("name", sorted(set(_subparsers(build_parser())) - {"hook-run"}))
def test_every_option_has_help_and_shows_its_default(name: str) -> None:
    sub = _subparsers(build_parser())[name]
    text = " ".join(sub.format_help().split())
    for action in sub._actions:
        if isinstance(action, argparse._HelpAction):
            continue
        assert action.help, f"{name} {action.option_strings or action.dest}: no help text"
        if action.option_strings and action.default not in (None, False):
            formatter = sub._get_formatter()
            formatter.add_argument(action)
            shown = " ".join(formatter.format_help().split())
            assert "default" in shown, f"{name} {action.option_strings}: {shown}"
    if name in ("plan", "run", "watch", "demo"):
        assert "(default: 4)" in " ".join(text.split()), "--jobs shows its default"


def test_init_list_needs_no_spec_dir() -> None:
    args = build_parser().parse_args(["init", "--list"])
    assert args.list and args.spec_dir is None
