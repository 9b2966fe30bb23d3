"""The only code that runs git or changes repository state: the runner and its clean
environment, refs, worktrees and the pool, merges, hook installation. Must not read or
write tasks.json."""
