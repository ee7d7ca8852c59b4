"""Whether every training step so far had a finite loss and finite gradients, kept on the device.

Reading a GPU tensor's value on the host waits for every kernel queued before it. A check per
step would therefore stall the GPU once a step; here each step only folds its verdict into two
device tensors (the first bad step and its loss), and the host reads them when the caller says
so (:meth:`FiniteGuard.due`): every step on the CPU, every N steps and at each epoch's end on a GPU.
"""

from __future__ import annotations

import torch


class FiniteGuard:
    """The first global step whose loss or gradient was NaN or infinite, read every ``every_n_steps``."""

    def __init__(self, every_n_steps: int = 1):
        if every_n_steps < 1:
            raise ValueError(f"every_n_steps must be >= 1, got {every_n_steps}")
        self.every_n_steps = every_n_steps
        self._step: torch.Tensor | None = None  #: int64, -1 while every step was finite
        self._loss: torch.Tensor | None = None  #: the loss at that step

    def record(self, loss: torch.Tensor, grads: list[torch.Tensor], step: int) -> None:
        """Fold step ``step``'s verdict in, with device ops only (no host synchronisation)."""
        finite = torch.stack([torch.isfinite(loss), *(torch.isfinite(g).all() for g in grads)]).all()
        if self._step is None:
            self._step = torch.full((), -1, dtype=torch.long, device=loss.device)
            self._loss = torch.zeros((), dtype=loss.dtype, device=loss.device)
        first = ~finite & (self._step < 0)
        self._step = torch.where(first, step, self._step)
        self._loss = torch.where(first, loss, self._loss)

    def due(self, step: int, last_of_epoch: bool) -> bool:
        """Whether the host should read the verdict after recording global step ``step``."""
        return last_of_epoch or (step + 1) % self.every_n_steps == 0

    def first_bad(self) -> tuple[int, torch.Tensor] | None:
        """(global step, loss) of the first bad step recorded, or None: one host synchronisation."""
        if self._step is None:
            return None
        step = int(self._step)
        return None if step < 0 else (step, self._loss)
