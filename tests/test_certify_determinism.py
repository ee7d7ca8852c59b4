"""The cascade's attacks are seeded by the points and the norm, not by the process: torch seeds a new
process at random, and a certification must give the same records in every run (and leave the
caller's random stream as it was)."""

from collections import defaultdict

import pytest
import torch

from mmru.attacks import attack
from mmru.certification.cascade import CascadeOptions, certify_batch
from mmru.models import mlp
from tiny_nets import through_the_box

pytestmark = pytest.mark.usefixtures("one_thread")

EPS = {"l1": 0.3, "l2": 0.15, "linf": 0.08}


def _setup():
    net = through_the_box(mlp((5,), 3, (8, 8)), 4).float().eval()
    x = torch.rand(12, 5, generator=torch.Generator().manual_seed(4))
    with torch.no_grad():
        y = net(x).argmax(1)
    return net, x, y


def _records(net, x, y, seed: int):
    torch.manual_seed(seed)
    records = certify_batch(net, list(range(100, 112)), x, y, EPS, CascadeOptions(bounds=(), attack="fast", mip=False),
                            defaultdict(float))
    return [(r.index, r.norm, r.status, r.adversarial_norm) for r in records], torch.rand(1)


def test_the_attacks_random_starts_matter_here():
    # control: unseeded, the attack's counterexamples do depend on the random stream
    net, x, y = _setup()
    torch.manual_seed(1)
    first = attack(net, x, y, EPS["l2"], 2.0)
    torch.manual_seed(2)
    assert not torch.equal(first, attack(net, x, y, EPS["l2"], 2.0))


def test_records_do_not_depend_on_the_process_random_state():
    net, x, y = _setup()
    records_1, after_1 = _records(net, x, y, seed=1)
    records_2, _ = _records(net, x, y, seed=2)
    assert any(status == "attacked" for _, _, status, _ in records_1)
    assert records_1 == records_2  # statuses and counterexample norms, to the bit
    torch.manual_seed(1)
    assert torch.equal(after_1, torch.rand(1))  # the caller's stream is untouched
