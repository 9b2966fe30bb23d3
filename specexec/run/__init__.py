"""Running a spec: the executor loop, one attempt of a task (as steps a thread or the loop's
reactor drives), worker processes (groups, the guardian, sweeps), prompts, handoff between
tasks, progress, reports and crash recovery.
Changes git only through specexec.git and tasks.json only through specexec.tasksfile."""
