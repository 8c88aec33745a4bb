"""The errors caused by the user's input: shown as a message, without a traceback."""

from __future__ import annotations

from collections.abc import Sequence


class UserError(Exception):
    """Bad input: a file, row, tensor or setting the user can fix. The CLI prints the
    message and exits non-zero instead of showing a traceback."""


class DataError(UserError, ValueError):
    """Data that cannot be used (a split file, a training set); `problems` lists what is
    wrong, one line each (`file:line: what` where a file and line are known)."""

    def __init__(self, problems: str | Sequence[str], *, source: str = ""):
        self.source = source
        if isinstance(problems, str):  # a ready message: keep it, one problem per line
            self.problems = tuple(ln for ln in problems.splitlines() if ln.strip())
            super().__init__(problems)
            return
        self.problems = tuple(problems)
        head = f"{len(self.problems)} problem(s) in {source}:\n" if source else ""
        super().__init__(head + "\n".join(self.problems))

    @classmethod
    def combine(cls, errors: Sequence[DataError]) -> DataError:
        """One error for several files (e.g. the three splits), every problem kept."""
        if len(errors) == 1:
            return errors[0]
        err = cls("\n\n".join(str(e) for e in errors))
        err.problems = tuple(p for e in errors for p in e.problems)
        return err
