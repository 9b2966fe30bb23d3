"""The default worker: the task's own ``command``, run with ``sh -c`` exactly as written.

Its output is taken as it is (a fenced json block or a JSON line with a ``status``, else
the exit code). A shell task that changes nothing passes: many are checks or analyses;
``"expect_changes": true`` on the task makes no change a failure.
"""

from __future__ import annotations

from specexec.workers.agent import Agent

AGENT = Agent(name="shell", head=(), expect_changes=False)
