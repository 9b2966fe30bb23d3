"""`specexec watch DIR`: the daemon (see specexec.daemon) in the foreground, logging
timestamped lines to stderr, stopped cleanly by SIGTERM or SIGINT."""

from __future__ import annotations

import logging
import os
import signal
import sys
from types import FrameType
from typing import Any

from specexec.errors import InvalidInput
from specexec.fmt import clean

RESCAN_ENV = "SPECEXEC_WATCH_RESCAN"


class _SafeFormatter(logging.Formatter):
    """Log lines carry text from workers and dropped spec folders (blockers, file and
    folder names): each line made safe for a terminal (fmt.clean), long ones cut."""

    def format(self, record: logging.LogRecord) -> str:
        text = super().format(record)
        return "\n".join(clean(line, 2000, strip=False) for line in text.split("\n"))


def _setup_logging() -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(
        _SafeFormatter("%(asctime)s.%(msecs)03d %(levelname)-7s %(message)s", "%Y-%m-%d %H:%M:%S")
    )
    # The "specexec" logger: the daemon's lines and the library's warnings (run locks
    # taken over, ...) alike.
    root = logging.getLogger("specexec")
    root.handlers[:] = [handler]
    root.setLevel(logging.INFO)
    root.propagate = False


def _rescan_seconds(value: float | None) -> float:
    if value is not None:
        return value
    text = os.environ.get(RESCAN_ENV)
    if not text:
        return 30.0
    try:
        seconds = float(text)
    except ValueError:
        seconds = -1.0
    if not seconds > 0:
        raise InvalidInput(f"{RESCAN_ENV}={text!r}: must be a number of seconds above 0")
    return seconds


def watch(
    dir: str,
    *,
    jobs: int = 4,
    polling: bool = False,
    allow_commands: bool = False,
    grace_s: float = 10.0,
    rescan_s: float | None = None,
    run_options: dict[str, Any] | None = None,
) -> int:
    from specexec.daemon import Daemon

    daemon = Daemon(
        dir,
        jobs=jobs,
        polling=polling,
        allow_commands=allow_commands,
        grace_s=grace_s,
        rescan_s=_rescan_seconds(rescan_s),
        run_options=run_options,
    )
    _setup_logging()

    def on_signal(signum: int, frame: FrameType | None) -> None:
        daemon.request_stop(signum)

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        return daemon.serve()
    finally:
        for s, h in old.items():
            signal.signal(s, h)
