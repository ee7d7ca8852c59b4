"""Linear-region geometry of a ReLU net at x: distances to region and decision boundaries.

Inside the linear region Q(x) each pre-activation is affine, g_j(y) = <V_j, y> + v_j (eq 1); the l_p
distance from x to {g_j = 0} is |g_j(x)| / ||V_j||_q, q dual to p (eqs 14, 15; eq 3 takes minima).
The numerators come from the forward pass. :func:`row_norms` builds the dual norms exactly without
the B x d x N tensor of the identity-image method (kept, with autograd Jacobians, in
:mod:`mmru.regions_reference`):

* conv rows live on receptive-field windows. First conv layer: its kernel. Second: one matmul of
  the unfolded masks with a matrix built from both kernels. Deeper: composed tap by tap.
* the first Linear layer's rows are dense: one batched matmul per class of positions whose windows
  do not overlap, added into the image. Each further Linear layer is one batched matmul with
  W diag(mask); decision rows V_c - V_s are differences of logit rows.
* pixels in the zero padding are not inputs: window entries there never enter a norm.

Norms below ``NORM_FLOOR`` = 1e-5 (dead units, the zero row V_c - V_c) are lifted to it, as in the
authors' code: distances stay finite and only ever shrink, so certificates stay sound. Everything
is differentiable (first order) in the parameters; the masks are constants, as inside Q(x).
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from mmru.models import ReLUNet

NORM_FLOOR = 1e-5
INF = float("inf")


def dual_exponent(p: float) -> float:
    """q with 1/p + 1/q = 1 (p=1 -> inf, p=2 -> 2, p=inf -> 1)."""
    p = float(p)
    if p < 1:
        raise ValueError(f"p must be >= 1, got {p}")
    return INF if p == 1 else 1.0 if math.isinf(p) else p / (p - 1)


@dataclass
class RowNorms:
    """Numerators and dual norms of every hyperplane at a batch, per q (floored at ``NORM_FLOOR``)."""

    preact: Tensor  #: [B, N] g_j(x) of every hidden unit, layers in order, each flattened (C, H, W)
    margins: Tensor  #: [B, K] f_c(x) - f_s(x), c the label
    true_class: Tensor  #: [B, K] bool, s == c
    boundary: dict[float, Tensor]  #: q -> [B, N] ||V_j||_q
    decision: dict[float, Tensor]  #: q -> [B, K] ||V_c - V_s||_q (the floor at s == c)


@dataclass
class RegionDistances:
    """l_p distances of eqs (14), (15) for a batch."""

    p: float
    boundary: Tensor  #: [B, N] d^B_{p,l,j}(x), eq (14)
    decision: Tensor  #: [B, K] signed d^D_{p,s}(x), eq (15); negative if x is misclassified; +inf at s == c


def distances(norms: RowNorms, p: float) -> RegionDistances:
    """Eqs (14) and (15) from the row norms for q = dual(p)."""
    q = dual_exponent(p)
    boundary = norms.preact.abs() / norms.boundary[q]
    decision = torch.where(norms.true_class, INF, norms.margins / norms.decision[q])
    return RegionDistances(float(p), boundary, decision)


def region_distances(net: ReLUNet, x: Tensor, y: Tensor, ps: Iterable[float]) -> dict[float, RegionDistances]:
    """d^B_p and d^D_p (eqs 14, 15) for every p in ``ps``; the rows are built once for all of them."""
    ps = [float(p) for p in ps]
    norms = row_norms(net, x, y, {dual_exponent(p) for p in ps})
    return {p: distances(norms, p) for p in ps}


def rho(dist: RegionDistances) -> Tensor:
    """[B] min(d^B_p(x), |d^D_p(x)|) of eq (3): the radius certified by Theorem 2.1 (if x is correct),
    and rho_1 / rho_inf of Theorem 4.1."""
    return torch.minimum(dist.boundary.min(dim=1).values, dist.decision.abs().min(dim=1).values)


def split_by_layer(t: Tensor, net: ReLUNet) -> list[Tensor]:
    """Split a [B, N] per-unit tensor into the hidden layers' blocks."""
    return list(torch.split(t, net.hidden_sizes, dim=1))


def floored_norms(t: Tensor, qs: Iterable[float], dim: int, valid: Tensor | None = None) -> dict[float, Tensor]:
    """||t * valid||_q along ``dim`` for each q in ``qs``, lifted to at least ``NORM_FLOOR``."""
    qs = [float(q) for q in qs]
    out = {}
    if 1.0 in qs or INF in qs:
        out[1.0], out[INF] = _L1LinfNorms.apply(t, valid, dim)
    for q in qs:
        if q not in out:
            out[q] = torch.linalg.vector_norm(t if valid is None else t * valid, q, dim)
    return {q: out[q].clamp_min(NORM_FLOOR) for q in qs}


class _L1LinfNorms(torch.autograd.Function):
    """l1 and l_inf norms from one |t * valid| (``valid`` broadcasts to t's shape). The backward takes
    three passes over t; autograd's abs, sum and max backwards took several times longer."""

    @staticmethod
    def forward(ctx, t: Tensor, valid: Tensor | None, dim: int):
        a = t.abs() if valid is None else t.abs().mul_(valid)
        l_inf, arg = a.max(dim, keepdim=True)
        ctx.save_for_backward(t, valid, arg)
        ctx.dim = dim
        return a.sum(dim), l_inf.squeeze(dim)

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, g_l1: Tensor, g_inf: Tensor):
        t, valid, arg = ctx.saved_tensors
        sign = t.sign() if valid is None else t.sign().mul_(valid)
        at_arg = sign.gather(ctx.dim, arg)
        grad = sign.mul_(g_l1.unsqueeze(ctx.dim))
        grad.scatter_add_(ctx.dim, arg, at_arg * g_inf.unsqueeze(ctx.dim))
        return grad, None, None


def row_norms(net: ReLUNet, x: Tensor, y: Tensor, qs: Iterable[float]) -> RowNorms:
    """Dual norms of all rows V_j (eq 1) and V_c - V_s at the batch ``x`` (labels ``y``), for each q.

    ``net``: Conv2d layers (any kernel, stride, zero padding; dilation 1, groups 1), then Linear ones.
    """
    qs = sorted({float(q) for q in qs})
    layers = list(net.layers)
    n_conv = next((i for i, layer in enumerate(layers) if isinstance(layer, nn.Linear)), len(layers))
    if n_conv == len(layers) or any(isinstance(layer, nn.Conv2d) for layer in layers[n_conv:]):
        raise ValueError("row_norms expects conv layers, then Linear layers, the last one Linear")
    zs = net.preactivations(x)
    masks = [(z > 0).to(z.dtype) for z in zs[:-1]]
    batch = x.shape[0]
    parts: list[dict[float, Tensor]] = []  # per hidden layer: q -> [B, n_l]
    if n_conv:
        geom = [_conv_params(layer) for layer in layers[:n_conv]]
        win = _first_conv_windows(layers[0].weight, geom[0], zs[0].shape[2:], x.shape[1:])
        parts.append(_window_norms(win, qs, batch))
        for i in range(1, n_conv):
            if i == 1:
                kernel, weight = layers[0].weight, layers[1].weight
                win = _second_conv_windows(kernel, geom[0], weight, geom[1], masks[0], x.shape[1:])
            else:
                win = _deeper_conv_windows(win, layers[i].weight, geom[i], masks[i - 1], x.shape[1:])
            parts.append(_window_norms(win, qs, batch))
        rows = _windows_to_image(win, masks[n_conv - 1], layers[n_conv].weight, x.shape[1:])
    else:
        rows = layers[0].weight.t()[None]
    # Linear layers: rows [B, d, n], pixels in (C, H, W) order; row_{i+1} = W_{i+1} diag(mask_i) row_i
    for i, layer in enumerate(layers[n_conv + 1 :]):
        parts.append({q: n.expand(batch, -1) for q, n in floored_norms(rows, qs, 1).items()})
        rows = torch.matmul(rows, layer.weight.t() * masks[n_conv + i][:, :, None])
    rows = rows.expand(batch, -1, -1)
    decision_rows = rows.gather(2, y.view(-1, 1, 1).expand(-1, rows.shape[1], 1)) - rows  # V_c - V_s
    logits = zs[-1]
    return RowNorms(
        preact=torch.cat([z.flatten(1) for z in zs[:-1]], dim=1),
        margins=logits.gather(1, y[:, None]) - logits,
        true_class=F.one_hot(y, logits.shape[1]).bool(),
        boundary={q: torch.cat([part[q] for part in parts], dim=1) for q in qs},
        decision=floored_norms(decision_rows, qs, 1),
    )


# --- conv layers: rows on receptive-field windows ------------------------------------------------


@dataclass
class _Windows:
    """Rows of one conv layer's units, each on its window of the input.

    ``rows[P * n_Q + Q, b, (C0, u, v), c]`` is the entry of unit (c, P, Q) at input pixel
    (C0, P * stride[0] - offset[0] + u, Q * stride[1] - offset[1] + v). Entries at pixels off the
    image are kept (they only ever combine with entries at the same pixel) and ``valid`` drops them.
    """

    rows: Tensor  #: [P * Q or 1, B or 1, C0 * Rh * Rw, C]
    valid: Tensor | None  #: [P * Q, 1, C0 * Rh * Rw, 1]: 1 on the image, 0 off it; None: no need
    positions: tuple[int, int]  #: (P, Q), the layer's spatial shape
    size: tuple[int, int]  #: (Rh, Rw), the window
    stride: tuple[int, int]  #: product of the strides so far
    offset: tuple[int, int]  #: how far the first window starts before pixel 0


def _conv_params(conv: nn.Conv2d) -> tuple[tuple[int, int], tuple[int, int], tuple[int, int]]:
    plain = conv.groups == 1 and conv.dilation == (1, 1) and conv.padding_mode == "zeros"
    if not plain or isinstance(conv.padding, str):
        raise ValueError("row_norms supports Conv2d with groups=1, dilation=1 and numeric zero padding")
    return tuple(conv.kernel_size), tuple(conv.stride), tuple(conv.padding)


def _on_image(positions, size, stride, offset, in_shape, dtype, device) -> Tensor | None:
    """[P * Q, 1, C0 * Rh * Rw, 1]: 1 where a window entry lies on the image, 0 in the padding."""
    # decided on the shapes alone: a test of the tensors below would wait for the GPU every step
    if all(offset[i] <= 0 and (positions[i] - 1) * stride[i] - offset[i] + size[i] <= in_shape[1 + i] for i in (0, 1)):
        return None
    axes = []
    for i in (0, 1):
        pix = torch.arange(positions[i], device=device)[:, None] * stride[i] - offset[i]
        pix = pix + torch.arange(size[i], device=device)
        axes.append(((pix >= 0) & (pix < in_shape[1 + i])).to(dtype))
    valid = axes[0][:, None, None, :, None] * axes[1][None, :, None, None, :]  # [P, Q, 1, Rh, Rw]
    return valid.expand(-1, -1, in_shape[0], -1, -1).reshape(positions[0] * positions[1], 1, -1, 1)


def _window_norms(win: _Windows, qs, batch: int) -> dict[float, Tensor]:
    """[B, C * P * Q] norms in the layer's (C, H, W) order."""
    norms = floored_norms(win.rows, qs, 2, win.valid)  # [P * Q or 1, B or 1, C]
    # rows shared by all positions (a first conv layer without padding) are normed once, then
    # repeated: every unit (c, P, Q) has a hyperplane of its own
    n_pos = win.positions[0] * win.positions[1]
    return {q: n.expand(n_pos, batch, -1).permute(1, 2, 0).flatten(1) for q, n in norms.items()}


def _first_conv_windows(weight: Tensor, geom, out_hw, in_shape) -> _Windows:
    """A first-layer unit's row is its kernel, cut where the window leaves the image (batch size 1)."""
    (kh, kw), stride, pad = geom
    rows = weight.permute(1, 2, 3, 0).reshape(1, 1, -1, weight.shape[0])
    valid = _on_image(out_hw, (kh, kw), stride, pad, in_shape, weight.dtype, weight.device)
    return _Windows(rows if valid is None else rows * valid, None, tuple(out_hw), (kh, kw), stride, pad)


def _second_conv_windows(kernel: Tensor, geom1, weight: Tensor, geom2, mask1: Tensor, in_shape) -> _Windows:
    """Rows of a conv layer right above the first one: V = W2 diag(mask1) W1 on each window.

    Tap a of the second layer carries the first kernel shifted by a * stride1 inside the window, so
    row(b, P, Q) = sum_(c1, a) mask1(b, c1, tap a of (P, Q)) * W2[:, c1, a] * shifted K1[c1]: one matmul
    of the unfolded masks [B * P * Q, c1 * k2 * k2] with a [c1 * k2 * k2, window * c2] matrix built from
    W2 and K1. That matrix is mostly zeros (cnn_small: 4x the needed work), yet one large matmul ran
    faster than per-cell small matmuls plus the layout copies they need.
    """
    (k1h, k1w), s1, p1 = geom1
    (k2h, k2w), s2, p2 = geom2
    size = ((k2h - 1) * s1[0] + k1h, (k2w - 1) * s1[1] + k1w)
    shifted = torch.stack(
        [
            F.pad(kernel, (j * s1[1], size[1] - k1w - j * s1[1], i * s1[0], size[0] - k1h - i * s1[0]))
            for i in range(k2h)
            for j in range(k2w)
        ]
    ).view(k2h, k2w, *kernel.shape[:2], *size)
    block = torch.einsum("dcij,ijcCuv->cijCuvd", weight, shifted)
    block = block.reshape(block.shape[0] * k2h * k2w, -1)  # [(c1, tap), (C0, u, v, c2)]
    taps = F.pad(mask1, (p2[1], p2[1], p2[0], p2[0])).unfold(2, k2h, s2[0]).unfold(3, k2w, s2[1])
    out_hw = tuple(taps.shape[2:4])  # taps [B, c1, P, Q, k2h, k2w]
    rows = taps.permute(2, 3, 0, 1, 4, 5).reshape(-1, block.shape[0]) @ block  # [(P, Q, b), (C0, u, v, c2)]
    rows = rows.view(out_hw[0] * out_hw[1], mask1.shape[0], -1, weight.shape[0])
    stride = (s1[0] * s2[0], s1[1] * s2[1])
    offset = (p1[0] + p2[0] * s1[0], p1[1] + p2[1] * s1[1])
    valid = _on_image(out_hw, size, stride, offset, in_shape, rows.dtype, rows.device)
    return _Windows(rows, valid, out_hw, size, stride, offset)


def _deeper_conv_windows(below: _Windows, weight: Tensor, geom, mask: Tensor, in_shape) -> _Windows:
    """Rows of a conv layer from the windows of the conv layer below: tap by tap, then overlap-add
    (general rather than tuned: cnn_small has no third conv layer)."""
    (kh, kw), (sh, sw), (ph, pw) = geom
    (pb, qb), (rh, rw) = below.positions, below.size
    rows = below.rows.view(pb, qb, below.rows.shape[1], -1, rh, rw, below.rows.shape[3])
    rows = rows * mask.permute(2, 3, 0, 1)[:, :, :, None, None, None, :]
    rows = F.pad(rows, (0,) * 10 + (pw, pw, ph, ph)).unfold(0, kh, sh).unfold(1, kw, sw)
    taps = torch.einsum("PQbCuvcij,dcij->PQbCdijuv", rows, weight)
    size = ((kh - 1) * below.stride[0] + rh, (kw - 1) * below.stride[1] + rw)
    placed = _overlap_add(taps, (5, 6), size, below.stride)  # [P', Q', B, C0, C', R'h, R'w]
    positions = tuple(placed.shape[:2])
    rows = placed.permute(0, 1, 2, 3, 5, 6, 4)
    rows = rows.reshape(positions[0] * positions[1], placed.shape[2], -1, placed.shape[4])
    stride = (below.stride[0] * sh, below.stride[1] * sw)
    offset = (below.offset[0] + ph * below.stride[0], below.offset[1] + pw * below.stride[1])
    valid = _on_image(positions, size, stride, offset, in_shape, rows.dtype, rows.device)
    return _Windows(rows, valid, positions, size, stride, offset)


def _overlap_add(blocks: Tensor, dims: tuple[int, int], out: tuple[int, int], step: tuple[int, int]) -> Tensor:
    """Adjoint of ``t.unfold(dims[0], r_h, step[0]).unfold(dims[1], r_w, step[1])``: ``blocks[..., i, j,
    ..., u, v]`` is added into ``t[..., i * step[0] + u, j * step[1] + v, ...]`` (length ``out`` at ``dims``)."""
    r_h, r_w = blocks.shape[-2:]
    sizes = list(blocks.shape[:-1])
    sizes[dims[1]] = out[1]
    t = torch.ops.aten.unfold_backward(blocks, sizes, dims[1], r_w, step[1])
    sizes = sizes[:-1]
    sizes[dims[0]] = out[0]
    return torch.ops.aten.unfold_backward(t, sizes, dims[0], r_h, step[0])


# --- the first Linear layer after the convs: dense rows on the image -----------------------------


def _windows_to_image(win: _Windows, mask: Tensor, weight: Tensor, in_shape) -> Tensor:
    """[B, d, n] rows of the first Linear layer: sum over last-conv units m of W[:, m] mask[m] row_m."""
    n_pos, c = mask.shape[2] * mask.shape[3], win.rows.shape[3]
    mask = mask.permute(2, 3, 0, 1).reshape(n_pos, mask.shape[0], 1, c)
    per_pos = weight.view(weight.shape[0], c, n_pos).permute(2, 1, 0).contiguous()  # [P * Q, c, n]
    return _WindowsToImage.apply(win.rows.expand(n_pos, -1, -1, -1), mask, per_pos, win, tuple(in_shape))


class _WindowsToImage(torch.autograd.Function):
    """image[b, window(p)] += (rows[p, b] * mask[p, b]) @ w[p] over positions p, on a padded canvas.

    Positions P = a (mod m) with m = ceil(window / stride) have disjoint windows, so each of the
    m_h * m_w residue classes is one batched matmul added through one strided view of the canvas.
    The [P * Q, B, window, n] product (6x the image for cnn_small) is never held whole, and the
    op count stays small, which matters on busy CPUs and for kernel launches on GPUs.
    """

    @staticmethod
    def forward(ctx, rows: Tensor, mask: Tensor, w: Tensor, win: _Windows, in_shape) -> Tensor:
        canvas = rows.new_zeros(mask.shape[1], in_shape[0], *_canvas_hw(win, in_shape), w.shape[2])
        for group, view in _residue_classes(win, canvas):
            masked, w_g = _group_operands(rows, mask, w, win, group)
            prod = torch.bmm(masked, w_g).view(view.shape[2], view.shape[4], *view.shape[:2], *win.size, -1)
            view += prod.permute(2, 3, 0, 4, 1, 5, 6)
        ctx.save_for_backward(rows, mask, w)
        ctx.win, ctx.in_shape = win, in_shape
        return _crop(canvas, win, in_shape).reshape(canvas.shape[0], -1, w.shape[2])

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx, grad: Tensor):
        rows, mask, w = ctx.saved_tensors
        win, in_shape = ctx.win, ctx.in_shape
        (canvas_h, canvas_w), (oh, ow), (height, width) = _canvas_hw(win, in_shape), win.offset, in_shape[1:]
        pads = (0, 0, ow, canvas_w - ow - width, oh, canvas_h - oh - height)
        canvas = F.pad(grad.reshape(mask.shape[1], *in_shape, -1), pads)
        g_rows = rows.new_empty(*win.positions, *rows.shape[1:])
        g_w = torch.empty_like(w).view(*win.positions, *w.shape[1:])
        for group, view in _residue_classes(win, canvas):
            masked, w_g = _group_operands(rows, mask, w, win, group)
            g = view.permute(2, 4, 0, 1, 3, 5, 6).reshape(masked.shape[0], -1, w.shape[2])
            g_w[group] = torch.bmm(masked.transpose(1, 2), g).view(g_w[group].shape)
            g_masked = torch.bmm(g, w_g.transpose(1, 2))
            g_masked = g_masked.view(*g_w[group].shape[:2], mask.shape[1], -1, rows.shape[3])
            mask_g = mask.view(*win.positions, *mask.shape[1:])[group]
            if rows.shape[1] == 1:  # rows shared by the batch (first conv layer)
                g_rows[group] = (g_masked * mask_g).sum(2, keepdim=True)
            else:
                torch.mul(g_masked, mask_g, out=g_rows[group])
        return g_rows.view_as(rows), None, g_w.view_as(w), None, None


def _canvas_hw(win: _Windows, in_shape) -> tuple[int, int]:
    """Canvas from pixel -offset on, covering every window and the whole image."""
    hw = []
    for i in (0, 1):
        hw.append(max((win.positions[i] - 1) * win.stride[i] + win.size[i], win.offset[i] + in_shape[1 + i]))
    return tuple(hw)


def _crop(canvas: Tensor, win: _Windows, in_shape) -> Tensor:
    return canvas[:, :, win.offset[0] : win.offset[0] + in_shape[1], win.offset[1] : win.offset[1] + in_shape[2]]


def _residue_classes(win: _Windows, canvas: Tensor):
    """Per residue class of positions: its index into [P, Q] and the canvas viewed as its windows,
    [B, C0, n_i, Rh, n_j, Rw, n] (windows of one class are disjoint)."""
    m = [min(-(-win.size[i] // win.stride[i]), win.positions[i]) for i in (0, 1)]
    s_b, s_c, s_h, s_w, _ = canvas.stride()
    for a in range(m[0]):
        for b in range(m[1]):
            n_i, n_j = len(range(a, win.positions[0], m[0])), len(range(b, win.positions[1], m[1]))
            size = (canvas.shape[0], canvas.shape[1], n_i, win.size[0], n_j, win.size[1], canvas.shape[4])
            stride = (s_b, s_c, m[0] * win.stride[0] * s_h, s_h, m[1] * win.stride[1] * s_w, s_w, 1)
            offset = canvas.storage_offset() + a * win.stride[0] * s_h + b * win.stride[1] * s_w
            yield (slice(a, None, m[0]), slice(b, None, m[1])), canvas.as_strided(size, stride, offset)


def _group_operands(rows: Tensor, mask: Tensor, w: Tensor, win: _Windows, group) -> tuple[Tensor, Tensor]:
    """Masked rows [G, B * window, c] and weights [G, c, n] of one residue class of positions."""
    masked = rows.view(*win.positions, *rows.shape[1:])[group] * mask.view(*win.positions, *mask.shape[1:])[group]
    n_g = masked.shape[0] * masked.shape[1]
    w_g = w.view(*win.positions, *w.shape[1:])[group].reshape(n_g, *w.shape[1:])
    return masked.reshape(n_g, -1, rows.shape[3]), w_g
