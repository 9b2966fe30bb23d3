"""Pure planning: relevant_files patterns, the conflict index, waves, the critical path and
the scheduling state machine. Takes internal types and returns plans: no I/O, no clock."""
