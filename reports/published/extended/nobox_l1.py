"""Diagnostic: does the [0, 1] box explain the paper's higher l1 lower bound on Fashion-MNIST?

On the published F-MNIST network's first 1000 test points, among the points the certification
left neither misclassified nor attacked in l1, count those one l1 attack at eps 1 breaks twice:
keeping the box (x + delta in [0, 1]^d, mmru's threat model and ``check_adversarial``'s), and
dropping it (delta only in the l1 ball). The attack is the same otherwise: steps along the
gradient's top 1 % coordinates of l1 length eps/2 (then eps/10 for the second half), the exact
projection onto the l1 ball (Duchi et al. 2008), then the box where kept; 200 steps, 5 restarts
(the first from x). Deliberately not mmru's attack code, whose every step keeps the box.

    python reports/published/extended/nobox_l1.py reports/published/runs/fmnist_published/points.jsonl

(from the repository root, after ``make data``); writes nobox_l1.json beside this file.
"""

import json
import math
import sys
from pathlib import Path

import torch
import torch.nn.functional as F
import torchvision

from mmru.convert import load_model

EPS, STEPS, RESTARTS, SPARSITY = 1.0, 200, 5, 0.01


def project_l1(delta: torch.Tensor, eps: float) -> torch.Tensor:
    """Each row of delta projected onto the l1 ball of radius eps (sort-based, Duchi et al. 2008)."""
    size = delta.abs()
    over = size.sum(1) > eps
    if not over.any():
        return delta
    ranked, _ = size[over].sort(1, descending=True)
    cumulative = ranked.cumsum(1)
    j = torch.arange(1, ranked.shape[1] + 1)
    rho = ((ranked - (cumulative - eps) / j) > 0).sum(1, keepdim=True)
    theta = ((cumulative.gather(1, rho - 1) - eps) / rho).clamp_min(0)
    out = delta.clone()
    out[over] = delta[over].sign() * (size[over] - theta).clamp_min(0)
    return out


def broken(net, x: torch.Tensor, y: torch.Tensor, box: bool) -> torch.Tensor:
    """[B] bool: some iterate was misclassified inside the l1 ball (and the box, if kept)."""
    flat = x.flatten(1)
    k = math.ceil(SPARSITY * flat.shape[1])
    fooled = torch.zeros(len(y), dtype=torch.bool)
    for restart in range(RESTARTS):
        delta = torch.zeros_like(flat)
        if restart:
            delta = project_l1(torch.randn_like(flat).sign() * torch.rand_like(flat) * 2 * EPS / flat.shape[1], EPS)
        if box:
            delta = (flat + delta).clamp(0, 1) - flat
        for step in range(STEPS):
            delta.requires_grad_(True)
            loss = F.cross_entropy(net((flat + delta).view_as(x)), y, reduction="sum")
            (grad,) = torch.autograd.grad(loss, delta)
            with torch.no_grad():
                if box:  # a coordinate at the face it would move through cannot help
                    at = flat + delta
                    grad = grad.masked_fill(((grad > 0) & (at >= 1)) | ((grad < 0) & (at <= 0)), 0)
                grad = grad * (grad.abs() >= grad.abs().topk(k, 1).values[:, -1:])
                length = EPS * (0.5 if step < STEPS // 2 else 0.1)
                delta = project_l1(delta + length * grad / grad.abs().sum(1, keepdim=True).clamp_min(1e-30), EPS)
                if box:  # clipping towards x only shrinks |delta_i|: still in the ball
                    delta = (flat + delta).clamp(0, 1) - flat
                x_adv = flat + delta
                valid = delta.abs().sum(1) <= EPS * (1 + 1e-6)
                if box:
                    valid &= ((x_adv >= 0) & (x_adv <= 1)).all(1)
                fooled |= valid & (net(x_adv.view_as(x)).argmax(1) != y)
    return fooled


def main(points_file: str) -> None:
    torch.manual_seed(0)
    net = load_model("zoo/croce-hein-2020/mmr_univ_fmnist.mat").eval()
    status = {r["index"]: r["status"] for r in map(json.loads, open(points_file)) if r["norm"] == "l1"}
    test = torchvision.datasets.FashionMNIST("data", train=False, download=False)
    x, y = (test.data[:1000].float() / 255).unsqueeze(1), test.targets[:1000]
    with torch.no_grad():
        correct = net(x).argmax(1) == y
    todo = [i for i in range(1000) if correct[i] and status[i] != "attacked"]
    out = {"points": len(todo), "certified_by_mmru": sum(status[i] == "certified" for i in todo),
           "undecided_by_mmru": [i for i in todo if status[i] == "undecided"],
           "mmru_attacked": sum(s == "attacked" for s in status.values())}
    for box in (True, False):
        hit = broken(net, x[todo], y[todo], box)
        indices = [todo[j] for j in torch.nonzero(hit).flatten().tolist()]
        out["box" if box else "no_box"] = {"broken": len(indices), "indices": indices,
                                           "of_them_certified_by_mmru": [i for i in indices if status[i] == "certified"]}
        print(f"box {'kept' if box else 'dropped'}: {len(indices)} points broken: {indices}", flush=True)
    Path(__file__).with_suffix(".json").write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main(sys.argv[1])
