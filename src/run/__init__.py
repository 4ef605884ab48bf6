"""Process plumbing below the entry points: the task wrapper and its exit codes, the process
set-up, signals, progress, the distributed helpers, and checkpoint files."""
