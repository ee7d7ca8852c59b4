"""Attacks the certification cascade does not run, aimed at the points it certified.

The cascade's lower bound uses PGD (100 steps, 3 restarts) and APGD-CE / APGD-T
(:func:`mmru.attacks.attack`). The audit adds the full AutoAttack standard suite of
``pyautoattack`` (APGD-CE, APGD-T, FAB-T, Square: gradient-based, minimum-norm and
gradient-free, with its own seed) and a long multi-restart PGD. A certified point that any of
them breaks, with a point passing :func:`mmru.attacks.check_adversarial` (float64, ball,
box, strict misclassification), disproves its certificate.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import torch
from pyautoattack import AutoAttack
from torch import nn

from mmru.attacks import adversarial_norm, attack_mode, check_adversarial, pgd, snap_to_ball
from mmru.attacks.projected_gradient import as_image_model

ATTACKS = ("autoattack", "pgd")

#: the long PGD: steps per run and runs from random starts per point
PGD_STEPS = 200
PGD_RESTARTS = 10

_AA_NORM = {1.0: "L1", 2.0: "L2", math.inf: "Linf"}


@dataclass
class AttackReport:
    """What the audit's attacks did to one norm's certified points (positions into x)."""

    attacked: int = 0  #: certified points attacked
    broken: dict[str, list[int]] = field(default_factory=dict)  #: attack -> positions with a checked counterexample
    norms: dict[str, list[float]] = field(default_factory=dict)  #: attack -> their counterexample norms
    rejected: dict[str, int] = field(default_factory=dict)  #: attack -> float32 successes failing the check
    seconds: dict[str, float] = field(default_factory=dict)


def autoattack(net: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, p: float, seed: int,
               batch_size: int = 250) -> torch.Tensor:
    """AutoAttack 'standard' (APGD-CE, APGD-T, FAB-T, Square), snapped into the ball and box.

    With fewer than 10 classes the targeted attacks use every other class as a target; the
    targeted DLR loss reads the 4th-largest logit, so APGD-T needs at least 4 classes.
    """
    with torch.no_grad():
        num_classes = net(x[:1]).shape[1]
    model, images = as_image_model(net, x)
    aa = AutoAttack(model, norm=_AA_NORM[p], eps=eps, version="standard", device=str(x.device), seed=seed)
    aa.apgd_targeted.n_target_classes = min(aa.apgd_targeted.n_target_classes, num_classes - 1)
    aa.fab.n_target_classes = min(aa.fab.n_target_classes, num_classes - 1)
    if num_classes < 4:
        aa.attacks_to_run = [a for a in aa.attacks_to_run if a != "apgd-t"]
    # the attacks re-seed torch's global generator; keep the caller's stream untouched
    with attack_mode(net), torch.random.fork_rng(devices=[]):
        x_adv, _ = aa.run_standard_evaluation(images, y, batch_size=batch_size)
    return snap_to_ball(x, x_adv.reshape(x.shape).to(x.dtype), eps, p)


def long_pgd(net: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, p: float, seed: int,
             steps: int = PGD_STEPS, restarts: int = PGD_RESTARTS) -> torch.Tensor:
    """PGD with ``restarts`` random starts of ``steps`` steps each (already in the ball and box)."""
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return pgd(net, x, y, eps, p, steps=steps, restarts=restarts)


def attack_certified(net: nn.Module, x: torch.Tensor, y: torch.Tensor, eps: float, p: float,
                     attacks: tuple[str, ...], seed: int, batch_size: int = 250,
                     pgd_schedule: tuple[int, int] = (PGD_STEPS, PGD_RESTARTS)) -> AttackReport:
    """Run ``attacks`` (plus the clean point itself) on x; every success re-checked in float64.

    ``pgd_schedule``: steps and restarts of the long PGD.
    """
    report = AttackReport(attacked=len(x))
    if len(x) == 0:
        return report
    runs = {"clean": lambda: x.clone(),
            "autoattack": lambda: autoattack(net, x, y, eps, p, seed, batch_size),
            "pgd": lambda: long_pgd(net, x, y, eps, p, seed, *pgd_schedule)}
    for name in ("clean", *attacks):
        start = time.perf_counter()
        x_adv = runs[name]().detach()
        report.seconds[name] = time.perf_counter() - start
        ok = check_adversarial(net, x, x_adv, y, eps, p)
        with torch.no_grad():
            claimed = net(x_adv).argmax(1) != y
        report.broken[name] = ok.nonzero().flatten().tolist()
        report.norms[name] = adversarial_norm(x, x_adv, p)[ok].tolist()
        report.rejected[name] = int((claimed & ~ok).sum())
    return report
