"""Errors shared by the command-line tools."""


class UsageError(ValueError):
    """A command's options do not fit together or name nothing known; the message names the option."""


__all__ = ["UsageError"]
