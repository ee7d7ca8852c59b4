"""`make bench`: training-step and certification figures of this machine, in one JSON file.

* ``train_step``: cnn_small, MNIST shapes, batch 128, fp32 (TF32 off), forward + backward, median
  ms: plain cross-entropy, MMR-Universal with the fast geometry and with the reference geometry
  (the authors' method, ``bench_regions.py``), the union schemes ``ibp_union`` and ``crown_ibp_union``
  (mid-ramp: radii at half, beta 0.5; issue 17's goal: <= 10x and <= 30x plain; their ratios to
  plain are measured interleaved, in rounds of 4 plain / 4 union / 4 plain steps each after a step
  of its own, and the median, min and max of the per-round ratios reported, so that the machine's
  drift cancels; with freed memory kept in the process, as ``train.py`` runs, ``mmru.allocator``), each step's
  matmul / convolution FLOPs forward + backward (``torch.utils.flop_counter``) and their ratio to
  plain's, the floor a time ratio can reach without changing the bounds, and, where it is measured (by default on CUDA;
  ``--compile on`` elsewhere), MMR-Universal through ``torch.compile`` (default and
  reduce-overhead modes on CUDA), with its compile seconds and its largest gradient difference
  from the eager step.
* ``certify``: seconds per point per norm and stage (region, kw, crown, attack, mip) of the
  certification cascade (certify.py's ``certify_batch``, without the per-method radii pass) on
  the first ``--points`` test points, for the
  checkpoint ``--ckpt`` or, without one, cnn_small after ``--train-steps`` MMR-Universal steps
  on mnist5k (seed 0). Stage seconds are amortised over all points, decided earlier or not.

* ``published_cascade``: wall seconds (and per stage) of the no-MIP cascade (KW, CROWN, strong
  attacks; ``mmru.certify`` as certify.py runs it, batches of 100) on the first ``--published-points``
  test points of each shipped published network (zoo/croce-hein-2020, MNIST and Fashion-MNIST),
  with its LB / UB per norm; skipped, saying so, where ``make data`` has not placed the data.
  Issue 16's goal: 1000 points x 3 norms in <= 15 minutes on 2 cores.

The device is CUDA when torch sees one, else the CPU. On 2 idle CPU cores the training and certify
parts take a few minutes, the published cascade about 5 minutes per network.

    python bench/bench.py [--out bench/bench.json] [--device cpu|cuda] [--compile auto|on|off]
                          [--ckpt FILE --data-dir DIR] [--points 5] [--mip-time-limit 10]
                          [--parts train,certify,published] [--published-points 1000]
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_regions import measure  # noqa: E402

from mmru.allocator import keep_freed_memory  # noqa: E402
from mmru.models import cnn_small  # noqa: E402
from mmru.provenance import commit, hardware  # noqa: E402
from mmru.regularizers.ibp_union import CROWNIBPUnion, IBPUnion  # noqa: E402
from mmru.regularizers.universal import MMRUniversal  # noqa: E402

NORMS = ("l1", "l2", "linf")
UNION_EPS = {"l1": 1.0, "l2": 0.3, "linf": 0.1}


def _universal() -> MMRUniversal:
    return MMRUniversal(3.0, 12.0, 1.0, 0.15)


def train_step_figures(device: torch.device, compile_modes: list[str], repeats: int, reference: bool) -> dict:
    """Median ms per forward + backward for CE, MMR-Universal (fast, reference, compiled)."""
    import torch.nn.functional as F

    torch.manual_seed(0)
    net = cnn_small((1, 28, 28), 10).to(device)
    x, y = torch.rand(128, 1, 28, 28, device=device), torch.randint(0, 10, (128,), device=device)

    def step(loss_fn):
        def run():
            net.zero_grad(set_to_none=True)
            loss_fn().backward()

        return run

    fast, slow = _universal(), MMRUniversal(3.0, 12.0, 1.0, 0.15, geometry="reference")
    out = {"batch": 128, "model": "cnn_small"}
    ibp, crown_ibp = (scheme(UNION_EPS, warmup_epochs=1.0, ramp_epochs=2.0) for scheme in (IBPUnion, CROWNIBPUnion))
    for scheme in (ibp, crown_ibp):  # the middle of the ramp: radii x 0.5, kappa 0.75, beta 0.5
        scheme.on_epoch_start(2, 10)
        scheme.on_step_start(2.0)
    runs = [("plain_ce", lambda: F.cross_entropy(net(x), y), repeats),
            ("mmr_universal", lambda: fast.training_loss(net, x, y).loss, repeats),
            ("ibp_union", lambda: ibp.training_loss(net, x, y).loss, repeats),
            ("crown_ibp_union", lambda: crown_ibp.training_loss(net, x, y).loss, repeats)]
    if reference:
        runs.append(("mmr_universal_reference", lambda: slow.training_loss(net, x, y).loss, 1))
    for name, fn, n in runs:
        out[name] = measure(step(fn), device, n)
        out[name]["flops"] = _flops(step(fn))
        print(f"{name:>32}: {out[name]['ms']:9.1f} ms/step, {out[name]['flops'] / 1e9:7.2f} GFLOP", flush=True)
    eager_grads = _grads(net, lambda: fast.training_loss(net, x, y).loss)
    for mode in compile_modes:
        compiled = torch.compile(fast.training_loss, mode=mode)
        start = time.perf_counter()
        grads = _grads(net, lambda: compiled(net, x, y).loss)  # the first call compiles
        name = f"mmr_universal_compiled_{mode.replace('-', '_')}"
        out[name] = measure(step(lambda: compiled(net, x, y).loss), device, repeats)
        out[name]["compile_seconds"] = time.perf_counter() - start
        out[name]["max_grad_rel_diff_vs_eager"] = max(
            float((a - b).abs().max() / b.abs().max().clamp_min(1e-30)) for a, b in zip(grads, eager_grads))
        print(f"{name:>32}: {out[name]['ms']:9.1f} ms/step (compiled in {out[name]['compile_seconds']:.0f} s, "
              f"gradients within {out[name]['max_grad_rel_diff_vs_eager']:.1e} of eager)", flush=True)
    # the ratios as training takes them, with freed memory kept (last: every peak above needs it returned)
    out["interleaved_keep_freed_memory"] = keep_freed_memory()
    for name, fn, _ in runs[2:4]:
        out[name]["interleaved"] = interleaved_ratio(step(runs[0][1]), step(fn), device, max(repeats, 3))
        ratio = out[name]["interleaved"]
        print(f"{name:>32}: {ratio['median']:.1f}x plain interleaved (per round {ratio['min']:.1f}-{ratio['max']:.1f}x, "
              f"{ratio['rounds']} rounds)", flush=True)
    return out


def interleaved_ratio(plain, other, device: torch.device, rounds: int, block: int = 4) -> dict:
    """``other``'s step time over plain's, measured in rounds of a plain block, an ``other`` block
    and a plain block. A block is one untimed step and then ``block`` timed ones, its time their
    median: each method is timed after a step of its own, as in a training run, without
    ``measure``'s memory-sampling thread (which competes for the cores) and late in the process (a
    plain step here takes 9 ms in the first few hundred steps of a process, 5 ms after). Each
    round's ratio is other's block over the mean of the two plain blocks around it, so that a drift
    of the machine's speed (shared cores) moves both; the median, min and max."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    def timed(run) -> float:
        run()
        times = []
        for _ in range(block):
            sync()
            start = time.perf_counter()
            run()
            sync()
            times.append(time.perf_counter() - start)
        return sorted(times)[block // 2]

    ratios, times = [], []
    for _ in range(rounds):
        before, t, after = timed(plain), timed(other), timed(plain)
        ratios.append(2 * t / (before + after))
        times.append(t * 1e3)
    ratios.sort()
    return {"median": ratios[len(ratios) // 2], "min": ratios[0], "max": ratios[-1], "rounds": rounds,
            "block": block, "ratios": ratios, "ms_all": times}


def _flops(run) -> int:
    """Matmul and convolution FLOPs of one call of ``run`` (forward and backward); elementwise
    work is not counted, so a time ratio above the FLOP ratio is overhead of the rest."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with counter:
        run()
    return int(counter.get_total_flops())


def _grads(net, loss_fn) -> list[torch.Tensor]:
    net.zero_grad(set_to_none=True)
    loss_fn().backward()
    return [p.grad.detach().clone() for p in net.parameters()]


def certification_net(args, device: torch.device):
    """(net, test x, test y, eps per norm, where the net came from)."""
    from mmru.data import RobustDataModule

    if args.ckpt:
        from mmru.certification.checkpoint import load_checkpoint

        net, run = load_checkpoint(args.ckpt)
        dataset, eps, source = run["dataset"], run["eps"], str(args.ckpt)
    else:
        from mmru.data import load_mnist5k

        torch.manual_seed(0)
        net = cnn_small((1, 28, 28), 10).to(device)
        x, y = (t.to(device) for t in load_mnist5k("train").tensors)
        scheme, optimizer = _universal(), torch.optim.Adam(net.parameters(), lr=5e-4)
        order = torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[: 128 * args.train_steps]
        for idx in order.to(device).split(128):
            loss = scheme.training_loss(net, x[idx], y[idx]).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
        net = net.cpu().eval()
        dataset, eps = "mnist5k", {"l1": 1.0, "l2": 0.3, "linf": 0.1}
        source = f"cnn_small, {args.train_steps} MMR-Universal steps on mnist5k (seed 0)"
    dm = RobustDataModule(dataset, args.data_dir, net.input_shape, net.num_classes, limit_test=args.points,
                          download=False)
    dm.setup("test")
    x, y = (torch.stack([dm.test_set[i][0] for i in range(args.points)]),
            torch.tensor([int(dm.test_set[i][1]) for i in range(args.points)]))
    return net, x, y, eps, source


def certify_figures(args, device: torch.device) -> dict:
    """Per norm: the cascade's stage seconds per point (certify.py's cascade, without the radii pass)."""
    import dataclasses
    from collections import defaultdict

    from mmru.certification.cascade import CascadeOptions, certify_batch
    from mmru.certification.mip_pool import MIPPool

    net, x, y, eps, source = certification_net(args, device)
    options = {"bounds": ("kw", "crown"), "attack": args.attack, "mip": True, "mip_time_limit": args.mip_time_limit,
               "device": str(device)}
    if "radii" in {f.name for f in dataclasses.fields(CascadeOptions)}:
        options["radii"] = False  # the per-method radii are a report's extra, not the decision
    out = {"net": source, "points": len(x), "mip_time_limit": args.mip_time_limit, "bounds": ["kw", "crown"],
           "attack": args.attack, "mip_workers": args.mip_workers, "seconds_per_point": {}, "status": {}}
    with MIPPool(args.mip_workers) as pool:
        for norm in NORMS:
            timings: dict[str, float] = defaultdict(float)
            start = time.perf_counter()
            records = certify_batch(net, list(range(len(x))), x, y, {norm: eps[norm]}, CascadeOptions(**options),
                                    timings, pool)
            wall = time.perf_counter() - start
            per_stage = {stage: s / len(x) for stage, s in timings.items()}
            out["seconds_per_point"][norm] = {**per_stage, "total": wall / len(x)}
            statuses = [r.status for r in records]
            out["status"][norm] = {s: statuses.count(s) for s in sorted(set(statuses))}
            stages = ", ".join(f"{k} {v:.3f}" for k, v in per_stage.items())
            print(f"certify {norm:>4}: {wall / len(x):7.3f} s/point ({stages}); {out['status'][norm]}", flush=True)
    return out


#: the shipped published networks and their datasets (issue 16's cascade-cost goal)
PUBLISHED = {"mnist": "zoo/croce-hein-2020/mmr_univ_mnist.mat", "fmnist": "zoo/croce-hein-2020/mmr_univ_fmnist.mat"}
PAPER_EPS = {"l1": 1.0, "l2": 0.3, "linf": 0.1}  #: the paper's radii on both datasets


def published_cascade_figures(args, device: torch.device) -> dict:
    """Per published network: the no-MIP cascade's wall and stage seconds on the first points, LB and UB."""
    from mmru.certification.api import certify
    from mmru.data import DatasetUnavailable, RobustDataModule

    root = Path(__file__).resolve().parent.parent
    keep_freed_memory()  # as certify.py runs the cascade
    out = {"points": args.published_points, "bounds": ["kw", "crown"], "attack": "strong", "mip": False}
    for dataset, model_file in PUBLISHED.items():
        dm = RobustDataModule(dataset, args.data_dir, (1, 28, 28), 10, limit_test=args.published_points, download=False)
        try:
            dm.setup("test")
        except DatasetUnavailable as err:  # the data is optional here: say why and go on
            print(f"published {dataset}: skipped ({err}); run make data", flush=True)
            out[dataset] = {"skipped": str(err)}
            continue
        n = min(args.published_points, len(dm.test_set))
        x = torch.stack([dm.test_set[i][0] for i in range(n)])
        y = torch.tensor([int(dm.test_set[i][1]) for i in range(n)])
        start = time.perf_counter()
        result = certify(str(root / model_file), x, y, PAPER_EPS, mip=False, device=str(device))
        wall = time.perf_counter() - start
        summary = result.summary
        out[dataset] = {"model_file": model_file, "wall_seconds": wall,
                        "bounds": {norm: {"lb": summary[norm]["lb"], "ub": summary[norm]["ub"]} for norm in NORMS}}
        cells = ", ".join(f"{norm} {100 * summary[norm]['lb']:.1f}/{100 * summary[norm]['ub']:.1f}" for norm in NORMS)
        print(f"published {dataset}: {n} points x 3 norms in {wall / 60:.1f} min (LB/UB % {cells})", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", type=Path, default=Path("bench/bench.json"))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--compile", choices=("auto", "on", "off"), default="auto",
                        help="time torch.compile'd MMR-Universal steps (auto: on CUDA only)")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--parts", default="train,certify,published",
                        help="any of train, certify, published (comma-separated)")
    parser.add_argument("--skip-reference", action="store_true", help="do not time the (slow) reference geometry")
    parser.add_argument("--ckpt", default=None, help="certify this training checkpoint's net on its dataset")
    parser.add_argument("--data-dir", default="data")
    parser.add_argument("--points", type=int, default=5)
    parser.add_argument("--train-steps", type=int, default=20)
    parser.add_argument("--attack", default="strong", choices=("none", "fast", "strong"))
    parser.add_argument("--mip-time-limit", type=float, default=10.0)
    parser.add_argument("--mip-workers", type=int, default=1)
    parser.add_argument("--published-points", type=int, default=1000)
    args = parser.parse_args()
    device = torch.device(args.device)
    # fp32 geometry: TF32 would perturb the row norms the region distances divide by
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = False
    use_compile = args.compile == "on" or (args.compile == "auto" and device.type == "cuda")
    modes = (["default", "reduce-overhead"] if device.type == "cuda" else ["default"]) if use_compile else []
    results = {"hardware": hardware(device), "device": device.type, "torch": torch.__version__,
               "threads": torch.get_num_threads(), "commit": commit()}
    parts = set(args.parts.split(","))
    ratios = results["ratios"] = {}
    if "train" in parts:
        results["train_step"] = steps = train_step_figures(device, modes, args.repeats, not args.skip_reference)
        for name in ("mmr_universal", "ibp_union", "crown_ibp_union"):
            ratios[f"{name}_over_plain_ce"] = steps[name]["ms"] / steps["plain_ce"]["ms"]
            ratios[f"{name}_flops_over_plain_ce"] = steps[name]["flops"] / steps["plain_ce"]["flops"]
        for name in ("ibp_union", "crown_ibp_union"):
            ratios[f"{name}_over_plain_ce_interleaved"] = steps[name]["interleaved"]["median"]
        if not args.skip_reference:
            ratios["reference_over_fast"] = steps["mmr_universal_reference"]["ms"] / steps["mmr_universal"]["ms"]
        for mode in modes:
            tag = mode.replace("-", "_")
            compiled = steps[f"mmr_universal_compiled_{tag}"]["ms"]
            ratios[f"eager_over_compiled_{tag}"] = steps["mmr_universal"]["ms"] / compiled
    if "certify" in parts:
        results["certify"] = certify_figures(args, device)
        per_point = results["certify"]["seconds_per_point"]
        ratios["certify_linf_over_l1"] = per_point["linf"]["total"] / per_point["l1"]["total"]
    if "published" in parts:
        results["published_cascade"] = published_cascade_figures(args, device)
    print(f"{results['hardware']}: " + ", ".join(f"{k} {v:.2f}x" for k, v in ratios.items()))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(results, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
