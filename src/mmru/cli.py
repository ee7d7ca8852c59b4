"""Turning user mistakes into one sentence and a non-zero exit, for the entry points."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from mmru.data import DatasetUnavailable


class UserError(Exception):
    """Bad input from the user (a path, a checkpoint, a value); its message is one sentence."""


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Exit with ``error: <message>`` (status 1) on errors that the user, not the code, made."""
    from mmru.training import ConfigError

    try:
        yield
    except (UserError, ConfigError, DatasetUnavailable) as err:
        raise SystemExit(f"error: {err}") from None
