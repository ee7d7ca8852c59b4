"""Slow, obviously-correct references for :mod:`mmru.regions` (tests and benchmarks only).

Both build every row V_j of eq (1) in full, one [B, d, n_l] tensor per layer:

* ``"identity"``: the authors' method. With the ReLU masks of x frozen, push the d unit images
  e_1..e_d through the linear parts of the layers (no biases); column j of the result is V_j.
* ``"jacobian"``: forward-mode autograd Jacobians (``torch.func.jacfwd``) of all pre-activations
  at x (within Q(x) the network is affine, so the Jacobian is V; autograd's ReLU derivative at 0
  is 0, as the masks z > 0 say).

Both stay differentiable in the parameters.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmru.models import ReLUNet
from mmru.regions import RegionDistances, RowNorms, distances, dual_exponent, floored_norms


def identity_rows(net: ReLUNet, x: Tensor) -> list[Tensor]:
    """Per layer [B, d, n_l] (logits last): all rows, by pushing unit images (the authors' way)."""
    batch, d = x.shape[0], x[0].numel()
    zs = net.preactivations(x)
    h = torch.eye(d, dtype=x.dtype, device=x.device).view(d, *x.shape[1:])
    h = h.expand(batch, *h.shape).reshape(batch * d, *x.shape[1:])
    rows = []
    for i, layer in enumerate(net.layers):
        if isinstance(layer, nn.Linear):
            h = F.linear(h.flatten(1), layer.weight)
        else:
            h = F.conv2d(h, layer.weight, None, layer.stride, layer.padding, layer.dilation, layer.groups)
        rows.append(h.reshape(batch, d, -1))
        if i < len(zs) - 1:
            mask = (zs[i] > 0).to(h.dtype)
            h = (h.view(batch, d, *h.shape[1:]) * mask[:, None]).view_as(h)
    return rows


def jacobian_rows(net: ReLUNet, x: Tensor) -> list[Tensor]:
    """Per layer [B, d, n_l] (logits last): forward-mode autograd Jacobians of the pre-activations."""

    def all_preacts(xi: Tensor) -> Tensor:
        return torch.cat([z.flatten() for z in net.preactivations(xi[None])])

    jac = torch.func.vmap(torch.func.jacfwd(all_preacts))(x)  # [B, N + K, *input shape]
    rows = jac.flatten(2).transpose(1, 2)
    return list(torch.split(rows, [*net.hidden_sizes, net.num_classes], dim=2))


def reference_row_norms(
    net: ReLUNet, x: Tensor, y: Tensor, qs: Iterable[float], method: str = "identity"
) -> RowNorms:
    """Same result as :func:`mmru.regions.row_norms`, from full rows."""
    qs = sorted({float(q) for q in qs})
    *hidden, out = {"identity": identity_rows, "jacobian": jacobian_rows}[method](net, x)
    norms = [floored_norms(rows, qs, 1) for rows in hidden]
    decision_rows = out.gather(2, y.view(-1, 1, 1).expand(-1, out.shape[1], 1)) - out
    zs = net.preactivations(x)
    logits = zs[-1]
    return RowNorms(
        preact=torch.cat([z.flatten(1) for z in zs[:-1]], dim=1),
        margins=logits.gather(1, y[:, None]) - logits,
        true_class=F.one_hot(y, net.num_classes).bool(),
        boundary={q: torch.cat([n[q] for n in norms], dim=1) for q in qs},
        decision=floored_norms(decision_rows, qs, 1),
    )


def reference_region_distances(
    net: ReLUNet, x: Tensor, y: Tensor, ps: Iterable[float], method: str = "identity"
) -> dict[float, RegionDistances]:
    """Same result as :func:`mmru.regions.region_distances`, from full rows."""
    ps = [float(p) for p in ps]
    norms = reference_row_norms(net, x, y, {dual_exponent(p) for p in ps}, method)
    return {p: distances(norms, p) for p in ps}
