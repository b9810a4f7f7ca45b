"""The one exception type users see."""


class RlhfLabError(Exception):
    """A problem the user can fix. The message says what went wrong and what to do."""


class RunInterrupted(Exception):
    """Ctrl-C stopped a run after it saved a checkpoint; `--resume` continues it."""
