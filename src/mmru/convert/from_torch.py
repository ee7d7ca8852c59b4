"""Import a PyTorch classifier written anywhere as an exactly equal :class:`ReLUNet`.

The module is traced with ``torch.fx`` in eval mode and float64; its graph must be a chain
(no residual or branching connections) of Conv2d, Linear, ReLU, Flatten / view / reshape,
BatchNorm1d / 2d (eval statistics), AvgPool2d (and AdaptiveAvgPool2d with an evenly dividing
output size), Dropout / Identity, and arithmetic with constants such as an input
normalisation ``(x - mean) / std`` (also ``torchvision.transforms.Normalize``). Everything is
folded into conv / Linear layers by :mod:`mmru.convert.folding`.
"""

from __future__ import annotations

import copy
import operator
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import fx, nn
from torch.fx.passes.shape_prop import ShapeProp

from mmru.convert.folding import to_relunet
from mmru.convert.ops import (
    Affine,
    ConversionError,
    Flatten,
    Op,
    Relu,
    avg_pool_conv,
    check_conv,
    first_line,
    scale_from,
)
from mmru.models import ReLUNet

_SKIPPED = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.AlphaDropout, nn.Identity)
_NOT_PIECEWISE_LINEAR = (nn.Sigmoid, nn.Tanh, nn.GELU, nn.SiLU, nn.ELU, nn.Softplus, nn.Softmax, nn.LogSoftmax)
_ARITHMETIC = {operator.add: "add", torch.add: "add", operator.sub: "sub", torch.sub: "sub",
               operator.mul: "mul", torch.mul: "mul", operator.truediv: "div", torch.div: "div"}


def _normalize_type() -> tuple[type, ...]:
    try:
        from torchvision.transforms import Normalize
    except ImportError:  # torchvision is a dependency, but the import stays optional here
        return ()
    return (Normalize,)


class _Tracer(fx.Tracer):
    """Stops at modules mmru translates whole, so their internals never need tracing."""

    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return isinstance(m, _normalize_type()) or super().is_leaf_module(m, qualname)


def from_torch(module: nn.Module, input_shape: Sequence[int], dtype: torch.dtype = torch.float32) -> ReLUNet:
    """The ReLUNet equal to ``module`` (in eval mode) on inputs of per-sample ``input_shape``.

    ``dtype``: that of the returned net (the folding itself is done in float64). An input
    normalisation is folded into the net, so it takes raw inputs in [0, 1]. Raises
    :class:`ConversionError` naming the first layer that cannot be converted exactly.
    """
    if isinstance(module, ReLUNet):
        return copy.deepcopy(module).to(dtype).eval()
    if not isinstance(module, nn.Module):
        raise ConversionError(f"from_torch converts a torch.nn.Module, got {type(module).__name__}")
    shape = tuple(int(s) for s in input_shape)
    model = copy.deepcopy(module).double().eval()
    try:
        graph = _Tracer().trace(model)
    except Exception as err:  # fx raises many kinds on data-dependent control flow
        raise ConversionError(f"the model cannot be traced with torch.fx ({type(err).__name__}: "
                              f"{first_line(err)}); mmru needs a plain chain of layers") from None
    gm = fx.GraphModule(model, graph)
    try:
        ShapeProp(gm).propagate(torch.zeros(1, *shape, dtype=torch.float64))
    except Exception as err:
        raise ConversionError(f"the model does not run on inputs of shape {list(shape)} "
                              f"({first_line(err)})") from None
    return to_relunet(_ops(gm), shape, dtype)


def _ops(gm: fx.GraphModule) -> list[Op]:
    """The chain of ops along the graph, from its single input to its output."""
    constants: dict[fx.Node, object] = {}
    current: fx.Node | None = None
    ops: list[Op] = []
    for node in gm.graph.nodes:
        if node.op == "placeholder":
            if current is not None:
                raise ConversionError(f"the model takes several inputs ('{node.name}'); mmru certifies one image")
            current = node
            continue
        if node.op == "output":
            if node.args[0] is not current:
                raise ConversionError("the model's output is not the end of its chain of layers")
            break
        if node.op == "get_attr":
            constants[node] = _attr(gm, node.target)
            continue
        inputs = node.all_input_nodes
        if _is_shape_query(node) or (all(n in constants for n in inputs)
                                     and any(constants[n] is _SHAPE for n in inputs)):
            constants[node] = _SHAPE  # x.size(0) in x.view(x.size(0), -1): only reshapes may use it
            continue
        if all(n in constants for n in inputs):  # e.g. std.view(1, 3, 1, 1)
            constants[node] = _run(gm, node, constants)
            continue
        active = [n for n in inputs if n not in constants]
        if active != [current] or [a for a in node.args if isinstance(a, fx.Node)].count(current) > 1:
            raise ConversionError(f"'{node.name}' combines two activations (a residual or branching "
                                  "connection); mmru certifies plain chains of layers")
        ops += _translate(gm, node, current, constants)
        current = node
    return ops


#: the value of a shape query such as x.size(0): reshapes read shapes from the traced metadata instead
_SHAPE = object()


def _is_shape_query(node: fx.Node) -> bool:
    return (node.op == "call_method" and node.target in ("size", "dim")) or (
        node.op == "call_function" and node.target is getattr and node.args[1] in ("shape", "ndim"))


def _shape(node: fx.Node) -> tuple[int, ...]:
    return tuple(node.meta["tensor_meta"].shape[1:])


def _translate(gm: fx.GraphModule, node: fx.Node, x: fx.Node, constants: dict) -> list[Op]:
    """The ops for one graph node whose only activation input is ``x``."""
    name, in_shape, out_shape = node.name, _shape(x), _shape(node)
    if node.op == "call_module":
        return _module_ops(gm.get_submodule(node.target), str(node.target), in_shape)
    target = node.target
    if target in (torch.relu, F.relu, "relu", "relu_") or target is torch.relu_:
        return [Relu(name)]
    if target in (F.dropout, "contiguous", "detach", "clone"):
        return []
    if target in (torch.flatten, "flatten", "view", "reshape"):
        if out_shape == in_shape:
            return []
        if out_shape == (int(torch.tensor(in_shape).prod()),):
            return [Flatten(name)]
        raise ConversionError(f"'{name}' reshapes {list(in_shape)} to {list(out_shape)}; mmru accepts only "
                              "flattening to a vector")
    kind = _ARITHMETIC.get(target) or (target if target in ("add", "sub", "mul", "div") else None)
    shapes = any(constants.get(a) is _SHAPE for a in node.all_input_nodes)
    if kind is not None and len(node.args) == 2 and not node.kwargs and not shapes:
        a, b = (constants.get(v, v) if isinstance(v, fx.Node) else v for v in node.args)
        return [_arithmetic(kind, node.args[0] is x, b if node.args[0] is x else a, in_shape, name)]
    what = target if isinstance(target, str) else getattr(target, "__name__", str(target))
    raise ConversionError(f"'{name}' calls {what}, which mmru cannot fold into affine layers and ReLUs")


def _arithmetic(kind: str, x_first: bool, c, shape: tuple[int, ...], name: str) -> Op:
    """x + c, x - c, c - x, x * c, c * x, x / c as x * s + t."""
    c = torch.as_tensor(c, dtype=torch.float64)
    if kind == "add":
        return scale_from(shape, name, shift=c)
    if kind == "sub":
        return scale_from(shape, name, shift=-c) if x_first else scale_from(shape, name, scale=-1.0, shift=c)
    if kind == "mul":
        return scale_from(shape, name, scale=c)
    if not x_first:
        raise ConversionError(f"'{name}' divides by the activation, which is not affine")
    return scale_from(shape, name, scale=1.0 / c)


def _module_ops(m: nn.Module, name: str, shape: tuple[int, ...]) -> list[Op]:
    if isinstance(m, nn.Conv2d):
        check_conv(m, name)
        return [Affine(m, name)]
    if isinstance(m, nn.Linear):
        return [Affine(m, name)]
    if isinstance(m, nn.ReLU):
        return [Relu(name)]
    if isinstance(m, _SKIPPED):
        return []
    if isinstance(m, nn.Flatten):
        if m.start_dim != 1 or m.end_dim != -1:
            raise ConversionError(f"layer '{name}' flattens dims {m.start_dim}..{m.end_dim}; mmru needs start_dim=1")
        return [Flatten(name)]
    if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
        return [_batch_norm(m, name, shape)]
    if isinstance(m, (nn.AvgPool2d, nn.AdaptiveAvgPool2d)):
        return [_avg_pool(m, name, shape)]
    if isinstance(m, _normalize_type()):
        mean = torch.as_tensor(m.mean, dtype=torch.float64).reshape(-1, 1, 1)
        std = torch.as_tensor(m.std, dtype=torch.float64).reshape(-1, 1, 1)
        return [scale_from(shape, name, scale=1.0 / std, shift=-mean / std)]
    kind = type(m).__name__
    if isinstance(m, (nn.MaxPool1d, nn.MaxPool2d, nn.AdaptiveMaxPool2d)):
        why = "max pooling is not an affine layer; use a strided conv or AvgPool2d instead"
    elif isinstance(m, _NOT_PIECEWISE_LINEAR):
        why = "it is not a ReLU, and mmru's region, bound and MIP certificates need a piecewise-affine ReLU network"
    else:
        why = ("mmru certifies chains of Conv2d / Linear / ReLU (BatchNorm, AvgPool2d, Flatten, Dropout and "
               "normalisation folded in)")
    raise ConversionError(f"layer '{name}' ({kind}) is not supported: {why}")


def _batch_norm(m: nn.BatchNorm1d | nn.BatchNorm2d, name: str, shape: tuple[int, ...]) -> Op:
    """Eval-mode batch norm: (x - mean) / sqrt(var + eps) * weight + bias, per channel."""
    if m.running_mean is None or m.running_var is None:
        raise ConversionError(f"layer '{name}' has no running statistics (track_running_stats=False), so its "
                              "output depends on the batch")
    if len(shape) not in (1, 3):
        raise ConversionError(f"layer '{name}' normalises inputs of shape {list(shape)}; mmru handles vectors "
                              "and images")
    view = (-1,) if len(shape) == 1 else (-1, 1, 1)
    with torch.no_grad():
        s = (m.weight if m.affine else 1.0) / torch.sqrt(m.running_var + m.eps)
        t = (m.bias if m.affine else 0.0) - m.running_mean * s
    return scale_from(shape, name, scale=s.reshape(view), shift=torch.as_tensor(t).reshape(view))


def _avg_pool(m: nn.AvgPool2d | nn.AdaptiveAvgPool2d, name: str, shape: tuple[int, ...]) -> Op:
    c, h, w = shape
    if isinstance(m, nn.AdaptiveAvgPool2d):
        out = m.output_size if isinstance(m.output_size, tuple) else (m.output_size, m.output_size)
        out = (out[0] or h, out[1] or w)
        if h % out[0] or w % out[1]:
            raise ConversionError(f"layer '{name}' pools {h}x{w} to {out[0]}x{out[1]}, which are not even windows")
        kernel = (h // out[0], w // out[1])
        return Affine(avg_pool_conv(c, kernel, kernel, (0, 0), kernel[0] * kernel[1]), name)
    pair = lambda v: tuple(v) if isinstance(v, (tuple, list)) else (v, v)  # noqa: E731
    kernel, stride, padding = pair(m.kernel_size), pair(m.stride or m.kernel_size), pair(m.padding)
    if m.ceil_mode:
        raise ConversionError(f"layer '{name}' uses ceil_mode=True (windows of varying size); use ceil_mode=False")
    if any(padding) and not m.count_include_pad and m.divisor_override is None:
        raise ConversionError(f"layer '{name}' pads without counting the padding (count_include_pad=False), "
                              "so border windows have other weights")
    divisor = m.divisor_override or kernel[0] * kernel[1]
    return Affine(avg_pool_conv(c, kernel, stride, padding, divisor), name)


def _attr(gm: fx.GraphModule, target: str):
    obj = gm
    for part in target.split("."):
        obj = getattr(obj, part)
    return obj.detach() if torch.is_tensor(obj) else obj


def _run(gm: fx.GraphModule, node: fx.Node, constants: dict):
    """Evaluate a node whose inputs are all constants."""
    args = fx.node.map_arg(node.args, lambda n: constants[n])
    kwargs = fx.node.map_arg(node.kwargs, lambda n: constants[n])
    with torch.no_grad():
        if node.op == "call_function":
            return node.target(*args, **kwargs)
        if node.op == "call_method":
            return getattr(args[0], node.target)(*args[1:], **kwargs)
        return gm.get_submodule(node.target)(*args, **kwargs)
