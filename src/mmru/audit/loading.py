"""Reloading what a certification ran on: its records, the checkpoint and the certified points.

``certify.py`` stores the checkpoint's absolute path and the run facts (dataset, seed,
validation fraction) in ``summary.json``, the split too, and each point's test-set index and
label in ``points.jsonl``. It does not store the data directory or a ``dataset=`` override,
so those are options here; the labels recorded for every point are compared with the data
loaded, so a wrong dataset is refused instead of audited.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from mmru.certification.checkpoint import load_checkpoint
from mmru.certification.records import PointRecord, load_records
from mmru.data import RobustDataModule
from mmru.errors import UserError
from mmru.models import ReLUNet

NORM_NAMES = ("l1", "l2", "linf")


@dataclass
class CertifyRun:
    """A certify directory, reloaded: ``x[k], y[k]`` is the point of ``indices[k]``.

    ``records`` holds every record of the directory, also those of points beyond ``indices``.
    """

    directory: Path
    summary: dict
    records: list[PointRecord]
    eps: dict[str, float]  #: radius per certified norm, from summary.json
    checkpoint: Path
    net: ReLUNet
    indices: list[int]
    x: torch.Tensor
    y: torch.Tensor

    def position(self) -> dict[int, int]:
        """Row of x / y holding each test-set index."""
        return {index: k for k, index in enumerate(self.indices)}


def read_certify_dir(directory: str | Path) -> tuple[dict, list[PointRecord]]:
    """summary.json and points.jsonl of a certify directory; one sentence when it is not one."""
    directory = Path(directory)
    if not directory.is_dir():
        raise UserError(f"{directory} is not a directory; give the certify directory written by certify.py")
    summary_path, points_path = directory / "summary.json", directory / "points.jsonl"
    if not summary_path.is_file() or not points_path.is_file():
        raise UserError(f"{directory} is not a certify directory: it lacks summary.json or points.jsonl "
                        "(run certify.py first, or give <run>/certify)")
    try:
        summary = json.loads(summary_path.read_text())
        records = load_records(points_path)
    except (json.JSONDecodeError, ValueError) as err:
        raise UserError(f"{directory} holds a corrupt certification record ({str(err).splitlines()[0]})") from None
    if not isinstance(summary, dict) or not isinstance(summary.get("run"), dict) or not any(
            n in summary for n in NORM_NAMES):
        raise UserError(f"{summary_path} was not written by certify.py (no run facts or norms in it)")
    if not records:
        raise UserError(f"{points_path} holds no point records")
    return summary, records


def find_checkpoint(directory: Path, summary: dict, ckpt: str | None) -> Path:
    """``ckpt`` if given, else the path summary.json names, else <run>/checkpoints/last.ckpt
    above the certify directory (``<run>/certify`` or ``<run>/certify/shard<i>of<n>``)."""
    if ckpt is not None:
        return Path(ckpt)
    recorded = summary["run"].get("checkpoint")
    if recorded and Path(recorded).is_file():
        return Path(recorded)
    for run_dir in (directory.resolve().parent, directory.resolve().parent.parent):
        candidate = run_dir / "checkpoints" / "last.ckpt"
        if candidate.is_file():
            return candidate
    raise UserError(f"the checkpoint of {directory} is gone ({recorded or 'not recorded'}); give it with --ckpt")


def load_certify_run(directory: str | Path, ckpt: str | None = None, dataset: str | None = None,
                     data_dir: str | None = None, n_points: int | None = None) -> CertifyRun:
    """Everything the audit needs, checked to belong together; ``n_points``: the first ones only."""
    directory = Path(directory)
    summary, records = read_certify_dir(directory)
    eps = {n: float(summary[n]["eps"]) for n in NORM_NAMES if n in summary}
    indices = sorted({r.index for r in records})
    if n_points is not None:
        indices = indices[:n_points]
    checkpoint = find_checkpoint(directory, summary, ckpt)
    net = _load_net(checkpoint, summary)
    points = _points(summary, net, dataset, data_dir)
    if indices[-1] >= len(points):
        raise UserError(f"{directory} certified point {indices[-1]} but the {summary.get('split', 'test')} split "
                        f"has {len(points)} points; wrong --dataset or --data-dir?")
    x = torch.stack([points[i][0] for i in indices])
    y = torch.tensor([int(points[i][1]) for i in indices])
    run = CertifyRun(directory, summary, records, eps, checkpoint, net, indices, x, y)
    position = run.position()
    for r in (r for r in records if r.index in position):
        if int(y[position[r.index]]) != r.label:
            raise UserError(f"point {r.index} has label {int(y[position[r.index]])} in the data but {r.label} in "
                            f"{directory / 'points.jsonl'}; the audit needs the data the run certified "
                            "(--dataset, --data-dir)")
    return run


def _load_net(path: Path, summary: dict) -> ReLUNet:
    """A train.py checkpoint, or the model file from elsewhere the run certified (model_file=), which must
    be the same file (md5) when the summary recorded one."""
    if path.suffix.lower() not in (".onnx", ".mat"):
        return load_checkpoint(path)[0]
    from mmru.convert import load_model  # only model files from elsewhere need the converters
    from mmru.provenance import file_md5

    recorded, found = summary["run"].get("model_md5"), file_md5(path)
    if recorded and found != recorded:
        raise UserError(f"{path} is not the model file the run certified (md5 {found}, recorded {recorded})")
    return load_model(path).eval()


def _points(summary: dict, net: ReLUNet, dataset: str | None, data_dir: str | None):
    """The split the run certified, rebuilt as ``certification.runner`` builds it."""
    run, split = summary["run"], summary.get("split", "test")
    name = dataset or run.get("dataset")
    if not name:
        raise UserError("summary.json names no dataset; give it with --dataset")
    data_dir = data_dir or os.environ.get("MMRU_DATA_DIR", "data")
    try:
        dm = RobustDataModule(name, data_dir, net.input_shape, net.num_classes, download=False,
                              val_fraction=float(run.get("val_fraction") or 0.0), seed=int(run.get("seed", 0)))
    except ValueError as err:
        raise UserError(str(err)) from None
    dm.setup("fit" if split == "val" else "test")
    return dm.val_set if split == "val" else dm.test_set
