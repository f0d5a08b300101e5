"""The one error type that means "the user gave bad input" (a file, a field, an option value).

The CLI turns it into a single line on stderr and exit code 2; anything else is a bug and keeps its traceback.
"""


class UserError(Exception):
    """Bad input. The message names the file/field and what was expected, in one line."""
