"""Errors a user can read: one line, what and where, and what to do."""


class LlamapyError(Exception):
    """A user-facing error: the CLI prints its message on one line and exits with status 1."""


class GGUFError(LlamapyError):
    """A GGUF file that is malformed or can't be used; the message starts with the file's name."""
