"""One module per worker (shell and each agent CLI): its command line, how the prompt goes
in, how its output reads, and the files it leaves that are never the task's change; plus
the registry and the rules for which worker runs a task. Must not start processes."""
