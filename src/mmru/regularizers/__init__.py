"""Training schemes: one interface (:class:`Regularizer`), one class per scheme."""

from mmru.regularizers.base import Regularizer, TrainingLoss

__all__ = ["Regularizer", "TrainingLoss"]
