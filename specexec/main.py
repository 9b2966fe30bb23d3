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


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="specexec",
        description="Execute spec folders: plan, run each task in its own git worktree, merge.",
    )
    p.add_argument("--version", action="version", version=f"specexec {__version__}")
    sub = p.add_subparsers(dest="command", metavar="COMMAND", required=True)

    s = sub.add_parser("init", help="scaffold a spec folder from a template")
    s.add_argument("spec_dir")
    s.add_argument("--template", default="minimal", help="template name (default: minimal)")
    s.add_argument("--list", action="store_true", help="list the templates and exit")

    s = sub.add_parser("validate", help="check spec folders (schema, graph, paths)")
    s.add_argument("spec_dirs", nargs="+", metavar="SPEC_DIR")

    s = sub.add_parser("plan", help="show waves, critical path and estimated speedup")
    s.add_argument("spec_dir")
    s.add_argument("--jobs", "-j", type=_positive_int, default=4)
    s.add_argument("--format", choices=("table", "json", "mermaid", "dot"), default="table")
    s.add_argument("--write", action="store_true", help="store execution_strategy in tasks.json")

    s = sub.add_parser("run", help="run the pending tasks of spec folders")
    s.add_argument("spec_dirs", nargs="+", metavar="SPEC_DIR")
    s.add_argument("--jobs", "-j", type=_positive_int, default=4)
    s.add_argument("--schedule", choices=("eager", "waves"), default="eager")
    s.add_argument(
        "--worker", help="worker preset or command for every task (overrides tasks.json)"
    )
    s.add_argument("--retries", type=_non_negative_int, help="max retries per task")
    s.add_argument(
        "--timeout", type=_positive_float, metavar="MIN", help="timeout per attempt, minutes"
    )
    s.add_argument("--fail-fast", action="store_true", help="stop starting tasks after a failure")
    s.add_argument(
        "--strict-scope", action="store_true", help="changes outside relevant_files fail"
    )
    s.add_argument("--dry-run", action="store_true", help="show what would run, in order")
    s.add_argument("--keep-worktrees", action="store_true")
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
    s = sub.add_parser("status", help="show the state of each task")
    s.add_argument("spec_dirs", nargs="+", metavar="SPEC_DIR")
    s.add_argument("--json", action="store_true")

    s = sub.add_parser("reset", help="set tasks back to pending")
    s.add_argument("spec_dir")
    s.add_argument("task_ids", nargs="*", metavar="TASK_ID")
    s.add_argument("--failed", action="store_true", help="only fail and blocked tasks")

    s = sub.add_parser("report", help="print or regenerate a run's report")
    s.add_argument("spec_dir")
    s.add_argument("--run", dest="run_id", help="run id (default: the latest)")
    s.add_argument("--format", choices=("md", "json", "html"), default="md")

    s = sub.add_parser("watch", help="run spec folders dropped into a directory")
    s.add_argument("dir")
    s.add_argument("--jobs", "-j", type=_positive_int, default=4)
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
        help="on SIGTERM, seconds running tasks get to finish (default 10)",
    )
    s.add_argument(
        "--rescan",
        type=_positive_float,
        metavar="SEC",
        help="full rescan interval, a safety net for missed events (default 30)",
    )

    s = sub.add_parser("hooks", help="install or remove specexec's git hooks")
    s.add_argument("action", choices=("install", "uninstall"))
    s.add_argument(
        "--hook",
        action="append",
        dest="hooks",
        metavar="TYPE",
        help="only this hook type (repeatable)",
    )
    s.add_argument("--repo", default=".", help="repository (default: current directory)")

    s = sub.add_parser("hook-run", help=argparse.SUPPRESS)  # what installed hooks call
    s.add_argument("hook_type")
    s.add_argument("hook_args", nargs="*")

    s = sub.add_parser("gc", help="remove stale worktrees and branches")
    s.add_argument("repo", nargs="?", default=None)

    sub.add_parser("schema", help="print the JSON Schema of tasks.json")

    s = sub.add_parser("demo", help="run the bundled example in a scratch repository")
    s.add_argument("--dir", dest="path", help="where to create the scratch repository")
    s.add_argument("--jobs", "-j", type=_positive_int, default=4)
    return p


def _dispatch(args: argparse.Namespace) -> int:
    cmd = args.command
    if cmd == "init":
        from specexec.commands.init import init, list_templates

        return list_templates() if args.list else init(args.spec_dir, args.template)
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
