"""Turning user mistakes into one sentence and a non-zero exit, for the entry points."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence

from mmru.errors import UserError


@contextlib.contextmanager
def user_errors() -> Iterator[None]:
    """Exit with ``error: <message>`` (status 1) on errors that the user, not the code, made."""
    try:
        yield
    except UserError as err:
        raise SystemExit(f"error: {err}") from None


def refuse_model_group_override(argv: Sequence[str]) -> None:
    """``certify.py model=<path>``: ``model`` is train.py's architecture group, so Hydra would fail on
    it with a message about defaults lists; exit with one sentence naming ``model_file=`` instead."""
    for arg in argv:
        if arg.startswith(("model=", "+model=", "++model=")):
            path = arg.partition("=")[2]
            raise SystemExit(f"error: certify.py reads a model file from model_file= (model= is train.py's "
                             f"architecture group): python certify.py model_file={path} dataset=<name>")
