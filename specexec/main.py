"""Command-line entry point: all argument parsing lives here; each subcommand is a typed
function in ``specexec.commands`` that takes plain values and returns an exit code."""

from __future__ import annotations

import argparse
import gc
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from specexec import __version__
from specexec.errors import EXIT_INTERNAL, EXIT_INTERRUPTED, InvalidInput, SpecexecError
from specexec.fmt import clean


def _number(
    kind: Callable[[str], float], noun: str, ok: Callable[[float], bool], rule: str
) -> Callable[[str], Any]:
    """An argparse type: ``kind(text)`` that must satisfy ``ok``."""

    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not {noun}") from None
        if not ok(value):
            raise argparse.ArgumentTypeError(f"{text!r} {rule}")
        return value

    return parse


_positive_int = _number(int, "a whole number", lambda v: v >= 1, "must be at least 1")
_non_negative_int = _number(int, "a whole number", lambda v: v >= 0, "must be 0 or more")
_positive_float = _number(float, "a number", lambda v: v > 0, "must be more than 0")
_percent = _number(float, "a number", lambda v: 0 < v <= 100, "must be more than 0 and at most 100")


def _fleet_flags(s: argparse.ArgumentParser) -> None:
    """Budgets and the resource guard (issue 17), for `run` and `watch`."""
    s.add_argument(
        "--max-cost",
        type=_positive_float,
        metavar="USD",
        help="start no task once the run's agent cost reaches this "
        "(default: none, or tasks.json defaults.max_cost_usd)",
    )
    s.add_argument(
        "--max-tokens",
        type=_positive_int,
        metavar="N",
        help="start no task once the run's tokens (input + output) reach this "
        "(default: none, or tasks.json defaults.max_tokens)",
    )
    s.add_argument(
        "--max-memory-percent",
        type=_percent,
        metavar="PCT",
        help="start no worker while memory use is above this (default: 85, "
        "or $SPECEXEC_MAX_MEMORY_PERCENT)",
    )
    s.add_argument(
        "--max-cpu-percent",
        type=_percent,
        metavar="PCT",
        help="start no worker while CPU use over the last 5 s is above this (default: 90, "
        "or $SPECEXEC_MAX_CPU_PERCENT)",
    )


def _fleet_options(args: argparse.Namespace) -> dict[str, Any]:
    out: dict[str, Any] = {"max_cost_usd": args.max_cost, "max_tokens": args.max_tokens}
    if args.max_memory_percent is not None:
        out["max_memory_percent"] = args.max_memory_percent
    if args.max_cpu_percent is not None:
        out["max_cpu_percent"] = args.max_cpu_percent
    return out


class _HelpFormatter(argparse.HelpFormatter):
    """Every option's help ends with its default, unless the text already names one or
    there is nothing to show (flags, options that default to unset)."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        default = action.default
        if default in (None, False, argparse.SUPPRESS) or "default" in text or not text:
            return text
        return f"{text} (default: %(default)s)"


class _Parser(argparse.ArgumentParser):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        kwargs.setdefault("formatter_class", _HelpFormatter)
        super().__init__(*args, **kwargs)


_SPEC_DIR = "a spec folder (holds tasks.json)"
_SPEC_DIRS = "one or more spec folders"
_JOBS = "workers running at once"


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(
        prog="specexec",
        description="Execute spec folders: plan, run each task in its own git worktree, merge.",
    )
    p.add_argument("--version", action="version", version=f"specexec {__version__}")
    # parser_class: the subcommands' --help shows defaults too.
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True, parser_class=_Parser)

    s = sub.add_parser("init", help="scaffold a spec folder from a template")
    s.add_argument(
        "spec_dir", nargs="?", metavar="SPEC_DIR", help="the folder to create; --list needs none"
    )
    s.add_argument(
        "--template", default="shell", help="shell, agent or mixed; --list describes them"
    )
    s.add_argument("--list", action="store_true", help="list the templates and exit")

    s = sub.add_parser("validate", help="check spec folders (schema, graph, paths)")
    s.add_argument("spec_dirs", nargs="+", metavar="SPEC_DIR", help=_SPEC_DIRS)

    s = sub.add_parser("plan", help="show waves, critical path and estimated speedup")
    s.add_argument("spec_dir", help=_SPEC_DIR)
    s.add_argument("--jobs", "-j", type=_positive_int, default=4, help=_JOBS)
    s.add_argument(
        "--format",
        choices=("table", "json", "mermaid", "dot"),
        default="table",
        help="output format",
    )
    s.add_argument("--write", action="store_true", help="store execution_strategy in tasks.json")

    s = sub.add_parser("run", help="run the pending tasks of spec folders")
    s.add_argument("spec_dirs", nargs="+", metavar="SPEC_DIR", help=_SPEC_DIRS)
    s.add_argument(
        "--jobs", "-j", type=_positive_int, default=4, help=_JOBS + ", all specs together"
    )
    s.add_argument(
        "--schedule",
        choices=("eager", "waves"),
        default="eager",
        help="eager: start a task once its blockers pass; waves: wave by wave",
    )
    s.add_argument(
        "--worker", help="worker preset or command for every task (overrides tasks.json)"
    )
    s.add_argument(
        "--retries", type=_non_negative_int, help="max retries per task (default: tasks.json's)"
    )
    s.add_argument(
        "--timeout",
        type=_positive_float,
        metavar="MIN",
        help="timeout per attempt, minutes (default: tasks.json's)",
    )
    s.add_argument("--fail-fast", action="store_true", help="stop starting tasks after a failure")
    s.add_argument(
        "--strict-scope", action="store_true", help="changes outside relevant_files fail"
    )
    s.add_argument("--dry-run", action="store_true", help="show what would run, in order")
    s.add_argument(
        "--keep-worktrees",
        action="store_true",
        help="keep every task's worktree (implies --no-pool)",
    )
    s.add_argument("--json", action="store_true", help="one JSON event per line")
    s.add_argument("--wait", action="store_true", help="wait for another run of the spec to end")
    s.add_argument("--retry-failed", action="store_true", help="reset fail/blocked tasks first")
    s.add_argument(
        "--isolation", choices=("worktree", "none"), help="override every task's isolation"
    )
    s.add_argument(
        "--clean-ignored", action="store_true", help="pooled worktrees: remove ignored files too"
    )
    s.add_argument(
        "--no-pool", action="store_true", help="fresh worktree per task instead of the pool"
    )
    s.add_argument(
        "--fixed-concurrency",
        action="store_true",
        help="keep every worker at --jobs tasks at once: no halving on a rate limit or "
        "overload (rate-limited tasks are still waited out and retried)",
    )
    _fleet_flags(s)
    s = sub.add_parser("status", help="show the state of each task")
    s.add_argument("spec_dirs", nargs="+", metavar="SPEC_DIR", help=_SPEC_DIRS)
    s.add_argument("--json", action="store_true", help="print JSON")

    s = sub.add_parser("reset", help="set tasks back to pending")
    s.add_argument("spec_dir", help=_SPEC_DIR)
    s.add_argument("task_ids", nargs="*", metavar="TASK_ID", help="only these tasks")
    s.add_argument("--failed", action="store_true", help="only fail and blocked tasks")

    s = sub.add_parser("report", help="the whole spec: every task's latest outcome, all runs")
    s.add_argument("spec_dir", help=_SPEC_DIR)
    s.add_argument("--run", dest="run_id", help="one run's report (default: the whole spec)")
    s.add_argument("--format", choices=("md", "json", "html"), default="md", help="output format")

    s = sub.add_parser("watch", help="run spec folders dropped into a directory")
    s.add_argument("dir", help="the directory to watch, at any depth")
    s.add_argument(
        "--jobs", "-j", type=_positive_int, default=4, help=_JOBS + ", all specs together"
    )
    s.add_argument("--polling", action="store_true", help="poll instead of native file events")
    s.add_argument(
        "--allow-commands",
        action="store_true",
        help="run tasks' own shell commands from dropped spec folders",
    )
    s.add_argument(
        "--grace",
        type=_positive_float,
        default=10.0,
        metavar="SEC",
        help="on SIGTERM, seconds running tasks get to finish",
    )
    s.add_argument(
        "--rescan",
        type=_positive_float,
        metavar="SEC",
        help="full rescan interval, a safety net for missed events (default 30)",
    )
    _fleet_flags(s)

    s = sub.add_parser("hooks", help="install or remove specexec's git hooks")
    s.add_argument("action", choices=("install", "uninstall"), help="install or uninstall")
    s.add_argument(
        "--hook",
        action="append",
        dest="hooks",
        metavar="TYPE",
        help="only this hook type (repeatable)",
    )
    s.add_argument("--repo", default=".", help="repository (default: current directory)")

    # What installed hooks call. No help=: argparse lists every subcommand given one, even
    # help=SUPPRESS (it prints "==SUPPRESS=="), and COMMAND as metavar hides the choices.
    s = sub.add_parser("hook-run")
    s.add_argument("hook_type")
    s.add_argument("hook_args", nargs="*")

    s = sub.add_parser("gc", help="remove stale worktrees and branches")
    s.add_argument("repo", nargs="?", default=None, help="repository (default: current directory)")

    sub.add_parser("schema", help="print the JSON Schema of tasks.json")

    s = sub.add_parser("demo", help="run the bundled example in a scratch repository")
    s.add_argument(
        "--dir", dest="path", help="where to create the scratch repository (default: a temp dir)"
    )
    s.add_argument("--jobs", "-j", type=_positive_int, default=4, help=_JOBS)
    return p


def _dispatch(args: argparse.Namespace) -> int:
    cmd = args.command
    if cmd == "init":
        from specexec.commands.init import init, list_templates

        if args.list:
            return list_templates()
        if args.spec_dir is None:
            raise InvalidInput("init needs a SPEC_DIR (or --list to see the templates)")
        return init(args.spec_dir, args.template)
    if cmd == "validate":
        from specexec.commands.validate import validate

        return validate(args.spec_dirs)
    if cmd == "plan":
        from specexec.commands.plan import plan

        return plan(args.spec_dir, jobs=args.jobs, output=args.format, write=args.write)
    if cmd == "status":
        from specexec.commands.status import status

        return status(args.spec_dirs, as_json=args.json)
    if cmd == "reset":
        from specexec.commands.reset import reset

        return reset(args.spec_dir, args.task_ids, failed=args.failed)
    if cmd == "schema":
        from specexec.commands.schema import schema

        return schema()
    if cmd == "run":
        from specexec.commands.run import RunOptions, run

        return run(
            args.spec_dirs,
            RunOptions(
                jobs=args.jobs,
                schedule=args.schedule,
                worker=args.worker,
                retries=args.retries,
                timeout_minutes=args.timeout,
                fail_fast=args.fail_fast,
                strict_scope=args.strict_scope,
                dry_run=args.dry_run,
                keep_worktrees=args.keep_worktrees,
                json=args.json,
                wait=args.wait,
                retry_failed=args.retry_failed,
                isolation=args.isolation,
                clean_ignored=args.clean_ignored,
                pool=not args.no_pool,
                allow_commands=True,
                fixed_concurrency=args.fixed_concurrency,
                **_fleet_options(args),
            ),
        )
    if cmd == "report":
        from specexec.commands.report import report

        return report(args.spec_dir, run_id=args.run_id, output=args.format)
    if cmd == "watch":
        from specexec.commands.watch import watch

        return watch(
            args.dir,
            jobs=args.jobs,
            polling=args.polling,
            allow_commands=args.allow_commands,
            grace_s=args.grace,
            rescan_s=args.rescan,
            run_options=_fleet_options(args),
        )
    if cmd == "hooks":
        from specexec.commands.hooks import hooks

        return hooks(args.action, repo=args.repo, hook_types=args.hooks)
    if cmd == "hook-run":
        from specexec.commands.hooks import hook_run

        return hook_run(args.hook_type, args.hook_args)
    if cmd == "gc":
        from specexec.commands.gc import gc

        return gc(args.repo)
    if cmd == "demo":
        from specexec.commands.demo import demo

        return demo(args.path, jobs=args.jobs)
    raise AssertionError(cmd)


def _crash_log(exc: BaseException) -> Path:
    """Write the traceback of an unexpected error to a file; return its path."""
    import tempfile  # only after a crash: a command's start-up imports stay small
    import traceback

    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state") / "specexec"
    try:
        base.mkdir(parents=True, exist_ok=True)
    except OSError:
        base = Path(tempfile.gettempdir())
    from specexec import system  # only here: start-up imports stay small

    path = base / f"crash-{system.utc_stamp()}-{os.getpid()}.log"
    system.atomic_write(path, "".join(traceback.format_exception(exc)), durable=False)
    return path


def report_error(exc: SpecexecError) -> None:
    # A summary ("…: 1 problem") must be followed by the problem itself, even when there
    # is only one: the message alone would not name it.
    # Messages carry paths and text from files and workers: made safe for the terminal.
    if isinstance(exc, InvalidInput) and exc.problems != (str(exc),):
        print(f"specexec: error: {clean(exc, _ERROR_WIDTH)}", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {clean(problem, _ERROR_WIDTH)}", file=sys.stderr)
    else:
        print(f"specexec: error: {clean(exc, _ERROR_WIDTH)}", file=sys.stderr)


_ERROR_WIDTH = 4000


# A command builds its state up front: a 40,000-task spec is millions of small objects,
# none in a cycle, and at the default generation-0 threshold (700 allocations) the
# collector walks them again and again for nothing: ~30% of `plan`'s CPU at 40,000 tasks
# (bench/startup.py). Collect less often, never not at all; the daemon, which runs for
# days on little garbage, keeps the default.
_GC_THRESHOLD = (100_000, 10, 10)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    old_threshold = gc.get_threshold()
    if args.command != "watch":
        gc.set_threshold(*_GC_THRESHOLD)
    try:
        return _dispatch(args)
    except SpecexecError as e:
        report_error(e)
        return e.exit_code
    except KeyboardInterrupt:
        print("specexec: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `specexec status | head`: the reader left; nothing is wrong.
        sys.stderr.close()
        return 0
    except Exception as e:
        path = _crash_log(e)
        print(
            f"specexec: internal error: {type(e).__name__}: {clean(e, _ERROR_WIDTH)} "
            f"(traceback in {path})",
            file=sys.stderr,
        )
        return EXIT_INTERNAL
    finally:
        gc.set_threshold(*old_threshold)  # main() is also called in-process (tests)


if __name__ == "__main__":
    raise SystemExit(main())
