"""The errors a user, not the code, causes: the one home for them in the library.

Every one carries a message that is a single sentence for the console; the entry points
(``train.py``, ``certify.py``, via :func:`mmru.cli.user_errors`) print it and exit with status 1
instead of a traceback. This module imports nothing of mmru, so any layer may raise these.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user (a path, a checkpoint, a value); its message is one sentence."""


class ConfigError(UserError, ValueError):
    """A configuration value is out of range or of the wrong kind."""


class DatasetUnavailable(UserError, RuntimeError):
    """A dataset is neither on disk nor downloadable."""


class TrainingDiverged(UserError, ArithmeticError):
    """The training loss became NaN or infinite; the last good checkpoint is kept."""
