"""Exit codes shared by every command (train, evaluate, data check, study, bench).

| code | meaning |
|---|---|
| 0 | success |
| 1 | bad data: a file or folder failed the data check, or training met non-finite losses in a row |
| 2 | bad usage or config: unknown key, bad value, missing file, a run folder holding another config |
| 75 | preempted: a checkpoint was written; rerun the same command to resume (``EX_TEMPFAIL``; not 124, which
       ``timeout`` uses) |

Anything else comes from a crash (a traceback is printed) or from the process being killed (128 + signal).
"""

EXIT_OK = 0
EXIT_BAD_DATA = 1
EXIT_USAGE = 2
EXIT_REQUEUE = 75
