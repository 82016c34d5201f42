"""One exception type for every user-facing problem.

The CLI turns a `MixloraError` into one `error: ...` line and exit code 1.
Anything else escaping a command is a bug: the CLI's guard still prints one
`error:` line (and the traceback only with `--debug` or `MIXLORA_DEBUG=1`).
"""


class MixloraError(Exception):
    """A problem with the user's input or environment, stated in one line."""


def one_line(message: object) -> str:
    """A message on one line: multi-line library errors (YAML, tokenizers) joined with ' | '."""
    lines = [line.strip() for line in str(message).splitlines() if line.strip()]
    return " | ".join(lines) if lines else "(no message)"
