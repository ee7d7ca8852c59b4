"""The cascade's exact MIP solves, one point each, in this process or in N worker processes.

Each solve (:func:`mmru.verify.mip_verify`) is independent of the others and deterministic
(HiGHS or SCIP, with one thread and a fixed seed), so running the points of a batch in parallel worker
processes changes nothing but the wall time: the results come back in the points' order and
are the same as in this process (a test compares them), except where a time limit stops a
solve, whose outcome depends on the machine's speed either way. Workers are spawned (not
forked: the parent may hold CUDA or OpenMP state) and each uses one torch thread, so N workers
keep N cores busy while the GPU or the parent runs the other stages.
"""

from __future__ import annotations

import multiprocessing
from collections.abc import Callable
from concurrent.futures import Executor, ProcessPoolExecutor
from dataclasses import dataclass
from typing import Any

import torch

from mmru.models import ReLUNet
from mmru.verify import MIPResult, mip_verify


@dataclass(frozen=True)
class MIPJob:
    """One point's question: is ``net`` robust on the l_p ball of radius ``eps`` around ``x``?"""

    x: torch.Tensor  #: [1, *input_shape] float64, on the CPU
    y: int
    eps: float
    p: float
    time_limit: float
    tighten_bounds: bool = True  #: LP tightening of the big-M constants first (l1, l_inf)
    solver: str = "highs"  #: "highs" or "scip" for l1 and l_inf (l2: SCIP always)


def solve(net64: ReLUNet, job: MIPJob) -> MIPResult:
    """One job, in whichever process runs it."""
    return mip_verify(net64, job.x, job.y, job.eps, job.p, time_limit=job.time_limit,
                      tighten_bounds=job.tighten_bounds, solver=job.solver)


def _init_worker() -> None:
    torch.set_num_threads(1)  # one core per worker: N workers, N cores


class MIPPool:
    """Runs :class:`MIPJob` lists with ``workers`` processes (1: in this process, no pool).

    Use as a context manager around a whole certification run, so that the workers start once
    (a spawned worker imports torch: seconds) and are shut down at the end::

        with MIPPool(4) as pool:
            results = pool.solve_all(net64, jobs)
    """

    def __init__(self, workers: int = 1):
        if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
            raise ValueError(f"workers must be an integer >= 1, got {workers!r}")
        self.workers = workers
        self._executor: Executor | None = None

    def __enter__(self) -> MIPPool:
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        if self._executor is not None:
            self._executor.shutdown(cancel_futures=True)
            self._executor = None

    def solve_all(self, net64: ReLUNet, jobs: list[MIPJob]) -> list[MIPResult]:
        """The results of ``jobs``, in their order; ``net64`` must be a float64 net on the CPU."""
        return self.map(solve, net64, jobs)

    def map(self, fn: Callable[[ReLUNet, Any], Any], net64: ReLUNet, jobs: list) -> list:
        """``[fn(net64, job) for job in jobs]``, in the workers when there are several; ``fn``
        must be a module-level function and the jobs picklable (e.g. the radii stage's
        :func:`mmru.certification.radii.mip_radius` on its ``RadiusJob`` s)."""
        if self.workers == 1 or len(jobs) <= 1:
            return [fn(net64, job) for job in jobs]
        if self._executor is None:
            self._executor = ProcessPoolExecutor(self.workers, mp_context=multiprocessing.get_context("spawn"),
                                                 initializer=_init_worker)
        futures = [self._executor.submit(fn, net64, job) for job in jobs]
        return [f.result() for f in futures]
