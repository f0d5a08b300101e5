"""The one exception type the CLI turns into a one-line message and exit code 2."""


class InputError(ValueError):
    """Bad user input (data file, data spec, init...): the message names the field and what was expected."""
