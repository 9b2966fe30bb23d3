"""The reliability suite: chaos (SIGKILL), fuzzing, path escapes, secrets, resource faults
and the trust of dropped spec folders. What each test promises is in RELIABILITY.md."""
