"""A model file written elsewhere -> ReLUNet: an ONNX file, the authors' published ``.mat`` files, or a
PyTorch state dict plus the builder of its architecture (``package.module:function``), loaded without
running pickled code."""

from __future__ import annotations

import importlib
import pickle
import zipfile
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
from torch import nn

from mmru.convert.from_mat import from_mat
from mmru.convert.from_onnx import from_onnx
from mmru.convert.from_torch import from_torch
from mmru.convert.ops import ConversionError, first_line
from mmru.models import ReLUNet


def load_model(path: str | Path, arch: str | Callable[[], nn.Module] | None = None,
               input_shape: Sequence[int] | None = None) -> ReLUNet:
    """``path`` ending in .onnx: :func:`from_onnx` (``input_shape``: that of the images to
    certify, when the file takes them flattened). Ending in .mat: :func:`from_mat` (Croce & Hein's
    published TensorFlow LeNetSmall files, on images of ``input_shape``). Otherwise a state dict: ``arch()`` builds the
    module (``arch`` a callable or ``"package.module:builder"``), the weights are read with
    ``torch.load(weights_only=True)`` (tensors and plain data only, so a tampered file cannot
    run code) and the module is converted with :func:`from_torch` on ``input_shape``."""
    path = Path(path)
    if not path.is_file():
        raise ConversionError(f"model file {path} does not exist")
    if path.suffix.lower() == ".onnx":
        return from_onnx(path, input_shape=input_shape)
    if path.suffix.lower() == ".mat":
        return from_mat(path, input_shape=input_shape)
    if arch is None or input_shape is None:
        raise ConversionError(f"{path} is a PyTorch state dict: give the builder of its architecture "
                              "(arch=package.module:function) and the input shape")
    module = (_builder(arch) if isinstance(arch, str) else arch)()
    if not isinstance(module, nn.Module):
        raise ConversionError(f"the builder {arch} returned a {type(module).__name__}, not a torch.nn.Module")
    try:
        state = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError) as err:
        why = first_line(err)
        raise ConversionError(f"{path} cannot be read safely as a state dict ({why})") from None
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]  # a training checkpoint wrapping the weights
    if not isinstance(state, dict):
        raise ConversionError(f"{path} holds a {type(state).__name__}, not a state dict")
    try:
        module.load_state_dict(state)
    except RuntimeError as err:
        why = first_line(err)
        raise ConversionError(f"{path} does not fit the architecture {arch} ({why})") from None
    return from_torch(module, input_shape)


def _builder(spec: str) -> Callable[[], nn.Module]:
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConversionError(f"arch={spec!r} must have the form package.module:function")
    try:
        return getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as err:
        raise ConversionError(f"arch={spec!r} cannot be imported ({err})") from None
