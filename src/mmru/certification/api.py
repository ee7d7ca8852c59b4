"""``mmru.certify``: the certification cascade on tensors, for notebooks and scripts.

The same per-point cascade as ``certify.py`` (region, bound propagation, attacks, exact MIP;
:mod:`mmru.certification.cascade`) on points the caller holds, for a ReLUNet or any PyTorch
classifier :func:`mmru.convert.from_torch` can import.
"""

from __future__ import annotations

import copy
import math
from collections import defaultdict
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import NamedTuple

import torch
from torch import nn

from mmru.certification.cascade import CascadeOptions, certify_batch
from mmru.certification.mip_pool import MIPPool
from mmru.certification.records import PointRecord, summarize
from mmru.errors import ConfigError
from mmru.models import ReLUNet
from mmru.validation import ATTACK_STRENGTHS, BOUND_METHODS, NORM_NAMES


class Certification(NamedTuple):
    """``records``: one :class:`PointRecord` per (point, norm); ``summary``: per norm the
    certified / attacked / undecided counts, LB and UB on the robust error, the union bounds
    and ``test_error`` (the clean error on these points)."""

    records: list[PointRecord]
    summary: dict


def certify(
    net: nn.Module | str | Path, x: torch.Tensor, y: torch.Tensor, eps: Mapping[str, float],
    bounds: Sequence[str] = ("kw", "crown"), attack: str = "strong", mip: bool = True,
    mip_time_limit: float = 120.0, batch_size: int = 100, device: str = "cpu", mip_workers: int = 1,
    radii: bool = False, mip_norms: Sequence[str] = NORM_NAMES, mip_tighten_norms: Sequence[str] = ("linf",),
    mip_scip_norms: Sequence[str] = ("l1",), mip_scope: str = "all",
) -> Certification:
    """Certify ``net`` (a ReLUNet, a PyTorch classifier, the path of an ONNX file or of a published .mat) at the
    points ``x`` (inputs in [0, 1]) with labels ``y``.

    ``eps``: radius per norm, e.g. ``{"l1": 1.0, "l2": 0.3, "linf": 0.1}``, in input space (a
    normalisation inside a PyTorch model is folded into the net, never applied to eps).
    ``bounds``: bound-propagation methods in order (ibp, kw, crown); ``attack``: none, fast or
    strong; ``mip``: exact MIP on what is still undecided, for the norms in ``mip_norms``
    (l2: SCIP; l1 and l∞: SCIP for those in ``mip_scip_norms``, else HiGHS), at most ``mip_time_limit``
    seconds per point (``mip_scope='union'``: only on the points attacked in no norm, which decides the
    union bounds at a fraction of the cost, the per-norm UBs then looser); ``mip_tighten_norms``: those
    of l1 and l∞ whose MILPs first tighten their big-M constants by LP. ``device``: where region, bounds and attacks run
    (e.g. "cuda"); ``mip_workers``: processes solving the MIPs in parallel, on the CPU;
    ``radii``: also each method's largest certified radius per point (records' ``radii``,
    :mod:`mmru.certification.radii`; several times the cascade's cost). Record
    ``index`` i is the point ``x[i]``, taken in float32 (the precision the attacks and the net
    run in).
    """
    eps = _check_options(eps, bounds, attack, mip, mip_time_limit, batch_size)
    _check_names("mip_norms", mip_norms, NORM_NAMES, nonempty=True)
    _check_names("mip_tighten_norms", mip_tighten_norms, ("l1", "linf"), nonempty=False)
    _check_names("mip_scip_norms", mip_scip_norms, ("l1", "linf"), nonempty=False)
    if mip_scope not in ("all", "union"):
        raise ConfigError(f"mip_scope must be 'all' or 'union', got {mip_scope!r}")
    if not isinstance(radii, bool):
        raise ConfigError(f"radii must be True or False, got {radii!r}")
    if isinstance(mip_workers, bool) or not isinstance(mip_workers, int) or mip_workers < 1:
        raise ConfigError(f"mip_workers must be an integer >= 1, got {mip_workers!r}")
    if str(device).startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device={device!r} asks for a GPU, but torch sees no CUDA device here")
    x, y = _check_points(x, y)
    if isinstance(net, (str, Path)):
        from mmru.convert import load_model  # imported here: only conversions need torch.fx and onnx

        net = load_model(net, input_shape=tuple(x.shape[1:]))
    elif not isinstance(net, ReLUNet):
        from mmru.convert import from_torch

        net = from_torch(net, tuple(x.shape[1:]))
    if next(net.parameters()).dtype != torch.float32:  # the attacks run in float32; the caller's net stays as it is
        net = copy.deepcopy(net).float()
    net.eval()
    if tuple(net.input_shape) != tuple(x.shape[1:]):
        raise ConfigError(f"the net takes inputs of shape {list(net.input_shape)}, but x holds points of shape "
                          f"{list(x.shape[1:])}")
    if int(y.max()) >= net.num_classes:
        raise ConfigError(f"y holds label {int(y.max())}, but the net has only {net.num_classes} classes")
    options = CascadeOptions(tuple(bounds), attack, mip, float(mip_time_limit), str(device), radii, tuple(mip_norms),
                             tuple(mip_tighten_norms), tuple(mip_scip_norms), mip_scope)
    timings: dict[str, float] = defaultdict(float)
    records: list[PointRecord] = []
    with MIPPool(mip_workers) as pool:
        for start in range(0, len(x), batch_size):
            idx = list(range(start, min(start + batch_size, len(x))))
            records += certify_batch(net, idx, x[idx], y[idx], eps, options, timings, pool)
    with torch.no_grad():
        clean_error = float((net(x).argmax(1) != y).double().mean())
    summary = summarize(records, eps, clean_error)
    summary["timings_seconds"] = dict(timings)
    return Certification(records, summary)


def _check_options(eps, bounds, attack, mip, mip_time_limit, batch_size) -> dict[str, float]:
    """Every option, before any work; each failure is one sentence naming the option."""
    if not isinstance(eps, Mapping) or not eps or not set(eps) <= set(NORM_NAMES):
        raise ConfigError(f"eps must map some of {', '.join(NORM_NAMES)} to radii, got {eps!r}")
    for name, r in eps.items():
        if isinstance(r, bool) or not isinstance(r, (int, float)) or not 0 < r < math.inf:
            raise ConfigError(f"eps[{name!r}] must be a positive finite number, got {r!r}")
    _check_names("bounds", bounds, BOUND_METHODS)
    if attack not in ATTACK_STRENGTHS:
        raise ConfigError(f"attack must be one of {', '.join(ATTACK_STRENGTHS)}, got {attack!r}")
    if not isinstance(mip, bool):
        raise ConfigError(f"mip must be True or False, got {mip!r}")
    if (isinstance(mip_time_limit, bool) or not isinstance(mip_time_limit, (int, float))
            or not 0 < mip_time_limit < math.inf):
        raise ConfigError(f"mip_time_limit must be a positive finite number of seconds, got {mip_time_limit!r}")
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
        raise ConfigError(f"batch_size must be an integer >= 1, got {batch_size!r}")
    # the cascade's order of norms, whatever order the caller wrote them in
    return {name: float(eps[name]) for name in NORM_NAMES if name in eps}


def _check_names(option: str, names, allowed, nonempty: bool = False) -> None:
    """``names``: a sequence (not a string) of distinct names from ``allowed`` (and some, if ``nonempty``)."""
    if (isinstance(names, str) or not all(n in allowed for n in names) or len(set(names)) != len(names)
            or (nonempty and not names)):
        some = "a non-empty sequence" if nonempty else "a sequence"
        raise ConfigError(f"{option} must be {some} of distinct names from {', '.join(allowed)}, got {names!r}")


def _check_points(x, y) -> tuple[torch.Tensor, torch.Tensor]:
    if not torch.is_tensor(x) or not x.is_floating_point() or x.dim() < 2 or len(x) == 0:
        raise ConfigError("x must be a non-empty floating-point tensor [N, *input_shape]")
    if not torch.is_tensor(y) or y.dtype.is_floating_point or y.shape != (len(x),):
        raise ConfigError(f"y must be an integer tensor of {len(x)} labels, one per point of x")
    x, y = x.detach().float().cpu(), y.detach().long().cpu()
    if not torch.isfinite(x).all() or x.min() < 0 or x.max() > 1:
        raise ConfigError("x must lie in the box [0, 1] that every certificate assumes (normalise inside the "
                          "model, not the data)")
    if y.min() < 0:
        raise ConfigError(f"y holds a negative label {int(y.min())}")
    return x, y
