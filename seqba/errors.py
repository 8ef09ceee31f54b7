"""Errors a user can act on. The command-line entry points print them as one ``error:`` line, never a traceback.

A leaf module: config, tasks, models and the training loop all import it, and it imports nothing of seqba.
"""
from __future__ import annotations

__all__ = ["SeqbaError", "ConfigError", "FieldError", "NonFiniteError", "RunLockedError", "CheckpointError",
           "UsageError"]


class SeqbaError(Exception):
    """Base of the errors that ``seqba.train`` / ``seqba.eval`` report as ``error: <message>``."""


class ConfigError(SeqbaError, ValueError):
    """A recipe or override that does not fit the schema; the message names where (file, line, key) and what is
    valid."""


class FieldError(ValueError):
    """Raised by a config dataclass's ``__post_init__`` for one bad field.

    ``seqba.config`` turns it into a :class:`ConfigError` located at that field (the recipe line, or the
    command-line override that set it).

    Attributes:
        field: the field's name in its dataclass (e.g. ``"repeats"``).
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


class NonFiniteError(SeqbaError, RuntimeError):
    """The loss, the gradient or the parameters of an update were NaN or infinite; the run stops."""


class RunLockedError(SeqbaError):
    """Another live process holds the run directory (its pid and host are in the message)."""


class CheckpointError(SeqbaError):
    """A checkpoint that cannot be read or resumed from (missing, incomplete, truncated, another model)."""


class UsageError(SeqbaError):
    """A command-line argument that argparse rejects (raised instead of exiting, so that a caller such as
    ``seqba.compare`` can check another command's arguments before running it)."""
