"""The one error hierarchy. Exit codes are mapped here and only here."""

from __future__ import annotations

from collections.abc import Sequence

EXIT_OK = 0
EXIT_TASK_FAILED = 1
EXIT_INVALID = 2
EXIT_INTERNAL = 3
EXIT_BUSY = 75
EXIT_INTERRUPTED = 130


class SpecexecError(Exception):
    """Base of every error specexec raises on purpose."""

    exit_code = EXIT_INTERNAL


class InvalidInput(SpecexecError):
    """Bad user input (a file, a flag, a spec): exit 2, nothing changed.

    ``problems`` holds every problem found, each a full sentence naming the file, the
    task and the field, so that one run reports them all.
    """

    exit_code = EXIT_INVALID

    def __init__(self, message: str, problems: Sequence[str] = ()) -> None:
        super().__init__(message)
        self.problems: tuple[str, ...] = tuple(problems) or (message,)


class UnsafePath(InvalidInput):
    """A path that would make specexec read or write outside where it may."""


class Busy(SpecexecError):
    """Another process holds the run lock of a spec folder."""

    exit_code = EXIT_BUSY


class GitError(SpecexecError):
    """A git command failed in a way specexec cannot handle."""

    exit_code = EXIT_INTERNAL
