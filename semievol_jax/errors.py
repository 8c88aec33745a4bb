"""The one base class for errors caused by the user's input (shown without a traceback)."""


class UserError(Exception):
    """Bad input: a file, row, tensor or setting the user can fix. The CLI prints the
    message and exits non-zero instead of showing a traceback."""
