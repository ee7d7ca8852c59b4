"""Training schemes: one interface (:class:`Regularizer`), one module per family of schemes.

``mmr`` (MMR-l_p, eq 16), ``universal`` (MMR-Universal, eq 17), ``adversarial`` (PGD AT and
AT-(l1, l2, l∞)), ``bound_training`` (KW robust training), ``mmr_at`` (MMR + AT). The
package itself imports only the interface, so that a scheme's dependencies (attack or
solver libraries) load only when that scheme is used.
"""

from mmru.regularizers.base import Regularizer, TrainingLoss

__all__ = ["Regularizer", "TrainingLoss"]
