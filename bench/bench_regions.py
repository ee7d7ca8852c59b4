"""Time one MMR-Universal training step: the fast region geometry against the authors' method.

cnn_small on MNIST shapes, batch 128, fp32. One step = forward + backward of cross-entropy plus
MMR-Universal (eq 17). Three steps are timed in the same process on the same weights and batch:
plain cross-entropy (for scale), the fast path of :mod:`mmru.regions`, and the reference that
pushes d identity images through the network (``geometry='reference'``); first, the two paths'
distances are compared. TF32 is off on CUDA. Peak memory is ``torch.cuda.max_memory_allocated``
on CUDA; on CPU it is the growth of the process's resident memory over the steps, sampled every
half millisecond.

    python bench/bench_regions.py [--out bench/regions.json] [--device cpu|cuda] [--threads N]
                                  [--repeats 3] [--reference-repeats 1]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import threading
import time

import torch
import torch.nn.functional as F

from mmru.models import cnn_small
from mmru.regions import INF
from mmru.regularizers.mmr import distances_for
from mmru.regularizers.universal import MMRUniversal


class RssPeak:
    """Peak growth of this process's resident set while the block runs (CPU memory)."""

    def __enter__(self):
        self.start = self.peak = _rss()
        self.running = True
        self.thread = threading.Thread(target=self._sample, daemon=True)
        self.thread.start()
        return self

    def _sample(self):
        while self.running:
            self.peak = max(self.peak, _rss())
            time.sleep(0.0005)

    def __exit__(self, *exc):
        self.running = False
        self.thread.join()
        self.bytes = max(self.peak, _rss()) - self.start


def _rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def measure(step, device: torch.device, repeats: int) -> dict:
    """Median wall time (ms) of ``repeats`` steps after one warm-up, and their peak memory (MB)."""
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)
    step()
    sync()
    times = []
    if device.type == "cuda":
        base = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
    with RssPeak() as mem:
        for _ in range(repeats):
            start = time.perf_counter()
            step()
            sync()
            times.append((time.perf_counter() - start) * 1e3)
    peak = torch.cuda.max_memory_allocated() - base if device.type == "cuda" else mem.bytes
    times.sort()
    return {"ms": times[len(times) // 2], "ms_all": times, "peak_mb": peak / 2**20}


def _rel_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    finite = torch.isfinite(b)
    return ((a[finite] - b[finite]).abs() / b[finite].abs().clamp_min(1e-12)).max().item()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default=None, help="write the figures as JSON here")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--repeats", type=int, default=3, help="timed steps of plain CE and the fast path")
    parser.add_argument("--reference-repeats", type=int, default=1, help="timed steps of the (slow) reference")
    parser.add_argument("--batch", type=int, default=128)
    parser.add_argument("--threads", type=int, default=None, help="CPU threads (default: torch's choice)")
    args = parser.parse_args()
    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    # fp32 means fp32: TF32 convs (cuDNN's default) would blur the reference, whose rows are convs
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False

    torch.manual_seed(0)
    net = cnn_small((1, 28, 28), 10).to(device)
    x = torch.rand(args.batch, 1, 28, 28, device=device)
    y = torch.randint(0, 10, (args.batch,), device=device)
    regs = {g: MMRUniversal(3.0, 12.0, 1.0, 0.15, geometry=g) for g in ("fast", "reference")}

    def plain():
        net.zero_grad(set_to_none=True)
        F.cross_entropy(net(x), y).backward()

    def regularized(geometry):
        def step():
            net.zero_grad(set_to_none=True)
            regs[geometry].training_loss(net, x, y).loss.backward()

        return step

    with torch.no_grad():  # the two paths must agree before their times mean anything
        dist = {g: distances_for(net, x, y, [1, INF], g) for g in regs}
    diff = max(
        _rel_diff(getattr(dist["fast"][p], part), getattr(dist["reference"][p], part))
        for p in (1.0, INF)
        for part in ("boundary", "decision")
    )
    results = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "model": "cnn_small",
        "input": [1, 28, 28],
        "batch": args.batch,
        "distance_max_rel_diff": diff,
    }
    runs = [("plain_ce", plain, args.repeats), ("fast", regularized("fast"), args.repeats)]
    runs.append(("reference", regularized("reference"), args.reference_repeats))
    for name, step, repeats in runs:
        results[name] = measure(step, device, repeats)
        print(f"{name:>10}: {results[name]['ms']:9.1f} ms/step   peak {results[name]['peak_mb']:8.1f} MB", flush=True)
    results["speedup"] = results["reference"]["ms"] / results["fast"]["ms"]
    results["memory_ratio"] = results["reference"]["peak_mb"] / max(results["fast"]["peak_mb"], 1e-9)
    print(
        f"fast vs reference: {results['speedup']:.1f}x faster, {results['memory_ratio']:.1f}x less peak memory; "
        f"distances agree to {diff:.1e} ({results['device']}, {results['threads']} threads)"
    )
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)


if __name__ == "__main__":
    main()
