"""Turning user mistakes into one sentence and a non-zero exit, for the entry points."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from mmru.errors import UserError


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Exit with ``error: <message>`` (status 1) on errors that the user, not the code, made."""
    try:
        yield
    except UserError as err:
        raise SystemExit(f"error: {err}") from None
