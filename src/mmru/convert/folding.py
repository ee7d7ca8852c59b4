"""Merge a chain of imported operations into the affine layers of a :class:`ReLUNet` (eq (1)).

Between two ReLUs a model may apply several linear operations (conv, batch norm, average
pooling, an input normalisation, flatten); ReLUNet wants exactly one affine layer there. In
float64, and always exactly (never an approximation):

* an elementwise ``x * s + t`` after a layer is folded into its weights and bias (per output
  channel for a conv);
* one before a layer is folded into its input side: always for a Linear; for a conv when
  ``s``, ``t`` are per channel and either ``t = 0`` or the conv has no padding (zero padding
  of the normalised input is not zero padding of the raw input);
* a chain that ends in a Linear becomes one dense Linear (the chain evaluated on a basis);
* what is left (a conv after average pooling, a normalisation before a padded conv) stays as
  separate layers: an intermediate z is passed through the ReLU as the pair (z, -z), so the
  next layer sees relu(z) - relu(-z) = z. Where z is known to be >= 0 (average pooling right
  after a ReLU) the ReLU is the identity and no pair is needed. Such a layer adds hidden units
  whose hyperplanes the region certificate also respects: the certificates stay sound, the
  region radius may get smaller.

So an input normalisation ends up inside the net: the net takes raw pixels in [0, 1], and
every eps stays in pixel space.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from mmru.convert.ops import Affine, ConversionError, Flatten, Op, Relu, Scale, apply
from mmru.models import ReLUNet


def to_relunet(ops: list[Op], input_shape: tuple[int, ...], dtype: torch.dtype = torch.float32) -> ReLUNet:
    """The ReLUNet computing exactly the chain ``ops`` on inputs of per-sample ``input_shape``."""
    ops = _drop_flattens(ops, input_shape)
    segments: list[list[Op]] = [[]]
    for op in ops:
        if isinstance(op, Relu):
            if segments[-1] or len(segments) == 1:  # relu(relu(z)) = relu(z)
                segments.append([])
        else:
            segments[-1].append(op)
    layers: list[nn.Conv2d | nn.Linear] = []
    shape = tuple(input_shape)
    for number, segment in enumerate(segments):
        if not segment:  # a ReLU on the input, or on the logits: keep it behind an identity layer
            segment = [Scale(torch.ones(shape, dtype=torch.float64), torch.zeros(shape, dtype=torch.float64),
                             "identity")]
        convs_later = any(isinstance(op, Affine) and isinstance(op.layer, nn.Conv2d)
                          for later in segments[number + 1 :] for op in later)
        layers += _fold_segment(segment, shape, nonneg_input=number > 0, dense_ok=not convs_later)
        shape = _out_shape(segment, shape)
    if len(shape) != 1:
        raise ConversionError(f"the model's output has per-sample shape {list(shape)}; a classifier's logits "
                              "are a vector (add a Flatten and a Linear layer)")
    kinds = [type(layer) for layer in layers]
    if nn.Linear in kinds and nn.Conv2d in kinds[kinds.index(nn.Linear):]:
        raise ConversionError("a conv layer comes after a fully connected one; mmru's certificates need "
                              "all conv layers first")
    return _build(layers, input_shape, dtype)


def _drop_flattens(ops: list[Op], input_shape: tuple[int, ...]) -> list[Op]:
    """Remove Flatten ops: ReLUNet flattens before every Linear, and elementwise ops (ReLU,
    x * s + t) commute with flattening, so a Scale after a Flatten is reshaped to the
    unflattened shape."""
    out: list[Op] = []
    h = torch.zeros(1, *input_shape, dtype=torch.float64)
    for op in ops:
        if isinstance(op, Flatten):
            continue
        if isinstance(op, Scale) and op.scale.shape != h.shape[1:]:
            op = Scale(op.scale.reshape(h.shape[1:]), op.shift.reshape(h.shape[1:]), op.name)
        if isinstance(op, Affine) and isinstance(op.layer, nn.Conv2d) and h.dim() != 4:
            raise ConversionError(f"layer '{op.name}' is a conv after a flatten or a fully connected layer")
        out.append(op)
        h = apply(op, h)
    return out


def _out_shape(ops: list[Op], shape: tuple[int, ...]) -> tuple[int, ...]:
    h = torch.zeros(1, *shape, dtype=torch.float64)
    for op in ops:
        h = apply(op, h)
    return tuple(h.shape[1:])


def _fold_segment(ops: list[Op], shape: tuple[int, ...], nonneg_input: bool,
                  dense_ok: bool) -> list[nn.Conv2d | nn.Linear]:
    """The layers computing the linear chain ``ops`` (all but the last are ReLU-transparent).

    ``dense_ok``: only Linear layers follow, so the chain may become one dense Linear even
    where it could not become a conv (e.g. a BatchNorm1d on flattened conv features)."""
    ops = list(ops)
    changed = True
    while changed:
        changed = False
        for i in range(len(ops) - 1):
            merged = _merge(ops[i], ops[i + 1])
            if merged is not None:
                ops[i : i + 2] = [merged]
                changed = True
                break
    per_pixel = any(isinstance(op, Scale) and _per_channel(op)[0] is None for op in ops)
    if any(isinstance(op, Affine) and isinstance(op.layer, nn.Linear) for op in ops) or len(shape) == 1 or (
            per_pixel and dense_ok):
        return [_dense(ops, shape)]
    convs = [_conv(op, _out_shape(ops[:i], shape)) for i, op in enumerate(ops)]
    layers: list[nn.Conv2d | nn.Linear] = []
    paired = False
    for i, conv in enumerate(convs):
        if paired:
            conv = _rebuild(conv, torch.cat([conv.weight, -conv.weight], 1), conv.bias)
        if i == len(convs) - 1:
            layers.append(conv)
        elif i == 0 and nonneg_input and bool((conv.weight >= 0).all() and (conv.bias >= 0).all()):
            layers.append(conv)  # a ReLU's output through non-negative weights: the next ReLU changes nothing
            paired = False
        else:
            layers.append(_rebuild(conv, torch.cat([conv.weight, -conv.weight]), torch.cat([conv.bias, -conv.bias])))
            paired = True
    return layers


def _merge(a: Op, b: Op) -> Op | None:
    """a then b as one op, when that is exact; else None."""
    if isinstance(a, Scale) and isinstance(b, Scale):
        return Scale(a.scale * b.scale, a.shift * b.scale + b.shift, a.name)
    if isinstance(a, Affine) and isinstance(b, Scale):
        s, t = _per_channel(b) if isinstance(a.layer, nn.Conv2d) else (b.scale, b.shift)
        if s is None:
            return None
        w, bias = a.layer.weight, _bias(a.layer)
        return Affine(_rebuild(a.layer, w * s.reshape(-1, *[1] * (w.dim() - 1)), bias * s + t), a.name)
    if isinstance(a, Scale) and isinstance(b, Affine):
        w, bias = b.layer.weight, _bias(b.layer)
        if isinstance(b.layer, nn.Linear):
            s, t = a.scale.flatten(), a.shift.flatten()
            return Affine(_rebuild(b.layer, w * s, bias + w @ t), b.name)
        s, t = _per_channel(a)
        if s is None or (bool(t.any()) and any(b.layer.padding)):
            return None
        s4, t4 = s.reshape(1, -1, 1, 1), t.reshape(1, -1, 1, 1)
        return Affine(_rebuild(b.layer, w * s4, bias + (w * t4).sum((1, 2, 3))), b.name)
    return None


def _per_channel(op: Scale) -> tuple[torch.Tensor | None, torch.Tensor | None]:
    """(s, t) per channel when a Scale on (C, H, W) is constant over each channel."""
    s, t = op.scale, op.shift
    if s.dim() != 3:
        return s, t
    s_c, t_c = s[:, :1, :1], t[:, :1, :1]
    if bool((s == s_c).all() and (t == t_c).all()):
        return s_c.flatten(), t_c.flatten()
    return None, None


def _dense(ops: list[Op], shape: tuple[int, ...]) -> nn.Linear:
    """The affine chain as one Linear: bias = chain(0), column i = the chain's linear part at e_i
    (computed without the biases, so a lone Linear comes back unchanged)."""
    if len(ops) == 1 and isinstance(ops[0], Affine):
        return _rebuild(ops[0].layer, ops[0].layer.weight, _bias(ops[0].layer))
    n = int(torch.tensor(shape).prod())
    with torch.no_grad():
        offset = torch.zeros(1, *shape, dtype=torch.float64)
        columns = torch.eye(n, dtype=torch.float64).reshape(n, *shape)
        for op in ops:
            offset = apply(op, offset)
            columns = apply(_linear_part(op), columns)
    return _rebuild(nn.Linear(n, 1), columns.flatten(1).t(), offset.flatten())


def _linear_part(op: Op) -> Op:
    """The op without its bias or shift."""
    if isinstance(op, Affine):
        return Affine(_rebuild(op.layer, op.layer.weight, torch.zeros_like(_bias(op.layer))), op.name)
    if isinstance(op, Scale):
        return Scale(op.scale, torch.zeros_like(op.shift), op.name)
    return op


def _conv(op: Op, shape: tuple[int, ...]) -> nn.Conv2d:
    """A conv op, or a per-channel Scale as a 1x1 conv."""
    if isinstance(op, Affine):
        return _rebuild(op.layer, op.layer.weight, _bias(op.layer))
    s, t = _per_channel(op)
    if s is None:
        raise ConversionError(f"'{op.name}' scales each pixel differently between conv layers; mmru can fold "
                              "only per-channel scales there")
    conv = nn.Conv2d(shape[0], shape[0], 1).double()
    return _rebuild(conv, torch.diag(s).reshape(shape[0], shape[0], 1, 1), t)


def _bias(layer: nn.Conv2d | nn.Linear) -> torch.Tensor:
    return layer.bias.detach() if layer.bias is not None else layer.weight.new_zeros(layer.weight.shape[0])


def _rebuild(layer, weight: torch.Tensor, bias: torch.Tensor):
    """A float64 layer of ``layer``'s geometry with the given weight and bias."""
    if isinstance(layer, nn.Linear):
        new = nn.Linear(weight.shape[1], weight.shape[0])
    else:
        new = nn.Conv2d(weight.shape[1], weight.shape[0], layer.kernel_size, stride=layer.stride,
                        padding=layer.padding)
    new = new.double()
    with torch.no_grad():
        new.weight.copy_(weight)
        new.bias.copy_(bias)
    return new


def _build(layers: list[nn.Conv2d | nn.Linear], input_shape: tuple[int, ...], dtype: torch.dtype) -> ReLUNet:
    """ReLUNet shape-checks in float32; float64 values are copied in afterwards, unrounded."""
    net = ReLUNet([copy.deepcopy(layer).float() for layer in layers], input_shape).to(dtype)
    with torch.no_grad():
        for mine, exact in zip(net.layers, layers):
            mine.weight.copy_(exact.weight)
            mine.bias.copy_(exact.bias)
    return net.eval()
