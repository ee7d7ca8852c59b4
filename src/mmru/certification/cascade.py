"""The per-point certification cascade: cheap certificates first, expensive ones only where needed.

For each norm, on one batch of test points:
  1. linear region (Theorem 2.1; its exact case also yields counterexamples);
  2. bound propagation over the l_p ball (KW, then CROWN) on what is still undecided;
  3. attacks (PGD, then APGD) on what is still undecided: lower bound;
  4. exact MIP on what is still undecided, with a per-point time limit: a MILP (HiGHS) for l_1
     and l_∞, a MIP with the convex quadratic ball constraint (SCIP) for l_2; ``mip_norms`` says
     which norms get it. It runs after stages 1-3 of every norm, so that with ``mip_scope='union'``
     it can skip the points already attacked in some norm (their union verdict is known).
A point is *certified* when a method proves r_p(x) > eps, *attacked* when a counterexample of
norm <= eps passed the float64 re-check (misclassified points: norm 0), else *undecided*.

Stages 1-3 run on ``CascadeOptions.device`` (a GPU where there is one); the MIP always runs on
the CPU, in ``mip_workers`` processes (:mod:`mmru.certification.mip_pool`). Every certified
quantity is computed in float64 with rounding bounds that hold for any summation order, so a
GPU's float64 arithmetic is covered as the CPU's is.
"""

from __future__ import annotations

import copy
import math
import time
import zlib
from collections import defaultdict
from dataclasses import dataclass

import torch

from mmru.attacks import adversarial_norm, attack, check_adversarial
from mmru.certification.mip_pool import MIPJob, MIPPool
from mmru.certification.radii import norm_radii
from mmru.certification.records import ATTACKED, CERTIFIED, UNDECIDED, PointRecord, finite_or_none
from mmru.certification.region import RegionResult, region_radii
from mmru.models import ReLUNet
from mmru.verify import certify as bound_certify

INF = math.inf
NORMS = {"l1": 1.0, "l2": 2.0, "linf": INF}


@dataclass
class CascadeOptions:
    bounds: tuple[str, ...] = ("kw", "crown")  #: bound-propagation methods, in order
    attack: str = "strong"  #: 'none', 'fast' (PGD) or 'strong' (PGD + APGD)
    mip: bool = True  #: exact MIP on undecided points, for the norms in ``mip_norms``
    mip_time_limit: float = 120.0  #: seconds per point (the paper's setting)
    device: str = "cpu"  #: where the region, bound and attack stages run ('cpu', 'cuda', 'cuda:1', ...)
    radii: bool = False  #: then each method's largest certified radius per point (mmru.certification.radii)
    mip_norms: tuple[str, ...] = ("l1", "l2", "linf")  #: the norms the MIP runs for (config names)
    #: the norms (l1, linf) whose MILPs first tighten their big-M constants by LP (``lp_tightening``):
    #: measured on the published F-MNIST net, it decided l_inf points that timed out, while on l1 points
    #: its LPs cost more time than the MILP saved (35 s -> 105 s, 40 s -> timeout at 120 s)
    mip_tighten_norms: tuple[str, ...] = ("linf",)
    #: the norms (l1, linf) whose MILPs SCIP solves instead of HiGHS (l2's always go to SCIP): on the
    #: published F-MNIST net's l1 points HiGHS left undecided at 120 s, SCIP proved the same MILPs
    #: infeasible in 2 s (README, Exact stage)
    mip_scip_norms: tuple[str, ...] = ("l1",)
    #: 'all': the exact stage decides every norm's undecided points (exact per-norm robust errors);
    #: 'union': only the points whose union verdict is still open (correct, attacked in no norm), the
    #: norms in the order l_inf, l1, l2, so that an exact l_inf counterexample spares the other two. The
    #: union bounds are those of 'all' (a skipped point is attacked in another norm either way); the
    #: per-norm UBs stay sound but can be looser. On the published F-MNIST net the points attacked in
    #: some norm took 7,900 of the exact stage's 9,200 solver seconds.
    mip_scope: str = "all"

    def mip_order(self) -> list[float]:
        """The p of the norms the exact stage runs for, in the order it runs them."""
        order = ("linf", "l1", "l2") if self.mip_scope == "union" else ("l1", "l2", "linf")
        return [NORMS[name] for name in order if name in self.mip_norms] if self.mip else []

    def mip_covers(self, p: float) -> bool:
        """Whether the exact MIP runs for the l_p norm (``mip`` on and p among ``mip_norms``)."""
        return self.mip and any(NORMS[name] == p for name in self.mip_norms)


@dataclass
class _State:
    """Running per-point outcome for one norm."""

    radius: torch.Tensor
    radius_by: list[str | None]
    adv_norm: torch.Tensor
    adv_by: list[str | None]
    seconds: torch.Tensor
    proven: torch.Tensor  #: [B] bool, robust on the closed ball of radius eps

    def certify(self, mask: torch.Tensor, radius: torch.Tensor | float, method: str, closed_ball: bool = False) -> None:
        """Record r_p(x) >= radius; ``closed_ball``: the method proved robustness at radius itself."""
        for i in mask.nonzero().flatten().tolist():
            r = float(radius[i]) if torch.is_tensor(radius) else radius
            if r > self.radius[i]:
                self.radius[i], self.radius_by[i] = r, method
            self.proven[i] |= closed_ball

    def attacked(self, mask: torch.Tensor, norms: torch.Tensor, method: str) -> None:
        for i in mask.nonzero().flatten().tolist():
            if norms[i] < self.adv_norm[i]:
                self.adv_norm[i], self.adv_by[i] = float(norms[i]), method


def certify_batch(
    net: ReLUNet, indices: list[int], x: torch.Tensor, y: torch.Tensor, eps: dict[str, float], options: CascadeOptions,
    timings: dict[str, float], mip_pool: MIPPool | None = None,
) -> list[PointRecord]:
    """All records for one batch and every norm in ``eps``; adds seconds per stage to ``timings``.

    ``x``, ``y`` on the CPU; the MIP solves go to ``mip_pool`` (in this process when None).
    """
    device = torch.device(options.device)
    labels = y.tolist()
    net = copy.deepcopy(net).eval().to(device)  # the caller's net stays where it is
    net64 = copy.deepcopy(net).double()
    mip_net = copy.deepcopy(net64).cpu()
    x, y = x.to(device), y.to(device)
    n = len(indices)
    with torch.no_grad():
        correct = (net64(x.double()).argmax(1) == y).cpu()
    start = time.perf_counter()
    regions = {p: _on_cpu(r) for p, r in region_radii(net64, x, y, [NORMS[name] for name in eps]).items()}
    timings["region"] += time.perf_counter() - start
    pool = mip_pool or MIPPool(1)
    states: dict[str, _State] = {}
    for name, radius_eps in eps.items():
        p = NORMS[name]
        st = states[name] = _State(torch.zeros(n, dtype=torch.float64), [None] * n,
                                   torch.full((n,), INF, dtype=torch.float64),
                    [None] * n, torch.zeros(n, dtype=torch.float64), torch.zeros(n, dtype=torch.bool))
        st.attacked(~correct, torch.zeros(n), "misclassified")
        st.certify(correct, regions[p].radius, "region")
        st.proven |= correct & (st.radius > radius_eps)
        st.attacked(regions[p].adversarial, regions[p].adversarial_norm, "region")
        for method in options.bounds:
            _stage(st, timings, method, _undecided(st, correct, radius_eps), lambda idx, m=method: st.certify(_full(
                idx, n, _bounds(net64, x, y, idx, radius_eps, p, m)), radius_eps, m, True))
        if options.attack != "none":
            _stage(st, timings, "attack", _undecided(st, correct, radius_eps),
                   lambda idx: _attack(net, x, y, idx, radius_eps, p, options, st, indices))
    names = {NORMS[name]: name for name in eps}
    for p in (p for p in options.mip_order() if p in names):
        name = names[p]
        todo = _undecided(states[name], correct, eps[name])
        if options.mip_scope == "union":  # a point attacked in some norm is in the union error already
            for other, st in states.items():
                todo &= ~(st.adv_norm <= eps[other])
        if todo.any():
            start = time.perf_counter()
            _mip(mip_net, pool, x.cpu(), labels, todo.nonzero().flatten(), eps[name], p, options, states[name])
            timings["mip"] += time.perf_counter() - start
    records = []
    for name, radius_eps in eps.items():
        p, st = NORMS[name], states[name]
        radii = [None] * n
        if options.radii:
            radii = norm_radii(net64, mip_net, x, y, p, radius_eps, correct, regions[p].radius, st, options, timings,
                               pool)
        for i in range(n):
            if st.proven[i]:
                status = CERTIFIED
            elif st.adv_norm[i] <= radius_eps:
                status = ATTACKED
            else:
                status = UNDECIDED
            records.append(PointRecord(
                index=indices[i], norm=name, eps=radius_eps, label=labels[i], correct=bool(correct[i]), status=status,
                region_radius=float(regions[p].radius[i]), certified_radius=float(st.radius[i]), certified_by=st.radius_by[i],
                adversarial_norm=finite_or_none(float(st.adv_norm[i])), attacked_by=st.adv_by[i],
                seconds=float(st.seconds[i]), radii=radii[i],
            ))
    return records


def _undecided(st: _State, correct: torch.Tensor, eps: float) -> torch.Tensor:
    """The points neither certified nor attacked yet (misclassified ones count as attacked)."""
    return correct & ~st.proven & ~(st.adv_norm <= eps)


def _on_cpu(result: RegionResult) -> RegionResult:
    return RegionResult(*(t.cpu() for t in (result.radius, result.adversarial, result.adversarial_norm)))


def _stage(st: _State, timings: dict[str, float], name: str, todo: torch.Tensor, run) -> None:
    """Run one batched stage on the points in ``todo``; its wall time is split evenly among them."""
    idx = todo.nonzero().flatten()
    if len(idx) == 0:
        return
    start = time.perf_counter()
    run(idx)
    spent = time.perf_counter() - start
    timings[name] += spent
    st.seconds[idx] += spent / len(idx)


def _full(idx: torch.Tensor, n: int, values: torch.Tensor) -> torch.Tensor:
    out = torch.zeros(n, dtype=torch.bool)
    out[idx] = values
    return out


def _bounds(net64, x, y, idx, eps, p, method) -> torch.Tensor:
    on = idx.to(x.device)
    return bound_certify(net64, x[on].double(), y[on], eps, p, method).cpu()


def _attack_seed(points: list[int], p: float) -> int:
    """The seed of the attacks' random starts on these test points in this norm: a function of the
    points and the norm only, so that a certification gives the same counterexamples in every
    process, resumed or not (torch seeds a new process at random)."""
    return zlib.crc32(f"{p}:{','.join(map(str, points))}".encode())


def _attack(net, x, y, idx, eps, p, options, st: _State, indices: list[int]) -> None:
    on = idx.to(x.device)
    cuda = [x.device] if x.device.type == "cuda" else []
    with torch.random.fork_rng(devices=cuda):  # the caller's random stream stays as it was
        torch.manual_seed(_attack_seed([indices[i] for i in idx.tolist()], p))
        x_adv = attack(net, x[on], y[on], eps, p, strength=options.attack).detach()
    ok = check_adversarial(net, x[on], x_adv, y[on], eps, p).cpu()
    norms = torch.full((len(x),), INF, dtype=torch.float64)
    norms[idx] = adversarial_norm(x[on].double(), x_adv.double(), p).cpu()
    st.attacked(_full(idx, len(x), ok), norms, "pgd+apgd" if options.attack == "strong" else "pgd")


def _mip(net64, pool: MIPPool, x, labels, idx, eps, p, options, st: _State) -> None:
    """Exact MIP on the points ``idx``; each point's seconds are its own solve's (with several
    workers they overlap, so they add up to more than the stage's wall time)."""
    # big-M constants come from float64 CROWN bounds over each point's ball (mip_verify's default)
    tighten = any(NORMS[name] == p for name in options.mip_tighten_norms)
    solver = "scip" if p == 2.0 or any(NORMS[name] == p for name in options.mip_scip_norms) else "highs"
    jobs = [MIPJob(x[i : i + 1].double(), labels[i], eps, p, options.mip_time_limit, tighten, solver)
            for i in idx.tolist()]
    for i, job, result in zip(idx.tolist(), jobs, pool.solve_all(net64, jobs)):
        xi = job.x
        st.seconds[i] += result.seconds
        # 'timeout' and 'unknown' leave the point undecided: they certify nothing and, having
        # no checked point, attack nothing
        if result.status == "robust":
            st.certify(_one(i, len(x)), eps, "mip", closed_ball=True)
        elif result.status == "attacked" and result.counterexample is not None:
            # mip_verify returns only points that pass check_adversarial (snapped into the
            # ball); the same check here keeps the cascade's one gate for every stage
            cx = result.counterexample.view_as(xi)
            if bool(check_adversarial(net64, xi, cx, torch.tensor([labels[i]]), eps, p)[0]):
                norms = torch.full((len(x),), INF, dtype=torch.float64)
                norms[i] = float(adversarial_norm(xi, cx, p)[0])
                st.attacked(_one(i, len(x)), norms, "mip")


def _one(i: int, n: int) -> torch.Tensor:
    out = torch.zeros(n, dtype=torch.bool)
    out[i] = True
    return out
