"""The spec folder's files and their state: the tasks.json schema and internal types,
defensive JSON, the locked store (the only writer of tasks.json), the event log and the run
lock. Must not run git or workers."""
