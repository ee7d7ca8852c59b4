"""A short MMR-Universal training on the GPU: per-step time, test error and median ρ.

The project's own modules without Lightning or Hydra (a device machine may lack them):
cnn_small on mnist5k, Adam 5e-4, batch 128, the demo's hyperparameters.

    python bench/train_gpu.py --mnist5k <path to mnist_5k.csv.gz> [--epochs 12] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from mmru.data.mnist5k import load_mnist5k
from mmru.models import cnn_small
from mmru.regions import region_distances, rho
from mmru.regularizers.universal import MMRUniversal


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--mnist5k", type=Path, default=None)
    parser.add_argument("--epochs", type=int, default=12)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    x, y = (t.to(device) for t in load_mnist5k("train", path=args.mnist5k).tensors)
    xt, yt = (t.to(device) for t in load_mnist5k("test", path=args.mnist5k).tensors)
    net = cnn_small((1, 28, 28), 10).to(device)
    scheme = MMRUniversal(lambda_1=3.0, lambda_inf=12.0, gamma_1=1.0, gamma_inf=0.15, lambda_warmup_epochs=3)
    optimizer = torch.optim.Adam(net.parameters(), lr=5e-4)
    step_ms = []
    for epoch in range(args.epochs):
        scheme.on_epoch_start(epoch, args.epochs)
        for idx in torch.randperm(len(x), device=device).split(128):
            start = time.perf_counter()
            loss = scheme.training_loss(net, x[idx], y[idx]).loss
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            if device == "cuda":
                torch.cuda.synchronize()
            step_ms.append(1000 * (time.perf_counter() - start))
    net.eval()
    with torch.no_grad():
        error = float((net(xt).argmax(1) != yt).float().mean())
        dist = region_distances(net.double(), xt.double(), yt, [1.0, float("inf")])
    figures = {
        "device": torch.cuda.get_device_name() if device == "cuda" else "cpu",
        "epochs": args.epochs, "steps": len(step_ms),
        "median_step_ms": sorted(step_ms)[len(step_ms) // 2], "total_s": sum(step_ms) / 1000,
        "test_error": error,
        "median_rho_1": float(rho(dist[1.0]).median()), "median_rho_inf": float(rho(dist[float("inf")]).median()),
    }
    print(json.dumps(figures, indent=2))
    if args.out:
        args.out.write_text(json.dumps(figures, indent=2))


if __name__ == "__main__":
    main()
