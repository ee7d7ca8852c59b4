"""Import classifiers trained elsewhere (PyTorch modules, ONNX files, the authors' published .mat
files) as exactly equal ReLUNets.

The result computes the same function (to float64 rounding) and takes raw inputs: an input
normalisation inside the model is folded into the net, so certified radii are in input space.
"""

from mmru.convert.from_file import load_model
from mmru.convert.from_mat import from_mat
from mmru.convert.from_onnx import from_onnx
from mmru.convert.from_torch import from_torch
from mmru.convert.ops import ConversionError

__all__ = ["ConversionError", "from_mat", "from_onnx", "from_torch", "load_model"]
