"""Training step time of each scheme of the union comparison, relative to plain and to MMR-Universal.

One process, one thread, cnn_small, one batch of 128 mnist5k training points, forward + backward of
each scheme's objective at the middle of the IBP ramp (eps_factor 0.5, kappa 0.75, beta 0.5) and,
for CROWN-IBP, after it (beta 0: IBP's cost). The schemes take turns, round after round, so that a
change in the machine's load hits all of them alike; the median over the rounds is reported.

    PYTHONPATH=src python reports/union_mnist5k/step_time.py [rounds]
"""

from __future__ import annotations

import statistics
import sys
import time

import torch

from mmru.data import load_mnist5k
from mmru.models import cnn_small
from mmru.regularizers import Regularizer
from mmru.regularizers.ibp_union import CROWNIBPUnion, IBPUnion
from mmru.regularizers.universal import MMRUniversal
from mmru.regularizers.universal_ibp import UniversalIBP

EPS = {"l1": 1.0, "l2": 0.3, "linf": 0.1}
MMR = dict(lambda_1=3.0, lambda_inf=12.0, gamma_1=1.0, gamma_inf=0.15)


def main(rounds: int) -> None:
    torch.set_num_threads(1)
    train = load_mnist5k("train")
    x, y = train.tensors[0][:128], train.tensors[1][:128]
    torch.manual_seed(0)
    net = cnn_small()
    ramp = dict(warmup_epochs=1.0, ramp_epochs=2.0)
    schemes = {
        "plain": Regularizer(),
        "universal": MMRUniversal(**MMR),
        "ibp_union": IBPUnion(EPS, **ramp),
        "crown_ibp_union (beta 0.5)": CROWNIBPUnion(EPS, **ramp),
        "crown_ibp_union (beta 0)": CROWNIBPUnion(EPS, **ramp),
        "universal_ibp": UniversalIBP(**MMR, eps=EPS, **ramp),
    }
    for name, reg in schemes.items():
        reg.on_epoch_start(2, 10)
        reg.on_step_start(3.0 if name.endswith("(beta 0)") else 2.0)
    times: dict[str, list[float]] = {name: [] for name in schemes}
    for _ in range(rounds + 1):  # the first round warms up and is dropped
        for name, reg in schemes.items():
            net.zero_grad()
            start = time.perf_counter()
            reg.training_loss(net, x, y).loss.backward()
            times[name].append(time.perf_counter() - start)
    median = {name: statistics.median(t[1:]) for name, t in times.items()}
    print(f"| scheme | step time (s) | x plain | x universal |  ({rounds} rounds, 1 thread, median)")
    print("|---|---|---|---|")
    for name, t in median.items():
        print(f"| {name} | {t:.3f} | {t / median['plain']:.1f} | {t / median['universal']:.2f} |")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 5)
