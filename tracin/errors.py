"""The library's exceptions: ordinary ValueError / FileNotFoundError subclasses, so a caller may catch either.

InputError marks a problem with what the caller gave (a file, an array, an argument), as opposed to a bug: the
command-line scripts report it as one line and exit code 2 (utils.run_cli), a notebook sees a ValueError.
"""


class InputError(ValueError):
    """A bad input: the message names the file or argument and, where there is one, the fix. `arg`: the name of
    the function argument at fault, when it is one (a command line names the flag that sets it)."""

    def __init__(self, message, arg=None):
        super().__init__(message)
        self.arg = arg


class MissingInputError(InputError, FileNotFoundError):
    """A required file or folder does not exist (both a ValueError and a FileNotFoundError)."""
