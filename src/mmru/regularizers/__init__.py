"""Training schemes: one interface (:class:`Regularizer`), one class per scheme."""

from mmru.regularizers.base import Regularizer, TrainingLoss

__all__ = ["Regularizer", "TrainingLoss"]
from mmru.regularizers.mmr import MMR  # noqa: E402
from mmru.regularizers.universal import MMRUniversal  # noqa: E402

__all__ += ["MMR", "MMRUniversal"]
from mmru.regularizers.adversarial import AdversarialTraining, UnionAdversarialTraining  # noqa: E402
from mmru.regularizers.bound_training import BoundTraining  # noqa: E402
from mmru.regularizers.mmr_at import MMRAdversarialTraining  # noqa: E402

__all__ += ["AdversarialTraining", "BoundTraining", "MMRAdversarialTraining", "UnionAdversarialTraining"]
