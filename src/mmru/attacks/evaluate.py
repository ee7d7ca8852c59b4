"""Attacks for the lower bound (LB) on the robust test error, and the check every
counterexample must pass before it counts.

LB = fraction of test points with a counterexample in the l_p ball of radius eps_p (Sec. 5 of
the paper; the paper used PGD for l1/l2/l∞). ``strength='strong'`` adds the two APGD attacks
of AutoAttack (Croce & Hein 2020, package ``pyautoattack``) with their AutoAttack-standard
settings: APGD on the cross-entropy and targeted APGD on the DLR margin loss.
"""

from __future__ import annotations

import copy
import math
from typing import Literal

import torch
from pyautoattack.autopgd_base import APGDAttack, APGDAttack_targeted
from torch import nn

from mmru.attacks.geometry import CHECK_MARGIN, adversarial_norm, as_p, snap_to_ball
from mmru.attacks.projected_gradient import attack_mode, pgd

#: 'fast': PGD steps and restarts per point
FAST_STEPS = 100
FAST_RESTARTS = 3

#: APGD iterations (AutoAttack standard uses 100 for APGD-CE and APGD-T)
APGD_ITERS = 100

_APGD_NORM = {1.0: "L1", 2.0: "L2", math.inf: "Linf"}


def check_adversarial(
    net: nn.Module, x: torch.Tensor, x_adv: torch.Tensor, y: torch.Tensor, eps: float, p: float | int | str
) -> torch.Tensor:
    """Whether each x_adv is a genuine counterexample; only these count toward LB.

    All three conditions are checked in float64 on the point exactly as given (no projection):
      - ``||x_adv - x||_p <= eps * (1 - CHECK_MARGIN)``: the margin is in the sound direction,
        it covers float64 rounding of the norm (attack outputs leave a larger gap, see
        :func:`mmru.attacks.geometry.snap_to_ball`);
      - ``0 <= x_adv <= 1`` coordinate-wise;
      - a float64 copy of ``net`` gives some class c != y a logit strictly above y's
        (a tie is not a misclassification).
    """
    in_ball = adversarial_norm(x, x_adv, p) <= eps * (1.0 - CHECK_MARGIN)
    a64 = x_adv.detach().double()
    in_box = ((a64 >= 0) & (a64 <= 1)).flatten(1).all(1)
    net64 = copy.deepcopy(net).double()
    with torch.no_grad():
        logits = net64(a64)
    true = logits.gather(1, y.view(-1, 1)).squeeze(1)
    other = logits.scatter(1, y.view(-1, 1), -math.inf).amax(1)
    return (in_ball & in_box & (other > true)).to(x.device)


def attack(
    net: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    p: float | int | str,
    strength: Literal["fast", "strong"] = "fast",
) -> torch.Tensor:
    """Counterexamples for the LB: x_adv in the eps-ball and box, checked per stage.

    'fast': PGD (:func:`mmru.attacks.projected_gradient.pgd`) with ``FAST_RESTARTS`` restarts of
    ``FAST_STEPS`` steps. 'strong': then APGD-CE and APGD-T (pyautoattack) on the points
    that no checked counterexample has broken yet. A later stage replaces a point's output
    only with one that passes :func:`check_adversarial`; points never broken keep PGD's
    highest-loss point (in the ball too). Count LB with
    ``check_adversarial(net, x, attack(...), y, eps, p)``.
    """
    if strength not in ("fast", "strong"):
        raise ValueError(f"strength must be 'fast' or 'strong', got {strength!r}")
    p = as_p(p)
    x, y = x.detach(), y.detach()
    x_adv = pgd(net, x, y, eps, p, steps=FAST_STEPS, restarts=FAST_RESTARTS)
    broken = check_adversarial(net, x, x_adv, y, eps, p)
    if strength == "strong":
        with torch.no_grad():
            num_classes = net(x[:1]).shape[1]
        for apgd in _apgd_attacks(net, eps, p, num_classes):
            todo = (~broken).nonzero().squeeze(1)
            if todo.numel() == 0:
                break
            # APGD re-seeds torch's global generator; keep the caller's stream untouched
            with attack_mode(net), torch.random.fork_rng(devices=[]):
                cand = apgd.perturb(x[todo], y[todo])
            cand = snap_to_ball(x[todo], cand.to(x.dtype), eps, p)
            ok = check_adversarial(net, x[todo], cand, y[todo], eps, p)
            x_adv[todo] = torch.where(ok.view(-1, *[1] * (x.dim() - 1)), cand, x_adv[todo])
            broken[todo] = ok
    return x_adv


def _apgd_attacks(net: nn.Module, eps: float, p: float, num_classes: int) -> list[APGDAttack]:
    """APGD-CE and APGD-T with AutoAttack's 'standard' settings for this norm.

    For l_1 that means 5 restarts and the eps schedule 3-2-1 x eps ("largereps") for APGD-CE,
    5 target classes for APGD-T; 1 restart and 9 targets otherwise. The targeted DLR loss
    reads the 4th-largest logit, so APGD-T needs at least 4 classes; with fewer only
    APGD-CE runs.
    """
    norm, l1 = _APGD_NORM[p], p == 1.0
    seed = int(torch.randint(0, 2**31 - 1, ()).item())  # follows torch.manual_seed
    ce = APGDAttack(
        net, n_iter=APGD_ITERS, norm=norm, eps=eps, n_restarts=5 if l1 else 1,
        loss="ce", use_largereps=l1, seed=seed, device=_device(net),
    )
    if num_classes < 4:
        return [ce]
    targeted = APGDAttack_targeted(
        net, n_iter=APGD_ITERS, norm=norm, eps=eps, n_restarts=1,
        n_target_classes=min(5 if l1 else 9, num_classes - 1), use_largereps=l1, seed=seed,
        device=_device(net),
    )
    return [ce, targeted]


def _device(net: nn.Module) -> torch.device:
    return next(net.parameters()).device

