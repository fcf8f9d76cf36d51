"""The one exception type that the command line turns into a single clear line and a non-zero exit."""


class UsageError(Exception):
    """Bad input from the user: the message names the bad value and what is allowed."""
