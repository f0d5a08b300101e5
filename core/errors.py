"""The one error type that means "the user gave bad input" (a file, a field, a value).

Library code names the *value* that is wrong (``option="resolution"``), never a command-line flag; the CLI
(app.parser) words it as the flag of the same name (``--resolution``) on a single line with exit code 2.
Anything else is a bug and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input. The message names the file/field/value and what was expected, in one line.

    ``option``: the name of the option whose value is wrong (a TrainOptions/config field, a sampler field),
    so a front end can name it its own way; ``str(err)`` is ``"option: message"``.
    """

    def __init__(self, message: str, *, option: str | None = None):
        self.option = option
        self.detail = message
        super().__init__(f"{option}: {message}" if option else message)

    def as_flag(self) -> str:
        """The message with the option written as the command-line flag of the same name."""
        return f"--{self.option.replace('_', '-')}: {self.detail}" if self.option else self.detail
