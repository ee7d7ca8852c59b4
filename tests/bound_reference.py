"""A dense float64 reference of mmru.verify's bounds (IBP, KW, CROWN), written independently.

Each layer is a dense matrix obtained by pushing the identity basis through the nn module
itself, and everything else is numpy: no code of mmru.verify is used. The relaxations are
the ones mmru documents:
  * the input set is the l_p ball around x, optionally intersected with the box; a linear
    function lam.x' is minimised over it by Hoelder, lam.x - eps ||lam||_q, and, when there
    is a box (or p = inf), exactly over the l_inf cube of radius eps clipped to the box (a
    superset of the ball ∩ box), keeping the larger of the two minima;
  * IBP: intervals pushed through each layer, the first layer exact over the input set (so
    for every method);
  * KW: Wong & Kolter's dual network (Theorem 1 of their 2018 paper): fixed slopes u / (u - l)
    on unstable units, the dual variables nu written out as they do;
  * CROWN: back-substitution with the upper line u (z - l) / (u - l) and the lower slope 1 if
    u >= -l else 0 on unstable units, each layer's bounds intersected with KW's ("crown") or
    not ("crown_raw");
  * margins f_y - f_s: the last layer folded into the spec rows e_y - e_s for every method,
    CROWN's margins the better of its own and KW's.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np
import scipy.sparse
import torch
from torch import nn

INF = math.inf


@dataclass(frozen=True)
class Layer:
    """z = w a + b as a dense matrix, with a sparse copy of w: only to multiply by it fast
    (conv layers are mostly zeros; the products are the same)."""

    w: np.ndarray
    b: np.ndarray
    sparse: scipy.sparse.csr_array

    def times(self, lam: np.ndarray) -> np.ndarray:
        """lam @ w for rows lam [m, n_out]."""
        return np.asarray((self.sparse.T @ lam.T).T)


def dense_layers(net) -> list[Layer]:
    """Every layer of ``net`` in float64, from the layer's own forward pass: b = layer(0) and
    column i of W = layer(e_i) - layer(0), in flat (C, H, W) order."""
    out, shape = [], tuple(net.input_shape)
    for layer in net.layers:
        layer = copy.deepcopy(layer).double()
        n_in = int(np.prod(shape))
        if isinstance(layer, nn.Linear):
            shape = (n_in,)
        with torch.no_grad():
            basis = torch.eye(n_in, dtype=torch.float64).reshape(n_in, *shape)
            zero = layer(torch.zeros(1, *shape, dtype=torch.float64))
            w = (layer(basis) - zero).reshape(n_in, -1).T.numpy().copy()
        shape = tuple(zero.shape[1:])
        out.append(Layer(w, zero.flatten().numpy().copy(), scipy.sparse.csr_array(w)))
    return out


def forward(layers: list[Layer], x: np.ndarray) -> np.ndarray:
    """The logits at a flat x."""
    h = x
    for k, layer in enumerate(layers):
        h = layer.w @ h + layer.b
        h = np.maximum(h, 0) if k < len(layers) - 1 else h
    return h


class InputSet:
    """{x' : ||x' - x||_p <= eps}, intersected with ``box`` when given; x flat [d]."""

    def __init__(self, x: np.ndarray, eps: float, p: float, box):
        self.x, self.eps, self.p, self.box = x, float(eps), float(p), box

    def minimum(self, lam: np.ndarray) -> np.ndarray:
        """min of lam_i . x' over the set for every row of lam [m, d], by the rule above."""
        candidates = []
        if self.p == INF or self.box is not None:
            lo, hi = self.x - self.eps, self.x + self.eps
            if self.box is not None:
                lo, hi = np.clip(lo, *self.box), np.clip(hi, *self.box)
            candidates.append(np.where(lam > 0, lam * lo, lam * hi).sum(1))  # each coordinate at its best end
        if self.p != INF:
            q = INF if self.p == 1.0 else self.p / (self.p - 1.0)
            dual = np.abs(lam).max(1) if q == INF else (np.abs(lam) ** q).sum(1) ** (1.0 / q)
            candidates.append(lam @ self.x - self.eps * dual)
        return np.max(candidates, axis=0)


def _folded(layers, k: int, c: np.ndarray | None) -> tuple[np.ndarray, np.ndarray]:
    """c z_k = A a_{k-1} + d as (A, d) = (c W_k, c b_k); c None stands for the identity."""
    w, b = layers[k].w, layers[k].b
    return (w, b) if c is None else (c @ w, c @ b)


def ibp(layers, k: int, prev, c=None):
    """Interval bounds on c z_k given z_{k-1} in prev = (l, u), so a_{k-1} in [relu l, relu u]."""
    a, d = _folded(layers, k, c)
    lo, hi = np.maximum(prev[0], 0), np.maximum(prev[1], 0)
    pos, neg = np.maximum(a, 0), np.minimum(a, 0)
    return pos @ lo + neg @ hi + d, pos @ hi + neg @ lo + d


def _upper_line(lo, hi):
    """Slope and intercept of every unit's upper relu line: u (z - l) / (u - l) where
    l < 0 < u, else the relu itself (1, 0 when l >= 0; 0, 0 when u <= 0)."""
    unstable = (lo < 0) & (hi > 0)
    slope = np.where(lo >= 0, 1.0, np.where(unstable, hi / np.where(unstable, hi - lo, 1.0), 0.0))
    return slope, np.where(unstable, -slope * lo, 0.0)


def kw_dual(layers, k: int, folded, bounds: list, s: InputSet) -> tuple[np.ndarray, np.ndarray]:
    """Wong & Kolter's dual bounds J(nu) <= min c z_k and J(-nu) <= min -c z_k for each row
    of c, given folded = (c W_k, c b_k).

    nu_k = -c, nu_hat_i = W_{i+1}^T nu_{i+1}, nu_i = D_i nu_hat_i with D the upper line's
    slope (u/(u-l) when unstable, also the slope of KW's lower line), and
    J(nu) = -nu_k b_k - sum_i nu_i b_i + sum_{unstable} l [nu_i]_+ - max_{x'} nu_hat_{-1} x'
    (nu as rows, one per row of c). -c gives -nu throughout, hence both from one pass."""
    nu_hat, linear = -folded[0], folded[1]
    hinge_pos = hinge_neg = 0.0
    for i in reversed(range(k)):
        lo, hi = bounds[i]
        nu = nu_hat * _upper_line(lo, hi)[0]
        l_unstable = np.where((lo < 0) & (hi > 0), lo, 0.0)
        hinge_pos = hinge_pos + np.maximum(nu, 0) @ l_unstable
        hinge_neg = hinge_neg + np.maximum(-nu, 0) @ l_unstable
        linear = linear - nu @ layers[i].b
        nu_hat = layers[i].times(nu)
    return linear + hinge_pos + s.minimum(-nu_hat), -linear + hinge_neg + s.minimum(nu_hat)


def kw_bounds(layers, k: int, bounds: list, s: InputSet, c=None):
    """(lower, upper) KW bounds on c z_k (c None: every unit of z_k)."""
    j_c, j_minus_c = kw_dual(layers, k, _folded(layers, k, c), bounds, s)
    return j_c, -j_minus_c


def crown_lower(layers, k: int, folded, bounds: list, s: InputSet) -> np.ndarray:
    """CROWN's lower bound on c z_k, folded = (c W_k, c b_k): each relu replaced by its lower
    line (slope 1 if u >= -l else 0 on unstable units) where its coefficient is >= 0 and by
    its upper line where it is < 0, layer by layer down to the input."""
    lam, const = folded
    for i in reversed(range(k)):
        lo, hi = bounds[i]
        upper_slope, upper_icpt = _upper_line(lo, hi)
        lower_slope = np.where(lo >= 0, 1.0, np.where((lo < 0) & (hi > 0) & (hi >= -lo), 1.0, 0.0))
        pos, neg = np.maximum(lam, 0), np.minimum(lam, 0)
        lam = pos * lower_slope + neg * upper_slope
        const = const + neg @ upper_icpt + lam @ layers[i].b
        lam = layers[i].times(lam)
    return const + s.minimum(lam)


def crown_bounds(layers, k: int, bounds: list, s: InputSet, c=None):
    """(lower, upper) CROWN bounds on c z_k (c None: every unit); the upper bound is minus the
    lower bound of -c z_k, with its own choice of lines."""
    a, d = _folded(layers, k, c)
    return crown_lower(layers, k, (a, d), bounds, s), -crown_lower(layers, k, (-a, -d), bounds, s)


def _meet(a, b):
    return np.maximum(a[0], b[0]), np.minimum(a[1], b[1])


def reference(layers, x: np.ndarray, y: int, eps: float, p: float, box=(0.0, 1.0), raw: bool = True) -> dict:
    """Per method ("ibp", "kw", "crown" = CROWN ∩ KW, and "crown_raw" = CROWN alone if ``raw``):
    the bounds [(l, u)] of every hidden layer and the logits, and "<method>_margin": lower
    bounds on f_y - f_s for every s (0 at s = y). One example, x flat [d]; >= 1 hidden layer."""
    s = InputSet(x, eps, p, box)
    last = len(layers) - 1
    n_cls = layers[last].w.shape[0]
    spec = np.eye(n_cls)[y] - np.eye(n_cls)
    w0, b0 = layers[0].w, layers[0].b
    first = b0 + s.minimum(w0), b0 - s.minimum(-w0)  # exact over the set, for every method
    out = {name: [first] for name in ("ibp", "kw", "crown") + (("crown_raw",) if raw else ())}
    for k in range(1, last + 1):
        prev = {name: bounds[:k] for name, bounds in out.items()}
        out["ibp"].append(ibp(layers, k, prev["ibp"][-1]))
        out["kw"].append(kw_bounds(layers, k, prev["kw"], s))
        out["crown"].append(_meet(crown_bounds(layers, k, prev["crown"], s), out["kw"][k]))
        if raw:
            out["crown_raw"].append(crown_bounds(layers, k, prev["crown_raw"], s))
    folded = _folded(layers, last, spec)
    margins = {
        "ibp_margin": ibp(layers, last, out["ibp"][last - 1], spec)[0],
        "kw_margin": kw_dual(layers, last, folded, out["kw"][:last], s)[0],
        "crown_margin": crown_lower(layers, last, folded, out["crown"][:last], s),
    }
    margins["crown_margin"] = np.maximum(margins["crown_margin"], margins["kw_margin"])
    if raw:
        margins["crown_raw_margin"] = crown_lower(layers, last, folded, out["crown_raw"][:last], s)
    for m in margins.values():
        m[y] = 0.0
    return out | margins
