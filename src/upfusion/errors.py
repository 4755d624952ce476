"""The one exception type the command line turns into a one-line error and a non-zero exit."""


class UpfusionError(Exception):
    """A user-facing problem: the message names the file (or option) and what is wrong with it."""
