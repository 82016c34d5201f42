"""One exception type for every user-facing problem.

The CLI turns a `MixloraError` into one `error: ...` line and exit code 1;
anything else is a bug and keeps its traceback.
"""


class MixloraError(Exception):
    """A problem with the user's input or environment, stated in one line."""
