"""mip_workers=N: the cascade's MIP solves in N worker processes give the records one process gives;
device= and mip_workers= are checked before any work."""

from __future__ import annotations

import dataclasses
from collections import defaultdict

import pytest
import torch

from mmru import certify
from mmru.certification.cascade import CascadeOptions, certify_batch
from mmru.certification.mip_pool import MIPJob, MIPPool
from mmru.errors import ConfigError
from mmru.models import mlp
from tiny_nets import through_the_box


def _without_seconds(records) -> list[dict]:
    return [{k: v for k, v in dataclasses.asdict(r).items() if k != "seconds"} for r in records]


def test_two_workers_give_the_records_of_one_process():
    """Bounds and attacks off, so the MIP decides every point the region leaves open: in l_1 and
    l_∞, with eps chosen so that some points are certified and some attacked by the MIP; then
    the radii stage's MIP distance searches go to the same pool."""
    net = through_the_box(mlp((4,), 3, (8, 8)).double(), 3)
    x = torch.rand(12, 4, generator=torch.Generator().manual_seed(7), dtype=torch.float64)
    with torch.no_grad():
        y = net(x).argmax(1)
    eps = {"l1": 0.25, "linf": 0.08}
    options = CascadeOptions(bounds=(), attack="none", mip=True, mip_time_limit=300, radii=True)
    runs, statuses = [], []
    for workers in (1, 2):
        with _SpyPool(workers) as pool:
            runs.append(certify_batch(net, list(range(len(x))), x, y, eps, options, defaultdict(float), pool))
        statuses.append(pool.statuses)
    if "timeout" in statuses[0] + statuses[1]:  # only a 300 s time limit on a tiny MILP
        pytest.skip("HiGHS reached its time limit on a tiny MILP")
    assert statuses[0] == statuses[1] and {"robust", "attacked", "radius"} <= set(statuses[1])
    assert _without_seconds(runs[0]) == _without_seconds(runs[1])
    by_mip = [r for r in runs[1] if "mip" in (r.certified_by, r.attacked_by)]
    assert {r.status for r in by_mip} == {"certified", "attacked"}, "the MIP must decide both ways here"


class _SpyPool(MIPPool):
    """Keeps the solver's statuses in order: mip_verify's, and for a distance search 'radius'
    (or 'timeout' when it did not finish)."""

    def __init__(self, workers):
        super().__init__(workers)
        self.statuses = []

    def map(self, fn, net64, jobs):
        results = super().map(fn, net64, jobs)
        self.statuses += [getattr(r, "status", None) or ("timeout" if r.radius is None else "radius")
                          for r in results]
        return results


def test_a_pool_of_one_solves_in_this_process(monkeypatch):
    """workers=1 never starts a process (so a patched solver is the one called)."""
    calls = []
    monkeypatch.setattr("mmru.certification.mip_pool.mip_verify", lambda *a, **k: calls.append(a) or "done")
    with MIPPool(1) as pool:
        jobs = [MIPJob(torch.zeros(1, 4), 0, 0.1, 1.0, 5.0)] * 2
        assert pool.solve_all(None, jobs) == ["done", "done"] and pool._executor is None
    assert len(calls) == 2


@pytest.mark.parametrize("workers", [0, -1, 1.5, True, "2"])
def test_bad_worker_counts_are_refused(workers):
    with pytest.raises(ValueError, match="workers must be an integer >= 1"):
        MIPPool(workers)
    with pytest.raises(ConfigError, match="mip_workers must be an integer >= 1"):
        certify(mlp((4,), 3, (8,)), torch.zeros(1, 4), torch.zeros(1, dtype=torch.long), {"linf": 0.1},
                mip_workers=workers)


@pytest.mark.skipif(torch.cuda.is_available(), reason="the refusal is for machines without a GPU")
def test_a_gpu_asked_for_on_a_machine_without_one_is_refused_in_one_sentence():
    with pytest.raises(ConfigError, match="asks for a GPU, but torch sees no CUDA device"):
        certify(mlp((4,), 3, (8,)), torch.zeros(1, 4), torch.zeros(1, dtype=torch.long), {"linf": 0.1},
                device="cuda")
