"""Adversarial attacks for l_1, l_2 and l_inf balls within the [0,1] box.

- :func:`pgd`: cheap PGD, for adversarial training and as the first evaluation stage.
- :func:`attack`: the LB attack ('fast' PGD with restarts, 'strong' adds APGD-CE / APGD-T).
- :func:`check_adversarial`: the strict float64 check a counterexample must pass to count.
"""

from mmru.attacks.evaluate import attack, check_adversarial
from mmru.attacks.geometry import adversarial_norm, snap_to_ball
from mmru.attacks.projected_gradient import attack_mode, pgd

__all__ = ["adversarial_norm", "attack", "attack_mode", "check_adversarial", "pgd", "snap_to_ball"]
