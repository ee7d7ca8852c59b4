"""The authors' published networks (MATLAB .mat files from their TensorFlow 1 code) -> ReLUNet.

Croce & Hein released their Table-1 models as ``.mat`` files of the TensorFlow "LeNetSmall"
(their ``cnn_lenet_small``, the paper's CNN, Sec. 5.1): keys ``weights_conv1`` [4, 4, C, 16],
``biases_conv1`` [1, 16], ``weights_conv2`` [4, 4, 16, 32], ``biases_conv2`` [1, 32],
``weights_fc1`` [H'·W'·32, 100], ``biases_fc1``, ``weights_fc2`` [100, K], ``biases_fc2``.
TensorFlow's conventions differ from PyTorch's in three places, each translated exactly here:

* conv kernels are HWIO (PyTorch: OIHW);
* both convs have stride 2 and padding 'SAME': TensorFlow pads max((ceil(H/s) - 1)·s + k - H, 0)
  pixels in total, the odd one at the bottom / right. Where the total is even the padding is
  symmetric and a PyTorch conv with that padding is the same map; an odd total cannot be a
  ``Conv2d`` padding and is refused;
* tensors are NHWC, so the rows of ``weights_fc1`` run over (h, w, c) of the last conv's output,
  while a ReLUNet flattens in (c, h, w) order: the rows are permuted.

Inputs are pixels / 255 in [0, 1] without normalisation, as mmru's are; the output is the logits.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch
from torch import nn

from mmru.convert.ops import ConversionError, first_line
from mmru.models import ReLUNet

#: the keys of a published LeNetSmall file, in layer order
LENET_SMALL_KEYS = ("weights_conv1", "biases_conv1", "weights_conv2", "biases_conv2",
                    "weights_fc1", "biases_fc1", "weights_fc2", "biases_fc2")

STRIDE = 2


def tf_same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """(before, after) padding TensorFlow's 'SAME' adds along one axis of length ``size``."""
    total = max((math.ceil(size / stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


def read_mat(path: str | Path) -> dict[str, np.ndarray]:
    """The arrays of a published LeNetSmall ``.mat`` file; anything else refused in one sentence."""
    import scipy.io  # only model imports need it

    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"model file {path} does not exist")
    try:
        content = scipy.io.loadmat(path)
    except Exception as err:  # scipy raises MatReadError, ValueError, IndexError, ... on a damaged file
        raise ConversionError(f"{path} cannot be read as a MATLAB .mat file ({first_line(err)})") from None
    found = sorted(k for k in content if not k.startswith("__"))
    if sorted(LENET_SMALL_KEYS) != found:
        raise ConversionError(f"{path} is not a published LeNetSmall file (keys {', '.join(LENET_SMALL_KEYS)}); "
                              f"it holds {', '.join(found) or 'no arrays'}")
    arrays = {k: np.asarray(content[k], dtype=np.float64) for k in LENET_SMALL_KEYS}
    for k, a in arrays.items():
        if not np.isfinite(a).all():
            raise ConversionError(f"{path}: {k} holds infinite or NaN values")
    return arrays


def from_mat(path: str | Path, input_shape: Sequence[int] | None = None,
             dtype: torch.dtype = torch.float32) -> ReLUNet:
    """The ReLUNet computing the published network in ``path`` on inputs of ``input_shape`` (C, H, W).

    ``input_shape`` defaults to square images of side 4 H', H' the side of the last conv's
    output implied by ``weights_fc1`` (28 x 28 for MNIST's files, 32 x 32 for GTS / CIFAR-10).
    The result has ``cnn_small``'s layout wherever the padding is the paper's 1 pixel.
    """
    a = read_mat(path)
    w1, w2, w3, w4 = (a[f"weights_{n}"] for n in ("conv1", "conv2", "fc1", "fc2"))
    b1, b2, b3, b4 = (a[f"biases_{n}"].reshape(-1) for n in ("conv1", "conv2", "fc1", "fc2"))
    if w1.ndim != 4 or w2.ndim != 4 or w3.ndim != 2 or w4.ndim != 2:
        raise ConversionError(f"{path}: the conv kernels must be 4-d (HWIO) and the fc weights 2-d; got shapes "
                              f"{[list(w.shape) for w in (w1, w2, w3, w4)]}")
    channels = w2.shape[3]
    side = math.isqrt(w3.shape[0] // channels) if w3.shape[0] % channels == 0 else 0
    if input_shape is None:
        if side * side * channels != w3.shape[0]:
            raise ConversionError(f"{path}: weights_fc1 has {w3.shape[0]} rows, not a square map of {channels} "
                                  "channels; give the input shape")
        input_shape = (w1.shape[2], 4 * side, 4 * side)
    c, h, w = (int(s) for s in input_shape)
    if c != w1.shape[2]:
        raise ConversionError(f"{path}: the network takes {w1.shape[2]} input channels, the images have {c}")
    chained = (w1.shape[3] == w2.shape[2] == len(b1) and channels == len(b2) and w3.shape[1] == len(b3) == w4.shape[0]
               and w4.shape[1] == len(b4))
    if not chained:
        raise ConversionError(f"{path}: the layers' shapes do not chain: "
                              + ", ".join(f"{k} {list(a[k].shape)}" for k in LENET_SMALL_KEYS))
    convs, shape = [], (h, w)
    for name, kernel, bias in (("conv1", w1, b1), ("conv2", w2, b2)):
        pads = [tf_same_padding(n, k, STRIDE) for n, k in zip(shape, kernel.shape[:2])]
        if any(before != after for before, after in pads):
            raise ConversionError(f"{path}: TensorFlow pads {name} unevenly on {h} x {w} inputs ({pads}: the odd "
                                  "pixel at the bottom / right), which a ReLUNet conv cannot represent exactly")
        conv = nn.Conv2d(kernel.shape[2], kernel.shape[3], tuple(kernel.shape[:2]), stride=STRIDE,
                         padding=(pads[0][0], pads[1][0]), dtype=dtype)
        with torch.no_grad():
            conv.weight.copy_(torch.from_numpy(kernel).permute(3, 2, 0, 1))  # HWIO -> OIHW
            conv.bias.copy_(torch.from_numpy(bias))
        convs.append(conv)
        shape = tuple(math.ceil(n / STRIDE) for n in shape)
    hh, ww = shape
    if w3.shape[0] != hh * ww * channels:
        raise ConversionError(f"{path}: weights_fc1 has {w3.shape[0]} rows, but {h} x {w} inputs give a "
                              f"{hh} x {ww} x {channels} map ({hh * ww * channels} values)")
    # rows in TensorFlow's (h, w, c) order -> PyTorch's (c, h, w) order
    fc1_weight = torch.from_numpy(w3).reshape(hh, ww, channels, -1).permute(3, 2, 0, 1).reshape(w3.shape[1], -1)
    fcs = []
    for weight, bias in ((fc1_weight, b3), (torch.from_numpy(w4).t(), b4)):
        fc = nn.Linear(weight.shape[1], weight.shape[0], dtype=dtype)
        with torch.no_grad():
            fc.weight.copy_(weight)
            fc.bias.copy_(torch.from_numpy(bias))
        fcs.append(fc)
    return ReLUNet([*convs, *fcs], (c, h, w)).eval()
