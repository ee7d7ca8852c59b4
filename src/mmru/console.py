"""Keeps two of Lightning's messages off train.py's console, and only those two.

* Lightning 2.6 advertises its cloud logger on every Trainer without it ("💡 Tip: ... install
  litlogger"), an INFO record of its rank-zero logger;
* its ``_pytree`` helper builds a ``LeafSpec``, which torch 2.14 marks deprecated with a
  FutureWarning ("`isinstance(treespec, LeafSpec)` is deprecated") on every fit.

Neither says anything about the run. Every other warning and log record is left as it is: the
filters match these two messages, not their categories or loggers.
"""

from __future__ import annotations

import logging
import warnings

#: the start of Lightning's advertisement (lightning.pytorch ... logger_connector)
LITLOGGER_TIP = "💡 Tip: For seamless cloud logging and experiment tracking, try installing [litlogger]"
#: the start of torch's deprecation message for LeafSpec, as a regular expression
LEAFSPEC_WARNING = r"`isinstance\(treespec, LeafSpec\)` is deprecated"
#: the loggers Lightning's rank_zero_info writes to (which one depends on import order)
RANK_ZERO_LOGGERS = ("lightning.pytorch.utilities.rank_zero", "lightning.fabric.utilities.rank_zero")


class _DropLitloggerTip(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(LITLOGGER_TIP)


_TIP_FILTER = _DropLitloggerTip()


def quiet_lightning() -> None:
    """Install both filters (idempotent): before a Trainer is built."""
    warnings.filterwarnings("ignore", message=LEAFSPEC_WARNING, category=FutureWarning)
    import lightning.pytorch  # noqa: F401  (its import points rank_zero.log at its own logger)
    import lightning_utilities.core.rank_zero as rank_zero

    for logger in {rank_zero.log, *map(logging.getLogger, RANK_ZERO_LOGGERS)}:
        if _TIP_FILTER not in logger.filters:
            logger.addFilter(_TIP_FILTER)
