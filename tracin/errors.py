"""The library's exceptions: ordinary ValueError / FileNotFoundError subclasses, so a caller may catch either.

InputError marks a problem with what the caller gave (a file, an array, an argument), as opposed to a bug: the
command-line scripts report it as one line and exit code 2 (tracin.cli.run_cli), a notebook sees a ValueError.
"""


class InputError(ValueError):
    """A bad input: the message names the file or argument and, where there is one, the fix."""


class MissingInputError(InputError, FileNotFoundError):
    """A required file or folder does not exist (both a ValueError and a FileNotFoundError)."""
