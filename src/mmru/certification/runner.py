"""What ``certify.py`` does: load, choose points, run the cascade resumably, summarise, report."""

from __future__ import annotations

import time
from collections import defaultdict
from pathlib import Path

import torch
from omegaconf import DictConfig
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeRemainingColumn

from mmru.allocator import keep_freed_memory
from mmru.certification.cascade import CascadeOptions, certify_batch
from mmru.certification.mip_pool import MIPPool
from mmru.certification.checkpoint import load_checkpoint
from mmru.certification.curves import robustness_curves, universal_curve
from mmru.certification.outputs import print_row, write_outputs
from mmru.certification.records import (
    UNDECIDED,
    PointRecord,
    append_records,
    load_records,
    rewrite_records,
    summarize,
)
from mmru.data import RobustDataModule
from mmru.errors import UserError
from mmru.models import ReLUNet
from mmru.provenance import commit, hardware
from mmru.validation import validate_certify_config
from mmru.zoo import model_file_run


def shard_indices(n_points: int, shard: int, num_shards: int) -> list[int]:
    """Shard ``shard`` (in [0, num_shards)) of ``num_shards``: every num_shards-th of the first n_points points."""
    return list(range(shard, n_points, num_shards))


def default_out_dir(ckpt: str, split: str, shard: int, num_shards: int, external: bool = False) -> Path:
    """<training run dir>/certify[-val], or for a model file from elsewhere (``external``)
    <its dir>/<its name>-certify[-val]; a subfolder per shard: reruns find their earlier records."""
    path = Path(ckpt).resolve()
    name = "certify" if split == "test" else f"certify-{split}"
    out = path.parent / f"{path.stem}-{name}" if external else path.parent.parent / name
    return out / f"shard{shard}of{num_shards}" if num_shards > 1 else out


def test_error(net: ReLUNet, dataset, batch_size: int = 500) -> float:
    """Error on the whole test set (Table 1's TE)."""
    wrong = 0
    with torch.no_grad():
        for x, y in torch.utils.data.DataLoader(dataset, batch_size=batch_size):
            wrong += int((net(x).argmax(1) != y).sum())
    return wrong / len(dataset)


def run_certification(cfg: DictConfig) -> dict:
    """Certify the first ``cfg.n_points`` points of ``cfg.split``; every option is checked first."""
    _check_model_keys(cfg)
    if cfg.ckpt is None and cfg.get("model_file") is None:
        raise UserError("give the checkpoint to certify: python certify.py ckpt=<path to .ckpt>, or a model from "
                        "elsewhere: model_file=<file.onnx or .mat, or file.pt with arch=package.module:builder> dataset=<name>")
    validate_certify_config(cfg)
    keep_freed_memory()  # the cascade's large temporaries without page faults: 0.6-0.7x its time (README)
    device = _device(cfg.device)
    net, run = _load_net(cfg)
    norms = list(cfg.norms)
    eps = {name: float(cfg.eps[name] if cfg.eps.get(name) is not None else run["eps"][name]) for name in norms}
    points = _dataset(cfg, run, net)
    out_dir = (Path(cfg.out_dir) if cfg.out_dir else
               default_out_dir(cfg.ckpt or cfg.model_file, cfg.split, cfg.shard, cfg.num_shards, external=cfg.ckpt is None))
    out_dir.mkdir(parents=True, exist_ok=True)
    indices = shard_indices(min(cfg.n_points, len(points)), cfg.shard, cfg.num_shards)
    options = CascadeOptions(tuple(cfg.bounds), cfg.attack, cfg.mip, cfg.mip_time_limit, device, radii=cfg.radii,
                             mip_norms=tuple(cfg.mip_norms), mip_tighten_norms=tuple(cfg.mip_tighten_norms),
                             mip_scip_norms=tuple(cfg.mip_scip_norms), mip_scope=cfg.mip_scope)

    timings: dict[str, float] = defaultdict(float)
    start = time.perf_counter()
    te = test_error(net, points)
    timings["test_error"] = time.perf_counter() - start
    records = _resume(out_dir / "points.jsonl", eps, indices, cfg.get("retry_undecided", False))
    done = {r.index for r in records}
    todo = [i for i in indices if i not in done]
    if done:
        print(f"resumed {len(done)} of {len(indices)} points from {out_dir / 'points.jsonl'}")
    with _progress(cfg.progress) as bar, MIPPool(cfg.mip_workers) as pool:
        task = bar.add_task("certifying", total=len(indices), completed=len(indices) - len(todo))
        for chunk in range(0, len(todo), cfg.batch_size):
            batch = todo[chunk : chunk + cfg.batch_size]
            x = torch.stack([points[i][0] for i in batch])
            y = torch.tensor([int(points[i][1]) for i in batch])
            new = certify_batch(net, batch, x, y, eps, options, timings, pool)
            append_records(out_dir / "points.jsonl", new)
            records += new
            bar.advance(task, len(batch))
    summary = summarize(records, eps, te)
    summary.update(
        split=cfg.split, shard=cfg.shard, num_shards=cfg.num_shards, indices=[indices[0], indices[-1]] if indices else [],
        run={**run, "checkpoint": str(Path(cfg.ckpt or cfg.model_file).resolve())}, timings_seconds=dict(timings),
        input_dim=net.input_dim,
        universal_curve=universal_curve(records, net.input_dim),
        curves=robustness_curves(records, eps),
        recipe=_recipe(run, options, records, timings["test_error"], cfg.mip_workers),
    )
    write_outputs(summary, out_dir, cfg)
    print_row(summary)
    return summary


#: file types of models trained elsewhere (model_file=); train.py's checkpoints end in .ckpt (ckpt=)
MODEL_FILE_SUFFIXES = (".onnx", ".mat", ".pt", ".pth")


def _check_model_keys(cfg: DictConfig) -> None:
    """A model file given to the wrong key gets one sentence naming the right one."""
    if cfg.ckpt is not None and Path(str(cfg.ckpt)).suffix.lower() in MODEL_FILE_SUFFIXES:
        raise UserError(f"{cfg.ckpt} is a model file, not a train.py checkpoint: give it as model_file={cfg.ckpt} "
                        "dataset=<name>")
    if cfg.get("model_file") is not None and Path(str(cfg.model_file)).suffix.lower() == ".ckpt":
        raise UserError(f"{cfg.model_file} is a train.py checkpoint: give it as ckpt={cfg.model_file}")


def _load_net(cfg: DictConfig) -> tuple[ReLUNet, dict]:
    """A train.py checkpoint (ckpt=) and its run facts, or a model file from elsewhere (model_file=: ONNX,
    or a state dict with arch=), whose dataset and default eps come from dataset=."""
    if cfg.get("model_file") is None:
        return load_checkpoint(cfg.ckpt)
    if cfg.ckpt is not None:
        raise UserError("give either ckpt= (a train.py checkpoint) or model_file= (a model file from elsewhere), not both")
    if not cfg.get("dataset"):
        raise UserError("model_file= needs dataset=<name>: there is no training run to read the test points, input shape "
                        "and default eps from")
    from mmru.convert import load_model  # torch.fx and onnx, only for models from elsewhere

    net = load_model(cfg.model_file, cfg.get("arch"), tuple(cfg.dataset.input_shape))
    run = model_file_run(cfg.model_file, cfg.dataset.name, dict(cfg.dataset.eps))
    # split=val: the points train.py holds out with this fraction and seed (e.g. to compare the published
    # networks with fine-tunes of them on the fine-tunes' own validation split)
    run.update(val_fraction=float(cfg.dataset.get("val_fraction") or 0.0), seed=int(cfg.val_seed))
    return net.eval(), run


def _device(name: str) -> str:
    """'auto': the GPU where torch sees one, else the CPU; a GPU asked for must exist."""
    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device={name} asks for a GPU, but torch sees no CUDA device here; use device=cpu or auto")
    if name.startswith("cuda:") and int(name[5:]) >= torch.cuda.device_count():
        raise UserError(f"device={name} does not exist: torch sees {torch.cuda.device_count()} CUDA device(s)")
    return name


def _recipe(run: dict, options: CascadeOptions, records: list, test_error_seconds: float, mip_workers: int) -> dict:
    """How the model was trained and certified, for the Table-1 report's recipe column.

    ``certify_seconds`` sums the per-point seconds of every record, so a resumed run counts
    the time of its earlier segments too (with several MIP workers their solves overlap: the
    sum is compute time, more than the wall time).
    """
    return {"epochs": run.get("epochs"), "train_seconds": run.get("train_seconds"), "bounds": list(options.bounds),
            "attack": options.attack, "mip": options.mip, "mip_norms": list(options.mip_norms),
            "mip_tighten_norms": list(options.mip_tighten_norms), "mip_scip_norms": list(options.mip_scip_norms),
            "mip_scope": options.mip_scope,
            "mip_time_limit": options.mip_time_limit,
            "device": options.device, "mip_workers": mip_workers, "radii": options.radii,
            "certify_seconds": test_error_seconds + sum(r.seconds for r in records),
            "source": run.get("source"), "model_md5": run.get("model_md5"),
            "hardware": hardware(), "commit": commit()}


def _dataset(cfg: DictConfig, run: dict, net: ReLUNet):
    """The test set, or the training run's own validation split (same fraction and seed)."""
    name = cfg.dataset.name if cfg.get("dataset") else run.get("dataset")
    if cfg.get("dataset") and (tuple(cfg.dataset.input_shape), cfg.dataset.num_classes) != (
            net.input_shape, net.num_classes):
        raise UserError(f"dataset={name} has inputs of shape {list(cfg.dataset.input_shape)} in "
                        f"{cfg.dataset.num_classes} classes, but the checkpoint's net takes {list(net.input_shape)} "
                        f"in {net.num_classes}: the shapes do not match")
    val_fraction = float(run.get("val_fraction") or 0.0)
    if cfg.split == "val" and not val_fraction > 0:
        if cfg.get("model_file") is not None:
            raise UserError("split=val with model_file= needs dataset.val_fraction=<f> > 0: the fraction of the "
                            "training set train.py held out (with seed val_seed, default 0)")
        raise UserError("split=val needs a model trained with dataset.val_fraction > 0 (it has no validation split)")
    dm = RobustDataModule(name, cfg.data_dir, net.input_shape, net.num_classes, download=cfg.download,
                          val_fraction=val_fraction, seed=int(run.get("seed", 0)))
    dm.setup("fit" if cfg.split == "val" else "test")
    return dm.val_set if cfg.split == "val" else dm.test_set


def _resume(path: Path, eps: dict[str, float], indices: list[int], retry_undecided: bool = False) -> list[PointRecord]:
    """Complete earlier records for these points; points with a missing norm are redone, and with
    ``retry_undecided`` also those undecided in some norm (all their norms: a point's records come from one
    cascade run, so the union bounds stay those of one run)."""
    records = load_records(path)
    for r in records:
        if r.norm in eps and abs(r.eps - eps[r.norm]) > 1e-12 * eps[r.norm]:
            raise UserError(f"{path} holds results for {r.norm} eps={r.eps}, not {eps[r.norm]}; "
                            "choose another out_dir or delete it")
    wanted = set(indices)
    by_point: dict[int, list[PointRecord]] = defaultdict(list)
    for r in records:
        if r.index in wanted and r.norm in eps:
            by_point[r.index].append(r)
    complete = [r for rs in by_point.values() if {r.norm for r in rs} == set(eps) and len(rs) == len(eps)
                and not (retry_undecided and any(r.status == UNDECIDED for r in rs)) for r in rs]
    others = [r for r in records if r.index not in wanted or r.norm not in eps]
    if path.is_file():  # drops a torn last line and half-done points before new lines follow
        rewrite_records(path, others + complete)
    return complete


def _progress(enabled: bool) -> Progress:
    return Progress(TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeRemainingColumn(),
                    disable=not enabled)

