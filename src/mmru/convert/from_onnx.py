"""Import an ONNX classifier (e.g. a VNN-COMP benchmark network) as an exactly equal ReLUNet.

Read with the ``onnx`` package; the graph must be a chain from its one input to its one
output of Gemm, MatMul (+ Add), Conv, Relu, Flatten, Reshape, BatchNormalization,
AveragePool / GlobalAveragePool, Add / Sub / Mul / Div with constants (an input
normalisation), Identity and Dropout. Constant sub-graphs (Constant, Identity, Concat,
Unsqueeze, Cast) are evaluated. Everything is folded by :mod:`mmru.convert.folding`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mmru.convert.folding import to_relunet
from mmru.convert.ops import Affine, ConversionError, Flatten, Op, Relu, apply, avg_pool_conv, scale_from
from mmru.models import ReLUNet

#: constant sub-graphs these evaluate (shape arithmetic of exporters)
_CONSTANT_OPS = ("Constant", "Identity", "Concat", "Unsqueeze", "Squeeze", "Cast")


def from_onnx(path: str | Path, dtype: torch.dtype = torch.float32,
              input_shape: Sequence[int] | None = None) -> ReLUNet:
    """The ReLUNet equal to the ONNX model at ``path``; per-sample input shape from its input.

    ``input_shape``: the shape of the images to certify, when the file takes them flattened
    (e.g. [N, 784] for MNIST) and its first affine layer is a Linear, which flattens anyway.
    Raises :class:`ConversionError` naming the first operator that cannot be converted exactly.
    """
    import onnx
    from onnx import numpy_helper

    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"ONNX file {path} does not exist")
    try:
        model = onnx.load(str(path))
    except Exception as err:  # protobuf raises DecodeError and others on a damaged file
        raise ConversionError(f"{path} is not a readable ONNX model ({type(err).__name__})") from None
    graph = model.graph
    consts = {t.name: numpy_helper.to_array(t) for t in graph.initializer}
    inputs = [i for i in graph.input if i.name not in consts]
    if len(inputs) != 1 or len(graph.output) != 1:
        raise ConversionError(f"{path} has {len(inputs)} inputs and {len(graph.output)} outputs; mmru certifies "
                              "models with one input image and one output vector")
    shape = _input_shape(inputs[0])
    current, ops = inputs[0].name, []
    h = torch.zeros(1, *shape, dtype=torch.float64)  # tracks the activation's shape
    for node in graph.node:
        attrs = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
        names = [n for n in node.input if n]
        if all(n in consts for n in names):
            consts[node.output[0]] = _constant(node, attrs, [consts[n] for n in names], numpy_helper)
            continue
        if [n for n in names if n not in consts] != [current]:
            raise ConversionError(f"ONNX node '{node.name}' ({node.op_type}) combines two activations (a residual "
                                  "or branching connection); mmru certifies plain chains of layers")
        new = _translate(node, attrs, [consts.get(n) for n in names], tuple(h.shape[1:]))
        for op in new:
            h = apply(op, h)
        ops += new
        current = node.output[0]
    if graph.output[0].name != current:
        raise ConversionError(f"{path}: the graph's output is not the end of its chain of operators")
    if input_shape is not None and tuple(input_shape) != shape:
        first = next((op.layer for op in ops if isinstance(op, Affine)), None)
        if not isinstance(first, nn.Linear) or int(np.prod(shape)) != int(np.prod(input_shape)):
            raise ConversionError(f"{path} takes inputs of shape {list(shape)}, not {list(input_shape)}")
        # its first affine layer flattens: the same numbers in the same (C, H, W) order
        shape = tuple(int(s) for s in input_shape)
    return to_relunet(ops, shape, dtype)


def _input_shape(value) -> tuple[int, ...]:
    dims = value.type.tensor_type.shape.dim
    shape = tuple(d.dim_value for d in dims[1:])
    if not shape or any(s <= 0 for s in shape):
        raise ConversionError(f"ONNX input '{value.name}' has no fixed per-sample shape "
                              f"({[d.dim_value or d.dim_param for d in dims]})")
    return shape


def _constant(node, attrs: dict, values: list[np.ndarray], numpy_helper) -> np.ndarray:
    op = node.op_type
    if op == "Constant":
        if "value" in attrs:
            return numpy_helper.to_array(attrs["value"])
        for key in ("value_float", "value_floats", "value_int", "value_ints"):
            if key in attrs:
                return np.array(attrs[key])
        raise ConversionError(f"ONNX Constant '{node.name}' is not a numeric constant")
    if op in ("Identity", "Cast"):  # Cast: the folding computes in float64 anyway
        return values[0]
    if op == "Concat":
        return np.concatenate(values, axis=attrs["axis"])
    if op in ("Unsqueeze", "Squeeze"):
        axes = attrs.get("axes", values[1] if len(values) > 1 else None)
        if op == "Unsqueeze":
            return np.expand_dims(values[0], tuple(int(a) for a in axes))
        return np.squeeze(values[0], None if axes is None else tuple(int(a) for a in axes))
    raise ConversionError(f"ONNX operator {op} (node '{node.name}') on constants is not supported; "
                          f"mmru evaluates only {', '.join(_CONSTANT_OPS)} there")


def _t(a: np.ndarray | None) -> torch.Tensor:
    return torch.as_tensor(np.array(a, dtype=np.float64))


def _translate(node, attrs: dict, args: list, shape: tuple[int, ...]) -> list[Op]:
    """The ops for one node; ``args``: its inputs, the constants' values and None for the activation."""
    op, name = node.op_type, node.name or node.output[0]
    if op == "Relu":
        return [Relu(name)]
    if op in ("Identity", "Dropout"):
        return []
    if op == "Cast" and attrs.get("to") in (1, 10, 11, 16):  # to a float type: the folding is in float64 anyway
        return []
    if op == "Flatten":
        if attrs.get("axis", 1) != 1:
            raise ConversionError(f"ONNX Flatten '{name}' has axis {attrs['axis']}; mmru needs axis=1")
        return [Flatten(name)] if len(shape) > 1 else []
    if op == "Reshape":
        target = [int(v) for v in args[1]]
        if attrs.get("allowzero", 0) and 0 in target:
            raise ConversionError(f"ONNX Reshape '{name}' makes an empty tensor")
        n = int(np.prod(shape))
        out = [(1, *shape)[i] if v == 0 else v for i, v in enumerate(target)]
        if out in ([1, n], [-1, n], [1, -1]) or out == [-1, *shape] or out == [1, *shape]:
            return [Flatten(name)] if out[-1] in (n, -1) and len(shape) > 1 else []
        raise ConversionError(f"ONNX Reshape '{name}' reshapes {[1, *shape]} to {target}; mmru accepts only "
                              "flattening to a vector")
    if op == "Gemm":
        return [_gemm(attrs, args, shape, name)]
    if op == "MatMul":
        if args[0] is not None or args[1] is None or np.ndim(args[1]) != 2 or len(shape) != 1:
            raise ConversionError(f"ONNX MatMul '{name}' is not vector @ constant matrix")
        return [Affine(_linear(_t(args[1]).t(), None), name)]
    if op == "Conv":
        return [Affine(_conv(attrs, args, name), name)]
    if op in ("Add", "Sub", "Mul", "Div"):
        x_first = args[0] is None
        c = _t(args[1] if x_first else args[0])
        if op == "Add":
            return [scale_from(shape, name, shift=c)]
        if op == "Sub":
            return [scale_from(shape, name, shift=-c) if x_first else scale_from(shape, name, scale=-1.0, shift=c)]
        if op == "Mul":
            return [scale_from(shape, name, scale=c)]
        if not x_first:
            raise ConversionError(f"ONNX Div '{name}' divides by the activation, which is not affine")
        return [scale_from(shape, name, scale=1.0 / c)]
    if op == "BatchNormalization":
        if attrs.get("training_mode", 0):
            raise ConversionError(f"ONNX BatchNormalization '{name}' is in training mode")
        gamma, beta, mean, var = (_t(a) for a in args[1:5])
        s = gamma / torch.sqrt(var + attrs.get("epsilon", 1e-5))
        view = (-1,) if len(shape) == 1 else (-1, 1, 1)
        return [scale_from(shape, name, scale=s.reshape(view), shift=(beta - mean * s).reshape(view))]
    if op in ("AveragePool", "GlobalAveragePool"):
        return [Affine(_avg_pool(op, attrs, shape, name), name)]
    why = ("max pooling is not an affine layer" if op == "MaxPool" else
           "it is not a ReLU, and mmru's certificates need a piecewise-affine ReLU network"
           if op in ("Sigmoid", "Tanh", "Softmax", "LogSoftmax", "Gelu", "Elu", "LeakyRelu") else
           "mmru certifies chains of Conv / Gemm / Relu (BatchNormalization, AveragePool, Flatten and "
           "normalisation folded in)")
    raise ConversionError(f"ONNX operator {op} (node '{name}') is not supported: {why}")


def _linear(weight: torch.Tensor, bias: torch.Tensor | None) -> nn.Linear:
    linear = nn.Linear(weight.shape[1], weight.shape[0], bias=bias is not None).double()
    with torch.no_grad():
        linear.weight.copy_(weight)
        if bias is not None:
            linear.bias.copy_(bias)
    return linear


def _gemm(attrs: dict, args: list, shape: tuple[int, ...], name: str) -> Affine:
    """Y = alpha * X @ B' + beta * C, B' = B^T when transB: a Linear with weight alpha * B'^T."""
    if args[0] is not None or args[1] is None or attrs.get("transA", 0) or len(shape) != 1:
        raise ConversionError(f"ONNX Gemm '{name}' is not activation @ constant matrix")
    b = _t(args[1])
    weight = attrs.get("alpha", 1.0) * (b if attrs.get("transB", 0) else b.t())
    bias = None
    if len(args) > 2 and args[2] is not None:
        bias = torch.broadcast_to(attrs.get("beta", 1.0) * _t(args[2]), (1, weight.shape[0]))[0].clone()
    return Affine(_linear(weight, bias), name)


def _conv(attrs: dict, args: list, name: str) -> nn.Conv2d:
    if args[1] is None or np.ndim(args[1]) != 4:
        raise ConversionError(f"ONNX Conv '{name}' is not a 2-d convolution with constant weights")
    w = _t(args[1])
    padding = _padding(attrs, name)
    if attrs.get("group", 1) != 1 or any(d != 1 for d in attrs.get("dilations", [1, 1])):
        raise ConversionError(f"ONNX Conv '{name}' has groups or dilation; mmru's certificates need neither")
    conv = nn.Conv2d(w.shape[1], w.shape[0], tuple(w.shape[2:]), stride=tuple(attrs.get("strides", [1, 1])),
                     padding=padding, bias=len(args) > 2 and args[2] is not None).double()
    with torch.no_grad():
        conv.weight.copy_(w)
        if conv.bias is not None:
            conv.bias.copy_(_t(args[2]))
    return conv


def _padding(attrs: dict, name: str) -> tuple[int, int]:
    auto = attrs.get("auto_pad", b"NOTSET")
    auto = auto.decode() if isinstance(auto, bytes) else auto
    if auto not in ("NOTSET", "VALID"):
        raise ConversionError(f"ONNX node '{name}' pads with auto_pad={auto}; export with explicit pads")
    top, left, bottom, right = attrs.get("pads", [0, 0, 0, 0]) if auto == "NOTSET" else [0, 0, 0, 0]
    if (top, left) != (bottom, right):
        raise ConversionError(f"ONNX node '{name}' pads unevenly ({[top, left, bottom, right]}); mmru needs "
                              "the same padding on both sides")
    return int(top), int(left)


def _avg_pool(op: str, attrs: dict, shape: tuple[int, ...], name: str) -> nn.Conv2d:
    c, h, w = shape
    if op == "GlobalAveragePool":
        return avg_pool_conv(c, (h, w), (h, w), (0, 0), h * w)
    kernel = tuple(attrs["kernel_shape"])
    padding = _padding(attrs, name)
    if attrs.get("ceil_mode", 0):
        raise ConversionError(f"ONNX AveragePool '{name}' uses ceil_mode (windows of varying size)")
    if any(padding) and not attrs.get("count_include_pad", 0):
        raise ConversionError(f"ONNX AveragePool '{name}' pads without counting the padding, so border windows "
                              "have other weights")
    return avg_pool_conv(c, kernel, tuple(attrs.get("strides", [1, 1])), padding, kernel[0] * kernel[1])
