"""`make demo`: plain vs MMR-Universal cnn_small on the bundled MNIST subset, then certify.

Offline and on the CPU. A second run finds the finished checkpoints and certification
records in logs/demo and only prints the results again.
"""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch
from rich.console import Console

from mmru.certification.checkpoint import load_checkpoint
from mmru.certification.region import region_radii
from mmru.data import load_mnist5k
from mmru.training import compose_config, compose_train_config, train

OUT = Path("logs/demo")
#: the demo certifies the first 200 test points (the paper: 1000) with a 5 s MIP limit, to stay in minutes
CERTIFY = ["n_points=200", "mip_time_limit=5", "wandb.enabled=false"]
console = Console()


def train_once(name: str, overrides: list[str]) -> dict:
    """Train (or, when already done, just re-test) the demo model ``name``."""
    out = OUT / name
    last = out / "checkpoints" / "last.ckpt"
    resume = [f"ckpt_path={last.resolve()}"] if last.is_file() else []
    console.print(f"[bold]$ python train.py {' '.join(overrides)}[/bold]" + (" (resuming: already trained)" if resume else ""))
    cfg = compose_train_config([*overrides, "trainer.enable_model_summary=false", *resume], out)
    return train(cfg)


def median_rho(ckpt: str) -> dict[str, float]:
    """Median over the 1000 test points of ρ_p = min(d^B_p, |d^D_p|) (0 if misclassified)."""
    net, _ = load_checkpoint(ckpt)
    test = load_mnist5k("test")
    x, y = test.tensors
    radii = region_radii(net.double(), x, y, [1.0, float("inf")])
    return {"rho_1": float(radii[1.0].radius.median()), "rho_inf": float(radii[float("inf")].radius.median())}


def main() -> None:
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "2")))
    start = time.perf_counter()
    results = {}
    for name in ("plain", "universal"):
        metrics = train_once(name, [f"experiment=demo_{name}"])
        results[name] = {"test_error": metrics["test/error"], "ckpt": metrics["checkpoint"],
                         **median_rho(metrics["checkpoint"])}
    console.rule("plain vs MMR-Universal on mnist5k (1000 test points)")
    for name, r in results.items():
        console.print(f"{name:>10}: test error {100 * r['test_error']:5.2f}%   "
                      f"median ρ_1 {r['rho_1']:.2e}   median ρ_∞ {r['rho_inf']:.2e}")
    console.rule("certify the MMR-Universal model (python certify.py ckpt=...)")
    from mmru.certification.runner import run_certification

    ckpt = results["universal"]["ckpt"]
    console.print(f"[bold]$ python certify.py ckpt={ckpt} {' '.join(CERTIFY)}[/bold]")
    run_certification(compose_config("certify", [f"ckpt={ckpt}", *CERTIFY]))
    console.print(f"demo finished in {time.perf_counter() - start:.0f} s; outputs in {OUT}/")


if __name__ == "__main__":
    main()
