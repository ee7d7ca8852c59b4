"""MMR-l_p, the Maximum Margin Regularizer (eq 16), and the parts MMR-Universal shares with it.

MMR pushes the closest region boundaries (eq 14) and decision boundaries (eq 15) of every training
point beyond a margin gamma with a hinge, averaged over the k closest of each kind.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor

from mmru.models import ReLUNet
from mmru.regions import RegionDistances, region_distances, rho
from mmru.regions_reference import reference_region_distances
from mmru.regularizers.base import Regularizer


def norm_tag(p: float) -> str:
    """'1', '2', 'inf', ... for log names."""
    return "inf" if math.isinf(p) else f"{p:g}"


def closest_hinge(d: Tensor, k: int, gamma: float) -> Tensor:
    """[B] (1/k) sum over the k smallest d of max(0, 1 - d / gamma), the building block of eqs (16), (17)."""
    closest = torch.topk(d, k, dim=1, largest=False).values
    return F.relu(1 - closest / gamma).sum(dim=1) / k


def distances_for(net: ReLUNet, x: Tensor, y: Tensor, ps, geometry: str) -> dict[float, RegionDistances]:
    """Eqs (14), (15) by the fast path (``geometry='fast'``) or the identity-image reference ('reference')."""
    if geometry == "fast":
        return region_distances(net, x, y, ps)
    if geometry == "reference":
        return reference_region_distances(net, x, y, ps, method="identity")
    raise ValueError(f"geometry must be 'fast' or 'reference', got {geometry!r}")


class MarginSchedule(Regularizer):
    """The authors' schedules, epochs counted from 1 (so 0-based epoch e counts as e + 1):

    * lambda factor min((e + 1) / lambda_warmup_epochs, 1): lambda / warmup in the first epoch;
    * k_B fraction falling linearly from ``k_b_start`` to ``k_b_end``, reaching it in the last epoch;
      k_B = max(1, int(fraction * N)) of the N hidden units.

    Before any :meth:`on_epoch_start` call the factor is 1 and the fraction ``k_b_start``.
    """

    def __init__(self, k_b_start: float, k_b_end: float, lambda_warmup_epochs: int):
        self.k_b_start, self.k_b_end = float(k_b_start), float(k_b_end)
        self.lambda_warmup_epochs = int(lambda_warmup_epochs)
        self.lambda_factor = 1.0
        self.k_b_fraction = self.k_b_start

    def on_epoch_start(self, epoch: int, max_epochs: int) -> dict[str, float]:
        counted = epoch + 1
        self.lambda_factor = min(counted / self.lambda_warmup_epochs, 1.0) if self.lambda_warmup_epochs > 0 else 1.0
        self.k_b_fraction = self.k_b_start + (self.k_b_end - self.k_b_start) * min(counted / max_epochs, 1.0)
        return {"lambda_factor": self.lambda_factor, "k_b_fraction": self.k_b_fraction}

    def k_b(self, n_hidden: int) -> int:
        return min(n_hidden, max(1, int(self.k_b_fraction * n_hidden)))


class MMR(MarginSchedule):
    """MMR-l_p of eq (16), weighted by lambda: lambda * [boundary hinge + decision hinge], batch mean.

    ``k_d`` decision hyperplanes (default: all K - 1 other classes); d^D is signed, so misclassified
    points are pushed hardest. Defaults of the k_B schedule (10% -> 2%) follow the authors' code.
    """

    name = "mmr"

    def __init__(
        self,
        p: float | str,
        gamma_b: float,
        gamma_d: float,
        lam: float,
        k_b_start: float = 0.10,
        k_b_end: float = 0.02,
        k_d: int | None = None,
        lambda_warmup_epochs: int = 10,
        geometry: str = "fast",
    ):
        super().__init__(k_b_start, k_b_end, lambda_warmup_epochs)
        self.p = float(p)
        self.gamma_b, self.gamma_d, self.lam = float(gamma_b), float(gamma_d), float(lam)
        self.k_d = k_d
        self.geometry = geometry

    def penalty(self, net: ReLUNet, x: Tensor, y: Tensor) -> tuple[Tensor, dict[str, Tensor | float]]:
        dist = distances_for(net, x, y, [self.p], self.geometry)[self.p]
        k_b = self.k_b(dist.boundary.shape[1])
        others = dist.decision.shape[1] - 1
        k_d = others if self.k_d is None else min(int(self.k_d), others)
        boundary = closest_hinge(dist.boundary, k_b, self.gamma_b)
        decision = closest_hinge(dist.decision, k_d, self.gamma_d)
        weight = self.lam * self.lambda_factor
        tag = norm_tag(self.p)
        logs = {
            f"reg_boundary_l{tag}": boundary.mean().detach(),
            f"reg_decision_l{tag}": decision.mean().detach(),
            f"rho_{tag}_median": rho(dist).median().detach(),
            "lambda_factor": self.lambda_factor,
            "k_b": float(k_b),
        }
        return weight * (boundary + decision).mean(), logs
