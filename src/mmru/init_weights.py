"""The starting weights of a fine-tune (``train.py init_from=<file>``), read and checked before any work.

``init_from`` names one of: the authors' published ``.mat`` files, an ONNX file, a PyTorch state
dict (with ``arch=package.module:builder``, as for certify.py), or an mmru training checkpoint, of
which only the net's weights are taken (the optimizer, schedules and epoch counter start fresh; the
exact resume of a killed run is ``ckpt_path=``). The file is converted to a ReLUNet by
:mod:`mmru.convert` (or rebuilt from the checkpoint's recipe), whose layers must have the
configured model's shapes one for one; the run records the file and its md5.
"""

from __future__ import annotations

import pickle
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn

from mmru.errors import ConfigError
from mmru.models import ReLUNet
from mmru.provenance import file_md5

#: what makes two conv layers the same map besides their weight shapes
CONV_GEOMETRY = ("stride", "padding", "dilation", "groups")


@dataclass(frozen=True)
class InitWeights:
    """The weights to start from, as a state dict of the configured ReLUNet, and their provenance."""

    path: str  #: the file, resolved
    md5: str  #: of the file's bytes
    state: dict[str, Tensor]

    def record(self) -> dict[str, str]:
        """What the run's recipe stores: ``{"path": ..., "md5": ...}``."""
        return {"path": self.path, "md5": self.md5}


def read_init_weights(path: str | Path, target: ReLUNet, model_name: str, arch: str | None = None) -> InitWeights:
    """The weights of ``path`` for ``target`` (the configured net, named ``model_name`` in errors).

    Raises a one-sentence :class:`~mmru.errors.UserError` when the file is missing or unreadable
    or when its layers do not fit the configured model, naming the mismatched shapes.
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"init_from={path} does not exist.")
    source = _load_net(path, arch, target.input_shape)
    mismatches = layer_mismatches(source, target)
    if mismatches:
        raise ConfigError(f"init_from={path} does not fit model={model_name}: " + "; ".join(mismatches) + ".")
    dtype = next(target.parameters()).dtype
    state = {k: v.detach().to(dtype).clone() for k, v in source.state_dict().items()}
    return InitWeights(str(path.resolve()), file_md5(path), state)


def layer_mismatches(source: ReLUNet, target: ReLUNet) -> list[str]:
    """How ``source``'s layers differ from ``target``'s (empty: its weights load into ``target``)."""
    if len(source.layers) != len(target.layers):
        shapes = [", ".join(_describe(layer) for layer in net.layers) for net in (source, target)]
        return [f"the file has {len(source.layers)} layers ({shapes[0]}), the model {len(target.layers)} ({shapes[1]})"]
    found = []
    if source.input_shape != target.input_shape:
        found.append(f"input shape {list(source.input_shape)} in the file, {list(target.input_shape)} in the model")
    for i, (a, b) in enumerate(zip(source.layers, target.layers)):
        if _describe(a) != _describe(b):
            found.append(f"layer {i} is {_describe(a)} in the file, {_describe(b)} in the model")
    return found


def _describe(layer: nn.Module) -> str:
    """A layer's kind, parameter shapes and (for convs) geometry, e.g. 'Conv2d weight [16, 1, 4, 4] ...'."""
    text = f"{type(layer).__name__} weight {list(layer.weight.shape)}"
    text += f" bias {list(layer.bias.shape)}" if layer.bias is not None else " no bias"
    if isinstance(layer, nn.Conv2d):
        text += " " + " ".join(f"{name} {_plain(getattr(layer, name))}" for name in CONV_GEOMETRY)
    return text


def _plain(value) -> str:
    return str(list(value)) if isinstance(value, tuple) else str(value)


def _load_net(path: Path, arch: str | None, input_shape: Sequence[int]) -> ReLUNet:
    """The ReLUNet in ``path``: by mmru.convert for .mat / .onnx / state dicts, by its recipe for a checkpoint."""
    from mmru.convert import load_model  # onnx and torch.fx, only for fine-tunes

    suffix = path.suffix.lower()
    if suffix == ".mat":  # its own input shape (from its fc1 rows), so a wrong one shows as shapes
        return load_model(path)
    if suffix != ".onnx" and _is_mmru_checkpoint(path):
        from mmru.certification.checkpoint import load_checkpoint

        return load_checkpoint(path)[0]
    return load_model(path, arch, tuple(input_shape))


def _is_mmru_checkpoint(path: Path) -> bool:
    """Whether ``path`` is a checkpoint written by train.py (its net recipe among the hyperparameters)."""
    try:
        content = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, EOFError, zipfile.BadZipFile, ValueError):
        return False  # load_model says why it cannot be read
    hparams = content.get("hyper_parameters") if isinstance(content, dict) else None
    return isinstance(hparams, dict) and isinstance(hparams.get("net_config"), dict)
